"""Fused output layer + cross-entropy for CUDA (Triton): the mean cross-entropy of
logits = h @ W.T against targets, without ever holding all (N, V) logits in memory.

Shapes: N rows (B * T tokens), C channels, V vocabulary (50257), R rows per chunk.

The rows are processed in chunks of R. For each chunk, in the forward pass:

    logits  = h[rows] @ W.T              (R, V)  cuBLAS, in the compute dtype (bf16 under autocast)
    ce_rows kernel, one program per row  (Triton): loss[row] = logsumexp(logits) - logits[target],
            and, in place, logits <- dlogits = softmax(logits) - onehot(target)
    grad_h[rows] = dlogits @ W           (R, C)  cuBLAS
    grad_W      += dlogits.T @ h[rows]   (V, C)  cuBLAS, summed over chunks in fp32

so the forward pass computes both gradients while each logits chunk is at hand, and the backward
pass only scales them by grad_output / (number of counted targets). The chunk loop, the buffers of
the gradients and the autograd wrapper are fused_ce.chunked_head_loss's, shared with the PyTorch
version; this module supplies the per-chunk cross-entropy (`TritonChunkLoss`). Extra memory: one (R, V) chunk
in the compute dtype (rows padded to a multiple of 64 columns, see `padded_logits`), grad_h (N, C) and an fp32 grad_W (V, C), where the plain formulation keeps
fp32 (N, V) logits and their gradient (1.6 GB each at N = 8192). The three matmuls stay in cuBLAS;
only the memory-bound softmax / cross-entropy / gradient part is a Triton kernel, and it reads and
writes each chunk in place.

Numerics match `tinystories.model.plain_head_loss` under the same precision: the logits are rounded
to the compute dtype (as F.linear does under autocast), then the softmax and loss are done in fp32.
Targets equal to -100 are skipped, as in F.cross_entropy; other targets must lie in [0, V).

The kernel runs on CUDA tensors, or on CPU tensors under Triton's interpreter (TRITON_INTERPRET=1
set before triton is first imported), which is how the tests check it without a GPU.
"""
import torch
import triton
import triton.language as tl

from .fused_ce import chunked_head_loss

IGNORE_INDEX = -100  # F.cross_entropy's default: such targets add nothing to the loss or its count
CHUNK_ELEMENTS = 1 << 26  # logits per chunk: 64 Mi values, 128 MiB in bf16 (R = 1335 rows at V = 50257)
BLOCK_V = 4096  # vocabulary tile one program reads at a time
PAD_COLUMNS = 64  # logits rows are padded to a multiple of this many columns


@triton.jit
def _ce_rows_kernel(logits_ptr, padded_V, targets_ptr, losses_ptr, V, ignore_index,
                    BLOCK_V: tl.constexpr, WRITE_GRAD: tl.constexpr):
    """One program per row of a padded logits chunk (R, padded_V), any float dtype; columns V.. of
    every row hold -inf (see `padded_logits`).

    Writes losses[row] (fp32) = logsumexp(row) - row[target], 0 for an ignored target. With
    WRITE_GRAD, overwrites the row with d loss[row] / d row = softmax(row) - onehot(target)
    (all zeros for an ignored target) in the chunk's dtype, leaving the padding at -inf.
    """
    row = tl.program_id(0).to(tl.int64)
    row_ptr = logits_ptr + row * padded_V
    target = tl.load(targets_ptr + row)
    counted = target != ignore_index
    tl.device_assert(~counted | ((target >= 0) & (target < V)), "target out of range")
    cols = tl.arange(0, BLOCK_V)

    # pass 1: online logsumexp, one tile at a time: running max m, running sum s of exp(x - m)
    m = tl.full((), float("-inf"), tl.float32)
    s = tl.full((), 0.0, tl.float32)
    for start in range(0, padded_V, BLOCK_V):
        x = tl.load(row_ptr + start + cols, mask=start + cols < padded_V, other=float("-inf")).to(tl.float32)
        m_new = tl.maximum(m, tl.max(x, axis=0))
        s = s * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new), axis=0)
        m = m_new
    lse = m + tl.log(s)
    target_logit = tl.load(row_ptr + target, mask=counted, other=0.0).to(tl.float32)
    tl.store(losses_ptr + row, tl.where(counted, lse - target_logit, 0.0))

    # pass 2: the gradient of this row's loss, written over the logits
    if WRITE_GRAD:
        for start in range(0, padded_V, BLOCK_V):
            in_row = start + cols < padded_V
            x = tl.load(row_ptr + start + cols, mask=in_row, other=float("-inf")).to(tl.float32)
            grad = tl.exp(x - lse) - tl.where(start + cols == target, 1.0, 0.0)
            grad = tl.where(counted, grad, 0.0)
            grad = tl.where(start + cols < V, grad, float("-inf"))  # keep the padding
            tl.store(row_ptr + start + cols, grad.to(logits_ptr.dtype.element_ty), mask=in_row)


# Triton's interpreter (TRITON_INTERPRET=1 when triton was imported) makes @triton.jit give an
# interpreted function instead of a JITFunction; it runs kernels on the CPU, on tensors of any device.
INTERPRETED = not isinstance(_ce_rows_kernel, triton.runtime.JITFunction)


def padded_logits(rows: int, V: int, dtype: torch.dtype, device) -> torch.Tensor:
    """A (rows, padded_V) buffer, padded_V = V rounded up to PAD_COLUMNS, with -inf everywhere.

    Matmuls write only columns :V, so the padding stays -inf and adds exp(-inf) = 0 to every row's
    softmax. It gives each row an aligned start and the kernel a load bound divisible by 16, which
    lets Triton use 16-byte vector loads (an odd V = 50257 forces 2-byte ones), and gives cuBLAS an
    aligned leading dimension."""
    padded_V = triton.cdiv(V, PAD_COLUMNS) * PAD_COLUMNS
    return torch.full((rows, padded_V), float("-inf"), device=device, dtype=dtype)


def cross_entropy_rows_(logits: torch.Tensor, V: int, targets: torch.Tensor, losses: torch.Tensor,
                        write_grad: bool) -> None:
    """Per-row losses of logits (R, padded_V) into losses (R,) fp32; with write_grad, columns :V of
    logits become dlogits. logits: rows of a `padded_logits` buffer; targets: (R,) int64."""
    R, padded_V = logits.shape
    assert logits.stride() == (padded_V, 1) and targets.is_contiguous() and losses.is_contiguous()
    _ce_rows_kernel[(R,)](logits, padded_V, targets, losses, V, IGNORE_INDEX,
                          BLOCK_V=min(BLOCK_V, triton.next_power_of_2(padded_V)), WRITE_GRAD=write_grad,
                          num_warps=8)


class TritonChunkLoss:
    """The softmax cross-entropy of one chunk of logits by the Triton kernel, for
    fused_ce.chunked_head_loss: the same contract as fused_ce.TorchChunkLoss, on a padded buffer."""

    def __init__(self, rows: int, V: int, dtype: torch.dtype, device):
        self.V = V
        self.buffer = padded_logits(rows, V, dtype, device)  # (R, padded_V), reused by every chunk
        self.losses = torch.empty(rows, dtype=torch.float32, device=device)  # (R,)

    def logits(self, n: int) -> torch.Tensor:
        return self.buffer[:n, : self.V]  # (n, V), a strided view

    def __call__(self, logits: torch.Tensor, targets: torch.Tensor, with_grad: bool):
        n = logits.size(0)
        targets = targets.contiguous()
        cross_entropy_rows_(self.buffer[:n], self.V, targets, self.losses[:n], with_grad)
        return self.losses[:n].sum(), (targets != IGNORE_INDEX).sum()


def triton_head_loss(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                     chunk_rows: int | None = None) -> torch.Tensor:
    """Mean cross-entropy of h @ weight.T against targets, like plain_head_loss, in chunks of
    chunk_rows rows (default: CHUNK_ELEMENTS logits per chunk). h: (N, C), weight: (V, C),
    targets: (N,) int64 (-100 = ignored). Returns an fp32 scalar; differentiable in h and weight."""
    if h.device.type != "cuda" and not INTERPRETED:
        raise ValueError(f"triton_head_loss needs CUDA tensors, got {h.device.type} ones "
                         f"(use plain_head_loss, or TRITON_INTERPRET=1 before triton is imported)")
    chunk_rows = chunk_rows or max(1, CHUNK_ELEMENTS // weight.size(0))
    return chunked_head_loss(h, weight, targets, chunk_rows, TritonChunkLoss)

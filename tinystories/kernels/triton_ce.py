"""Fused output layer + cross-entropy for CUDA (Triton): the mean cross-entropy of
logits = h @ W.T against targets, without ever holding all (N, V) logits in memory.

Shapes: N rows (B * T tokens), C channels, V vocabulary (50257), R rows per chunk.

The vocabulary is first padded with zero rows of W to padded_V, a multiple of 64 (50257 -> 50304):
with an odd V every matmul below has an odd dimension, and cuBLAS then falls back to kernels that
load one element at a time (about 3x slower on an H100: BENCHMARKS.md). The rows are processed in
chunks of R. For each chunk, in the forward pass:

    logits  = h[rows] @ W.T              (R, padded_V)  cuBLAS, in the compute dtype (bf16 under autocast)
    ce_rows kernel, one program per row  (Triton): loss[row] = logsumexp(logits[:V]) - logits[target],
            and, in place, logits <- dlogits = softmax(logits[:V]) - onehot(target), 0 in the padding
    grad_h[rows] = dlogits @ W           (R, C)  cuBLAS
    grad_W      += dlogits.T @ h[rows]   (padded_V, C)  cuBLAS, summed over chunks in fp32

so the forward pass computes both gradients while each logits chunk is at hand, and the backward
pass only scales them by grad_output / (number of counted targets). The chunk loop, the buffers of
the gradients and the autograd wrapper are fused_ce.chunked_head_loss's, shared with the PyTorch
version; this module supplies the per-chunk cross-entropy (`TritonChunkLoss`). Extra memory: one
(R, padded_V) chunk in the compute dtype, the padded W, grad_h (N, C) and an fp32 grad_W
(padded_V, C), where the plain formulation keeps fp32 (N, V) logits and their gradient (1.6 GB each
at N = 8192). The three matmuls stay in cuBLAS; only the memory-bound softmax / cross-entropy /
gradient part is a Triton kernel, and it reads and writes each chunk in place.

Numerics match `tinystories.model.plain_head_loss` under the same precision: the logits are rounded
to the compute dtype (as F.linear does under autocast), then the softmax and loss are done in fp32.
Targets equal to -100 are skipped, as in F.cross_entropy; other targets must lie in [0, V).

The kernel runs on CUDA tensors, or on CPU tensors under Triton's interpreter (TRITON_INTERPRET=1
set before triton is first imported), which is how the tests check it without a GPU.
"""
import functools

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from .fused_ce import chunked_head_loss

IGNORE_INDEX = -100  # F.cross_entropy's default: such targets add nothing to the loss or its count
CHUNK_ROWS = 4096  # rows per chunk: 412 MB of bf16 logits at V = 50257; the fastest of 256, 512, 1335
                  # and 4096 in a CUDA-graphed step at B=32, T=256 on an H100 (BENCHMARKS.md)
BLOCK_V = 4096  # vocabulary tile one program reads at a time
PAD_ROWS = 64  # W is padded with zero rows to a multiple of this, so every matmul dimension is aligned


@triton.jit
def _ce_rows_kernel(logits_ptr, padded_V, targets_ptr, losses_ptr, V, ignore_index,
                    BLOCK_V: tl.constexpr, WRITE_GRAD: tl.constexpr):
    """One program per row of a logits chunk (R, padded_V), any float dtype; columns V.. are padding
    and take no part in the softmax. Loads are bounded by padded_V, a multiple of 64, which lets
    Triton use 16-byte vector loads (a bound of V = 50257 would force 2-byte ones).

    Writes losses[row] (fp32) = logsumexp(row[:V]) - row[target], 0 for an ignored target. With
    WRITE_GRAD, overwrites the row with d loss[row] / d row = softmax(row[:V]) - onehot(target)
    (all zeros for an ignored target, and in the padding) in the chunk's dtype.
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
        x = tl.load(row_ptr + start + cols, mask=start + cols < padded_V).to(tl.float32)
        x = tl.where(start + cols < V, x, float("-inf"))
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
            x = tl.load(row_ptr + start + cols, mask=in_row).to(tl.float32)
            x = tl.where(start + cols < V, x, float("-inf"))
            grad = tl.exp(x - lse) - tl.where(start + cols == target, 1.0, 0.0)  # exp(-inf) = 0 in the padding
            grad = tl.where(counted, grad, 0.0)
            tl.store(row_ptr + start + cols, grad.to(logits_ptr.dtype.element_ty), mask=in_row)


# Triton's interpreter (TRITON_INTERPRET=1 when triton was imported) makes @triton.jit give an
# interpreted function instead of a JITFunction; it runs kernels on the CPU, on tensors of any device.
INTERPRETED = not isinstance(_ce_rows_kernel, triton.runtime.JITFunction)


def cross_entropy_rows_(logits: torch.Tensor, V: int, targets: torch.Tensor, losses: torch.Tensor,
                        write_grad: bool) -> None:
    """Per-row losses of logits (R, padded_V) over their first V columns into losses (R,) fp32; with
    write_grad, logits become dlogits. targets: (R,) int64."""
    R, padded_V = logits.shape
    assert logits.is_contiguous() and targets.is_contiguous() and losses.is_contiguous()
    _ce_rows_kernel[(R,)](logits, padded_V, targets, losses, V, IGNORE_INDEX,
                          BLOCK_V=min(BLOCK_V, triton.next_power_of_2(padded_V)), WRITE_GRAD=write_grad,
                          num_warps=8)


class TritonChunkLoss:
    """The softmax cross-entropy of one chunk of logits by the Triton kernel, for
    fused_ce.chunked_head_loss: the same contract as fused_ce.TorchChunkLoss, over logits whose
    columns from `vocab_size` on are padding (zero rows of the padded W)."""

    def __init__(self, rows: int, padded_V: int, dtype: torch.dtype, device, vocab_size: int):
        self.V = vocab_size
        self.buffer = torch.empty(rows, padded_V, dtype=dtype, device=device)  # (R, padded_V), reused by every chunk
        self.losses = torch.empty(rows, dtype=torch.float32, device=device)  # (R,)

    def logits(self, n: int) -> torch.Tensor:
        return self.buffer[:n]  # (n, padded_V)

    def __call__(self, logits: torch.Tensor, targets: torch.Tensor, with_grad: bool):
        n = logits.size(0)
        targets = targets.contiguous()
        cross_entropy_rows_(logits, self.V, targets, self.losses[:n], with_grad)  # with_grad: dlogits over the logits
        return self.losses[:n].sum(), (targets != IGNORE_INDEX).sum(), logits if with_grad else None


@torch.compiler.disable  # its kernels are fused already; and dynamo cannot trace the fp32-output addmm (torch 2.11)
def triton_head_loss(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                     chunk_rows: int = CHUNK_ROWS) -> torch.Tensor:
    """Mean cross-entropy of h @ weight.T against targets, like plain_head_loss, in chunks of
    chunk_rows rows. h: (N, C), weight: (V, C), targets: (N,) int64 (-100 = ignored). Returns an
    fp32 scalar; differentiable in h and weight."""
    if h.device.type != "cuda" and not INTERPRETED:
        raise ValueError(f"triton_head_loss needs CUDA tensors, got {h.device.type} ones "
                         f"(use plain_head_loss, or TRITON_INTERPRET=1 before triton is imported)")
    V = weight.size(0)
    padded = F.pad(weight, (0, 0, 0, triton.cdiv(V, PAD_ROWS) * PAD_ROWS - V))  # (padded_V, C), zero rows
    return chunked_head_loss(h, padded, targets, chunk_rows, functools.partial(TritonChunkLoss, vocab_size=V))

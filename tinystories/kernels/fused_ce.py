"""Fused output layer + cross-entropy in plain PyTorch: the mean cross-entropy of
logits = h @ W.T against targets, without ever holding all (N, V) logits in memory. Runs on any
device; it is the fast formulation on CPU (bench/bench_head_loss.py).

Shapes: N rows (B * T tokens), C channels, V vocabulary (50257), R rows per chunk.

The rows are processed in chunks of R. For each chunk, in the forward pass:

    logits        = h[rows] @ W.T                  (R, V)  in the compute dtype (bf16 under autocast)
    logprobs      = log_softmax(logits) in fp32    (R, V)
    loss         += -sum of logprobs[row, target]
    dlogits       = exp(logprobs) - onehot(target) (R, V)  the summed loss's gradient, compute dtype,
                                                           written over the logits
    grad_h[rows]  = dlogits @ W                    (R, C)
    grad_W       += dlogits.T @ h[rows]            (V, C)  summed over chunks in fp32

so both gradients are computed while each chunk of logits is at hand, and the backward pass only
scales them by grad_output / N. Under torch.no_grad() (or when neither h nor W requires grad)
only the loss is computed.

The chunk loop and the autograd wrapper (`chunked_head_loss`) are shared with the Triton version
(triton_ce.py), which only replaces the per-chunk softmax / cross-entropy (`TorchChunkLoss` here).

Memory: one (R, V) logits buffer in the compute dtype (plus an fp32 one under bf16), allocated once
per call and reused by every chunk, grad_h (N, C) and an fp32 grad_W (V, C); the plain formulation
allocates fp32 (N, V) logits and their gradient afresh on every step. On CPU the reuse matters:
a freshly allocated large tensor costs a page fault per 4 KiB page when first written.

Numerics match `tinystories.model.plain_head_loss` under the same precision: the logits are rounded
to the compute dtype (as F.linear does under autocast), the softmax and loss are done in fp32, and
the returned gradients have the dtypes of h and W (fp32 master weights stay fp32).
"""
import torch

DEFAULT_CHUNK_SIZE = 256  # rows per chunk: among the fastest on a 2-core EPYC (BENCHMARKS.md)


def fused_head_loss(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                    chunk_size: int = DEFAULT_CHUNK_SIZE) -> torch.Tensor:
    """Mean cross-entropy of the logits h @ weight.T against targets, as plain_head_loss computes it.
    h: (N, C), weight: (V, C), targets: (N,) int64 in [0, V). Returns an fp32 scalar."""
    return chunked_head_loss(h, weight, targets, chunk_size, TorchChunkLoss)


class TorchChunkLoss:
    """The softmax cross-entropy of one chunk of logits, in plain PyTorch, with its buffers.

    `logits(n)` is where the chunk's (n, V) logits are written; calling it then returns the chunk's
    summed loss and its number of targets, and with_grad overwrites the logits with their gradient
    softmax - onehot (in the compute dtype)."""

    def __init__(self, rows: int, V: int, dtype: torch.dtype, device):
        self.buffer = torch.empty(rows, V, dtype=dtype, device=device)  # reused by every chunk
        # fp32 log-probabilities: the logits buffer itself in fp32 (overwritten in place), else their own
        self.logprobs = self.buffer if dtype == torch.float32 else torch.empty(rows, V, dtype=torch.float32,
                                                                               device=device)

    def logits(self, n: int) -> torch.Tensor:
        return self.buffer[:n]  # (n, V)

    def __call__(self, logits: torch.Tensor, targets: torch.Tensor, with_grad: bool):
        n = logits.size(0)
        logprobs = torch.log_softmax(logits, dim=1, dtype=torch.float32, out=self.logprobs[:n])  # (n, V)
        picked = (torch.arange(n, device=logits.device), targets)  # each row's target entry
        loss_sum = -logprobs[picked].sum()
        if with_grad:
            torch.exp(logprobs, out=logits)  # softmax, rounded to the compute dtype
            logits[picked] -= 1.0  # softmax - onehot
        return loss_sum, n


def compute_dtype(h: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    """The dtype of the matmuls: autocast's when it is on (as F.linear would use), else the inputs'."""
    if torch.is_autocast_enabled(h.device.type):
        return torch.get_autocast_dtype(h.device.type)
    return torch.promote_types(h.dtype, weight.dtype)


def chunked_head_loss(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk_rows: int,
                      chunk_loss) -> torch.Tensor:
    """Mean cross-entropy of h @ weight.T against targets, chunk_rows rows at a time, with the per-chunk
    softmax / cross-entropy done by `chunk_loss` (TorchChunkLoss or triton_ce.TritonChunkLoss).
    Differentiable in h and weight; under no_grad only the loss is computed."""
    dtype = compute_dtype(h, weight)
    if torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad):
        return _ChunkedHeadLoss.apply(h, weight, targets, chunk_rows, chunk_loss, dtype)
    with torch.autocast(h.device.type, enabled=False):
        loss_sum, count, _, _ = chunked_loss_and_grads(h.to(dtype), weight.to(dtype), targets, chunk_rows,
                                                       chunk_loss, with_grads=False)
    return loss_sum / count


class _ChunkedHeadLoss(torch.autograd.Function):
    """Forward computes the loss and its gradients; backward scales the gradients by grad_output."""

    @staticmethod
    def forward(ctx, h, weight, targets, chunk_rows, chunk_loss, dtype):
        with torch.autocast(h.device.type, enabled=False):  # the dtypes are chosen explicitly here
            loss_sum, count, grad_h, grad_w = chunked_loss_and_grads(
                h.to(dtype), weight.to(dtype), targets, chunk_rows, chunk_loss, with_grads=True)
        ctx.save_for_backward(grad_h, grad_w, count)
        ctx.input_dtypes = h.dtype, weight.dtype
        return loss_sum / count

    @staticmethod
    def backward(ctx, grad_loss):
        grad_h, grad_w, count = ctx.saved_tensors  # gradients of the summed loss: (N, C), (V, C)
        scale = grad_loss / count  # d mean / d sum, times the incoming gradient
        h_dtype, w_dtype = ctx.input_dtypes
        want_h, want_w = ctx.needs_input_grad[:2]
        return (grad_h.to(h_dtype) * scale if want_h else None,
                (grad_w * scale).to(w_dtype) if want_w else None, None, None, None, None)


def chunked_loss_and_grads(h, weight, targets, chunk_rows: int, chunk_loss, with_grads: bool):
    """The summed loss (fp32 scalar), the number of counted targets, and with_grads the gradients of
    the summed loss: grad_h (N, C) in h's dtype and grad_w (V, C) in fp32 (else None, None).
    h: (N, C) and weight: (V, C) in the compute dtype; targets: (N,) int64."""
    (N, C), V = h.shape, weight.size(0)
    R = max(1, min(chunk_rows, N))
    ce = chunk_loss(R, V, h.dtype, h.device)
    grad_h = torch.empty_like(h) if with_grads else None
    grad_w = torch.zeros(V, C, dtype=torch.float32, device=h.device) if with_grads else None
    # a lower-precision chunk's grad_w is rounded once into this buffer, then summed in fp32 (CPU)
    grad_w_chunk = torch.empty_like(weight) if with_grads and h.dtype != torch.float32 and not h.is_cuda else None
    loss_sum = torch.zeros((), dtype=torch.float32, device=h.device)
    count = torch.zeros((), dtype=torch.int64, device=h.device)
    for start in range(0, N, R):
        rows = slice(start, min(start + R, N))
        chunk_h = h[rows]  # (n, C)
        logits = torch.mm(chunk_h, weight.T, out=ce.logits(rows.stop - start))  # (n, V)
        chunk_sum, chunk_count = ce(logits, targets[rows], with_grads)  # logits now hold dlogits
        loss_sum += chunk_sum
        count += chunk_count
        if with_grads:
            torch.mm(logits, weight, out=grad_h[rows])  # (n, C)
            if logits.dtype == torch.float32:
                grad_w.addmm_(logits.T, chunk_h)  # (V, C) += (V, n) @ (n, C)
            elif grad_w_chunk is None:  # CUDA: cuBLAS adds the bf16 product to fp32 grad_w directly
                torch.addmm(grad_w, logits.T, chunk_h, out_dtype=torch.float32, out=grad_w)
            else:
                grad_w += torch.mm(logits.T, chunk_h, out=grad_w_chunk)  # (V, C)
    return loss_sum, count, grad_h, grad_w

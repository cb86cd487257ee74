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
    dtype = _compute_dtype(h)
    if torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad):
        return _FusedHeadLoss.apply(h, weight, targets, chunk_size, dtype)
    with torch.autocast(h.device.type, enabled=False):
        loss_sum, _, _ = _chunked_loss_and_grads(h.to(dtype), weight.to(dtype), targets, chunk_size,
                                                 want_grad_h=False, want_grad_w=False)
    return loss_sum / h.size(0)


def _compute_dtype(h: torch.Tensor) -> torch.dtype:
    """The matmul dtype: autocast's lower precision where autocast is on for h's device, else h's."""
    device = h.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else h.dtype


class _FusedHeadLoss(torch.autograd.Function):
    """Forward computes the loss and its gradients; backward scales the gradients by grad_output."""

    @staticmethod
    def forward(ctx, h, weight, targets, chunk_size, dtype):
        want_grad_h, want_grad_w = ctx.needs_input_grad[:2]
        with torch.autocast(h.device.type, enabled=False):  # the dtypes are chosen explicitly here
            loss_sum, grad_h, grad_w = _chunked_loss_and_grads(
                h.to(dtype), weight.to(dtype), targets, chunk_size, want_grad_h, want_grad_w)
        ctx.n_rows = h.size(0)
        ctx.save_for_backward(grad_h.to(h.dtype) if want_grad_h else None,
                              grad_w.to(weight.dtype) if want_grad_w else None)
        return loss_sum / ctx.n_rows

    @staticmethod
    def backward(ctx, grad_loss):
        grad_h, grad_w = ctx.saved_tensors  # gradients of the summed loss: (N, C), (V, C)
        scale = grad_loss / ctx.n_rows
        return (None if grad_h is None else grad_h * scale,
                None if grad_w is None else grad_w * scale, None, None, None)


def _chunked_loss_and_grads(h, weight, targets, chunk_size, want_grad_h, want_grad_w):
    """The summed loss (fp32 scalar) and its gradients grad_h (N, C) in h's dtype and grad_w (V, C)
    in fp32, None where not wanted. h: (N, C) and weight: (V, C) in the compute dtype."""
    (N, C), V = h.shape, weight.size(0)
    R = max(1, min(chunk_size, N))
    logits = torch.empty(R, V, dtype=h.dtype, device=h.device)  # reused by every chunk
    # fp32 logprobs/probs: the logits buffer itself in fp32 (overwritten in place), else its own buffer
    probs = logits if h.dtype == torch.float32 else torch.empty(R, V, dtype=torch.float32, device=h.device)
    grad_h = torch.empty_like(h) if want_grad_h else None
    grad_w = torch.zeros(V, C, dtype=torch.float32, device=h.device) if want_grad_w else None
    # a lower-precision chunk's grad_w is rounded once into this buffer, then summed in fp32
    grad_w_chunk = torch.empty_like(weight) if want_grad_w and h.dtype != torch.float32 else None
    loss_sum = torch.zeros((), dtype=torch.float32, device=h.device)
    for start in range(0, N, R):
        rows = slice(start, min(start + R, N))
        n = rows.stop - start
        chunk_h = h[rows]  # (n, C)
        chunk_logits = torch.mm(chunk_h, weight.T, out=logits[:n])  # (n, V)
        chunk_probs = torch.log_softmax(chunk_logits, dim=1, dtype=torch.float32, out=probs[:n])
        picked = (torch.arange(n, device=h.device), targets[rows])  # each row's target entry
        loss_sum -= chunk_probs[picked].sum()
        if not (want_grad_h or want_grad_w):
            continue
        dlogits = torch.exp(chunk_probs, out=chunk_logits)  # softmax (n, V), rounded to the compute dtype
        dlogits[picked] -= 1.0  # softmax - onehot
        if want_grad_h:
            torch.mm(dlogits, weight, out=grad_h[rows])
        if grad_w_chunk is not None:
            grad_w += torch.mm(dlogits.T, chunk_h, out=grad_w_chunk)  # (V, C)
        elif want_grad_w:
            grad_w.addmm_(dlogits.T, chunk_h)  # (V, C) += (V, n) @ (n, C)
    return loss_sum, grad_h, grad_w

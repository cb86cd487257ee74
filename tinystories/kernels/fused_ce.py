"""Fused output layer + cross-entropy in plain PyTorch: the mean cross-entropy of
logits = h @ W.T against targets, without ever holding all (N, V) logits in memory. Runs on any
device; it is the fast formulation on CPU (bench/bench_head_loss.py).

Shapes: N rows (B * T tokens), C channels, V vocabulary (50257), R rows per chunk.

The rows are processed in chunks of R. For each chunk, in the forward pass:

    logits        = h[rows] @ W.T                     (R, V)  in the compute dtype (bf16 under autocast)
    logprobs      = log_softmax(logits) in fp32       (R, V)
    loss         += -sum of logprobs[row, target]
    dlogits       = softmax(logits) - onehot(target)  (R, V)  the summed loss's gradient, compute dtype
    grad_h[rows]  = dlogits @ W                       (R, C)
    grad_W       += dlogits.T @ h[rows]               (V, C)  summed over chunks in fp32

so both gradients are computed while each chunk of logits is at hand, and the backward pass only
scales them by grad_output / N. Under torch.no_grad() (or when neither h nor W requires grad)
only the loss is computed.

The chunk loop and the autograd wrapper (`chunked_head_loss`) are shared with the Triton version
(triton_ce.py), which only replaces the per-chunk softmax / cross-entropy (`TorchChunkLoss` here).

Memory: (R, V) buffers for the logits and their gradient in the compute dtype and the fp32
log-probabilities (in fp32 the gradient takes the log-probabilities' place), allocated once per call
and reused by every chunk, grad_h (N, C) and an fp32 grad_W (V, C); the plain formulation
allocates fp32 (N, V) logits and their gradient afresh on every step. On CPU the reuse matters:
a freshly allocated large tensor costs a page fault per 4 KiB page when first written.

On CPU in fp32 the head takes another path, `tiled_head`, laid out for the CPU's caches: a (256, V)
fp32 chunk is 51 MB, far beyond L2 (0.5-2 MB per core), so the chunk loop above would stream every
chunk through DRAM several times. Instead all n rows (up to TILED_ROWS) go through the vocabulary
t = VOCAB_TILE columns at a time, each tile used while it is in cache:

    first pass, tile after tile:
        x             = h @ W[tile].T - target logit     (n, t)  into a reused scratch tile
        e             = exp(x)                           (n, t)  written to E[tile], a buffer kept
                                                                 from call to call (n x V fp32)
        s            += rowsum(e)                        (n,)    the softmax is e / s
        G            += e @ W[tile]                      (n, C)
    grad_h            = G / s - W[target]                (n, C)
    second pass, every tile in one batched product (the narrower last tile on its own):
        grad_W[tile]  = E[tile].T @ (h / s)              (t, C)
    grad_W[target]   -= h

Three matrix products per tile, as in the chunk loop, and the exp, but no further pass over the
logits (log_softmax, exp, onehot). Shifting by each row's target logit needs no running maximum:
the target's own term is 1, so s >= 1 never underflows, and only a logit 88 or more above its row's
target logit (a loss of 88 nats on one token) overflows exp; the call is then redone by the chunk
loop. The exponentials are exp2 of base-2 logits ((h log2 e) @ W.T): torch's exp2 is faster than
its exp on CPUs. E (206 MB at n = 1,024) is kept because a freshly allocated large CPU tensor costs
a page fault per 4 KiB page when first written. The head is one custom operator, opaque to
torch.compile, which compiles the rest of the model around it.

Numerics match `tinystories.model.plain_head_loss` under the same precision: the logits are rounded
to the compute dtype (as F.linear does under autocast), the softmax and loss are done in fp32, and
the returned gradients have the dtypes of h and W (fp32 master weights stay fp32).
"""
import functools
import math
import threading

import torch

DEFAULT_CHUNK_SIZE = 256  # rows per chunk: among the fastest on a 2-core EPYC (BENCHMARKS.md)
VOCAB_TILE = 256  # columns per tile of the CPU fp32 head: 1 MiB of logits at 1,024 rows
TILED_ROWS = 1024  # rows per pass of the CPU fp32 head: its kept E is TILED_ROWS x V fp32, 206 MB
LOG2E = math.log2(math.e)


def fused_head_loss(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                    chunk_size: int = DEFAULT_CHUNK_SIZE, vocab_tile: int = VOCAB_TILE) -> torch.Tensor:
    """Mean cross-entropy of the logits h @ weight.T against targets, as plain_head_loss computes it.
    h: (N, C), weight: (V, C), targets: (N,) int64 in [0, V). Returns an fp32 scalar.
    On CPU in fp32 the tiled formulation (vocab_tile columns at a time), else chunks of chunk_size rows."""
    if h.device.type == "cpu" and compute_dtype(h, weight) == torch.float32:
        return head_loss(h, weight, targets, functools.partial(tiled_loss_and_grads, vocab_tile=vocab_tile))
    return chunked_head_loss(h, weight, targets, chunk_size, TorchChunkLoss)


class TorchChunkLoss:
    """The softmax cross-entropy of one chunk of logits, in plain PyTorch, with its buffers.

    `logits(n)` is where the chunk's (n, V) logits are written; calling it then returns the chunk's
    summed loss, its number of targets and, with_grad, their gradient softmax - onehot (n, V) in the
    compute dtype (else None).

    The softmax is taken from the logits by torch.softmax, not as exp(logprobs): on the CPU torch.exp
    of a large fp32 tensor is MKL's vector exp, which on some CPUs (an Intel Xeon with AMX) gives one
    thread a less accurate result in a process's first parallel call, so a run and its exact resume
    would differ. torch.softmax uses torch's own exp, and is faster (BENCHMARKS.md)."""

    def __init__(self, rows: int, V: int, dtype: torch.dtype, device):
        self.buffer = torch.empty(rows, V, dtype=dtype, device=device)  # the logits, reused by every chunk
        self.logprobs = torch.empty(rows, V, dtype=torch.float32, device=device)
        # the gradient: over the fp32 log-probabilities once the loss is taken, else in the compute dtype
        self.grads = self.logprobs if dtype == torch.float32 else torch.empty(rows, V, dtype=dtype, device=device)

    def logits(self, n: int) -> torch.Tensor:
        return self.buffer[:n]  # (n, V)

    def __call__(self, logits: torch.Tensor, targets: torch.Tensor, with_grad: bool):
        n = logits.size(0)
        logprobs = torch.log_softmax(logits, dim=1, dtype=torch.float32, out=self.logprobs[:n])  # (n, V)
        picked = (torch.arange(n, device=logits.device), targets)  # each row's target entry
        loss_sum = -logprobs[picked].sum()
        if not with_grad:
            return loss_sum, n, None
        grads = torch.softmax(logits, dim=1, out=self.grads[:n])  # (n, V), rounded to the compute dtype
        grads[picked] -= 1.0  # softmax - onehot
        return loss_sum, n, grads


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
    return head_loss(h, weight, targets,
                     functools.partial(chunked_loss_and_grads, chunk_rows=chunk_rows, chunk_loss=chunk_loss))


def head_loss(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, loss_and_grads) -> torch.Tensor:
    """Mean cross-entropy of h @ weight.T against targets, computed with its gradients by
    `loss_and_grads(h, weight, targets, with_grads)` (chunked_loss_and_grads or tiled_loss_and_grads).
    Differentiable in h and weight; under no_grad only the loss is computed."""
    dtype = compute_dtype(h, weight)
    if torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad):
        return _HeadLoss.apply(h, weight, targets, loss_and_grads, dtype)
    with torch.autocast(h.device.type, enabled=False):
        loss_sum, count, _, _ = loss_and_grads(h.to(dtype), weight.to(dtype), targets, with_grads=False)
    return loss_sum / count


class _HeadLoss(torch.autograd.Function):
    """Forward computes the loss and its gradients; backward scales the gradients by grad_output."""

    @staticmethod
    def forward(ctx, h, weight, targets, loss_and_grads, dtype):
        with torch.autocast(h.device.type, enabled=False):  # the dtypes are chosen explicitly here
            loss_sum, count, grad_h, grad_w = loss_and_grads(h.to(dtype), weight.to(dtype), targets, with_grads=True)
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
                (grad_w * scale).to(w_dtype) if want_w else None, None, None, None)


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
        chunk_sum, chunk_count, dlogits = ce(logits, targets[rows], with_grads)  # dlogits: (n, V)
        loss_sum += chunk_sum
        count += chunk_count
        if with_grads:
            torch.mm(dlogits, weight, out=grad_h[rows])  # (n, C)
            if dlogits.dtype == torch.float32:
                grad_w.addmm_(dlogits.T, chunk_h)  # (V, C) += (V, n) @ (n, C)
            elif grad_w_chunk is None:  # CUDA: cuBLAS adds the bf16 product to fp32 grad_w directly
                torch.addmm(grad_w, dlogits.T, chunk_h, out_dtype=torch.float32, out=grad_w)
            else:
                grad_w += torch.mm(dlogits.T, chunk_h, out=grad_w_chunk)  # (V, C)
    return loss_sum, count, grad_h, grad_w


def tiled_loss_and_grads(h, weight, targets, with_grads: bool, vocab_tile: int = VOCAB_TILE):
    """chunked_loss_and_grads's results by the tiled CPU fp32 formulation (module docstring).
    h: (N, C), weight: (V, C) fp32 CPU tensors. One opaque operator to torch.compile (tiled_head)."""
    loss_sum, grad_h, grad_w = torch.ops.tinystories.tiled_head(h, weight, targets, with_grads, vocab_tile)
    return loss_sum, torch.tensor(h.size(0)), grad_h if with_grads else None, grad_w if with_grads else None


@torch.library.custom_op("tinystories::tiled_head", mutates_args=(), device_types="cpu")
def tiled_head(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, with_grads: bool,
               vocab_tile: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The summed loss, and with_grads its gradients grad_h (N, C) and grad_w (V, C) (else empty
    tensors: an operator returns no None), TILED_ROWS rows at a time."""
    (N, C), V = h.shape, weight.size(0)
    grad_h = torch.empty_like(h) if with_grads else None
    grad_w = torch.empty(V, C) if with_grads else None  # written by the first rows, added to by the others
    loss_sum = torch.zeros(())
    for start in range(0, N, TILED_ROWS):
        rows = slice(start, min(start + TILED_ROWS, N))
        chunk_sum = tiled_rows_(h[rows], weight, targets[rows], grad_h[rows] if with_grads else None, grad_w,
                                vocab_tile, add_to_grad_w=start > 0)
        if chunk_sum is None:  # exp overflowed: a logit is 88 or more above its row's target logit
            loss_sum, _, grad_h, grad_w = chunked_loss_and_grads(h, weight, targets, DEFAULT_CHUNK_SIZE,
                                                                 TorchChunkLoss, with_grads)
            break
        loss_sum += chunk_sum
    return loss_sum, *(h.new_empty(0) if grad is None else grad for grad in (grad_h, grad_w))


@tiled_head.register_fake
def _(h, weight, targets, with_grads, vocab_tile):
    shapes = (h.shape, weight.shape) if with_grads else ((0,), (0,))
    return h.new_empty(()), h.new_empty(shapes[0]), h.new_empty(shapes[1])


def tiled_rows_(h, weight, targets, grad_h, grad_w, vocab_tile: int, add_to_grad_w: bool):
    """The summed loss of n <= TILED_ROWS rows, or None where exp overflows. With grad_h (n, C): writes
    the gradient of that loss wrt h there and the one wrt weight to grad_w (V, C), or adds it there."""
    (n, C), V = h.shape, weight.size(0)
    target_w = weight[targets]  # (n, C)
    h2 = h * LOG2E  # (n, C): h @ W.T in base 2
    shift = (h2 * target_w).sum(dim=1, keepdim=True)  # (n, 1): the target logits, base 2
    tiles = [slice(start, min(start + vocab_tile, V)) for start in range(0, V, vocab_tile)]
    kept = kept_buffer(n * (V + vocab_tile))  # E, tile after tile, then one tile of logits
    scratch = kept[n * V:].view(n, vocab_tile)  # (n, t): each tile's logits, in cache
    tile_sums = torch.empty(len(tiles), n)  # each tile's row sums of e
    if grad_h is not None:
        grad_h.zero_()  # G, the unnormalised softmax @ W, until the end of the first pass
    for cols, sums in zip(tiles, tile_sums):  # first pass: logits, e, s and G
        w = weight[cols]  # (t, C)
        e = kept[n * cols.start: n * cols.stop].view(n, -1)  # (n, t)
        logits = torch.mm(h2, w.T, out=scratch[:, : e.size(1)])
        torch.exp2(logits.sub_(shift), out=e)
        torch.sum(e, dim=1, out=sums)
        if grad_h is not None:
            grad_h.addmm_(e, w)  # (n, C) += (n, t) @ (t, C)
    s = tile_sums.sum(dim=0)  # (n,): sum of exp(logit - target logit) over the vocabulary
    if not torch.isfinite(s).all():
        return None
    if grad_h is not None:
        grad_h.div_(s[:, None]).sub_(target_w)  # softmax @ W - onehot @ W
        h_scaled = h / s[:, None]  # (n, C)
        # second pass, grad_w[tile] (+)= E[tile].T @ h_scaled: the whole tiles in one batched product
        beta, whole = float(add_to_grad_w), V - V % vocab_tile
        whole_e = kept[: n * whole].view(-1, n, vocab_tile)  # (tiles, n, t)
        grad_w[:whole].view(-1, vocab_tile, C).baddbmm_(whole_e.mT, h_scaled.expand(len(whole_e), n, C), beta=beta)
        if whole < V:  # the last, narrower tile
            grad_w[whole:].addmm_(kept[n * whole: n * V].view(n, -1).T, h_scaled, beta=beta)
        grad_w.index_add_(0, targets, h, alpha=-1.0)  # minus onehot.T @ h
    return s.log().sum()


_kept = threading.local()


def kept_buffer(numel: int) -> torch.Tensor:
    """A 1-D fp32 CPU buffer of numel values: the same memory on every call from this thread (grown
    when too small). A fresh large CPU tensor costs a page fault per 4 KiB page when first written:
    50,000 of them for the 206 MB of E at 1,024 rows, as long as a third of the head's work."""
    buffer = getattr(_kept, "buffer", None)
    if buffer is None or buffer.numel() < numel:
        buffer = _kept.buffer = torch.empty(numel)
    return buffer[:numel]

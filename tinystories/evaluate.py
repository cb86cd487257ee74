"""The loss of a model over a whole token file: mean loss, perplexity and bits per byte.

Windows: the file's N tokens are cut into non-overlapping windows of T + 1 tokens, tokens
[k(T+1), (k+1)(T+1)); in each, tokens 0..T-1 are the input and tokens 1..T the targets, so the
first token of a window is context only. The tail, the r = N mod (T+1) tokens after the last
full window, is one shorter window with r - 1 targets when r >= 2 (a lone last token is not scored).

Figures, over all scored targets t (each a token of the file, scored once):
    mean loss        L = sum_t -ln p(t | context) / (number of targets)       (nats per token)
    perplexity       exp(L)
    bits per byte    sum_t -ln p(t | context) / ln 2 / B, where B is the number of bytes the scored
                     targets stand for: each target token's bytes in the model's tokenizer
                     (tokenizer.token_bytes) counted once, so B = len(b"".join(bytes of every
                     scored target)). A story's text counts as its UTF-8 bytes, and the EOT before
                     each story as the 13 bytes of `<|endoftext|>`, in GPT-2 and in a trained BPE
                     alike. The unscored first token of each window adds no bytes.
The same text has the same bytes in any byte-level tokenizer (up to which token starts each
window), so bits per byte compares models with different vocabularies; loss per token does not.
"""
import functools
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .config import COMPILE_AUTO_MIN_STEPS, EVAL_COMPILE_MIN_TOKENS
from .device import autocast, use_compile
from .progress import Progress

HEAD_ROWS = 1024  # positions whose logits (rows x V) are held at once
NO_TARGET = -100  # a padded position's target: F.cross_entropy's ignore_index, scored as 0


@dataclass
class EvalResult:
    targets: int  # tokens scored
    nats: float  # sum of -ln p(target)
    bytes: int  # UTF-8 bytes of the scored targets

    @property
    def loss(self) -> float:
        return self.nats / self.targets

    @property
    def perplexity(self) -> float:
        """exp(loss); infinite where that overflows a float."""
        try:
            return math.exp(self.loss)
        except OverflowError:
            return math.inf

    @property
    def bits_per_byte(self) -> float:
        return self.nats / math.log(2) / self.bytes

    def as_dict(self) -> dict:
        """The figures for JSON, which has no NaN or infinity: a figure that is not finite (a diverged
        model's) is None."""
        figures = {"loss": self.loss, "perplexity": self.perplexity, "bits_per_byte": self.bits_per_byte,
                   "nats": self.nats}
        return {**{k: v if math.isfinite(v) else None for k, v in figures.items()},
                "targets": self.targets, "bytes": self.bytes}


def windows(n_tokens: int, seq_len: int) -> list[tuple[int, int]]:
    """(start, end) of each window: full windows of seq_len + 1 tokens, then the tail if it has 2+."""
    span = seq_len + 1
    out = [(start, start + span) for start in range(0, n_tokens - span + 1, span)]
    tail = n_tokens % span
    if tail >= 2:
        out.append((n_tokens - tail, n_tokens))
    return out


def byte_lengths(tokenizer) -> torch.Tensor:
    """(V,) int64: the number of bytes each token id of `tokenizer` stands for."""
    return torch.tensor([len(tokenizer.token_bytes(i)) for i in range(tokenizer.vocab_size)], dtype=torch.int64)


@torch.no_grad()
def window_nats(model, x: torch.Tensor, y: torch.Tensor, precision: str) -> torch.Tensor:
    """Sum of -ln p(y) (fp64 scalar) for inputs x and targets y (B, T) on the model's device: the
    matrix products in `precision` (autocast), the softmax and each token's loss in fp32, their sum in fp64."""
    with autocast(x.device, precision):
        h = model.hidden(x)  # (B, T, C)
    h, y = h.reshape(-1, h.size(-1)), y.reshape(-1)  # (B*T, C), (B*T,)
    weight = model.head_weight()  # (V, C)
    total = torch.zeros((), dtype=torch.float64, device=x.device)
    for start in range(0, h.size(0), HEAD_ROWS):
        with autocast(x.device, precision):
            logits = F.linear(h[start : start + HEAD_ROWS], weight)  # (rows, V)
        losses = F.cross_entropy(logits.float(), y[start : start + HEAD_ROWS], reduction="none",
                                 ignore_index=NO_TARGET)  # (rows,), 0 where padded
        total += losses.double().sum()
    return total


def evaluate(model, tokens: np.ndarray, tokenizer, seq_len: int, batch_size: int, device: torch.device,
             precision: str = "fp32", rank: int = 0, world: int = 1, progress: bool = False, nats_function=None,
             stop=None) -> EvalResult | None:
    """Score `tokens` (N,) of `tokenizer` in the windows above, `batch_size` windows per forward pass
    through `nats_function` (window_nats by default; compiled_window_nats() compiles it), every batch
    padded to one shape (padded_batch). Under torchrun each rank scores every world-th batch; the
    result is this rank's share (sum them). `stop()`, called by every rank after each round of batches, ends the scoring early when it
    returns True: the result is then None. `progress`: a bar, or lines in a log (progress.Progress)."""
    was_training = model.training
    model.eval()
    batches = window_batches(windows(tokens.size, seq_len), batch_size)
    lengths = byte_lengths(tokenizer).numpy()
    nats = torch.zeros((), dtype=torch.float64, device=device)  # summed on the device, read once at the end
    targets = nbytes = 0
    score = nats_function or window_nats
    shown = Progress("eval", sum(b - a - 1 for batch in batches for a, b in batch), "tokens") if progress else None
    stopped = False
    for first in range(0, len(batches), world):
        if first + rank < len(batches):
            x, y = padded_batch(tokens, batches[first + rank], seq_len, batch_size)  # (B, T) each
            nats += score(model, torch.from_numpy(x).to(device), torch.from_numpy(y).to(device), precision)
            scored = y[y != NO_TARGET]
            targets += scored.size
            nbytes += int(lengths[scored].sum())
        if shown:
            shown.update(sum(b - a - 1 for batch in batches[first : first + world] for a, b in batch))
        if stop is not None and stop():
            stopped = True
            break
    model.train(was_training)
    if shown:
        shown.close()
    return None if stopped else EvalResult(targets, float(nats), nbytes)


def window_batches(spans: list[tuple[int, int]], batch_size: int) -> list[list[tuple[int, int]]]:
    """The windows in batches of batch_size (the last may hold fewer, the shorter tail window included)."""
    return [spans[i : i + batch_size] for i in range(0, len(spans), batch_size)]


def padded_batch(tokens: np.ndarray, batch: list[tuple[int, int]], seq_len: int,
                 batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Inputs x and targets y (batch_size, seq_len) int64 of the windows `batch`, always of that one
    shape (so a compiled scorer never recompiles): a shorter window, and the rows of a batch with
    fewer windows, are padded with input 0 and target NO_TARGET, which scores nothing."""
    rows = np.full((batch_size, seq_len + 1), NO_TARGET, dtype=np.int64)  # (B, T+1)
    for row, (a, b) in zip(rows, batch):
        row[: b - a] = tokens[a:b]
    return np.maximum(rows[:, :-1], 0), rows[:, 1:]


@functools.cache
def compiled_window_nats():
    """window_nats through torch.compile (compiled at its first call, for each model and shape)."""
    return torch.compile(window_nats)


def scoring_function(compile_flag: str, tokens_to_score: int, device: torch.device):
    """window_nats, compiled where --compile allows it (auto: for EVAL_COMPILE_MIN_TOKENS or more
    tokens in all, where compiling pays) and torch.compile can work here (device.use_compile)."""
    if compile_flag == "auto" and tokens_to_score < EVAL_COMPILE_MIN_TOKENS:
        compile_flag = "off"
    return compiled_window_nats() if use_compile(compile_flag, COMPILE_AUTO_MIN_STEPS, device) else window_nats


def prefix(tokens: np.ndarray, max_tokens: int, seq_len: int) -> np.ndarray:
    """The tokens scored with --max-tokens / --val-max-tokens N: the first N cut to whole windows of
    seq_len + 1 tokens, or every token (tail window included) when N is 0 or at least their number."""
    if not max_tokens or max_tokens >= tokens.size:
        return tokens
    return tokens[: max_tokens // (seq_len + 1) * (seq_len + 1)]


@torch.no_grad()
def val_loss(model, loader, val_batches: int | str, runtime, tokenizer, max_tokens: int = 0,
             nats_function=None, stop=None) -> tuple[float, float | None] | None:
    """./train's val loss and bits per byte (None unless whole-file), or None when `stop()` (called by
    every rank after each batch, or round of batches) ended it early: the mean over the first
    `val_batches` batches of `loader` (a TokenLoader; on every rank), or for "all" the file (its
    prefix(max_tokens)) in windows of loader.T + 1 tokens, scored as `tinystories eval` does, over all
    ranks, with `nats_function` (window_nats by default)."""
    dist = runtime.dist
    if val_batches == "all":
        share = evaluate(model, prefix(loader.tokens, max_tokens, loader.T), tokenizer, loader.T, loader.B,
                         runtime.device, runtime.precision, dist.rank, dist.world, nats_function=nats_function,
                         stop=stop)
        if share is None:
            return None
        sums = torch.tensor([share.nats, share.targets, share.bytes], dtype=torch.float64, device=runtime.device)
        nats, targets, nbytes = dist.sum(sums).tolist()
        return nats / targets, nats / math.log(2) / nbytes
    loader.position = 0
    model.eval()
    total = torch.zeros((), device=runtime.device)
    batches = min(val_batches, loader.batches_per_epoch())
    for _ in range(batches):
        x, y = runtime.to_device(loader.next_batch())
        with autocast(runtime.device, runtime.precision):
            total += model(x, y).float()
        if stop is not None and stop():
            model.train()
            return None
    model.train()
    return dist.mean(total / batches).item(), None


def main(args) -> None:
    """`tinystories eval`: score a model file or checkpoint over a whole token file and print the figures."""
    import json

    from .errors import BadInput
    from .formats import read_token_header, read_tokens
    from .model import read_gpt
    from .runtime import inference_runtime
    from .tokenizer import describe, for_model

    model, model_file = read_gpt(args.model)
    tokenizer = for_model(args.model, args.tokenizer, model_file)
    config = model_file.config
    seq_len = args.seq_len or config.block_size
    if seq_len > config.block_size:
        raise BadInput(f"-t/--seq-len {seq_len} exceeds the model's block size {config.block_size} ({args.model})")
    made_by = read_token_header(args.tokens).tokenizer
    if made_by != tokenizer.record:
        raise BadInput(f"{args.tokens}: made by {describe(made_by)}, but {args.model} is made for {describe(tokenizer.record)}")
    tokens = read_tokens(args.tokens, config.vocab_size)
    if tokens.size < 2:
        raise BadInput(f"{args.tokens}: {tokens.size} token, at least 2 are needed to score one")
    tokens = prefix(tokens, args.max_tokens, seq_len)
    if tokens.size < 2:
        raise BadInput(f"--max-tokens {args.max_tokens}: less than one window of -t + 1 = {seq_len + 1} tokens")
    runtime = inference_runtime(args.device, args.precision)
    device, precision = runtime.device, runtime.precision
    model.to(device)
    nats_function = scoring_function(args.compile, tokens.size, device)
    compiled = nats_function is not window_nats
    result = evaluate(model, tokens, tokenizer, seq_len, args.batch_size, device, precision, progress=not args.json,
                      nats_function=nats_function)
    if args.json:
        print(json.dumps(dict(result.as_dict(), model=args.model, tokens_file=args.tokens, tokenizer=tokenizer.name,
                              seq_len=seq_len, precision=precision, compiled=compiled),
                         allow_nan=False))
        return
    print(f"{args.model} on {args.tokens}: {result.targets:,} tokens scored ({result.bytes:,} bytes), "
          f"windows of {seq_len + 1} tokens, {precision}{', compiled' if compiled else ''}, "
          f"{tokenizer.name}")
    if not math.isfinite(result.loss):
        print(f"loss {result.loss}: not finite, the model's predictions overflow (as after a diverged run)")
        return
    print(f"loss {result.loss:.6f} | perplexity {result.perplexity:.4f} | bits per byte {result.bits_per_byte:.6f}")

"""Sample a story from a trained model: KV-cached decoding with temperature, top-k and top-p.

A story starts after the tokenizer's end-of-text token (EOT), the way every story in the training
data does, and ends at the next EOT. The tokenizer is the one the model is made for
(tokenizer.for_model: GPT-2's, or the trained BPE a checkpoint carries). Sampling runs on the CPU
with a CPU `torch.Generator`, so a seed names the same story whatever device computes the logits
(up to rounding in those logits).

Length: the EOT, the prompt and the new tokens but the last must fit the model's block size, so
-n may be at most block size minus the prompt's tokens. More is an error, not a silent clamp.
"""
import codecs
import os
import secrets
import sys
from collections.abc import Iterable, Iterator

import torch

from .config import GenerateConfig
from .device import AUTOCAST_DTYPES
from .errors import BadInput
from .model import GPT, KVCache, read_gpt
from .runtime import inference_runtime
from .tokenizer import Tokenizer, for_model


class NonFiniteLogits(ArithmeticError):
    """The model computed NaN or infinite logits: its weights cannot make a story."""


def sample_next(logits: torch.Tensor, generator: torch.Generator, temperature: float = 1.0,
                top_k: int = 0, top_p: float = 1.0) -> int:
    """The next token id drawn from logits (V,).

    temperature 0 takes the most likely token, and so does a temperature so small that the logits
    divided by it overflow (the limit as it goes to 0); otherwise the logits are divided by the
    temperature, top_k > 0 keeps the k most likely tokens, and top_p < 1 keeps the smallest set of
    most likely tokens whose probabilities sum to at least top_p. `generator` is a CPU generator.
    NonFiniteLogits when the logits themselves hold NaN or infinity."""
    logits = logits.detach().float().cpu()  # (V,)
    if not torch.isfinite(logits).all():
        raise NonFiniteLogits
    scaled = logits / temperature  # (V,); temperature 0 gives infinities too
    if not torch.isfinite(scaled).all():
        return int(torch.argmax(logits))
    logits = scaled
    if 0 < top_k < logits.numel():
        kth_largest = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth_largest, float("-inf"))
    probs = torch.softmax(logits, dim=0)  # (V,)
    if top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)  # (V,), (V,)
        mass_before = torch.cumsum(sorted_probs, dim=0) - sorted_probs  # the top token always stays
        sorted_probs[mass_before >= top_p] = 0.0
        probs = torch.zeros_like(probs).scatter(0, order, sorted_probs)
    return int(torch.multinomial(probs, 1, generator=generator))


@torch.no_grad()
def stream_tokens(model: GPT, prompt_ids: list[int], max_new_tokens: int, generator: torch.Generator, eot: int,
                  temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> Iterator[int]:
    """Yield up to max_new_tokens sampled ids after prompt_ids, stopping before an `eot`.

    The prompt fills the KV cache in one forward pass; each new token then costs one position.
    The last id is never fed back, so len(prompt_ids) + max_new_tokens - 1 positions must fit the
    block size. Run it outside autocast: the cache holds keys and values in the weights' dtype."""
    weight = model.wte.weight
    cache = KVCache(model.config, batch=1, device=weight.device, dtype=weight.dtype)
    idx = torch.tensor([prompt_ids], device=weight.device)  # (1, P)
    for _ in range(max_new_tokens):
        token = sample_next(model.next_logits(idx, cache)[0], generator, temperature, top_k, top_p)
        if token == eot:
            return
        yield token
        idx = torch.tensor([[token]], device=weight.device)  # (1, 1)


def generate_tokens(model: GPT, prompt_ids: list[int], max_new_tokens: int, generator: torch.Generator, eot: int,
                    temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> list[int]:
    """The ids sampled after prompt_ids (without the prompt, and without the EOT that ends them)."""
    return list(stream_tokens(model, prompt_ids, max_new_tokens, generator, eot, temperature, top_k, top_p))


def sample_story(model: GPT, tokenizer: Tokenizer, seed: int, max_tokens: int) -> str:
    """A story sampled at temperature 1 after an EOT (what ./train prints every -s steps), at most
    max_tokens tokens (and the block size) long."""
    generator = torch.Generator().manual_seed(seed)
    was_training = model.training
    model.eval()
    ids = generate_tokens(model, [tokenizer.eot], min(max_tokens, model.config.block_size), generator, tokenizer.eot)
    model.train(was_training)
    return tokenizer.decode(ids)


def text_pieces(tokenizer: Tokenizer, token_ids: Iterable[int]) -> Iterator[str]:
    """Decode ids to text piece by piece as they arrive. A character whose UTF-8 bytes span several
    tokens comes out whole once its last byte arrives; the pieces join to tokenizer.decode(ids)."""
    utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
    for token in token_ids:
        yield utf8.decode(tokenizer.token_bytes(token))
    yield utf8.decode(b"", final=True)


def load_model(path: str, device: torch.device, dtype: torch.dtype = torch.float32,
               tokenizer_path: str | None = None) -> tuple[GPT, Tokenizer]:
    """A model or checkpoint file (its training state is ignored), ready for sampling in `dtype`, and
    the tokenizer it is made for (tokenizer.for_model; `tokenizer_path` is --tokenizer)."""
    if not os.path.exists(path):
        raise BadInput(f"{path}: model file not found (write one with create_model.py or ./train -c; choose it with -e)")
    model, model_file = read_gpt(path)
    tokenizer = for_model(path, tokenizer_path, model_file)
    return model.to(device=device, dtype=dtype).eval(), tokenizer


def as_text(argument: str) -> str:
    """A command-line argument as text that every tokenizer encodes: its bytes that are not UTF-8 (which
    Python gives as lone surrogates) become U+FFFD, as tiktoken does for GPT-2."""
    try:
        raw = argument.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate that stands for no byte (a caller's string, not argv)
        raw = argument.encode("utf-8", "surrogatepass")
    return raw.decode("utf-8", "replace")


def main(cfg: GenerateConfig) -> None:
    """./generate: print the prompt and the story that follows it, token by token."""
    runtime = inference_runtime(cfg.device, cfg.precision)
    device, precision = runtime.device, runtime.precision
    model, tokenizer = load_model(cfg.model, device, AUTOCAST_DTYPES.get(precision, torch.float32), cfg.tokenizer)
    prompt = as_text(cfg.prompt)
    prompt_ids = [tokenizer.eot] + tokenizer.encode(prompt)
    room = model.config.block_size - (len(prompt_ids) - 1)  # the last new token needs no position
    if room < 1:
        raise BadInput(f"-p/--prompt: {len(prompt_ids) - 1} tokens leave no room in the model's block size "
                       f"of {model.config.block_size}")
    if cfg.tokens > room:
        raise BadInput(f"-n/--tokens: {cfg.tokens} tokens after a {len(prompt_ids) - 1}-token prompt exceed "
                       f"the model's block size of {model.config.block_size}; use -n {room} or less")
    seed = cfg.seed
    if seed is None:
        seed = secrets.randbelow(2**31)
        print(f"seed: {seed}", file=sys.stderr)
    generator = torch.Generator().manual_seed(seed)
    sys.stdout.write(prompt)
    new_ids = stream_tokens(model, prompt_ids, cfg.tokens, generator, tokenizer.eot, cfg.temperature, cfg.top_k, cfg.top_p)
    try:
        for piece in text_pieces(tokenizer, new_ids):
            sys.stdout.write(piece)
            sys.stdout.flush()
    except NonFiniteLogits:
        in_precision = "" if precision == "fp32" else f" in {precision} (try --precision fp32)"
        raise BadInput(f"{cfg.model}: the model computes NaN or infinite logits{in_precision}: its weights are "
                       f"unusable (too large, as after a diverged run)") from None
    sys.stdout.write("\n")

"""Tokens per second of story generation with the KV cache (generate.generate_tokens) against the
baseline that recomputes the whole sequence for every new token, in one run. Both draw the same
tokens from the same seed (checked), so they do the same work apart from the cache. A third row is
./generate's default on CPUs with native bf16: the KV cache with the weights and cache in bf16 (its
tokens differ slightly, by rounding).

    .venv/bin/python bench/bench_generate.py [--model model.bin] [--tokens 256] [--repeats 3] [--threads N]

Without --model, a randomly initialised default model (4 layers, 4 heads, 128 channels, block 256).
Sampling is plain (temperature 1, no top-k or top-p), as ./generate's defaults. The two run in
interleaved rounds, so a slowdown of the machine hits both alike; the figure is the best round
(the least disturbed by other load).
"""
import argparse
import functools

import torch
import torch.nn.functional as F

from tinystories.config import GPTConfig
from tinystories.generate import generate_tokens, sample_next
from tinystories.model import GPT, read_gpt
from tinystories.tokenizer import EOT

from common import best_of_rounds


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="llm.c model file (default: random default-size model)")
    parser.add_argument("--tokens", type=int, default=256, help="new tokens after the EOT that starts a story")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    return parser.parse_args()


@torch.no_grad()
def generate_without_cache(model: GPT, prompt_ids: list[int], max_new_tokens: int, generator, eot: int) -> list[int]:
    """The baseline: every step runs the whole sequence so far, then scores only its last position."""
    ids = list(prompt_ids)
    for _ in range(max_new_tokens):
        last = model.hidden(torch.tensor([ids]))[0, -1]  # (C,)
        token = sample_next(F.linear(last, model.head_weight()), generator)
        if token == eot:
            break
        ids.append(token)
    return ids[len(prompt_ids) :]


def story(generate, model: GPT, n: int, seed: int) -> list[int]:
    """The tokens `generate` draws after an EOT from `seed`."""
    return generate(model, [EOT], n, torch.Generator().manual_seed(seed), EOT)


def main():
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.model:
        model, _ = read_gpt(args.model)
    else:
        model = GPT(GPTConfig())
        model.init_weights(seed=1337)
    model.eval()
    bf16_model = GPT(model.config).to(torch.bfloat16).eval()
    bf16_model.load_state_dict(model.state_dict())
    ways = {"KV cache": (generate_tokens, model), "full recompute": (generate_without_cache, model),
            "KV cache, bf16": (generate_tokens, bf16_model)}
    for generate, weights in ways.values():  # warm-up
        generate(weights, [EOT], 8, torch.Generator().manual_seed(0), EOT)
    runs = {name: functools.partial(story, generate, weights, args.tokens, args.seed)
            for name, (generate, weights) in ways.items()}
    timings = best_of_rounds(runs, args.repeats)
    seconds = {name: timing.best for name, timing in timings.items()}
    stories = {name: timing.result for name, timing in timings.items()}
    assert stories["KV cache"] == stories["full recompute"], "the two ways drew different tokens"
    n = len(stories["KV cache"])
    c = model.config
    print(f"{c.n_layer}L {c.n_head}H {c.n_embd}C block {c.block_size}: {n} tokens after EOT, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, best of {args.repeats}")
    for name, best in seconds.items():
        count = len(stories[name])
        print(f"{name:<15} {count / best:8.1f} tokens/s   ({count} tokens in {best:.2f} s)")
    print(f"KV cache speed-up: {seconds['full recompute'] / seconds['KV cache']:.2f}x; "
          f"bf16 KV cache over fp32 recompute: "
          f"{(len(stories['KV cache, bf16']) / seconds['KV cache, bf16']) / (n / seconds['full recompute']):.2f}x")


if __name__ == "__main__":
    main()

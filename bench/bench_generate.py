"""Tokens per second of story generation with the KV cache (generate.generate_tokens) against the
baseline that recomputes the whole sequence for every new token, in one run. Both draw the same
tokens from the same seed (checked), so they do the same work apart from the cache. A third row is
./generate's default on CPUs with native bf16: the KV cache with the weights and cache in bf16 (its
tokens differ slightly, by rounding).

    .venv/bin/python bench/bench_generate.py [--model model.bin] [--tokens 256] [--repeats 3] [--threads N]
    .venv/bin/python bench/bench_generate.py --gguf    # and llama.cpp on the model's GGUF files (make llama)

Without --model, a randomly initialised default model (4 layers, 4 heads, 128 channels, block 256).
Sampling is plain (temperature 1, no top-k or top-p), as ./generate's defaults. The two run in
interleaved rounds, so a slowdown of the machine hits both alike; the figure is the best round
(the least disturbed by other load).

With --gguf, the model is also exported as GGUF (export --gguf, each weight type of GGUF_TYPES) and run
in llama.cpp through llama-cpp-python (`make llama`), in the same rounds: Llama.generate from the EOT,
temperature 1 with its other samplers off, on as many threads as torch uses. Its rows are the tokens
per second of that Python loop around llama.cpp (one llama_decode per token), and each file's size.
"""
import argparse
import functools
import os
import shutil
import tempfile

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
    parser.add_argument("--gguf", action="store_true", help="also llama.cpp on GGUF exports of the model")
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


def llama_cpp_runs(model: GPT, n: int, seed: int, threads: int, folder: str) -> dict:
    """name -> a function drawing n tokens after the EOT in llama.cpp, for each GGUF weight type; and
    prints each file's size."""
    from llama_cpp import Llama

    from tinystories import formats, llmc
    from tinystories.config import GGUF_TYPES
    from tinystories.gguf_file import export_gguf
    from tinystories.tokenizer import gpt2

    model_path = os.path.join(folder, "model.bin")
    formats.write_model(model_path, model.config, llmc.model_params(model))
    runs = {}
    for weight_type in GGUF_TYPES:
        path = os.path.join(folder, f"model-{weight_type}.gguf")
        size = export_gguf(model_path, path, gpt2(), weight_type)
        print(f"GGUF {weight_type}: {size:,} bytes")
        llm = Llama(model_path=path, n_ctx=model.config.block_size, n_threads=threads, seed=seed, verbose=False)
        runs[f"llama.cpp {weight_type}"] = functools.partial(llama_story, llm, n)
    return runs


def llama_story(llm, n: int) -> list[int]:
    out = []
    for token in llm.generate([EOT], temp=1.0, top_k=0, top_p=1.0, min_p=0.0, repeat_penalty=1.0):
        if token == EOT:
            break
        out.append(token)
        if len(out) == n:  # before llama.cpp feeds it back: the last id needs no position
            break
    return out


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
    if args.gguf:
        folder = tempfile.mkdtemp(prefix="bench_generate.")
        llama_runs = llama_cpp_runs(model, args.tokens, args.seed, torch.get_num_threads(), folder)
        for run in llama_runs.values():  # warm-up
            run()
        runs.update(llama_runs)
    timings = best_of_rounds(runs, args.repeats)
    if args.gguf:
        shutil.rmtree(folder)
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

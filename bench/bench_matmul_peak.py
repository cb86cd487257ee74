"""The CPU's fp32 matrix-product peak as torch reaches it, and the floor it implies for one training
step of the default model: the step's matrix FLOPs divided by that peak.

    .venv/bin/python bench/bench_matmul_peak.py [--size 2048] [--repeats 10] [--batch 4] [--seq 256]

The peak is the best of `repeats` (size x size) @ (size x size) fp32 products with torch.mm on all
intra-op threads. The step's FLOPs are GPTConfig.flops_per_token's (6 N + 12 L T C per token,
the output head counted at V = 50257 rows, not the padding) times B x T; the output head's share is
6 x V x C per token.
"""
import argparse
import os

import torch

from tinystories.config import GPTConfig

from common import matmul_peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=256)
    args = parser.parse_args()
    n = args.size
    peak = matmul_peak(n, torch.device("cpu"), torch.float32, rounds=args.repeats)  # one warm-up product
    best = 2 * n ** 3 / peak
    config, tokens = GPTConfig(), args.batch * args.seq
    head, total = 6 * config.vocab_size * config.n_embd * tokens, config.flops_per_token(args.seq) * tokens
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, cpu capability "
          f"{torch.backends.cpu.get_cpu_capability()}, load average {os.getloadavg()[0]:.1f}")
    print(f"fp32 {n}^3 matmul: {best * 1e3:.1f} ms, {peak / 1e9:.1f} GFLOP/s (best of {args.repeats})")
    print(f"default model, B={args.batch} T={args.seq}: {total / 1e9:.1f} GFLOP per step "
          f"({head / 1e9:.1f} in the output head); floor at this peak {total / peak * 1e3:.0f} ms/step")


if __name__ == "__main__":
    main()

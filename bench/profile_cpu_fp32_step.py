"""Where the CPU fp32 training step's time goes, beyond bench_cpu_train.py's totals: the figures behind
BENCHMARKS.md's "CPU training on an AVX2-only CPU".

    .venv/bin/python bench/profile_cpu_fp32_step.py [--steps 10] [--rounds 4]

1. Page faults and system time per step (getrusage over 5 steps after 4 warm-up steps): the plain
   eager fp32 baseline, which allocates its (1024, 50257) logits afresh, against `./train`'s fp32 step.
2. The output layer's share of `./train`'s compiled fp32 step: the step as it is, against the same step
   with the tiled output layer replaced by a stub that returns the results of its first call (so
   the rest of the step, the backward through the head's gradients included, is unchanged). Rounds
   alternate; each figure is the best round.
3. Causal attention alone, forward + backward, for the 4 layers of the default model at B=4, T=256:
   SDPA's CPU flash kernel (what the model uses), SDPA's math backend, and a hand-written attention
   (scores, masked softmax, weighted sum) eager and compiled.
4. The model's GELU (tanh form) on a (4, 256, 512) activation, forward + backward, compiled with
   inductor's defaults and with cpp.use_decompose_tanh (the option `./train` compiles CPU fp32 with).
Uses real TinyStories text from ../shared/data, as bench_cpu_train.py does.
"""
import argparse
import resource
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from tinystories.device import compile_options
from tinystories.kernels import fused_ce

from bench_cpu_train import Baseline, Project, bench_tokens, our_model
from common import best_of_rounds

_first_results = {}


@torch.library.custom_op("bench::stub_tiled_head", mutates_args=(), device_types="cpu")
def stub_tiled_head(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, with_grads: bool,
                    vocab_tile: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """tinystories::tiled_head's results of its first call, returned again without computing them."""
    if with_grads not in _first_results:
        _first_results[with_grads] = torch.ops.tinystories.tiled_head(h, weight, targets, with_grads, vocab_tile)
    loss_sum, grad_h, grad_w = _first_results[with_grads]
    return loss_sum.clone(), grad_h.clone(), grad_w  # grad_w is only read downstream


@stub_tiled_head.register_fake
def _(h, weight, targets, with_grads, vocab_tile):
    shapes = (h.shape, weight.shape) if with_grads else ((0,), (0,))
    return h.new_empty(()), h.new_empty(shapes[0]), h.new_empty(shapes[1])


def stub_loss_and_grads(h, weight, targets, with_grads: bool, vocab_tile: int = fused_ce.VOCAB_TILE):
    loss_sum, grad_h, grad_w = torch.ops.bench.stub_tiled_head(h, weight, targets, with_grads, vocab_tile)
    return loss_sum, torch.tensor(h.size(0)), grad_h if with_grads else None, grad_w if with_grads else None


class StubbedHead(Project):
    """`./train`'s step with the output layer's computation stubbed out."""

    def step(self) -> float:
        real, fused_ce.tiled_loss_and_grads = fused_ce.tiled_loss_and_grads, stub_loss_and_grads
        try:
            return super().step()
        finally:
            fused_ce.tiled_loss_and_grads = real


def faults_per_step(variant, steps: int = 5) -> tuple[float, float, float]:
    """(ms per step, minor page faults per step, system seconds per step)."""
    for _ in range(4):
        variant.step()
    before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for _ in range(steps):
        variant.step()
    after = resource.getrusage(resource.RUSAGE_SELF)
    return ((time.perf_counter() - start) / steps * 1e3, (after.ru_minflt - before.ru_minflt) / steps,
            (after.ru_stime - before.ru_stime) / steps)


def attention_variants(B=4, H=4, T=256, D=32):
    """name -> a function running one layer's causal attention forward and backward."""
    q, k, v = (torch.randn(B, H, T, D, requires_grad=True) for _ in range(3))
    mask = torch.ones(T, T, dtype=torch.bool).tril()

    def flash():
        F.scaled_dot_product_attention(q, k, v, is_causal=True).sum().backward()

    def math_backend():
        with sdpa_kernel(SDPBackend.MATH):
            F.scaled_dot_product_attention(q, k, v, is_causal=True).sum().backward()

    def hand_written():
        scores = (q @ k.transpose(-2, -1)) * D ** -0.5  # (B, H, T, T)
        (scores.masked_fill(~mask, float("-inf")).softmax(-1) @ v).sum().backward()

    return {"SDPA flash (the model's)": flash, "SDPA math backend": math_backend,
            "hand-written, eager": hand_written, "hand-written, compiled": torch.compile(hand_written)}


def gelu_variants():
    """name -> a function running the GELU forward and backward of one block, compiled two ways."""
    x = torch.randn(4, 256, 512, requires_grad=True)

    def gelu():
        F.gelu(x, approximate="tanh").sum().backward()

    tanh_through_exp = compile_options(torch.device("cpu"), "fp32")
    return {"inductor defaults": torch.compile(gelu),
            f"{tanh_through_exp}": torch.compile(gelu, options=tanh_through_exp)}


def best_ms(run, calls: int, rounds: int = 3) -> float:
    """ms per call of `run`: the best of `rounds` rounds of `calls` calls, after 3 of warm-up."""
    return best_of_rounds(run, rounds, calls, warmup=3).best * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=10, help="timed steps per variant per round (part 2)")
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    train_path = bench_tokens()

    print("1. page faults per step")
    for name, variant in (("baseline (eager fp32)", Baseline(our_model(), train_path)),
                          ("./train fp32, compiled", Project(train_path, "fp32", "on"))):
        ms, faults, system = faults_per_step(variant)
        print(f"   {name:24s} {ms:7.0f} ms/step, {faults:9,.0f} minor faults/step, {system:.3f} s system/step")

    print("2. the output layer's share of ./train's compiled fp32 step (best round, ms/step)")
    variants = {"whole step": Project(train_path, "fp32", "on"),
                "output layer stubbed": StubbedHead(train_path, "fp32", "on")}
    timings = best_of_rounds({name: variant.step for name, variant in variants.items()}, args.rounds, args.steps,
                             warmup=3)
    best = {name: timing.best * 1e3 for name, timing in timings.items()}
    for name, ms in best.items():
        print(f"   {name:24s} {ms:7.1f}")
    print(f"   {'output layer':24s} {best['whole step'] - best['output layer stubbed']:7.1f}")

    print("3. causal attention, forward + backward, 4 layers (B=4, H=4, T=256, head 32; best of 3 x 20 calls)")
    for name, run in attention_variants().items():
        print(f"   {name:24s} {4 * best_ms(run, 20):7.1f} ms")

    print("4. GELU (tanh), forward + backward, 4 layers (B=4, T=256, 512 channels; best of 3 x 50 calls), compiled")
    for name, run in gelu_variants().items():
        print(f"   {name:36s} {4 * best_ms(run, 50):7.2f} ms")


if __name__ == "__main__":
    main()

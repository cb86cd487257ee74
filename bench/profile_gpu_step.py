"""Where a GPU training step's time goes: the project's training step (step.TrainStep, as the trainer
runs it: bf16 + Triton head + fused AdamW) at the original's B=32, T=256, profiled with torch.profiler.

    python bench/profile_gpu_step.py [--tokens FILE] [--batch 32] [--seq 256] [--steps 20] [--rows 20]

For the eager step and the CUDA-graph step it prints the wall time per step (timed without the
profiler) and the GPU kernels' summed time per step (the GPU's busy time: wall minus busy is time the
GPU waits for the host); for the graphed step, the kernels with the most GPU time. Then the floor:
the step's FLOPs over the measured bf16 matmul peak, and the output layer's unavoidable memory
traffic (its bf16 logits written once and read once) over the measured copy bandwidth; the floor is
the larger of the two.
"""
import argparse
import sys
import tempfile

import torch
from torch.profiler import ProfilerActivity, profile

from bench_gpu_train import FULL, Variant, bf16_peak, head_losses, random_tokens, trainer_step
from common import best_of_rounds, synchronize


def copy_bandwidth(device: torch.device, gib: float = 1.0, repeats: int = 10) -> float:
    """Bytes per second moved (read + written) by a device-to-device copy of `gib` GiB."""
    src = torch.empty(int(gib * 2**30), dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    seconds = best_of_rounds(lambda: dst.copy_(src), rounds=1, calls=repeats, warmup=1, device=device).best
    return 2 * src.numel() / seconds


def kernel_times(step, steps: int, device: torch.device) -> dict[str, tuple[float, int]]:
    """name -> (GPU microseconds per step, launches per step) over `steps` profiled steps."""
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            step()
        synchronize(device)
    kernels = {}
    for event in prof.key_averages():
        if event.device_type == torch.autograd.DeviceType.CUDA and event.self_device_time_total > 0:
            kernels[event.key] = (event.self_device_time_total / steps, event.count / steps)
    return kernels


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokens", help="llm.c token file (default: random Zipf tokens)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--rows", type=int, default=20, help="kernels listed")
    args = p.parse_args()
    if not torch.cuda.is_available():
        sys.exit("profile_gpu_step.py: needs CUDA")
    device, config, batch = torch.device("cuda"), FULL.small, (args.batch, args.seq)
    heads = head_losses()
    with tempfile.TemporaryDirectory() as folder:
        tokens = args.tokens or f"{folder}/tokens.bin"
        if not args.tokens:
            random_tokens(tokens, 4_000_000, config.vocab_size)
        for graphs in (False, True):
            variant = Variant(f"trainer, triton head{', CUDA graph' if graphs else ''}", "bf16", "triton",
                              step="trainer", cuda_graphs=graphs)
            step = trainer_step(variant, config, heads, tokens, batch, device)
            # 10 steps of warm-up (and the graph's capture), then the mean of --steps
            ms = best_of_rounds(step, rounds=1, calls=args.steps, warmup=10, device=device).best * 1000
            kernels = kernel_times(step, args.steps, device)
            busy_ms = sum(us for us, _ in kernels.values()) / 1000
            launches = sum(n for _, n in kernels.values())
            print(f"\n{variant.name}: {ms:.3f} ms/step wall ({batch[0] * batch[1] / ms * 1000:,.0f} tokens/s), "
                  f"GPU kernels {busy_ms:.3f} ms/step in {launches:.0f} launches ({busy_ms / ms:.0%} busy)")
        print(f"\ntop {args.rows} kernels of the graphed step (GPU us/step, launches/step, share of kernel time):")
        for name, (us, n) in sorted(kernels.items(), key=lambda kv: -kv[1][0])[: args.rows]:
            print(f"  {us:9.1f} us {n:5.1f}x {us / 1000 / busy_ms:6.1%}  {name[:110]}")
    peak = bf16_peak(8192, device)
    bandwidth = copy_bandwidth(device)
    tokens_per_step = batch[0] * batch[1]
    flop_ms = config.flops_per_token(args.seq) * tokens_per_step / peak * 1000
    logits_bytes = tokens_per_step * config.vocab_size * 2  # bf16 logits of one step
    memory_ms = 2 * logits_bytes / bandwidth * 1000  # written once, read once
    floor_ms = max(flop_ms, memory_ms)  # the matmuls' math and the logits' traffic could overlap at best
    print(f"\nfloor: {config.flops_per_token(args.seq) * tokens_per_step / 1e12:.3f} TFLOP/step at "
          f"{peak / 1e12:.0f} TFLOP/s (8192^3 bf16 matmul) = {flop_ms:.3f} ms; bf16 logits "
          f"{logits_bytes / 1e9:.2f} GB written + read at {bandwidth / 1e12:.2f} TB/s (copy) = {memory_ms:.3f} ms; "
          f"floor (the larger) {floor_ms:.3f} ms/step = {tokens_per_step / floor_ms * 1000:,.0f} tokens/s")


if __name__ == "__main__":
    main()

"""Where one training step's time goes: torch.profiler over full steps (forward, backward, AdamW)
of the default model on CPU, built straight from tinystories.model.GPT and torch.optim.AdamW.

    .venv/bin/python bench/profile_train_step.py [--batch 4] [--seq 256] [--steps 3]
                                                 [--fused] [--bf16] [--rows 25]

Prints the mean step time, the wall time of the model's phases (embedding + blocks, output layer +
loss, backward, optimizer) marked with record_function, and the operators with the most self time (the
profiler's self CPU time: wall time on the calling thread outside child operators, whatever the
number of intra-op threads), as a share of the step; and the share of the operators that read or
write a tensor with a vocabulary-sized dimension (V or Vp: the output layer, its loss, the
embedding's gradient and the optimizer's update of wte, where the optimizer is not foreach). The data are random token ids: the time
of a step does not depend on which tokens it sees.
"""
import argparse
import os
import time

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from tinystories.config import GPTConfig
from tinystories.kernels.fused_ce import fused_head_loss
from tinystories.model import GPT, plain_head_loss

PHASES = ("1 blocks forward", "2 head + loss forward", "3 backward", "4 optimizer")


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--steps", type=int, default=3, help="profiled steps, after one warm-up step")
    parser.add_argument("--fused", action="store_true", help="the model's head loss: fused_head_loss (default: "
                        "plain_head_loss)")
    parser.add_argument("--bf16", action="store_true", help="forward under bf16 autocast")
    parser.add_argument("--rows", type=int, default=25, help="operators listed")
    return parser.parse_args()


def train_step(model, optimizer, idx, targets, bf16):
    """One AdamW step on the batch idx, targets (B, T), with each phase marked for the profiler."""
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        with record_function(PHASES[0]):
            x = model.hidden(idx)  # (B, T, C)
        with record_function(PHASES[1]):
            loss = model.head_loss(x.view(-1, x.size(-1)), model.head_weight(), targets.view(-1))
    with record_function(PHASES[2]):
        loss.backward()
    with record_function(PHASES[3]):
        optimizer.step()
    return loss


def touches(shapes, sizes) -> bool:
    """Whether any dimension in the (nested lists of) input shapes is one of sizes."""
    if isinstance(shapes, (list, tuple)):
        return any(touches(s, sizes) for s in shapes)
    return shapes in sizes


def main():
    args = parse_args()
    print("load average before: %.2f %.2f %.2f" % os.getloadavg())
    config = GPTConfig()
    model = GPT(config, fused_head_loss if args.fused else plain_head_loss)
    model.init_weights(seed=0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0)
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, config.vocab_size, (args.batch, args.seq), generator=g)  # (B, T)
    targets = torch.randint(0, config.vocab_size, (args.batch, args.seq), generator=g)  # (B, T)
    train_step(model, optimizer, idx, targets, args.bf16)  # warm-up: allocations, optimizer state

    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(args.steps):
            train_step(model, optimizer, idx, targets, args.bf16)
    step_ms = (time.perf_counter() - start) / args.steps * 1e3
    print(f"B={args.batch} T={args.seq} fused={args.fused} bf16={args.bf16}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads: {step_ms:.1f} ms per step (profiled, mean of {args.steps})")

    events = prof.key_averages()
    phases = [e for e in events if e.key in PHASES]
    print("\nphase                      wall ms/step   % of step")
    for e in sorted(phases, key=lambda e: e.key):
        ms = e.cpu_time_total / 1e3 / args.steps
        print(f"{e.key:<26} {ms:12.1f} {100 * ms / step_ms:10.1f}%")
    ops = [e for e in events if e.key not in PHASES]
    print(f"\n{'operator (self time)':<40} {'ms/step':>8} {'% of step':>10} {'calls/step':>11}")
    for e in sorted(ops, key=lambda e: e.self_cpu_time_total, reverse=True)[: args.rows]:
        ms = e.self_cpu_time_total / 1e3 / args.steps
        print(f"{e.key:<40} {ms:8.1f} {100 * ms / step_ms:9.1f}% {e.count / args.steps:11.1f}")
    vocab_sizes = {config.vocab_size, config.padded_vocab_size}
    vocab_ms = sum(e.self_cpu_time_total for e in prof.key_averages(group_by_input_shape=True)
                   if e.key not in PHASES and touches(e.input_shapes, vocab_sizes)) / 1e3 / args.steps
    print(f"\noperators on a vocabulary-sized tensor: {vocab_ms:.1f} ms/step, {100 * vocab_ms / step_ms:.1f}% of the step")
    print("load average after: %.2f %.2f %.2f" % os.getloadavg())


if __name__ == "__main__":
    main()

"""CPU training speed: the project's default training step against a plain eager fp32 PyTorch step.

Both train the default model (4 layers, 4 heads, 128 channels, vocab 50257) at B=4, T=256 from the
same initialisation on the same real TinyStories tokens (../shared/data), in one process:
  baseline  GPT + plain_head_loss (full fp32 logits, F.cross_entropy) + AdamW (foreach), no autocast
  project   tinystories.train.Trainer.train_step with the default flags (whatever --help says is
            the default: precision auto, head loss auto, compile auto = on for this run of one epoch),
            data loading included
  project --compile off   the same without torch.compile, to show what compiling adds
Steady state: warm-up steps are not timed. Rounds alternate between the variants so a change in
machine load hits both. Prints tokens/s of each and the ratio.

With --parity-steps N it also trains N steps of each (fp32 baseline and project default) and prints
the final losses (mean of the last 10 steps) and their relative difference.

    .venv/bin/python bench/bench_cpu_train.py [--steps 10] [--rounds 3] [--parity-steps 200]
"""
import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tinystories import formats, llmc, tokenizer  # noqa: E402
from tinystories.config import GPTConfig, TrainConfig  # noqa: E402
from tinystories.loader import TokenLoader  # noqa: E402
from tinystories.model import GPT  # noqa: E402
from tinystories.train import Trainer  # noqa: E402

B, T, LR = 4, 256, 1e-3


def real_tokens(folder: Path) -> tuple[Path, Path]:
    text = (ROOT.parent / "shared" / "data" / "tinystories_v1_train_head.txt").read_text(encoding="utf-8")
    ids = []
    for story in (s.strip() for s in text.split("<|endoftext|>")):
        if story:
            ids += [tokenizer.EOT] + tokenizer.encode(story)
    ids = np.array(ids, dtype=np.uint16)
    formats.write_tokens(folder / "train.bin", ids)
    formats.write_tokens(folder / "val.bin", ids[: 20 * B * T + 1])
    return folder / "train.bin", folder / "val.bin"


class Baseline:
    """The plain eager fp32 step: what a first PyTorch port of the C trainer does."""

    def __init__(self, model_path: Path, train_path: Path):
        model_file = formats.read_model(model_path)
        self.model = llmc.load_params(GPT(model_file.config), model_file.params)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=LR, betas=(0.9, 0.95), weight_decay=0.0)
        self.loader = TokenLoader(train_path, B, T)

    def step(self) -> float:
        x, y = self.loader.next_batch()
        loss = self.model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.item()


class Project:
    def __init__(self, model_path: Path, train_path: Path, val_path: Path, compile: str = "auto"):
        cfg = TrainConfig(model=str(model_path), train_tokens=str(train_path), val_tokens=str(val_path),
                          batch_size=B, seq_len=T, learning_rate=LR, val_every=0, sample_every=0,
                          compile=compile)
        self.trainer = Trainer(cfg)
        self.description = f"precision {self.trainer.precision}, head loss {self.trainer.model.head_loss.__name__}" + (
            ", compiled" if self.trainer.compiled else "")

    def step(self) -> float:
        return self.trainer.train_step(LR)[0].item()


def time_steps(variant, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        variant.step()
    return (time.perf_counter() - start) / steps


def losses(variant, steps: int) -> list[float]:
    return [variant.step() for _ in range(steps)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=10, help="timed steps per variant per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--parity-steps", type=int, default=0, help="also compare losses after N steps")
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="bench_cpu_"))
    train_path, val_path = real_tokens(folder)
    model = GPT(GPTConfig())
    model.init_weights(1337)
    formats.write_model(folder / "model.bin", model.config, llmc.model_params(model))
    model_path = folder / "model.bin"

    variants = {"baseline (eager fp32)": Baseline(model_path, train_path),
                "project --compile off": Project(model_path, train_path, val_path, compile="off"),
                "project default": Project(model_path, train_path, val_path)}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, cpu capability "
          f"{torch.backends.cpu.get_cpu_capability()}, load average {os.getloadavg()[0]:.1f}")
    print(f"project default = {variants['project default'].description}")
    for variant in variants.values():
        time_steps(variant, args.warmup)
    best = {name: float("inf") for name in variants}
    for _ in range(args.rounds):
        for name, variant in variants.items():
            best[name] = min(best[name], time_steps(variant, args.steps))
    base = best["baseline (eager fp32)"]
    print(f"\nB={B}, T={T}, default model; best of {args.rounds} rounds of {args.steps} steps")
    print(f"{'variant':24s} {'ms/step':>9s} {'tokens/s':>10s} {'ratio':>7s}")
    for name, seconds in best.items():
        print(f"{name:24s} {seconds * 1000:9.1f} {B * T / seconds:10,.0f} {base / seconds:6.2f}x")
    print(f"load average after: {os.getloadavg()[0]:.1f}")

    if args.parity_steps:
        fp32 = losses(Baseline(model_path, train_path), args.parity_steps)
        fast = losses(Project(model_path, train_path, val_path), args.parity_steps)
        a, b = np.mean(fp32[-10:]), np.mean(fast[-10:])
        print(f"\nloss parity over {args.parity_steps} steps from the same init and data "
              f"(mean of the last 10 steps): fp32 {a:.4f}, project default {b:.4f}, "
              f"relative difference {abs(b - a) / a:.2%}")
        print("step   fp32     default")
        for i in range(0, args.parity_steps, max(1, args.parity_steps // 10)):
            print(f"{i + 1:4d}  {fp32[i]:.4f}  {fast[i]:.4f}")
        print(f"{args.parity_steps:4d}  {fp32[-1]:.4f}  {fast[-1]:.4f}")


if __name__ == "__main__":
    main()

"""CPU training speed: the project's training step against plain eager fp32 PyTorch steps.

All variants train the default model (4 layers, 4 heads, 128 channels, vocab 50257) at B=4, T=256
from the same initialisation on the same real TinyStories tokens (../shared/data), in one process:
  baseline   GPT + plain_head_loss (full fp32 logits, F.cross_entropy) + AdamW (foreach), no autocast
  HF         transformers' GPT2LMHeadModel with the same weights, eager fp32, its logits +
             F.cross_entropy on the same targets, AdamW (foreach): the model a user would pick
  project fp32 --compile off   tinystories.train.Trainer.train_step with --precision fp32, no compile
  project fp32   the same with compile auto (= on for this run of one epoch), data loading included
  project default   --precision auto and every other flag at its default, only where that is not
             fp32 (CPUs with native bf16); elsewhere `project fp32` is the default
Steady state: warm-up steps are not timed. Rounds alternate between the variants so a change in
machine load hits all of them. Prints the CPU's vector flags, ms/step and tokens/s of each and the
ratio to the baseline.

With --parity-steps N it also trains N steps of the baseline and of `project fp32` and prints the
losses (mean of the last 10 steps) and their relative difference.

    .venv/bin/python bench/bench_cpu_train.py [--steps 10] [--rounds 3] [--parity-steps 200] [--no-hf]
"""
import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tinystories import formats, hf, llmc, tokenizer  # noqa: E402
from tinystories.config import GPTConfig, TrainConfig  # noqa: E402
from tinystories.device import resolve_precision  # noqa: E402
from tinystories.generate import load_model  # noqa: E402
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


def bench_files() -> tuple[Path, Path, Path]:
    """model.bin (the default model, seed 1337), train.bin and val.bin, in a new temporary folder."""
    folder = Path(tempfile.mkdtemp(prefix="bench_cpu_"))
    train_path, val_path = real_tokens(folder)
    model = GPT(GPTConfig())
    model.init_weights(1337)
    formats.write_model(folder / "model.bin", model.config, llmc.model_params(model))
    return folder / "model.bin", train_path, val_path


def our_model(model_path: Path) -> GPT:
    return load_model(str(model_path), torch.device("cpu")).train()


def hf_model(model_path: Path) -> torch.nn.Module:
    """transformers' GPT2LMHeadModel with the weights of model_path (its head tied to wte, as ours)."""
    import transformers

    model_file = formats.read_model(model_path)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**hf.gpt2_config_json(model_file.config)))
    state = {k: torch.tensor(v) for k, v in hf.hf_state_dict(model_file.config, model_file.params).items()}
    model.transformer.load_state_dict(state)
    assert model.lm_head.weight is model.transformer.wte.weight
    return model


class Baseline:
    """The plain eager fp32 step: what a first PyTorch port of the C trainer does."""

    def __init__(self, model: torch.nn.Module, train_path: Path):
        self.model = model
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=LR, betas=(0.9, 0.95), weight_decay=0.0)
        self.loader = TokenLoader(train_path, B, T)

    def loss(self, x, y):
        return self.model(x, y)

    def step(self) -> float:
        x, y = self.loader.next_batch()
        loss = self.loss(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.item()


class HuggingFace(Baseline):
    """The same step with transformers' GPT2LMHeadModel (its default attention), same weights."""

    def loss(self, x, y):
        logits = self.model(x).logits  # (B, T, V)
        return F.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1))


class Project:
    def __init__(self, model_path: Path, train_path: Path, val_path: Path, precision: str, compile: str = "auto"):
        cfg = TrainConfig(model=str(model_path), train_tokens=str(train_path), val_tokens=str(val_path),
                          batch_size=B, seq_len=T, learning_rate=LR, val_every=0, sample_every=0,
                          precision=precision, compile=compile)
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


def cpu_flags() -> str:
    """The CPU's model name, its number of CPUs and its vector / matrix flags, from /proc/cpuinfo."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    fields = {k.strip(): v.strip() for k, v in (line.split(":", 1) for line in info.splitlines() if ":" in line)}
    wanted = sorted(f for f in fields.get("flags", "").split() if f.startswith(("avx", "amx", "fma")))
    return f"{fields.get('model name', 'unknown CPU')}, {os.cpu_count()} CPUs, flags: {' '.join(wanted)}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=10, help="timed steps per variant per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--parity-steps", type=int, default=0, help="also compare losses after N steps")
    parser.add_argument("--no-hf", action="store_true", help="leave out the Hugging Face baseline")
    args = parser.parse_args()

    model_path, train_path, val_path = bench_files()
    variants = {"baseline (eager fp32)": Baseline(our_model(model_path), train_path)}
    if not args.no_hf:
        variants["HF GPT2LMHeadModel fp32"] = HuggingFace(hf_model(model_path), train_path)
    variants["project fp32 no compile"] = Project(model_path, train_path, val_path, "fp32", compile="off")
    variants["project fp32"] = Project(model_path, train_path, val_path, "fp32")
    if resolve_precision("auto", torch.device("cpu")) != "fp32":
        variants["project default"] = Project(model_path, train_path, val_path, "auto")
    print(cpu_flags())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, cpu capability "
          f"{torch.backends.cpu.get_cpu_capability()}, load average {os.getloadavg()[0]:.1f}")
    for name, variant in variants.items():
        if isinstance(variant, Project):
            print(f"{name} = {variant.description}")
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
        fp32 = losses(Baseline(our_model(model_path), train_path), args.parity_steps)
        fast = losses(Project(model_path, train_path, val_path, "fp32"), args.parity_steps)
        a, b = np.mean(fp32[-10:]), np.mean(fast[-10:])
        print(f"\nloss parity over {args.parity_steps} steps from the same init and data "
              f"(mean of the last 10 steps): baseline {a:.4f}, project fp32 {b:.4f}, "
              f"relative difference {abs(b - a) / a:.2%}")
        print("step  baseline  project")
        for i in range(0, args.parity_steps, max(1, args.parity_steps // 10)):
            print(f"{i + 1:4d}  {fp32[i]:.4f}  {fast[i]:.4f}")
        print(f"{args.parity_steps:4d}  {fp32[-1]:.4f}  {fast[-1]:.4f}")


if __name__ == "__main__":
    main()

"""CPU training speed: the project's training step against plain eager fp32 PyTorch steps.

All variants train the default model (4 layers, 4 heads, 128 channels, vocab 50257) at B=4, T=256
from the same initialisation on the same real TinyStories tokens (../shared/data), in one process:
  baseline   GPT + plain_head_loss (full fp32 logits, F.cross_entropy) + AdamW (foreach), no autocast
  HF         transformers' GPT2LMHeadModel with the same weights, eager fp32, its logits +
             F.cross_entropy on the same targets, AdamW (foreach): the model a user would pick
  project fp32 --compile off   ./train's training step (tinystories.step.TrainStep, as train.Trainer
             runs it) with --precision fp32, no compile, data loading included
  project fp32   the same with compile auto (= on for this run of one epoch)
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
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from tinystories import formats, hf, llmc, tokenizer
from tinystories.config import GPTConfig, TrainConfig
from tinystories.device import resolve_precision, select_head_loss, use_compile
from tinystories.loader import TokenLoader
from tinystories.model import GPT, plain_head_loss
from tinystories.optim import make_optimizer
from tinystories.runtime import Runtime
from tinystories.step import TrainStep

from common import best_of_rounds

ROOT = Path(__file__).resolve().parents[1]  # the repository; ../shared beside it holds the data

B, T, LR = 4, 256, 1e-3


def bench_tokens() -> Path:
    """train.bin of the real TinyStories text, in a new temporary folder."""
    folder = Path(tempfile.mkdtemp(prefix="bench_cpu_"))
    text = (ROOT.parent / "shared" / "data" / "tinystories_v1_train_head.txt").read_text(encoding="utf-8")
    ids = []
    for story in (s.strip() for s in text.split("<|endoftext|>")):
        if story:
            ids += [tokenizer.EOT] + tokenizer.encode(story)
    ids = np.array(ids, dtype=np.uint16)
    formats.write_tokens(folder / "train.bin", ids)
    return folder / "train.bin"


def our_model(head_loss=plain_head_loss) -> GPT:
    """The default model, initialised with seed 1337 (the same weights at every call), fp32 on the CPU."""
    model = GPT(GPTConfig(), head_loss)
    model.init_weights(1337)
    return model


def hf_model() -> torch.nn.Module:
    """transformers' GPT2LMHeadModel with our_model's weights (its head tied to wte, as ours)."""
    import transformers

    config = GPTConfig()
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**hf.gpt2_config_json(config)))
    state = {k: torch.tensor(v) for k, v in hf.hf_state_dict(config, llmc.model_params(our_model())).items()}
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
    """./train's step on the CPU (step.TrainStep) with --precision `precision` and --compile `compile`, the
    rest at ./train's defaults, each decided as the Trainer decides it for a run of one epoch."""

    def __init__(self, train_path: Path, precision: str, compile: str = "auto"):
        device = torch.device("cpu")
        cfg = TrainConfig(batch_size=B, seq_len=T, learning_rate=LR, precision=precision, compile=compile)
        self.loader = TokenLoader(train_path, B, T)
        precision = resolve_precision(cfg.precision, device)
        head = select_head_loss(cfg.head_loss, device, precision)
        self.runtime = Runtime.single(device, precision, head.name, compile_required=cfg.compile == "on",
                                      compile=use_compile(cfg.compile, self.loader.batches_per_epoch(), device))
        model = our_model(head.load())
        self.train_step = TrainStep(model, make_optimizer(model, cfg), self.runtime, cfg.grad_accum, cfg.grad_clip)
        self.description = f"precision {precision}, head loss {model.head_loss.__name__}" + (
            ", compiled" if self.train_step.compiled else "")

    def step(self) -> float:
        return self.train_step([self.runtime.to_device(self.loader.next_batch())], LR)[0].item()


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

    train_path = bench_tokens()
    variants = {"baseline (eager fp32)": Baseline(our_model(), train_path)}
    if not args.no_hf:
        variants["HF GPT2LMHeadModel fp32"] = HuggingFace(hf_model(), train_path)
    variants["project fp32 no compile"] = Project(train_path, "fp32", compile="off")
    variants["project fp32"] = Project(train_path, "fp32")
    if resolve_precision("auto", torch.device("cpu")) != "fp32":
        variants["project default"] = Project(train_path, "auto")
    print(cpu_flags())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, cpu capability "
          f"{torch.backends.cpu.get_cpu_capability()}, load average {os.getloadavg()[0]:.1f}")
    for name, variant in variants.items():
        if isinstance(variant, Project):
            print(f"{name} = {variant.description}")
    timings = best_of_rounds({name: variant.step for name, variant in variants.items()}, args.rounds, args.steps,
                             args.warmup)
    best = {name: timing.best for name, timing in timings.items()}
    base = best["baseline (eager fp32)"]
    print(f"\nB={B}, T={T}, default model; best of {args.rounds} rounds of {args.steps} steps")
    print(f"{'variant':24s} {'ms/step':>9s} {'tokens/s':>10s} {'ratio':>7s}")
    for name, seconds in best.items():
        print(f"{name:24s} {seconds * 1000:9.1f} {B * T / seconds:10,.0f} {base / seconds:6.2f}x")
    print(f"load average after: {os.getloadavg()[0]:.1f}")

    if args.parity_steps:
        fp32 = losses(Baseline(our_model(), train_path), args.parity_steps)
        fast = losses(Project(train_path, "fp32"), args.parity_steps)
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

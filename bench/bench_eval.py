"""eval's speed: tokens scored per second by `tinystories eval` against the formulation it had before
(issue 31), and against the same model's training tokens/s, in one process.

The model is the fastest preset (the Llama block, 1 layer, 4 heads, 128 channels, block 256; --arch
gpt2: GPT-2's block) with a 4,096-token BPE trained on the train excerpt of ../shared/data; it scores
the first --tokens tokens of the val excerpt in windows of 257 tokens, on the CPU:
  before          eval as it was: -b 8 windows per forward pass, the output layer in fp32, a separate
                  fp32 F.cross_entropy per 1,024 rows, eager (`before_window_nats` below, kept here as it was)
  the others      eval's default -b (eval_parser's, 8), every batch padded to that one shape (a batch
                  of fewer windows, or the tail, was scored eagerly before); with --batch N, -b N
                  instead (and "bf16 compiled -b 8", compiled apart, for comparison)
  fp32 eager      evaluate.window_nats: fp32, each row's log-sum-exp minus its target logit
  fp32 compiled   the same through torch.compile
  bf16 eager / bf16 compiled   the matrix products under bf16 autocast, the loss summed in fp32
  train step      ./train --config configs/fastest.toml's step (tinystories.step.TrainStep: Muon, B=8,
                  T=256, --precision auto and --compile auto as that config's run of 2,000 steps decides)
Rounds alternate between the variants, each called --calls times in a row per round; compile time is
the warm-up (not timed in tokens/s).

    PYTHONPATH=. .venv/bin/python bench/bench_eval.py [--tokens 33000] [--rounds 3] [--calls 3] [--threads N] [--batch 8]

(PYTHONPATH=. so that `tinystories` is this checkout's, not the editable install's, which may be another.)
"""
import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from tinystories import bpe, evaluate
from tinystories.cli import eval_parser, train_parser
from tinystories.config import ARCHS, MODEL_PRESETS, GPTConfig, TrainConfig
from tinystories.config_file import parse_with_config
from tinystories.device import autocast, resolve_precision, select_head_loss, use_compile
from tinystories.model import GPT
from tinystories.optim import make_optimizer
from tinystories.runtime import Runtime
from tinystories.step import TrainStep
from tinystories.tokenizer import BPETokenizer

from common import best_of_rounds

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
T, B = 256, 8  # B: the batch before, and ./train's


@torch.no_grad()
def before_window_nats(model, x, y, precision):
    """evaluate.window_nats before issue 31: fp32 logits and F.cross_entropy per 1,024 rows, summed in fp64."""
    with autocast(x.device, precision):
        h = model.hidden(x)
    h, y = h.reshape(-1, h.size(-1)), y.reshape(-1)
    weight = model.head_weight()
    total = torch.zeros((), dtype=torch.float64, device=x.device)
    for start in range(0, h.size(0), 1024):
        with autocast(x.device, precision):
            logits = F.linear(h[start : start + 1024], weight)
        total += F.cross_entropy(logits.float(), y[start : start + 1024], reduction="none").double().sum()
    return total


def stories(name: str) -> list[str]:
    text = (DATA / name).read_text(encoding="utf-8")
    return [s.strip() for s in text.replace("\n\n", "<|endoftext|>").split("<|endoftext|>") if s.strip()]


def excerpt_setup(arch: str | None = None) -> tuple[BPETokenizer, np.ndarray, GPT]:
    """A 4,096-token BPE trained on the train excerpt, the val excerpt's tokens in it (each story after
    an EOT), and the fastest preset's model at that vocabulary (`arch`: its block, default the preset's)."""
    tok = BPETokenizer(bpe.train(stories("tinystories_v1_train_head.txt"), 4096), "bpe4096")
    val = np.array([i for s in stories("tinystories_v1_valid_head.txt") for i in [tok.eot, *tok.encode(s)]])
    shape = MODEL_PRESETS["fastest"]
    model = GPT(GPTConfig(block_size=shape["block_size"], vocab_size=4096, n_layer=shape["layers"],
                          n_head=shape["heads"], n_embd=shape["channels"], **ARCHS[arch or shape["arch"]]))
    model.init_weights(1337)
    return tok, val, model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=33_000, help="val tokens scored per call")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=3, help="calls of each variant in a row, per round: a "
                        "variant's first call after another's runs on cold caches, which weighs on the fastest")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default, the cores)")
    parser.add_argument("--batch", type=int, default=eval_parser().get_default("batch_size"),
                        help="windows per forward pass of the variants other than before")
    parser.add_argument("--arch", choices=ARCHS, default=None, help="the model's block (default: the preset's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    tok, val, model = excerpt_setup(args.arch)
    tokens = val[: args.tokens]
    cpu = torch.device("cpu")
    auto = resolve_precision("auto", cpu)

    def scorer(window_nats, precision, batch=args.batch):
        def run():
            return evaluate.evaluate(model, tokens, tok, T, batch, cpu, precision, nats_function=window_nats)
        return run

    compiled = torch.compile(evaluate.window_nats)
    runs = {"before (fp32 eager)": scorer(before_window_nats, "fp32", B),
            "fp32 eager": scorer(evaluate.window_nats, "fp32"), "fp32 compiled": scorer(compiled, "fp32")}
    if auto == "bf16":
        runs |= {"bf16 eager": scorer(evaluate.window_nats, "bf16"), "bf16 compiled": scorer(compiled, "bf16")}
        if args.batch != B:
            runs["bf16 compiled -b 8"] = scorer(torch.compile(evaluate.window_nats), "bf16", B)

    cfg = TrainConfig(**vars(parse_with_config(train_parser(), ["--config", str(ROOT / "configs/fastest.toml")])))
    precision = resolve_precision(cfg.precision, cpu)
    head = select_head_loss(cfg.head_loss, cpu, precision)
    runtime = Runtime.single(cpu, precision, head.name, compile=use_compile(cfg.compile, cfg.max_steps, cpu))
    train_model = GPT(model.config, head.load())
    train_model.init_weights(1337)
    step = TrainStep(train_model, make_optimizer(train_model, cfg), runtime, cfg.grad_accum, cfg.grad_clip)
    rng = np.random.default_rng(0)

    def train_step():
        start = int(rng.integers(0, val.size - B * T - 1))
        rows = torch.from_numpy(val[start : start + B * T + 1].astype(np.int64))
        return step([(rows[:-1].view(B, T), rows[1:].view(B, T))], cfg.learning_rate)[0].item()

    timings = best_of_rounds({**runs, "train step": train_step}, rounds=args.rounds, calls=args.calls, warmup=3)
    scored = (tokens.size // (T + 1)) * T + max(0, tokens.size % (T + 1) - 1)
    print(f"CPU: {torch.get_num_threads()} threads; {scored:,} tokens scored per call; precision auto = {auto}; -b {args.batch} "
          f"train step: {precision}, {'compiled' if step.compiled else 'eager'}, B={B}, T={T}")
    before = scored / timings["before (fp32 eager)"].best
    train = B * T / timings["train step"].best
    for name, timing in timings.items():
        rate = (B * T if name == "train step" else scored) / timing.best
        extra = "" if name == "train step" else f"  {rate / before:5.2f}x before  {rate / train:5.2f}x training's"
        result = "" if name == "train step" else f"  bits/byte {timing.result.bits_per_byte:.6f}"
        print(f"{name:22s} {rate:10,.0f} tokens/s  warm-up {timing.warmup_s:5.1f} s{extra}{result}")


if __name__ == "__main__":
    sys.exit(main())

"""Time to quality: held-out bits per byte against training wall-clock, from scratch, in one run.

Three configurations train on the real TinyStories train excerpt (../shared/data) on this machine,
one after the other, and are scored on the whole validation excerpt in bits per byte (`tinystories
eval`'s windows and bytes: comparable across tokenizers, unlike loss per token):

    original     the original's: GPT-2 tokenizer, the default model, AdamW at a constant 1e-3, one
                 epoch of the excerpt (490 steps) at B=4, T=256
    fast         the same model and data with ./train --recipe fast, one epoch
    recommended  the fastest way to a story model (README): prepare_data.py --vocab-size
                 RECOMMENDED_VOCAB, create_model.py --preset fastest, ./train --config
                 configs/fastest.toml, given a training-time budget: the original's whole training
                 time, and a tenth of it (each a run of its own, its schedule sized to its budget)

Every run is compiled (--compile on, what --compile auto picks for runs of a few hundred steps and
more). Training time is the sum of the training steps' wall-clock (evaluation excluded). The first
step of every run (compiling, first-touch allocation) is reported apart and counted as one median step. A
budget becomes steps through the step time of the configuration, measured first in a throwaway run
(the median of steps 11..60). A run's curve is (training seconds, training bytes, val bits per byte)
at --evals points and at the end; training bytes are tokens trained x the train file's bytes per
token in its own tokenizer.

Prints, per seed: each run's final bits per byte, its training seconds, the seconds it needs to
reach the original's final bits per byte (linear interpolation on its curve) and their ratio to the
original's training seconds; the recommended run's samples; writes results.json and
time_to_quality.png (bits per byte against seconds) to --out.

    .venv/bin/python bench/bench_time_to_quality.py --seeds 1,2
    TINYSTORIES_CPU_BF16=0 .venv/bin/python bench/bench_time_to_quality.py --seeds 1   # CPUs without bf16
    .venv/bin/python bench/bench_time_to_quality.py --only recommended --budget 14     # one run, for the search
"""
import argparse
import contextlib
import gc
import io
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from tinystories import cli, config_file, formats
from tinystories.config import MODEL_PRESETS, RECIPES, RECOMMENDED_VOCAB, TrainConfig
from tinystories.evaluate import evaluate
from tinystories.generate import sample_story
from tinystories.optim import learning_rate
from tinystories.train import Trainer

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
B, T = 4, 256  # the original's
FASTEST_CONFIG = ROOT / "configs" / "fastest.toml"
CALIBRATION_STEPS = 60


# ----------------------------------------------------------------------------- data and models

def prepare(folder: Path, vocab_size: int | None) -> Path:
    """The excerpt's token files, GPT-2's or a trained BPE's, made with prepare_data.py into folder."""
    if not (folder / "TinyStories_train.bin").exists():
        flags = ["--vocab-size", str(vocab_size)] if vocab_size else ["--tokenizer-file", str(folder / "gpt2_tokenizer.bin")]
        subprocess.run([sys.executable, str(ROOT / "prepare_data.py"), "--source", str(SHARED / "tinystories_v1_train_head.txt"),
                        "--val-source", str(SHARED / "tinystories_v1_valid_head.txt"), "--out-dir", str(folder), *flags],
                       check=True, capture_output=True)
    return folder


def create_model(path: Path, seed: int, *flags: str) -> Path:
    with contextlib.redirect_stdout(io.StringIO()):
        cli.create_main(["-o", str(path), "--seed", str(seed), *map(str, flags)])
    return path


def fastest_settings() -> dict:
    """configs/fastest.toml's ./train values (TrainConfig fields), as ./train --config reads them."""
    parser = cli.train_parser()
    return config_file.config_defaults(parser, str(FASTEST_CONFIG))


# ----------------------------------------------------------------------------- one run

def new_trainer(model: Path, data: Path, steps: int, settings: dict) -> Trainer:
    settings = {k: v for k, v in settings.items() if k not in ("model", "checkpoint", "train_tokens", "val_tokens",
                                                                "max_steps", "val_every", "sample_every", "keep",
                                                                "checkpoint_every", "metrics")}
    cfg = TrainConfig(model=str(model), train_tokens=str(data / "TinyStories_train.bin"),
                      val_tokens=str(data / "TinyStories_val.bin"), max_steps=steps, val_every=0, sample_every=0,
                      **{"compile": "on", **settings})
    torch._dynamo.reset()  # each run compiles afresh: no recompile limit across the runs of one process
    with contextlib.redirect_stdout(io.StringIO()):
        return Trainer(cfg)


def step_seconds(model: Path, data: Path, settings: dict) -> float:
    """Median seconds of steps 11..CALIBRATION_STEPS of a throwaway run of these settings."""
    trainer = new_trainer(model, data, 1000, settings)
    times = []
    for step in range(CALIBRATION_STEPS):
        start = time.perf_counter()
        trainer.train_step(trainer.next_batches(), learning_rate(trainer.cfg, step, 1000))[0].item()
        times.append(time.perf_counter() - start)
    del trainer
    gc.collect()
    return statistics.median(times[10:])


def bytes_per_token(data: Path) -> float:
    """Bytes per token of the train file, in its own tokenizer's bytes."""
    from tinystories.evaluate import byte_lengths
    from tinystories.tokenizer import for_token_file

    path = data / "TinyStories_train.bin"
    tokens = formats.read_tokens(path)
    lengths = byte_lengths(for_token_file(path)).numpy()
    return float(lengths[np.asarray(tokens, dtype=np.int64)].sum() / tokens.size)


def train_run(model: Path, data: Path, steps: int, settings: dict, evals: int, seed: int, train_bpb: bool = False) -> dict:
    """Train `steps` steps from `model`; the curve [(seconds, bytes, bpb)] at `evals` points and the end
    (and with train_bpb, the final bits per byte on the train file's first as many tokens as val has)."""
    trainer = new_trainer(model, data, steps, settings)
    cfg, tokenizer = trainer.cfg, trainer.tokenizer
    val = formats.read_tokens(data / "TinyStories_val.bin")
    bytes_per_step = cfg.batch_size * cfg.seq_len * cfg.grad_accum * bytes_per_token(data)
    due = {round(steps * (i + 1) / evals) for i in range(evals)}

    def bits_per_byte(model, runtime, tokens=val) -> float:
        result = evaluate(model, tokens, tokenizer, cfg.seq_len, 32, runtime.device, runtime.precision)
        model.train()
        return result.bits_per_byte

    times, curve = [], [(0.0, 0.0, bits_per_byte(trainer.model, trainer.runtime))]
    for step in range(steps):
        start = time.perf_counter()
        trainer.train_step(trainer.next_batches(), learning_rate(cfg, step, steps))[0].item()
        times.append(time.perf_counter() - start)
        if step + 1 in due:
            seconds = sum(times[1:]) + statistics.median(times)  # the first step counts as a median one
            curve.append((seconds, (step + 1) * bytes_per_step, bits_per_byte(trainer.model, trainer.runtime)))
    samples = [sample_story(trainer.model, tokenizer, seed + k, 120) for k in range(2)]
    train = formats.read_tokens(data / "TinyStories_train.bin")[: val.size] if train_bpb else None
    on_train = bits_per_byte(trainer.model, trainer.runtime, train) if train_bpb else None
    del trainer
    gc.collect()
    return {"train_bpb": on_train, "curve": curve, "final": curve[-1][2], "seconds": curve[-1][0], "first_step_s": times[0],
            "ms_per_step": 1000 * statistics.median(times), "steps": steps, "samples": samples}


def seconds_to_reach(curve: list[tuple[float, float, float]], target: float) -> float | None:
    """Training seconds at which the curve first reaches `target` bits per byte (interpolated), or None."""
    for (s0, _, b0), (s1, _, b1) in zip(curve, curve[1:]):
        if b1 <= target:
            return s1 if b0 == b1 else s0 + (s1 - s0) * (b0 - target) / (b0 - b1)
    return None


# ----------------------------------------------------------------------------- the runs of one seed

def runs_of_seed(seed: int, args) -> list[dict]:
    gpt2, bpe = prepare(args.out / "gpt2", None), prepare(args.out / f"bpe{RECOMMENDED_VOCAB}", RECOMMENDED_VOCAB)
    default_model = create_model(args.out / f"default-seed{seed}.bin", seed)
    preset = [f"--{k.replace('_', '-')}={v}" for k, v in MODEL_PRESETS["fastest"].items()]
    fastest_model = create_model(args.out / f"fastest-seed{seed}.bin", seed, "--tokenizer", bpe / "tokenizer.json", *preset)
    epoch = (formats.read_tokens(gpt2 / "TinyStories_train.bin").size - 1) // (B * T)
    base = {"batch_size": B, "seq_len": T, "seed": seed}
    results = []

    def record(name, result):
        result.update(name=name, seed=seed)
        results.append(result)
        print(f"{name:24s} seed {seed}: {result['steps']:5d} steps of {result['ms_per_step']:6.1f} ms, "
              f"{result['seconds']:6.1f} s training (first step {result['first_step_s']:.1f} s), "
              f"final {result['final']:.4f} bits per byte", flush=True)

    budget = args.budget
    if "original" in args.only:
        record("original", train_run(default_model, gpt2, epoch, {**base, "learning_rate": 1e-3}, args.evals, seed))
        budget = results[-1]["seconds"]
    if "fast" in args.only:
        record("fast", train_run(default_model, gpt2, epoch, {**base, **RECIPES["fast"]}, args.evals, seed))
    if "recommended" in args.only:
        settings = {**fastest_settings(), "seed": seed}
        step_s = step_seconds(fastest_model, bpe, settings)
        for share in (1.0, 0.1):
            steps = max(1, round(share * budget / step_s))
            record(f"recommended ({share:g} budget)", train_run(fastest_model, bpe, steps, settings, args.evals, seed))
    return results


def report(results: list[dict]) -> None:
    for seed in sorted({r["seed"] for r in results}):
        runs = {r["name"]: r for r in results if r["seed"] == seed}
        if "original" not in runs:
            continue
        original = runs["original"]
        print(f"\nseed {seed}: the original ends at {original['final']:.4f} bits per byte after {original['seconds']:.1f} s")
        for name, r in runs.items():
            reach = seconds_to_reach(r["curve"], original["final"])
            when = "never" if reach is None else f"{reach:6.1f} s = {reach / original['seconds']:.3f} x the original's"
            print(f"  {name:24s} final {r['final']:.4f} ({r['final'] - original['final']:+.4f}), "
                  f"reaches the original's final bits per byte: {when}")
        for name, r in runs.items():
            if name.startswith("recommended") or name == "original":
                print(f"  samples of {name}:", *(repr(s[:300]) for s in r["samples"]), sep="\n    ")


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(r["name"] for r in results))
    seeds = sorted({r["seed"] for r in results})
    fig, ax = plt.subplots(figsize=(9, 5.5))
    for r in results:
        seconds, _, bpb = zip(*r["curve"][1:])
        ax.plot(seconds, bpb, color=f"C{names.index(r['name'])}", linestyle=["-", "--", ":"][seeds.index(r["seed"]) % 3],
                marker=".", label=f"{r['name']}, seed {r['seed']}")
    ax.set(xlabel="training seconds (evaluation excluded)", ylabel="val bits per byte (whole val excerpt)",
           title="Time to quality on this CPU", xscale="log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="1,2", help="initialisation seeds, separated by commas")
    parser.add_argument("--only", default="original,fast,recommended", help="which runs (comma-separated)")
    parser.add_argument("--budget", type=float, default=140.0, help="training seconds of the recommended run "
                        "when the original does not run first (else the original's)")
    parser.add_argument("--evals", type=int, default=8, help="evaluations per run, besides the one at step 0")
    parser.add_argument("--out", type=Path, default=None, help="folder for results (default: a new temp folder)")
    args = parser.parse_args()
    if not (SHARED / "tinystories_v1_train_head.txt").is_file():
        sys.exit(f"needs the TinyStories excerpts in {SHARED}")
    args.only = args.only.split(",")
    args.out = args.out or Path(tempfile.mkdtemp(prefix="bench_time_to_quality_"))
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    for seed in (int(s) for s in args.seeds.split(",")):
        results += runs_of_seed(seed, args)
        (args.out / "results.json").write_text(json.dumps(results, indent=1))  # after each seed: a kill keeps them
    report(results)
    plot(results, args.out / "time_to_quality.png")
    print(f"\nresults in {args.out}")


if __name__ == "__main__":
    main()

"""Training recipes compared: fewer tokens to the same validation loss.

Each recipe trains the default model (4 layers, 4 heads, 128 channels) at B=4, T=256 on the real
TinyStories train excerpt (../shared/data, 502,585 tokens = 490 steps per epoch) for a fixed number
of epochs, from the same initialisation for a given seed (create_model.py --seed; with
--zero-init-proj where the recipe asks for it), and is scored on the whole validation excerpt
(195,558 tokens, `tinystories eval`'s windows) every --val-every steps and at the end. A recipe is a
set of ./train flags (TrainConfig fields) on top of the original's command (-l 1e-3: AdamW at a
constant rate); `fast` is ./train --recipe fast (config.RECIPES) plus the model option it was
chosen with.

Prints, per recipe and seed: the final val loss, the tokens needed to reach val 4.3 and 4.2 (linear
interpolation between evaluations), ms per training step (evaluation excluded), and for `fast`
the token efficiency against the original (the original's final val loss at one epoch over the
tokens fast needs to reach it). Writes results.json, one metrics file per run and curves.png to --out.

    .venv/bin/python bench/bench_recipe.py                         # main table: original vs fast
    .venv/bin/python bench/bench_recipe.py --recipes ablations     # fast without each of its parts
    .venv/bin/python bench/bench_recipe.py --sweep                 # the search that chose fast
    .venv/bin/python bench/bench_recipe.py --time-steps 10         # time per step only, recipes alternating

--sweep is a coordinate search (one seed, one epoch): starting from the original it tries each
value of one setting at a time (SWEEP, in order) and keeps the best before going on to the next;
it prints every run, so what lost is on record.
"""
import argparse
import contextlib
import gc
import io
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from tinystories import formats, llmc
from tinystories.config import RECIPES, GPTConfig, TrainConfig
from tinystories.evaluate import evaluate
from tinystories.loader import TokenLoader
from tinystories.model import GPT
from tinystories.optim import learning_rate
from tinystories.train import Trainer

from common import best_of_rounds

ROOT = Path(__file__).resolve().parents[1]  # the repository; ../shared beside it holds the data

B, T = 4, 256
ORIGINAL = {"learning_rate": 1e-3}  # the original's command: -l 1e-3, AdamW, no warmup, no decay
TARGETS = (4.3, 4.2)

# The recommended recipe: ./train --recipe fast on a model made with these create_model.py options
# (none: --zero-init-proj won the sweep's single-seed step by 0.005 and lost over two seeds).
FAST_MODEL = {}

# The parts of a recipe, by the settings they cover: the ablations drop one part of fast at a time.
PARTS = {
    "muon": ("optimizer", "matrix_lr", "muon_momentum"),
    "embedding lr": ("embed_lr",),
    "base lr": ("learning_rate",),
    "schedule": ("lr_decay", "warmup_steps", "cooldown", "min_lr_ratio"),
    "beta2": ("beta2",),
    "zero-init proj": ("zero_init_proj",),
}

# --sweep: (setting, values) tried in this order, each from the best so far
SWEEP = [
    ("matrix", [{"optimizer": "adamw", "matrix_lr": 0.0}] +
     [{"optimizer": "muon", "matrix_lr": lr} for lr in (1e-3, 2e-3, 4e-3, 8e-3, 1.6e-2)]),
    ("embed_lr", [{"embed_lr": lr} for lr in (0.0, 2e-3, 4e-3, 8e-3)]),
    ("learning_rate", [{"learning_rate": lr} for lr in (1e-3, 3e-3)]),
    ("schedule", [{"lr_decay": "none", "warmup_steps": 0}, {"lr_decay": "cosine", "warmup_steps": 20},
                  *({"lr_decay": "wsd", "warmup_steps": w, "cooldown": c} for w in (0, 20) for c in (0.2, 0.4, 0.6))]),
    ("zero_init_proj", [{"zero_init_proj": False}, {"zero_init_proj": True}]),
    ("momentum", [{"muon_momentum": m} for m in (0.9, 0.95)]),
    ("beta2", [{"beta2": b} for b in (0.95, 0.99)]),
    ("matrix again", [{"matrix_lr": lr} for lr in (4e-3, 8e-3, 1.6e-2, 3.2e-2)]),
    ("embed_lr again", [{"embed_lr": lr} for lr in (2e-3, 4e-3, 8e-3, 1.6e-2)]),
]


def original_value(setting: str):
    """The original's value of a recipe setting: its command's, else ./train's default."""
    if setting == "zero_init_proj":
        return False
    return ORIGINAL.get(setting, getattr(TrainConfig(), setting))


def changes(recipe: dict) -> dict:
    """The settings where `recipe` differs from the original."""
    return {k: v for k, v in recipe.items() if v != original_value(k)}


def named_recipes(fast: dict) -> dict[str, dict]:
    """original, fast, fast without each of its parts (those that change something), and fast with
    the zero-initialised projections when it does not have them."""
    recipes = {"original": dict(ORIGINAL), "fast": fast}
    for part, settings in PARTS.items():
        if any(k in changes(fast) for k in settings):
            recipes[f"fast without {part}"] = {**fast, **{k: original_value(k) for k in settings}}
    if not fast.get("zero_init_proj"):
        recipes["fast with zero-init proj"] = {**fast, "zero_init_proj": True}
    return recipes


# ----------------------------------------------------------------------------- data and models

def token_files(data: str | None, folder: Path) -> tuple[Path, Path]:
    """TinyStories_{train,val}.bin in `data`, or made from ../shared/data's excerpts with prepare_data.py."""
    if data is None:
        shared = ROOT.parent / "shared" / "data"
        subprocess.run([sys.executable, str(ROOT / "prepare_data.py"), "--source", str(shared / "tinystories_v1_train_head.txt"),
                        "--val-source", str(shared / "tinystories_v1_valid_head.txt"), "--out-dir", str(folder),
                        "--tokenizer-file", str(folder / "gpt2_tokenizer.bin")], check=True, capture_output=True)
        data = folder
    return Path(data) / "TinyStories_train.bin", Path(data) / "TinyStories_val.bin"


def model_file(folder: Path, seed: int, zero_proj: bool) -> Path:
    """The default model initialised with `seed` (written once to folder)."""
    path = folder / f"model-seed{seed}{'-zero-proj' if zero_proj else ''}.bin"
    if not path.exists():
        model = GPT(GPTConfig())
        model.init_weights(seed, zero_proj=zero_proj)
        formats.write_model(path, model.config, llmc.model_params(model))
    return path


# ----------------------------------------------------------------------------- one run

def train_run(recipe: dict, seed: int, epochs: int, data: tuple[Path, Path], args, name: str) -> dict:
    """Train one recipe for `epochs` epochs; its val curve [(tokens, loss)], final val loss (whole
    file), ms per training step (after the first --val-every steps; evaluations excluded) and steps.
    Writes <out>/<name>.jsonl."""
    settings = dict(recipe)
    zero_proj = settings.pop("zero_init_proj", False)
    train_path, val_path = data
    total = args.steps or epochs * TokenLoader(train_path, B, T).batches_per_epoch()
    cfg = TrainConfig(model=str(model_file(args.out, seed, zero_proj)), train_tokens=str(train_path),
                      val_tokens=str(val_path), max_steps=total, batch_size=B, seq_len=T, val_every=0,
                      sample_every=0, device=args.device, compile=args.compile, **settings)
    with contextlib.redirect_stdout(io.StringIO()):  # the trainer's start-up lines, the same for every run
        trainer = Trainer(cfg)
    val, state = formats.read_tokens(val_path), trainer.state
    curve, records, seconds, timed_steps = [(0, val_loss(trainer, val, args.curve_windows))], [], 0.0, 0
    for step in range(total):
        start = time.perf_counter()
        loss, _ = trainer.train_step(trainer.next_batches(), learning_rate(cfg, step, total))
        state.step = step + 1
        due = state.step % args.val_every == 0 or state.step == total
        if due:
            loss = loss.item()  # waits for the device: the time up to here covers every step queued so far
        if state.step > args.val_every:  # the first steps (compiling, graph capture) are not timed
            seconds += time.perf_counter() - start
            timed_steps += 1
        if due:
            windows = None if state.step == total else args.curve_windows
            curve.append((state.step * B * T, val_loss(trainer, val, windows)))
            records.append({"step": state.step, "tokens": state.step * B * T, "train_loss": loss,
                            "val_loss": curve[-1][1]})
    (args.out / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    del trainer
    gc.collect()  # the trainer and its CUDA graph hold device memory; free it before the next run
    return {"curve": curve, "final": curve[-1][1], "ms_per_step": 1000 * seconds / max(1, timed_steps), "steps": total}


def val_loss(trainer: Trainer, tokens, windows: int | None) -> float:
    """Mean loss over the val file, or over its first `windows` windows of T + 1 tokens."""
    if windows is not None:
        tokens = tokens[: windows * (T + 1)]
    result = evaluate(trainer.model, tokens, trainer.tokenizer, T, 32, trainer.runtime.device, trainer.runtime.precision)
    trainer.model.train()
    return result.loss


def tokens_to_reach(curve: list[tuple[int, float]], target: float) -> float | None:
    """Tokens at which the val curve first reaches `target`, interpolated linearly; None if never."""
    for (t0, l0), (t1, l1) in zip(curve, curve[1:]):
        if l1 <= target:
            return t1 if l0 == l1 else t0 + (t1 - t0) * (l0 - target) / (l0 - l1)
    return None


# ----------------------------------------------------------------------------- the table

def describe(recipe: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in changes(recipe).items()) or "the original (AdamW, constant lr 1e-3)"


def print_row(name: str, seed: int, epochs: int, result: dict) -> None:
    reach = [tokens_to_reach(result["curve"], target) for target in TARGETS]
    cells = " ".join(f"{r / 1e3:8.0f}k" if r is not None else f"{'-':>9s}" for r in reach)
    print(f"{name:32s} {seed:4d} {epochs:3d} {result['final']:9.4f} {cells} {result['ms_per_step']:8.1f}", flush=True)


def header() -> None:
    targets = " ".join(f"{'to ' + str(t):>9s}" for t in TARGETS)
    print(f"{'recipe':32s} {'seed':>4s} {'ep':>3s} {'val loss':>9s} {targets} {'ms/step':>8s}", flush=True)


def efficiency(results: list[dict]) -> None:
    """Per seed: the original's one-epoch val loss, and the share of its tokens fast needs to reach it."""
    by_key = {(r["recipe"], r["seed"], r["epochs"]): r for r in results}
    for (recipe, seed, epochs), r in sorted(by_key.items()):
        if recipe != "fast" or epochs != 1 or ("original", seed, 1) not in by_key:
            continue
        original = by_key[("original", seed, 1)]
        reach = tokens_to_reach(r["curve"], original["final"])
        budget = original["curve"][-1][0]
        speed = r["ms_per_step"] / original["ms_per_step"]  # same seed, same epochs: run back to back
        if reach is None:
            print(f"seed {seed}: fast never reaches the original's one-epoch val loss {original['final']:.4f}")
        else:
            print(f"seed {seed}: fast reaches the original's one-epoch val loss {original['final']:.4f} after "
                  f"{reach:,.0f} of {budget:,} tokens: {budget / reach:.2f}x token efficiency; time per step "
                  f"{speed:.2f}x the original's")


def plot(results: list[dict], path: Path, curve_windows: int | None) -> None:
    """Val loss against tokens: one colour per recipe and number of epochs, one line style per seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = list(dict.fromkeys((r["recipe"], r["epochs"]) for r in results))
    seeds = sorted({r["seed"] for r in results})
    fig, ax = plt.subplots(figsize=(9, 5.5))
    for r in results:
        tokens, losses = zip(*r["curve"][1:])  # from the first evaluation after step 0 (~10.8)
        ax.plot(tokens, losses, color=f"C{runs.index((r['recipe'], r['epochs'])) % 10}", linestyle=["-", "--", ":"][seeds.index(r["seed"]) % 3],
                marker=".", label=f"{r['recipe']}, seed {r['seed']}, {r['epochs']} epoch(s)")
    where = "whole validation file" if curve_windows is None else \
        f"last point: whole validation file; others: its first {curve_windows} windows"
    ax.set(xlabel="tokens trained", ylabel=f"val loss ({where})", title="Training recipes")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


# ----------------------------------------------------------------------------- main

def time_recipes(recipes: dict[str, dict], data, args) -> None:
    """ms per training step of each recipe: best of 3 rounds of --time-steps steps, the recipes
    alternating within each round (so a change in machine load hits all), after 3 warm-up steps."""
    train_path, val_path = data
    trainers = {}
    for name, recipe in recipes.items():
        settings = {k: v for k, v in recipe.items() if k != "zero_init_proj"}
        cfg = TrainConfig(model=str(model_file(args.out, 1, False)), train_tokens=str(train_path),
                          val_tokens=str(val_path), batch_size=B, seq_len=T, val_every=0, sample_every=0,
                          device=args.device, compile=args.compile, **settings)
        with contextlib.redirect_stdout(io.StringIO()):
            trainers[name] = Trainer(cfg)
    def step(trainer: Trainer):  # one training step at the recipe's peak rate
        return lambda: trainer.train_step(trainer.next_batches(), trainer.cfg.learning_rate)

    steps = {name: step(trainer) for name, trainer in trainers.items()}
    device = next(iter(trainers.values())).runtime.device
    timings = best_of_rounds(steps, rounds=3, calls=args.time_steps, warmup=3, device=device)  # warm-up: compiles
    best = {name: timing.best for name, timing in timings.items()}
    base = best["original"]
    for name, seconds in best.items():
        print(f"{name:32s} {seconds * 1000:8.1f} ms/step  {base / seconds:5.2f}x the original's tokens/s")


def run_table(recipes: dict[str, dict], seeds, epochs_list, data, args) -> list[dict]:
    results = []
    for epochs in epochs_list:
        for name, recipe in recipes.items():
            for seed in seeds:
                label = f"{name.replace(' ', '-')}-seed{seed}-{epochs}ep"
                result = train_run(recipe, seed, epochs, data, args, label)
                results.append({"recipe": name, "name": label, "seed": seed, "epochs": epochs, "settings": recipe, **result})
                print_row(name, seed, epochs, result)
    return results


def sweep(seed: int, data, args) -> dict:
    """The coordinate search: each setting's values tried from the best recipe so far (until
    --sweep-budget-s seconds have passed: then the best so far)."""
    best, best_loss, tried, deadline = dict(ORIGINAL), math.inf, {}, time.time() + args.sweep_budget_s
    for setting, options in SWEEP:
        print(f"-- {setting}", flush=True)
        for option in options:
            if time.time() > deadline:
                print("sweep budget spent", flush=True)
                return best
            recipe = {**best, **option}
            key = json.dumps(recipe, sort_keys=True)
            if key not in tried:
                label = f"sweep{len(tried)}"
                tried[key] = train_run(recipe, seed, 1, data, args, label)["final"]
                print(f"{tried[key]:.4f}  {describe(recipe)}", flush=True)
            if tried[key] < best_loss:
                best, best_loss = recipe, tried[key]
        print(f"best so far {best_loss:.4f}: {describe(best)}", flush=True)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipes", default="main", help="main (original, fast), ablations (fast without each "
                        "part), all (main, then the ablations at the first --epochs), or names separated by commas")
    parser.add_argument("--seeds", default="1,2", help="initialisation seeds")
    parser.add_argument("--epochs", default="1", help="epochs, separated by commas (e.g. 1,2)")
    parser.add_argument("--val-every", type=int, default=49, help="steps between evaluations")
    parser.add_argument("--curve-windows", type=int, default=None, help="evaluate the curve's inner points on the "
                        "first N windows of 257 val tokens (default: all; the final point always uses all)")
    parser.add_argument("--time-steps", type=int, default=0, help="only time the recipes' steps: best of 3 "
                        "alternating rounds of N steps each (no table)")
    parser.add_argument("--steps", type=int, default=0, help="train N steps instead of whole epochs (a quick check)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--compile", default="auto", choices=["auto", "on", "off"])
    parser.add_argument("--data", default=None, help="folder with TinyStories_{train,val}.bin (default: made "
                        "from ../shared/data)")
    parser.add_argument("--sweep", action="store_true", help="run the coordinate search first (seed = the "
                        "first of --seeds), then the table with its winner as fast")
    parser.add_argument("--sweep-budget-s", type=float, default=math.inf, help="stop the sweep after this long")
    parser.add_argument("--out", type=Path, default=None, help="folder for results (default: a new temp folder)")
    args = parser.parse_args()
    args.out = args.out or Path(tempfile.mkdtemp(prefix="bench_recipe_"))
    args.out.mkdir(parents=True, exist_ok=True)
    seeds, epochs_list = [int(s) for s in args.seeds.split(",")], [int(e) for e in args.epochs.split(",")]
    data = token_files(args.data, args.out)
    print(f"torch {torch.__version__}, device {args.device}, compile {args.compile}; B={B}, T={T}; "
          f"out {args.out}", flush=True)
    fast = {**ORIGINAL, **RECIPES["fast"], **FAST_MODEL}
    if args.sweep:
        started = time.time()
        fast = sweep(seeds[0], data, args)
        print(f"sweep winner ({time.time() - started:.0f} s): {json.dumps(changes(fast))}", flush=True)
    recipes = named_recipes(fast)
    ablations = [n for n in recipes if n.startswith(("fast without", "fast with "))]
    groups = {"main": ["original", "fast"], "ablations": ablations, "all": ["original", "fast"]}
    names = groups.get(args.recipes, args.recipes.split(","))
    if args.time_steps:
        time_recipes({n: recipes[n] for n in names}, data, args)
        return
    header()
    started = time.time()
    results = run_table({n: recipes[n] for n in names}, seeds, epochs_list, data, args)
    if args.recipes == "all":  # the ablations at the first number of epochs only
        results += run_table({n: recipes[n] for n in ablations}, seeds, epochs_list[:1], data, args)
    print(f"({time.time() - started:.0f} s)")
    efficiency(results)
    if args.curve_windows:
        print(f"note: the curves' inner points are losses over the first {args.curve_windows} val windows only, so the "
              "tokens-to-reach figures above are approximate; the final val losses are over the whole file")
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    plot(results, args.out / "curves.png", args.curve_windows)
    print(f"wrote {args.out / 'results.json'} and {args.out / 'curves.png'}")


if __name__ == "__main__":
    main()

"""The search that chose the recommended configuration: vocabulary, model shape and Muon rates at a
fixed CPU training time.

Each candidate is a BPE vocabulary size (prepare_data.py --vocab-size on the train excerpt), a
model shape (create_model.py flags) and ./train settings; it trains from scratch for as many steps
as fit the --budget seconds at its own step time (measured first, as bench_time_to_quality.py does)
and is scored in bits per byte on the whole validation excerpt, and on as many tokens of the
train excerpt (its first ones), so over-fitting shows as a train figure far below the val one.
Stage 1 crosses vocabularies and shapes with the base settings; stage 2 varies the rates and the
batch of stage 1's best; stage 3 varies the weight decay (against over-fitting the 0.5M-token
excerpt) of one shape at fixed step counts (--steps; no step-time noise); every run is printed, so
what lost is on record.

    .venv/bin/python bench/bench_shapes.py --budget 14            # a tenth of the original's time
    .venv/bin/python bench/bench_shapes.py --budget 140 --stage 1 # the original's whole time
    .venv/bin/python bench/bench_shapes.py --stage 3 --vocab 4096 --shape 1L128C --steps 210,2000
"""
import argparse
import tempfile
from pathlib import Path

from bench_time_to_quality import create_model, prepare, step_seconds, train_run

from tinystories.config import GPTConfig

BASE = {"batch_size": 8, "seq_len": 256, "learning_rate": 1e-3, "optimizer": "muon", "matrix_lr": 0.01,
        "muon_momentum": 0.9, "embed_lr": 0.01, "beta2": 0.99, "lr_decay": "wsd", "cooldown": 0.4}
SHAPES = {"1L128C": (1, 4, 128), "2L128C": (2, 4, 128), "3L128C": (3, 4, 128), "4L128C": (4, 4, 128),
          "6L128C": (6, 4, 128), "2L96C": (2, 4, 96), "2L112C": (2, 4, 112), "3L96C": (3, 4, 96), "4L96C": (4, 4, 96), "4L192C": (4, 6, 192)}
STAGE_1 = [(vocab, shape) for vocab in (2048, 4096, 8192) for shape in ("2L128C", "3L128C", "4L128C")]
STAGE_2 = [{"matrix_lr": 0.005}, {"matrix_lr": 0.02}, {"embed_lr": 0.005}, {"embed_lr": 0.02},
           {"learning_rate": 3e-3}, {"batch_size": 4}, {"batch_size": 16}, {"cooldown": 0.2}, {"cooldown": 0.6}]
STAGE_3 = [{"weight_decay": wd} for wd in (0.0, 0.1, 0.3, 0.5, 0.7, 1.0, 2.0)]


def run(vocab: int, shape: str, settings: dict, args, steps: int | None = None) -> dict:
    """Train one candidate for `steps`, or for the steps that fit --budget at its step time."""
    data = prepare(args.out / f"bpe{vocab}", vocab)
    layers, heads, channels = SHAPES[shape]
    model = create_model(args.out / f"{shape}-{vocab}-seed{args.seed}.bin", args.seed, "--tokenizer",
                         data / "tokenizer.json", "--layers", layers, "--heads", heads, "--channels", channels)
    settings = {**settings, "seed": args.seed}
    steps = steps or max(1, round(args.budget / step_seconds(model, data, settings)))
    result = train_run(model, data, steps, settings, evals=1, seed=args.seed, train_bpb=True)
    mflops = GPTConfig(vocab_size=vocab, n_layer=layers, n_head=heads, n_embd=channels).flops_per_token(256) / 1e6
    changed = " ".join(f"{k}={v}" for k, v in settings.items() if k != "seed" and BASE.get(k) != v) or "base"
    print(f"{vocab:5d} {shape:7s} {mflops:6.1f} MFLOP/token {result['ms_per_step']:6.1f} ms x {steps:4d} steps = "
          f"{result['seconds']:6.1f} s | val {result['final']:.4f} train {result['train_bpb']:.4f} bits per byte | "
          f"seed {args.seed} {changed}", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", type=float, default=14.0, help="training seconds per candidate")
    parser.add_argument("--stage", type=int, default=0, help="1, 2 or 3 only (default: 1 and 2)")
    parser.add_argument("--vocab", type=int, default=2048, help="stage 2 or 3 alone: its vocabulary")
    parser.add_argument("--shape", default="4L128C", help=f"stage 2 or 3 alone: its shape ({', '.join(SHAPES)})")
    parser.add_argument("--steps", default="210,2000", help="stage 3: the step counts, separated by commas")
    parser.add_argument("--seed", type=int, default=1, help="initialisation and data seed")
    parser.add_argument("--only", default=None, help="stage 1 alone, these candidates: VOCAB:SHAPE,...")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    args.out = args.out or Path(tempfile.mkdtemp(prefix="bench_shapes_"))
    args.out.mkdir(parents=True, exist_ok=True)
    best = (args.vocab, args.shape)
    if args.stage in (0, 1):
        candidates = STAGE_1 if args.only is None else [(int(v), s) for v, s in (c.split(":") for c in args.only.split(","))]
        finals = {(vocab, shape): run(vocab, shape, BASE, args)["final"] for vocab, shape in candidates}
        best = min(finals, key=finals.get)
        print(f"stage 1 best: vocab {best[0]}, {best[1]}", flush=True)
    if args.stage in (0, 2):
        for change in STAGE_2:
            run(*best, {**BASE, **change}, args)
    if args.stage == 3:
        for steps in map(int, args.steps.split(",")):
            for change in STAGE_3:
                run(*best, {**BASE, **change}, args, steps)


if __name__ == "__main__":
    main()

"""The Llama-style block against GPT-2's: time to quality on the excerpt, as bench_time_to_quality.py
measures the recommended path, for each block at the same shape, data and settings.

For each shape (the fastest preset's, and llama2.c's deep-and-narrow 260K: 5 layers of 64 channels,
8 heads, 4 kv heads for the Llama block, MLP width 172), each seed and each block (create_model.py
--arch gpt2 / llama): the 4,096-token BPE of the excerpt, configs/fastest.toml's training settings
(Muon, B=8, T=256, WSD, weight decay 0.3), given a training-time budget (--budget seconds, and a tenth
of it; each its own run, its schedule sized to its budget through a calibration run's step time), bits
per byte on the whole val excerpt at --evals points. The two blocks of a shape and seed run one after
the other, so load on the machine falls on both.

Prints one line per run, then per shape and seed the blocks' final bits per byte and the training
seconds each needs to reach --target bits per byte (the original's final, BENCHMARKS.md "Time to
quality"); writes results.json to --out.

    .venv/bin/python bench/bench_blocks.py --seeds 1,2 --budget 92 --target 1.5359 --out /tmp/blocks_bf16
    TINYSTORIES_CPU_BF16=0 .venv/bin/python bench/bench_blocks.py --seeds 1,2 --budget 160 --target 1.5334 --evals 4
"""
import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_time_to_quality import (SHARED, create_model, fastest_settings, prepare, seconds_to_reach,  # noqa: E402
                                   step_seconds, train_run)

from tinystories.config import MODEL_PRESETS, RECOMMENDED_VOCAB  # noqa: E402

# shape name -> {block: create_model.py flags}
SHAPES = {
    "fastest": {"gpt2": {**MODEL_PRESETS["fastest"], "arch": "gpt2"}, "llama": {**MODEL_PRESETS["fastest"], "arch": "llama"}},
    "260K": {"gpt2": {"layers": 5, "heads": 8, "channels": 64, "block_size": 256},
             "llama": MODEL_PRESETS["llama260k"]},
}


def flags(values: dict) -> list[str]:
    return [f"--{k.replace('_', '-')}={v}" for k, v in values.items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="1,2")
    parser.add_argument("--shapes", default=",".join(SHAPES))
    parser.add_argument("--budget", type=float, default=92.0, help="training seconds of the long runs")
    parser.add_argument("--shares", default="1,0.1", help="budget fractions, one run each")
    parser.add_argument("--steps", default=None, help="step counts instead of a time budget, one run each (e.g. "
                        "the steps the fastest preset's budgets gave on a quiet machine: on a loaded one, seconds "
                        "buy few steps and the calibration drifts)")
    parser.add_argument("--target", type=float, default=1.5359, help="bits per byte to reach (the original's final)")
    parser.add_argument("--evals", type=int, default=8)
    parser.add_argument("--compile", default="on", choices=["on", "off"], help="--compile of every run (off: no "
                        "compile start-up per run, for a loaded machine)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if not (SHARED / "tinystories_v1_train_head.txt").is_file():
        sys.exit(f"needs the TinyStories excerpts in {SHARED}")
    args.out = args.out or Path(tempfile.mkdtemp(prefix="bench_blocks_"))
    args.out.mkdir(parents=True, exist_ok=True)
    bpe = prepare(args.out / f"bpe{RECOMMENDED_VOCAB}", RECOMMENDED_VOCAB)
    results = []
    for shape in args.shapes.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            settings = {**fastest_settings(), "seed": seed, "compile": args.compile}
            for block, values in SHAPES[shape].items():  # the blocks one after the other: the same load on both
                model = create_model(args.out / f"{shape}-{block}-seed{seed}.bin", seed, "--tokenizer",
                                     bpe / "tokenizer.json", *flags(values))
                if args.steps:
                    runs = [(None, int(n)) for n in args.steps.split(",")]
                else:
                    step_s = step_seconds(model, bpe, settings)
                    runs = [(share, max(1, round(share * args.budget / step_s))) for share in map(float, args.shares.split(","))]
                for share, steps in runs:
                    result = train_run(model, bpe, steps, settings, args.evals, seed)
                    result.update(shape=shape, block=block, seed=seed, share=share,
                                  reach=seconds_to_reach(result["curve"], args.target),
                                  reach_bytes=seconds_to_reach([(b, b, bpb) for _, b, bpb in result["curve"]], args.target))
                    results.append(result)
                    print(f"{shape:8s} {block:6s} seed {seed} share {share}: {steps:5d} steps of "
                          f"{result['ms_per_step']:6.1f} ms, {result['seconds']:6.1f} s, final {result['final']:.4f} bpb, "
                          f"reaches {args.target} at {result['reach'] if result['reach'] is None else round(result['reach'], 1)} s"
                          f" / {result['reach_bytes'] if result['reach_bytes'] is None else round(result['reach_bytes'] / 1e6, 2)} MB",
                          flush=True)
                    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    print(f"\nresults in {args.out}")


if __name__ == "__main__":
    main()

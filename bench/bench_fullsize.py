"""Every command at TinyStories' full size: wall time and peak RSS on the stand-in corpus of
bench/make_fullsize_corpus.py (3.7 GB of train text, 78 MB of val: the real archive's sizes; for timing
and memory only, never for quality). Each command runs as a user runs it, in its own process, under
/usr/bin/time (its elapsed time and maximum resident set size):
  prepare gpt2     prepare_data.py --source train.txt --val-source val.txt            (GPT-2's tokenizer)
  prepare bpe      the same with --vocab-size 4096 (the BPE trained on --bpe-sample-bytes of the train split)
  train            create_model.py --preset fastest, then ./train --config configs/fastest.toml on the
                   bpe4096 files: start-up (to the first step), ms/step, and the time around each validation
                   (the gap between the steps before and after it, less a step: it also holds the sample
                   printed and the checkpoint saved at the same steps, so it overstates validation).
                   --train-steps N runs N steps with -v N/3 (and --compile on, as the config's run compiles)
                   instead of the config's 2,000 (-v 500), and projects the config's own run from the measured
                   start-up, ms/step and validation
  eval             python -m tinystories eval of the trained model on the val file (--precision auto,
                   --compile auto: bf16 and compiled on this CPU); --eval-max-tokens N: its first N tokens

    .venv/bin/python bench/bench_fullsize.py --corpus /work/fullsize [--only prepare-gpt2,prepare-bpe,train,eval]
writes into CORPUS/run/ and prints one line per command, then a table for BENCHMARKS.md.
"""
import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STEPS = ("prepare-gpt2", "prepare-bpe", "train", "eval")


def timed(argv: list, log: Path) -> tuple[float, float]:
    """Run argv from the repository under /usr/bin/time; (wall seconds, peak RSS in MB). Output goes to `log`."""
    stats = log.with_suffix(".time")
    with open(log, "w") as out:
        result = subprocess.run(["/usr/bin/time", "-f", "%e %M", "-o", str(stats), *map(str, argv)], cwd=ROOT,
                                stdout=out, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        sys.exit(f"{argv}: exit {result.returncode}; see {log}")
    wall, rss_kb = stats.read_text().split()[-2:]
    return float(wall), int(rss_kb) / 1024


def prepare(corpus: Path, out: Path, *flags: str) -> list:
    return [sys.executable, "prepare_data.py", "--source", corpus / "train.txt", "--val-source", corpus / "val.txt",
            "--out-dir", out, "--tokenizer-file", out / "tokenizer.bin", *flags]


def train_figures(metrics: Path) -> dict:
    """Start-up, median ms/step and the seconds around each validation after step 0, from the run's log."""
    records = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    steps = {r["step"]: r for r in records if "train_loss" in r}
    val_steps = [r["step"] for r in records if "val_loss" in r and r["step"] in steps and r["step"] + 1 in steps]
    first = steps[min(steps)]
    return {"startup_s": first["time"] - first["ms_per_step"] / 1000,
            "ms_per_step": statistics.median(r["ms_per_step"] for r in steps.values()),
            "around_validation_s": [steps[s + 1]["time"] - steps[s]["time"] - steps[s + 1]["ms_per_step"] / 1000
                                    for s in val_steps],
            "validations": sum("val_loss" in r for r in records), "last_time_s": steps[max(steps)]["time"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=Path, required=True, help="folder of train.txt and val.txt")
    parser.add_argument("--only", default=",".join(STEPS), help="comma-separated: " + ", ".join(STEPS))
    parser.add_argument("--train-steps", type=int, default=0, help="steps of the train run (0: the config's)")
    parser.add_argument("--eval-max-tokens", type=int, default=0, help="eval --max-tokens (0: the whole val file)")
    args = parser.parse_args()
    run = args.corpus / "run"
    run.mkdir(exist_ok=True)
    only = args.only.split(",")
    bpe_dir = run / "bpe4096"
    results = {}
    if "prepare-gpt2" in only:
        results["prepare gpt2"] = timed(prepare(args.corpus, run / "gpt2"), run / "prepare-gpt2.log")
    if "prepare-bpe" in only:
        results["prepare bpe4096"] = timed(prepare(args.corpus, bpe_dir, "--vocab-size", "4096"),
                                           run / "prepare-bpe.log")
    model, ck = run / "fastest_model.bin", run / "fastest.bin"
    if "train" in only:
        # a short run compiles as the config's 2,000 steps do (--compile auto compiles from 200 steps)
        steps = ["-n", args.train_steps, "-v", args.train_steps // 3, "--compile", "on"] if args.train_steps else []
        timed([sys.executable, "create_model.py", "--preset", "fastest", "--tokenizer", bpe_dir / "tokenizer.json",
               "-o", model], run / "create.log")
        results["train"] = timed([sys.executable, "-m", "tinystories", "train", "--config", "configs/fastest.toml",
                                  "-e", model, "-c", ck, "-i", bpe_dir / "TinyStories_train.bin",
                                  "-j", bpe_dir / "TinyStories_val.bin", "--overwrite", *steps], run / "train.log")
        figures = train_figures(Path(str(ck) + ".metrics.jsonl"))
        print(json.dumps(figures))
        wall = results["train"][0]
        around = statistics.mean(figures["around_validation_s"])
        print(f"train: startup {figures['startup_s']:.1f} s, {figures['ms_per_step']:.1f} ms/step, "
              f"{figures['validations']} validations, {around:.2f} s around each: "
              f"{figures['validations'] * around / wall:.1%} of the {wall:.0f} s wall-clock")
        if args.train_steps:  # the config's run: 2,000 steps, a validation at 0 and every 500
            projected = figures["startup_s"] + 2000 * figures["ms_per_step"] / 1000 + 4 * around
            print(f"projected for the config's 2,000 steps: {projected:.0f} s, 5 validations "
                  f"{5 * around / projected:.1%} of it (step 0's counted as one more)")
    if "eval" in only:
        results["eval"] = timed([sys.executable, "-m", "tinystories", "eval", "-e", ck, "-i",
                                 bpe_dir / "TinyStories_val.bin", "--json", "--max-tokens", args.eval_max_tokens],
                                run / "eval.log")
        figures = json.loads((run / "eval.log").read_text().splitlines()[-1])
        print(f"eval: {figures['targets']:,} tokens, {figures['targets'] / results['eval'][0]:,.0f} tokens/s "
              f"(process wall-clock), precision {figures['precision']}, compiled {figures['compiled']}")
    print(time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    print("| command | wall | peak RSS |\n| --- | --- | --- |")
    for name, (wall, rss) in results.items():
        print(f"| {name} | {wall:,.0f} s | {rss:,.0f} MB |")


if __name__ == "__main__":
    main()

"""Encoding speed of a trained BPE: tiktoken built from its ranks (what prepare_data.py --vocab-size
uses, bpe.tiktoken_encoding) against `tokenizers`' own encode (what it used before) and GPT-2's
tiktoken encoding, story by story as prepare_data.py encodes, in one process, rounds interleaved.

The BPE (4,096 tokens) is trained on the train excerpt of ../shared/data; the stories are that
excerpt's, --repeat times. Every story's ids are checked equal between the two BPE encoders.

    .venv/bin/python bench/bench_bpe_encode.py [--repeat 4] [--rounds 3]
"""
import argparse
from pathlib import Path

from tinystories import bpe, tokenizer
from tinystories.tokenizer import BPETokenizer

from common import best_of_rounds

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    text = (DATA / "tinystories_v1_train_head.txt").read_text(encoding="utf-8")
    stories = [s.strip() for s in text.split("<|endoftext|>") if s.strip()]
    trained = BPETokenizer(bpe.train(stories, 4096), "bpe4096")
    assert trained.fast is not None, bpe.why_not_tiktoken(trained.hf, trained.pieces)
    stories = stories * args.repeat
    assert all(trained.fast.encode_ordinary(s) == trained.hf.encode(s, add_special_tokens=False).ids for s in stories)
    runs = {"tokenizers encode (before)": lambda: sum(len(trained.hf.encode(s, add_special_tokens=False).ids)
                                                      for s in stories),
            "tiktoken from its ranks (now)": lambda: sum(len(trained.encode(s)) for s in stories),
            "GPT-2 (tiktoken gpt2)": lambda: sum(len(tokenizer.encode(s)) for s in stories)}
    timings = best_of_rounds(runs, rounds=args.rounds, warmup=1)
    before = timings["tokenizers encode (before)"]
    megabytes = sum(len(s.encode()) for s in stories) / 1e6
    print(f"{len(stories):,} stories, {megabytes:.1f} MB, 1 process")
    for name, timing in timings.items():
        print(f"{name:32s} {timing.result / timing.best:12,.0f} tokens/s  {megabytes / timing.best:6.1f} MB/s  "
              f"{before.best / timing.best:5.2f}x before")


if __name__ == "__main__":
    main()

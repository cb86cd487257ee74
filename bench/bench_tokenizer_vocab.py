"""Bytes per token of TinyStories vocabularies: byte-level BPEs trained as `prepare_data.py --vocab-size N`
does, against GPT-2's, and how long each takes to train.

    .venv/bin/python bench/bench_tokenizer_vocab.py [--sizes 512 1024 2048 4096 8192] [--repeats 3]

Each BPE is trained (bpe.train, the function prepare_data.py calls) on the stripped stories of the
train excerpt ../shared/data/tinystories_v1_train_head.txt, --repeats times (the table gives the
median wall time, and checks every repeat gave the same tokenizer.json). Bytes per token = UTF-8 bytes
of a text / its tokens, the text encoded whole as ordinary text: the val excerpt
(tinystories_v1_valid_head.txt, held out) and, for comparison, the train excerpt it was trained on.
Prints a markdown table.
"""
import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tinystories import bpe, tokenizer  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
TRAIN, VAL = DATA / "tinystories_v1_train_head.txt", DATA / "tinystories_v1_valid_head.txt"


def read(path: Path) -> str:
    if not path.is_file():
        sys.exit(f"bench_tokenizer_vocab: {path} not found (the real TinyStories text in ../shared/data)")
    return path.read_text(encoding="utf-8")


def train(stories: list[str], size: int, repeats: int) -> tuple[tokenizer.BPETokenizer, float]:
    """The BPE of `size` tokens and the median wall seconds of training it `repeats` times."""
    seconds, files = [], set()
    for _ in range(repeats):
        start = time.perf_counter()
        hf = bpe.train(stories, size)
        seconds.append(time.perf_counter() - start)
        files.add(hf.to_str())
    if len(files) != 1:
        sys.exit(f"bench_tokenizer_vocab: {repeats} trainings of {size} tokens gave {len(files)} different tokenizers")
    return tokenizer.BPETokenizer(hf, f"bpe {size}"), statistics.median(seconds)


def bytes_per_token(tok: tokenizer.Tokenizer, text: str) -> float:
    return len(text.encode()) / len(tok.encode(text))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024, 2048, 4096, 8192])
    parser.add_argument("--repeats", type=int, default=3, help="trainings per size (default: %(default)s)")
    args = parser.parse_args()
    train_text, val_text = read(TRAIN), read(VAL)
    stories = [s.strip() for s in train_text.split("<|endoftext|>") if s.strip()]
    print(f"train excerpt: {len(stories):,} stories, {len(train_text.encode()):,} bytes; val excerpt: "
          f"{len(val_text.encode()):,} bytes; {os.cpu_count()} cores; load average {os.getloadavg()[0]:.1f} at start\n")
    print("| tokenizer | vocab | val bytes/token | val tokens | train bytes/token | training time |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    rows = [(tokenizer.gpt2(), None)] + [train(stories, size, args.repeats) for size in args.sizes]
    for tok, seconds in rows:
        name = "GPT-2" if seconds is None else "byte-level BPE"
        trained = "(not trained here)" if seconds is None else f"{seconds:.2f} s"
        print(f"| {name} | {tok.vocab_size:,} | {bytes_per_token(tok, val_text):.3f} | {len(tok.encode(val_text)):,} "
              f"| {bytes_per_token(tok, train_text):.3f} | {trained} |")
    print(f"\nload average {os.getloadavg()[0]:.1f} at the end; every repeat gave the same tokenizer.json")


if __name__ == "__main__":
    main()

"""What training the BPE on a bounded sample costs (prepare_data.py --bpe-sample-bytes): bytes per
token on held-out text of a 4,096-token BPE trained on the train split's first N bytes of stories,
against one trained on more (all) of it, and the training time of each.

  excerpt     the train excerpt of ../shared/data (2.1 MB) in prefixes of --excerpt-sizes bytes, held-out
              text: the val excerpt (its paragraphs)
  stand-in    the full-size stand-in's train.txt (bench/make_fullsize_corpus.py) in prefixes of
              --standin-sizes bytes, held-out: the first --heldout-bytes of its val.txt. Its words are
              the excerpt's, so it shows the cost of a bounded sample on text of this size, not the real
              archive's variety.

    .venv/bin/python bench/bench_bpe_sample.py [--corpus /work/fullsize] [--standin-sizes 50e6,200e6,800e6]
"""
import argparse
import time
from pathlib import Path

from tinystories import bpe
from tinystories.tokenizer import BPETokenizer

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
VOCAB = 4096


def stories_of(path: Path, max_bytes: float = 0, separator: str = "<|endoftext|>") -> list[str]:
    """The stripped stories of a .txt file (up to max_bytes of them, read lazily; 0: all)."""
    out, size, rest = [], 0, ""
    with open(path, encoding="utf-8") as f:
        while chunk := f.read(1 << 24):
            parts = (rest + chunk).split(separator)
            rest = parts.pop()
            for story in (p.strip() for p in parts):
                if not story:
                    continue
                if max_bytes and size + len(story.encode()) > max_bytes:
                    return out
                out.append(story)
                size += len(story.encode())
    return out + ([rest.strip()] if rest.strip() else [])


def bytes_per_token(tok: BPETokenizer, texts: list[str]) -> float:
    return sum(len(t.encode()) for t in texts) / sum(len(tok.encode(t)) for t in texts)


def curve(name: str, train: list[str], sizes: list[float], heldout: list[str]) -> None:
    """One line per prefix size: MB, stories, seconds to train, held-out bytes/token and its cost
    against the largest (the last size)."""
    rows = []
    for size in sizes:
        sample, total = [], 0
        for story in train:
            total += len(story.encode())
            if total > size:
                break
            sample.append(story)
        start = time.time()
        tok = BPETokenizer(bpe.train(sample, VOCAB), name)
        rows.append((size, len(sample), time.time() - start, bytes_per_token(tok, heldout)))
    best = rows[-1][3]
    for size, count, seconds, bpt in rows:
        print(f"{name:9s} {size / 1e6:8.1f} MB {count:10,} stories  trained in {seconds:6.1f} s  "
              f"held-out {bpt:.4f} bytes/token, {(best - bpt) / best:.2%} fewer than with the last", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=Path, default=None, help="the stand-in's folder (train.txt, val.txt)")
    parser.add_argument("--excerpt-sizes", default="250e3,500e3,1e6,3e6")
    parser.add_argument("--standin-sizes", default="50e6,200e6,800e6")
    parser.add_argument("--heldout-bytes", type=float, default=20e6)
    args = parser.parse_args()
    heldout = [p.strip() for p in (DATA / "tinystories_v1_valid_head.txt").read_text().split("\n\n") if p.strip()]
    curve("excerpt", stories_of(DATA / "tinystories_v1_train_head.txt"),
          [float(s) for s in args.excerpt_sizes.split(",")], heldout)
    if args.corpus:
        sizes = [float(s) for s in args.standin_sizes.split(",")]
        curve("stand-in", stories_of(args.corpus / "train.txt", max(sizes)), sizes,
              stories_of(args.corpus / "val.txt", args.heldout_bytes))


if __name__ == "__main__":
    main()

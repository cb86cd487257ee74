"""A stand-in for the whole TinyStories archive, of its size, made from the excerpt's stories: for timing
and memory only (bench/bench_fullsize.py), NEVER for quality.

The real archive holds ~925M train tokens (~3.7 GB of story text) and a ~19M-token val split (~78 MB);
only an excerpt of it is at hand (../shared/data: 2,316 train stories, 2 MB). This writes two
TinyStories .txt files (stories separated by a line `<|endoftext|>`, as TinyStories-train.txt is) of
the sizes asked for. Each story is re-mixed from the excerpt, so word and story counts are not simply
multiplied copies: its length is that of a random excerpt story, in sentences, and its sentences are
drawn at random from all the excerpt's stories (the first from a story's openings). Deterministic
(--seed); train and val use different seeds.

What it does not copy: the real data's variety. Its words are the excerpt's (~8,000 distinct ones
against the archive's tens of thousands), so a BPE trained on it sees fewer distinct words, and its
stories are less coherent. Token counts per byte are close to the real text's (the same sentences).

    .venv/bin/python bench/make_fullsize_corpus.py --out /work/fullsize [--train-bytes 3.7e9] [--val-bytes 78e6]
writes OUT/train.txt and OUT/val.txt (several GB: keep them out of the repository).
"""
import argparse
import re
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
EXCERPT = ROOT.parent / "shared" / "data" / "tinystories_v1_train_head.txt"
SEPARATOR = "\n<|endoftext|>\n"
STORIES_PER_CHUNK = 2_000


def excerpt_sentences() -> tuple[list[str], list[str], np.ndarray]:
    """(openings, sentences, sentences per story) of the excerpt's stories; a sentence keeps its
    trailing space or newline, so joined sentences keep the paragraphs."""
    text = EXCERPT.read_text(encoding="utf-8")
    stories = [s.strip() for s in text.split("<|endoftext|>") if s.strip()]
    split = [re.findall(r".+?(?:[.!?][\"']?(?:\s+|$)|$)", story, flags=re.S) for story in stories]
    split = [[s if s[-1].isspace() else s + " " for s in story if s] for story in split]
    return [story[0] for story in split], [s for story in split for s in story[1:]], np.array([len(s) for s in split])


def write_corpus(path: Path, target_bytes: int, seed: int) -> tuple[int, int]:
    """Write stories to `path` until it holds target_bytes; returns (stories, bytes)."""
    openings, sentences, lengths = excerpt_sentences()
    rng = np.random.default_rng(seed)
    written = stories = 0
    with open(path, "w", encoding="utf-8") as f:
        while written < target_bytes:
            counts = rng.choice(lengths, STORIES_PER_CHUNK)  # sentences per story
            firsts = rng.integers(0, len(openings), STORIES_PER_CHUNK)
            rest = rng.integers(0, len(sentences), int(counts.sum()))
            ends = np.cumsum(counts - 1)
            chunk = []
            for first, end, count in zip(firsts, ends, counts):
                body = "".join(sentences[i] for i in rest[end - count + 1 : end])
                chunk.append((openings[first] + body).strip())
            data = SEPARATOR.join(chunk) + SEPARATOR
            f.write(data)
            written += len(data.encode())
            stories += len(chunk)
            print(f"\r{path.name}: {written / 1e9:.2f} of {target_bytes / 1e9:.2f} GB", end="", flush=True)
    print()
    return stories, written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder for train.txt and val.txt (outside the repository)")
    parser.add_argument("--train-bytes", type=float, default=3.7e9)
    parser.add_argument("--val-bytes", type=float, default=78e6)
    parser.add_argument("--seed", type=int, default=31)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, size, seed in (("val.txt", args.val_bytes, args.seed + 1), ("train.txt", args.train_bytes, args.seed)):
        stories, written = write_corpus(out / name, int(size), seed)
        print(f"wrote {out / name}: {stories:,} stories, {written:,} bytes")


if __name__ == "__main__":
    main()

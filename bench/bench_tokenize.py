"""Tokenization throughput of prepare_data.py: 1 process vs --workers processes, in the same run.

    .venv/bin/python bench/bench_tokenize.py [--mb 40] [--workers N]

The stories are real TinyStories text (../shared/data/tinystories_v1_train_head.txt, repeated to
about --mb MB). Both runs go through `data.story_encoder`, the code prepare_data.py uses (EOT +
encode_ordinary of each stripped story, batches over a multiprocessing Pool), from stories in memory
to token arrays; reading sources and writing files are not included. Prints tokens/s for each, the
ratio, tokens per CPU-second (which other load on the machine does not change), a check that both
gave the same tokens, and the peak RSS of this process and of the largest worker.
"""
import argparse
import hashlib
import os
import resource
import sys
import time
from pathlib import Path

from tinystories import data
from tinystories.tokenizer import gpt2_encoding

TEXT = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinystories_v1_train_head.txt"


def load_stories(megabytes: float) -> list[str]:
    if not TEXT.is_file():
        sys.exit(f"bench_tokenize: {TEXT} not found (the real TinyStories text in ../shared/data)")
    stories = [s for s in TEXT.read_text(encoding="utf-8").split("<|endoftext|>") if s.strip()]
    size = sum(len(s.encode()) for s in stories)
    return stories * max(1, round(megabytes * 1e6 / size))


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the pool's workers, once joined)."""
    return sum(r.ru_utime + r.ru_stime for r in map(resource.getrusage, (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)))


def tokenize(stories: list[str], workers: int) -> tuple[float, float, int, str]:
    """(wall seconds, CPU seconds, tokens, sha256 of the tokens) for one pass over the stories,
    pool start included."""
    digest, count = hashlib.sha256(), 0
    start, cpu_start = time.perf_counter(), cpu_seconds()
    with data.story_encoder(workers) as encode:
        for tokens in encode(stories):
            count += tokens.size
            digest.update(tokens.tobytes())
    return time.perf_counter() - start, cpu_seconds() - cpu_start, count, digest.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=40, help="megabytes of text to tokenize (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=os.cpu_count(), help="processes for the parallel run (default: all cores)")
    args = parser.parse_args()
    stories = load_stories(args.mb)
    megabytes = sum(len(s.encode()) for s in stories) / 1e6
    print(f"{len(stories):,} stories, {megabytes:.1f} MB of text; {os.cpu_count()} cores; load average "
          f"{os.getloadavg()[0]:.1f} at start")
    gpt2_encoding()  # built before timing (both runs would otherwise pay for it)
    one_s, one_cpu, one_tokens, one_hash = tokenize(stories, 1)
    many_s, many_cpu, many_tokens, many_hash = tokenize(stories, args.workers)
    for name, wall, cpu, tokens in (("1 process", one_s, one_cpu, one_tokens),
                                    (f"{args.workers} processes", many_s, many_cpu, many_tokens)):
        print(f"{name:12} {tokens / wall:12,.0f} tokens/s ({megabytes / wall:.1f} MB/s, {wall:.1f} s); "
              f"{tokens / cpu:12,.0f} tokens per CPU-second")
    print(f"ratio (wall): {one_s / many_s:.2f}x; same tokens: {'yes' if one_hash == many_hash else 'NO'} "
          f"({one_tokens:,} tokens); load average {os.getloadavg()[0]:.1f} at the end")
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    worker = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"peak RSS: this process {own:,.0f} MiB (holds the {megabytes:.0f} MB of stories), "
          f"largest worker {worker:,.0f} MiB")


if __name__ == "__main__":
    main()

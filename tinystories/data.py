"""Story sources -> llm.c token files: `python prepare_data.py`.

    source --> splits (val, train), each a sequence of shards of stories  (sources.py, download.py)
           --> [--vocab-size N: a byte-level BPE of N tokens trained on the train split's stripped
               stories (bpe.py), one pass over the train split before the other two]
           --> per shard: shuffle with random.Random(1337 + shard index within its split),
               then for each story: EOT (50256), encode_ordinary(story.strip())
               (with --vocab-size: the BPE's EOT id and its encoding)
           --> <out-dir>/TinyStories_val.bin, TinyStories_train.bin (llm.c token files, see formats.py;
               with --vocab-size their headers record the tokenizer), <out-dir>/SOURCE.txt (where the
               stories came from), the llm.c tokenizer file, and with --vocab-size <out-dir>/tokenizer.json

Memory: one shard is held at a time (plus the next one, loaded in the background while the
current one is tokenized); tokens stream to the output file. Splits are never held whole.

Nothing half-written: all outputs are first written beside their targets under temporary names
(`<name>.staged`, each itself via an atomic temp file), and renamed into place together only after
every one is complete; on any error (or Ctrl-C) they are removed and the previous files stay as they
were. A run that is killed outright leaves them behind; the next run removes them.
"""
import contextlib
import multiprocessing.pool
import os
import queue
import random
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from . import bpe
from .config import HF_ARCHIVE_SIZE, HF_ARCHIVE_URL, PrepareConfig
from .download import Unreachable, fetch_archive
from .errors import BadInput
from .formats import TokenFileWriter, atomic_write, remove_stale_temp_files
from .outputs import TOKENIZER_FILE, TOKENIZER_JSON, TOKENS, OutputLock, check_output, check_writable
from .progress import progress
from .sources import Shard, Source, batched, local_source, splits, synthetic_source
from .tokenizer import BPETokenizer, Tokenizer, gpt2, write_tokenizer_file

SHUFFLE_SEED = 1337
WORKERS_PER_CORE = 4  # --workers limit: beyond the cores, processes only compete (and each costs memory)
BATCH_STORIES = 256  # stories per task sent to a tokenizer process
LOCAL_ALTERNATIVES = ("use a local copy with --source PATH (TinyStories_all_data.tar.gz, a folder of its "
                      "JSON shards, a .txt file or parquet files) or --source synthetic (generated stories, not TinyStories)")


# ----------------------------------------------------------------------------- tokenize

_tokenizer: Tokenizer | None = None  # encode_stories' tokenizer in this process (set by use_tokenizer)


def use_tokenizer(tokenizer: Tokenizer) -> None:
    global _tokenizer
    _tokenizer = tokenizer


def encode_stories(stories: list[str]) -> np.ndarray:
    """(n,) uint16 tokens: for each story, EOT then encode_ordinary(story.strip()), with the
    tokenizer of use_tokenizer."""
    ids = []
    for story in stories:
        ids.append(_tokenizer.eot)
        ids.extend(_tokenizer.encode(story.strip()))
    return np.array(ids, dtype=np.uint16)


@contextlib.contextmanager
def story_encoder(workers: int, tokenizer: Tokenizer | None = None):
    """Yields encode(stories) -> iterator of token arrays, in story order, over `workers` processes
    (batches of BATCH_STORIES stories; with one worker, in this process), with `tokenizer` (GPT-2's
    by default, built once here (~1 s): forked workers inherit it, spawned ones rebuild it)."""
    use_tokenizer(tokenizer or gpt2())
    if workers == 1:
        yield lambda stories: map(encode_stories, batched(stories, BATCH_STORIES))
        return
    with tokenizer_pool(workers, _tokenizer) as pool:  # leaving the block (an error, Ctrl-C) terminates the workers
        yield lambda stories: pool.imap(encode_stories, batched(stories, BATCH_STORIES))


WORKER_SIGNALS = {signal.SIGINT: signal.SIG_IGN, signal.SIGHUP: signal.SIG_IGN, signal.SIGTERM: signal.SIG_DFL}


def tokenizer_pool(workers: int, tokenizer) -> multiprocessing.pool.Pool:
    """`workers` processes that ignore SIGINT and SIGHUP. A Ctrl-C at a terminal (or its closing)
    reaches the whole process group; only this process acts on it (it stops the pool), so the workers
    neither print tracebacks nor die holding tasks this process would wait for. SIGTERM, with which
    the pool stops them, ends them at once, without Python (this process turns its own into an
    exception: cli.run). They inherit these from the fork or spawn, and each takes `tokenizer` once."""
    handlers = {s: signal.signal(s, handler) for s, handler in WORKER_SIGNALS.items()}
    try:
        return multiprocessing.Pool(workers, initializer=use_tokenizer, initargs=(tokenizer,))
    finally:
        for s, handler in handlers.items():
            signal.signal(s, handler)


def prefetch(items: Iterator) -> Iterator:
    """The same items, with the next one produced in a background thread while this one is used."""
    ready: queue.Queue = queue.Queue(maxsize=1)
    done = object()

    def produce():
        try:
            for item in items:
                ready.put((item, None))
            ready.put((done, None))
        except BaseException as e:  # handed to the consumer, raised there
            ready.put((done, e))

    threading.Thread(target=produce, daemon=True).start()
    while True:
        item, error = ready.get()
        if error is not None:
            raise error
        if item is done:
            return
        yield item


@dataclass
class SplitStats:
    shards: int = 0
    stories: int = 0
    tokens: int = 0


def write_split(split_shards: Iterator[Shard], path: Path, encode, tokenizer: Tokenizer, name: str,
                source_label: str) -> SplitStats:
    """Tokenize a split shard by shard into the llm.c token file `path` (written atomically)."""
    stats, start = SplitStats(), time.time()
    with TokenFileWriter(path, tokenizer.record) as writer, progress(desc=name, unit="tok", unit_scale=True) as bar:
        for shard in prefetch(split_shards):
            random.Random(SHUFFLE_SEED + shard.index).shuffle(shard.stories)
            for tokens in encode(shard.stories):
                writer.write(tokens)
                stats.stories += int(np.count_nonzero(tokens == tokenizer.eot))
                bar.update(tokens.size)
                bar.set_postfix_str(f"{stats.stories / max(time.time() - start, 1e-9):,.0f} stories/s", refresh=False)
            stats.shards += 1
            if bar.disable:
                elapsed = max(time.time() - start, 1e-9)
                print(f"  {name} shard {shard.index} ({shard.name}): {len(shard.stories):,} stories; {name} so far {writer.count:,} "
                      f"tokens ({writer.count / elapsed:,.0f} tokens/s, {stats.stories / elapsed:,.0f} stories/s)")
        if stats.stories == 0:
            raise BadInput(f"{source_label}: the {name} split is empty (too few stories in the source)")
        stats.tokens = writer.count
    return stats


# ----------------------------------------------------------------------------- prepare

def check_workers(workers: int) -> None:
    """BadInput for more --workers than WORKERS_PER_CORE per core (a typo of a few zeros forks thousands)."""
    cores = os.cpu_count() or 1
    if workers > WORKERS_PER_CORE * cores:
        raise BadInput(f"--workers {workers}: more than {WORKERS_PER_CORE} per core of this machine's {cores} "
                       f"({WORKERS_PER_CORE * cores}); each is a process, and beyond the cores they only compete")


def check_folder(folder: str, flag: str) -> Path:
    """BadInput unless `folder` exists or could be created; nothing is created yet."""
    path = Path(folder)
    existing = path.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise BadInput(f"{flag} {folder}: cannot create the folder ({existing} is a file)")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise BadInput(f"{flag} {folder}: cannot create the folder ({existing} is not writable)")
    return path


def make_folder(folder: str | Path, flag: str) -> Path:
    path = Path(folder)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BadInput(f"{flag} {folder}: cannot create the folder ({e.strerror})") from None
    if not os.access(path, os.W_OK):
        raise BadInput(f"{flag} {folder}: the folder is not writable")
    return path


def check_output_file(file: str | Path, flag: str, kind: str | None = None) -> Path:
    """BadInput unless `file` can be written as `flag` (outputs.check_output, where its folder exists
    already; `kind`: what it holds when it holds this project's format); nothing is created."""
    path = Path(file)
    if path.is_dir():
        raise BadInput(f"{flag} {file}: is a folder, expected a file name")
    check_folder(path.absolute().parent, flag)
    if path.absolute().parent.is_dir():
        check_output(path, flag, replaces=(kind,) if kind else ())
        check_writable(staged_name(path), f"{flag} {file}")
    return path


def check_outputs_apart(cfg: PrepareConfig, tokenizer_file: Path, out_dir_files: list[Path]) -> None:
    """BadInput when --tokenizer-file is one of the files written into --out-dir, or an output is a
    local --source or --val-source file (read while the outputs are written, then replaced)."""
    written = {os.path.realpath(p): f"--out-dir {cfg.out_dir}'s {p.name}" for p in out_dir_files}
    if os.path.realpath(tokenizer_file) in written:
        raise BadInput(f"--tokenizer-file {cfg.tokenizer_file}: is {written[os.path.realpath(tokenizer_file)]}; "
                       "name another file")
    written[os.path.realpath(tokenizer_file)] = f"--tokenizer-file {cfg.tokenizer_file}"
    local = [("--val-source", cfg.val_source)]
    if cfg.source not in ("hf", "synthetic"):
        local.append(("--source", cfg.source))
    for flag, spec in local:
        if spec and os.path.realpath(spec) in written:
            raise BadInput(f"{flag} {spec}: this run would replace it with {written[os.path.realpath(spec)]}; "
                           "write the outputs elsewhere")


def open_source(cfg: PrepareConfig) -> Source:
    """--source as a Source; 'hf' without network is one line naming the alternatives (or, with
    --fallback-synthetic, a warning and the synthetic source)."""
    if cfg.source == "synthetic":
        return synthetic_source(cfg.seed, cfg.synthetic_stories)
    if cfg.source != "hf":
        return local_source(cfg.source, "--source")
    try:
        return hf_source(cfg)
    except Unreachable as e:
        message = f"--source hf: {e}; {LOCAL_ALTERNATIVES}"
        if not cfg.fallback_synthetic:
            raise BadInput(message) from None
        print(f"warning: {message}. --fallback-synthetic: using SYNTHETIC stories instead", file=sys.stderr)
        return synthetic_source(cfg.seed, cfg.synthetic_stories)


def hf_source(cfg: PrepareConfig) -> Source:
    """The archive from --url, cached in --cache-dir and checked before use (see download.py)."""
    cache = make_folder(cfg.cache_dir, "--cache-dir")
    expected_size = cfg.size or (HF_ARCHIVE_SIZE if cfg.url == HF_ARCHIVE_URL else None)
    digest, source = fetch_archive(cfg.url, cache, expected_size, cfg.sha256)
    source.label = f"{source.label} (from {cfg.url}, sha256 {digest})"
    return source


def staged_name(path: Path) -> Path:
    return path.with_name(path.name + ".staged")


@contextlib.contextmanager
def staged(paths: list[Path]):
    """Yields a temp path beside each of `paths`; when the block succeeds they are all renamed into
    place, otherwise removed (so the previous files stay). A killed run's leftovers (its `.staged` files
    and their atomic_write temp files) go first."""
    temps = [staged_name(p) for p in paths]
    for temp in temps:
        remove_stale_temp_files(temp)
    try:
        yield temps
        for temp, path in zip(temps, paths):
            os.replace(temp, path)
    finally:
        for temp in temps:
            with contextlib.suppress(FileNotFoundError):
                temp.unlink()


def source_note(label: str, rule: str, val: SplitStats, train: SplitStats, tokenizer: Tokenizer) -> str:
    """SOURCE.txt: where the token files came from (plain text, no timestamps: runs compare equal)."""
    what = tokenizer.name
    if isinstance(tokenizer, BPETokenizer):
        what += f" trained on the train split ({bpe.FILE_NAME}; sha256 of its llm.c tokenizer file {tokenizer.fingerprint})"
    return (f"source: {label}\nsplit: {rule}\n"
            f"val: {val.shards} shards, {val.stories} stories, {val.tokens} tokens\n"
            f"train: {train.shards} shards, {train.stories} stories, {train.tokens} tokens\n"
            f"tokens: {what}, EOT {tokenizer.eot} before every story; each shard shuffled with "
            f"random.Random({SHUFFLE_SEED} + shard index within its split)\n")


def train_tokenizer(train_shards: Iterator[Shard], vocab_size: int, sample_bytes: int, synthetic: bool) -> BPETokenizer:
    """--vocab-size: a byte-level BPE of vocab_size tokens, trained on the stripped train stories, the
    first ones in split order up to sample_bytes of UTF-8 text (0: all). Synthetic stories (a smoke test)
    use few words: for them a smaller vocabulary that their text fills is trained instead, with a
    warning, where real stories would be an error."""
    start = time.time()
    what = f"the first {sample_bytes / 1e6:,.0f} MB of the train split" if sample_bytes else "the train split"
    print(f"tokenizer: training a byte-level BPE of {vocab_size} tokens on {what} (--bpe-sample-bytes)", flush=True)
    sample = SampleStats()
    stories = sample.first_stories(train_shards, sample_bytes)
    tokenizer = BPETokenizer(bpe.train(stories, vocab_size, exact=not synthetic), bpe.FILE_NAME)
    if tokenizer.vocab_size < vocab_size:
        print(f"warning: --vocab-size {vocab_size}: the SYNTHETIC stories fill only {tokenizer.vocab_size} tokens; "
              f"training that many instead", file=sys.stderr)
    print(f"tokenizer: {tokenizer.name}, trained on {sample.stories:,} stories ({sample.bytes / 1e6:,.1f} MB) in "
          f"{time.time() - start:.1f} s")
    return tokenizer


@dataclass
class SampleStats:
    stories: int = 0
    bytes: int = 0

    def first_stories(self, shards: Iterator[Shard], max_bytes: int) -> Iterator[str]:
        """The stripped stories of `shards` in order, until the next would pass max_bytes of UTF-8 (0: all),
        counted here. (Read without prefetch: a thread left waiting to hand over the next shard would keep it.)"""
        for shard in shards:
            for story in shard.stories:
                story = story.strip()
                size = len(story.encode())
                if max_bytes and self.bytes + size > max_bytes:
                    return
                self.stories += 1
                self.bytes += size
                yield story


def prepare(cfg: PrepareConfig) -> None:
    """python prepare_data.py: see the module docstring."""
    check_workers(cfg.workers)
    out_dir = check_folder(cfg.out_dir, "--out-dir")  # before a download, so a bad one fails fast
    default_tokenizer_file = out_dir / "tokenizer.bin" if cfg.vocab_size else "gpt2_tokenizer.bin"
    tokenizer_file = check_output_file(cfg.tokenizer_file or default_tokenizer_file, "--tokenizer-file", TOKENIZER_FILE)
    val_file, train_file = out_dir / "TinyStories_val.bin", out_dir / "TinyStories_train.bin"
    note_file, json_file = out_dir / "SOURCE.txt", out_dir / bpe.FILE_NAME
    check_outputs_apart(cfg, tokenizer_file, [val_file, train_file, note_file] + ([json_file] if cfg.vocab_size else []))
    for file, kind in ((val_file, TOKENS), (train_file, TOKENS), (note_file, None), (json_file, TOKENIZER_JSON)):
        check_output_file(file, f"--out-dir {cfg.out_dir}: its", kind)
    source = open_source(cfg)
    val_source = local_source(cfg.val_source, "--val-source") if cfg.val_source else None
    val_shards, train_shards, rule = splits(source, val_source)
    print(f"source: {source.label}\nsplit: {rule}")
    tokenizer = (train_tokenizer(splits(source, val_source)[1], cfg.vocab_size, cfg.bpe_sample_bytes, source.synthetic)
                 if cfg.vocab_size else gpt2())
    make_folder(out_dir, "--out-dir")
    make_folder(tokenizer_file.absolute().parent, "--tokenizer-file")
    outputs = [val_file, train_file, tokenizer_file, note_file] + ([json_file] if cfg.vocab_size else [])
    # one run per --out-dir (the lock is taken before staged() removes the temp files a killed run left)
    with (OutputLock(train_file, f"--out-dir {cfg.out_dir}:"), story_encoder(cfg.workers, tokenizer) as encode,
          staged(outputs) as temps):
        val = write_split(val_shards, temps[0], encode, tokenizer, "val", (val_source or source).label)
        train = write_split(train_shards, temps[1], encode, tokenizer, "train", source.label)
        write_tokenizer_file(temps[2], tokenizer)
        with atomic_write(temps[3]) as f:
            f.write(source_note(source.label, rule, val, train, tokenizer).encode())
        if cfg.vocab_size:
            bpe.write(temps[4], tokenizer.hf)
    synthetic_note = " from SYNTHETIC stories (not TinyStories)" if source.synthetic else ""
    json_note = f" and {json_file}" if cfg.vocab_size else ""
    print(f"wrote {val_file} ({val.tokens:,} tokens, {val.stories:,} stories) and {train_file} "
          f"({train.tokens:,} tokens, {train.stories:,} stories){synthetic_note}; tokenizer {tokenizer_file}{json_note}")

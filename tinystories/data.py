"""Story sources -> llm.c token files (`python prepare_data.py`), and the trainer's batch loader.

    source --> splits (val, train), each a sequence of shards of stories
           --> per shard: shuffle with random.Random(1337 + shard index within its split),
               then for each story: EOT (50256), encode_ordinary(story.strip())
           --> <out-dir>/TinyStories_val.bin, TinyStories_train.bin (llm.c token files, see formats.py),
               <out-dir>/SOURCE.txt (where the stories came from) and the llm.c tokenizer file

Sources (--source) and how they split into val and train:
  hf            the Hugging Face archive TinyStories_all_data.tar.gz, downloaded into --cache-dir
  *.tar.gz      that archive: its .json shards in name order; the first is val, the rest train
  folder/*.json JSON shards (each a list of objects with a "story" field): the same rule
  *.txt         a TinyStories text file: stories separated by lines `<|endoftext|>`
  *.parquet     a parquet file or a folder of them, column "text" (as on Hugging Face) or "story";
                in a folder, files named validation* are the val split (Hugging Face's layout)
  synthetic     generated stories (tinystories/synthetic.py), for offline smoke tests only
With --val-source the whole --source is train and the whole --val-source is val. A .txt, parquet
or synthetic source without its own val part holds out every 50th story (index % 50 == 0,
counting from 0) as val: 2%, like the archive's one shard in fifty.

Shards: archive members and JSON files are shards, as in llm.c (the shard index counts from 0
within each split, as llm.c's `enumerate(split_shards)` does). Streams (.txt, parquet, synthetic)
are cut into shards of CHUNK_STORIES consecutive stories of the split, numbered the same way.

Memory: one shard is held at a time (plus the next one, loaded in the background while the
current one is tokenized); tokens stream to the output file. Splits are never held whole.

Nothing half-written: all outputs are first written beside their targets under temporary names
(`<name>.staged`, each itself via an atomic temp file), and renamed into place together only after
every one is complete; on any error they are removed and the previous files stay as they were.
"""
import contextlib
import hashlib
import http.client
import itertools
import json
import multiprocessing
import os
import queue
import random
import sys
import tarfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Iterator

import numpy as np
from tqdm import tqdm

from . import synthetic
from .cli import HF_ARCHIVE_URL
from .errors import BadInput
from .formats import TokenFileWriter, atomic_write, read_tokens
from .tokenizer import EOT, gpt2_encoding, write_tokenizer_file

if TYPE_CHECKING:
    import torch

HF_ARCHIVE_SIZE = 1_608_001_638
SHUFFLE_SEED = 1337
HOLDOUT_EVERY = 50  # stories i with i % 50 == 0 are val when a source has no val part of its own
CHUNK_STORIES = 100_000  # stories per shard for .txt / parquet / synthetic sources
BATCH_STORIES = 256  # stories per task sent to a tokenizer process
PARQUET_ROWS = 8192  # rows read from a parquet file at a time
CONNECT_TIMEOUT = 15  # seconds to connect, and to wait for any one read
DOWNLOAD_ATTEMPTS = 5  # tries per run; each resumes where the last one stopped
LOCAL_ALTERNATIVES = ("use a local copy with --source PATH (TinyStories_all_data.tar.gz, a folder of its "
                      "JSON shards, a .txt file or parquet files) or --source synthetic (generated stories, not TinyStories)")


# ----------------------------------------------------------------------------- sources

@dataclass
class Shard:
    index: int  # position within its split: the shuffle seed is 1337 + index
    name: str  # where the stories came from, for messages
    stories: list[str]


@dataclass
class Source:
    """Stories from one place. `parts` are (name, load) in order; load() gives the part's stories.

    sharded: each part is one shard (an archive member or a JSON file), loaded whole;
    otherwise the parts form one stream of stories, cut into shards of CHUNK_STORIES.
    val_part: the source's own val split (parquet files named validation*), if it has one.
    """
    label: str
    parts: list[tuple[str, Callable[[], Iterable[str]]]]
    sharded: bool
    val_part: "Source | None" = None
    synthetic: bool = False


def batched(items: Iterable, size: int) -> Iterator[list]:
    iterator = iter(items)
    while batch := list(itertools.islice(iterator, size)):
        yield batch


def shards(source: Source, keep: Callable[[int], bool] = lambda i: True) -> Iterator[Shard]:
    """The source's shards, in order. For a stream, `keep(i)` picks which stories (by index) it holds."""
    if source.sharded:
        for index, (name, load) in enumerate(source.parts):
            yield Shard(index, name, list(load()))
        return
    stream = itertools.chain.from_iterable(load() for _, load in source.parts)
    kept = (story for i, story in enumerate(stream) if keep(i))
    for index, chunk in enumerate(batched(kept, CHUNK_STORIES)):
        yield Shard(index, f"{source.label} chunk {index}", chunk)


def splits(source: Source, val_source: Source | None) -> tuple[Iterator[Shard], Iterator[Shard], str]:
    """(val shards, train shards, how the split was made)."""
    if val_source is not None:
        return shards(val_source), shards(source), f"val = all of {val_source.label}; train = all of {source.label}"
    if source.val_part is not None:
        return shards(source.val_part), shards(source), f"val = {source.val_part.label}; train = the other files"
    if source.sharded:
        if len(source.parts) < 2:
            raise BadInput(f"{source.label}: {len(source.parts)} shard, too few for a val split "
                           "(the first shard is val, the rest train); give --val-source or more shards")
        first, rest = (Source(source.label, parts, True) for parts in (source.parts[:1], source.parts[1:]))
        return shards(first), shards(rest), f"val = the first shard ({source.parts[0][0]}); train = the other {len(rest.parts)}"
    val = shards(source, lambda i: i % HOLDOUT_EVERY == 0)
    train = shards(source, lambda i: i % HOLDOUT_EVERY != 0)
    return val, train, f"val = every {HOLDOUT_EVERY}th story (index % {HOLDOUT_EVERY} == 0); train = the rest"


def one_line(error: Exception) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def _keep_story(obj: dict):
    """json object_hook: an object with a "story" becomes (story,), any other object None, so a
    shard's other fields (instruction, summary, ...) are dropped while it is parsed."""
    return (obj["story"],) if "story" in obj else None


def parse_json_shard(file, where: str) -> list[str]:
    """Stories of a JSON shard: a list of objects, each with a "story" string."""
    try:
        items = json.load(file, object_hook=_keep_story)
    except (UnicodeDecodeError, ValueError) as e:
        raise BadInput(f"{where}: not a valid JSON shard ({one_line(e)})") from None
    if not isinstance(items, list):
        raise BadInput(f"{where}: expected a JSON list of objects with a \"story\" field")
    for i, item in enumerate(items):
        if not (isinstance(item, tuple) and isinstance(item[0], str)):
            raise BadInput(f"{where}: item {i} has no \"story\" text field")
    return [item[0] for item in items]


def load_json_file(path: Path) -> list[str]:
    with open(path, "rb") as f:
        return parse_json_shard(f, str(path))


def json_source(paths: list[Path], label: str) -> Source:
    return Source(label, [(str(p), partial(load_json_file, p)) for p in paths], sharded=True)


def archive_source(path: Path, name: Path | None = None) -> Source:
    """The .json members of a TinyStories archive, in name order. Reading the member list reads the
    whole archive, so a corrupt or truncated one fails here, before anything is written.
    `name` is the path shown in messages (a download is read while still named .part)."""
    name = name or path
    try:
        tar = tarfile.open(path, "r:" if path.name.lower().endswith(".tar") else "r:gz")
        members = sorted((m for m in tar.getmembers() if m.isfile() and m.name.endswith(".json")),
                         key=lambda m: m.name)
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        raise BadInput(f"{name}: corrupt or truncated archive ({one_line(e)})") from None
    if not members:
        raise BadInput(f"{name}: the archive holds no .json shards")

    def load(member):
        where = f"{name}:{member.name}"
        try:
            return parse_json_shard(tar.extractfile(member), where)
        except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
            raise BadInput(f"{where}: corrupt archive ({one_line(e)})") from None

    return Source(str(name), [(f"{name}:{m.name}", partial(load, m)) for m in members], sharded=True)


def text_stories(path: Path) -> Iterator[str]:
    """Stories of a TinyStories .txt file: text between lines `<|endoftext|>` (blank ones skipped)."""
    lines = []
    try:
        with open(path, encoding="utf-8") as f:
            for line in itertools.chain(f, ["<|endoftext|>"]):  # the last story may lack its separator
                if line.strip() != "<|endoftext|>":
                    lines.append(line)
                    continue
                story, lines = "".join(lines), []
                if story.strip():
                    yield story
    except UnicodeDecodeError as e:
        raise BadInput(f"{path}: not UTF-8 text ({one_line(e)})") from None


def parquet_column(path: Path) -> str:
    """The column holding the stories: "text" (Hugging Face's parquet) or "story"."""
    import pyarrow
    import pyarrow.parquet as pq

    try:
        names = pq.ParquetFile(path).schema_arrow.names
    except (pyarrow.ArrowException, OSError) as e:
        raise BadInput(f"{path}: not a readable parquet file ({one_line(e)})") from None
    for column in ("text", "story"):
        if column in names:
            return column
    raise BadInput(f"{path}: parquet file has no \"text\" or \"story\" column (columns: {', '.join(names)})")


def parquet_stories(path: Path, column: str) -> Iterator[str]:
    """The column's values, read PARQUET_ROWS rows at a time."""
    import pyarrow
    import pyarrow.parquet as pq

    try:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=PARQUET_ROWS, columns=[column]):
            for value in batch.column(0).to_pylist():
                if not isinstance(value, str):
                    raise BadInput(f"{path}: a row's \"{column}\" is {value!r}, not text")
                yield value
    except (pyarrow.ArrowException, OSError) as e:
        raise BadInput(f"{path}: not a readable parquet file ({one_line(e)})") from None


def parquet_source(paths: list[Path], label: str) -> Source:
    """Parquet files as one stream; in a folder, files named validation* become the val part."""
    def stream(files, text):
        return Source(text, [(str(p), partial(parquet_stories, p, parquet_column(p))) for p in files], sharded=False)

    val_files = [p for p in paths if p.name.startswith("validation")]
    if not val_files or len(val_files) == len(paths):
        return stream(paths, label)
    train_files = [p for p in paths if p not in val_files]
    source = stream(train_files, f"{label} (train files)")
    source.val_part = stream(val_files, f"{label} (validation* files)")
    return source


def synthetic_source(seed: int, count: int) -> Source:
    label = f"SYNTHETIC stories (tinystories/synthetic.py, seed {seed}, {count} stories; not TinyStories)"
    return Source(label, [("synthetic", partial(synthetic.stories, seed, count))], sharded=False, synthetic=True)


def local_source(spec: str, flag: str) -> Source:
    """A local path of any supported kind, or BadInput naming the flag."""
    path = Path(spec)
    if not path.exists():
        raise BadInput(f"{flag} {spec}: no such file or folder (expected 'hf', 'synthetic', a .tar.gz archive, "
                       "a folder of .json shards, a .txt file or parquet files)")
    if path.is_dir():
        json_files, parquet_files = sorted(path.glob("*.json")), sorted(path.glob("*.parquet"))
        if json_files:
            return json_source(json_files, f"JSON shards in {path}")
        if parquet_files:
            return parquet_source(parquet_files, f"parquet files in {path}")
        raise BadInput(f"{flag} {spec}: the folder holds no .json shards or .parquet files")
    name = path.name.lower()
    if name.endswith((".tar.gz", ".tgz", ".tar")):
        return archive_source(path)
    if name.endswith(".json"):
        return json_source([path], str(path))
    if name.endswith(".txt"):
        return Source(str(path), [(str(path), partial(text_stories, path))], sharded=False)
    if name.endswith(".parquet"):
        return parquet_source([path], str(path))
    raise BadInput(f"{flag} {spec}: unknown kind of source (expected a .tar.gz archive, a folder of .json shards, "
                   "a .txt file or .parquet files)")


# ----------------------------------------------------------------------------- download

class Unreachable(Exception):
    """The archive server could not be contacted at all."""


def progress(**kwargs) -> tqdm:
    """A tqdm bar on a terminal; silent when stderr is not one (logs get plain lines instead)."""
    return tqdm(disable=not sys.stderr.isatty(), **kwargs)


def parse_content_range(value: str | None, url: str) -> tuple[int, int | None]:
    """'bytes 100-199/1000' -> (100, 1000); the total is None when the server gives '*'."""
    try:
        first, total = value.split()[1].split("/")
        return int(first.split("-")[0]), None if total == "*" else int(total)
    except (AttributeError, IndexError, ValueError):
        raise BadInput(f"--url {url}: the server sent a malformed Content-Range header {value!r}") from None


def download_once(url: str, part: Path, expected_size: int | None) -> None:
    """One request: continue `part` from its current size with a Range request. Raises Unreachable
    when no connection is made, OSError / HTTPException when it breaks off."""
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=CONNECT_TIMEOUT)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # our partial file is not a prefix of theirs: start over
            part.unlink()
            raise ConnectionError("the server refused to resume; starting over") from None
        raise BadInput(f"--url {url}: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError) as e:
        raise Unreachable(one_line(getattr(e, "reason", e))) from None
    with response:
        if response.status == 206:
            start, total = parse_content_range(response.headers.get("Content-Range"), url)
            if start != have:
                part.unlink()
                raise ConnectionError(f"the server resumed at byte {start}, not {have}; starting over")
        else:  # 200: the whole file (a server that ignores Range sends this too)
            if have:
                print(f"the server does not resume downloads; starting {part.name} over", file=sys.stderr)
            have, length = 0, response.headers.get("Content-Length")
            total = int(length) if length is not None else None
        if expected_size is not None and total is not None and total != expected_size:
            raise BadInput(f"--url {url}: the server's file has {total} bytes, expected {expected_size} (--size)")
        with open(part, "ab" if have else "wb") as f, progress(total=total, initial=have, unit="B", unit_scale=True,
                                                               unit_divisor=1024, desc=part.name) as bar:
            while chunk := response.read(1 << 20):
                f.write(chunk)
                bar.update(len(chunk))
        size = part.stat().st_size
        if total is not None and size != total:
            raise ConnectionError(f"the connection closed at byte {size} of {total}")


def download(url: str, part: Path, expected_size: int | None) -> None:
    """Fetch `url` into `part`, resuming a partial `part` (from this or an earlier run) with Range
    requests; up to DOWNLOAD_ATTEMPTS tries. The partial file is kept when it cannot finish."""
    start = time.time()
    print(f"downloading {url}\n  to {part}" + (f" (resuming at byte {part.stat().st_size:,})" if part.exists() else ""))
    for attempt in range(1, DOWNLOAD_ATTEMPTS + 1):
        try:
            download_once(url, part, expected_size)
            break
        except Unreachable as e:
            if attempt == 1:
                raise
            problem = f"the server went away ({one_line(e)})"
        except (OSError, http.client.HTTPException) as e:
            problem = f"the download broke off ({one_line(e)})"
        if attempt == DOWNLOAD_ATTEMPTS:
            raise BadInput(f"--url {url}: {problem}; {part} is kept: run again to resume") from None
        print(f"{problem}; resuming (try {attempt + 1} of {DOWNLOAD_ATTEMPTS})", file=sys.stderr)
    size = part.stat().st_size
    print(f"downloaded {size:,} bytes in {time.time() - start:.0f} s")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def check_archive(path: Path, expected_size: int | None, expected_sha256: str | None, name: Path) -> str:
    """Size and sha256 of an archive against what is expected; returns its sha256."""
    size = path.stat().st_size
    if expected_size is not None and size != expected_size:
        raise BadInput(f"{name}: {size:,} bytes, expected {expected_size:,}: incomplete or not the TinyStories "
                       "archive (delete it to download it again)")
    digest = file_sha256(path)
    if expected_sha256 is not None and digest != expected_sha256.lower():
        raise BadInput(f"{name}: sha256 {digest} does not match the expected {expected_sha256}")
    return digest


def hf_source(args) -> Source:
    """The archive from --url, cached in --cache-dir and checked before use (see fetch_archive)."""
    cache = make_folder(args.cache_dir, "--cache-dir")
    archive = cache / (Path(urllib.parse.urlparse(args.url).path).name or "archive.tar.gz")
    expected_size = args.size or (HF_ARCHIVE_SIZE if args.url == HF_ARCHIVE_URL else None)
    digest, source = fetch_archive(args.url, archive, expected_size, args.sha256)
    source.label = f"{archive} (from {args.url}, sha256 {digest})"
    return source


def fetch_archive(url: str, archive: Path, expected_size: int | None, sha256: str | None) -> tuple[str, Source]:
    """A verified archive: (sha256, source). Checks: the size (--size, or the published size for
    the Hugging Face URL); the sha256 against --sha256 when given, else against the sidecar file
    <archive>.sha256 that records it after the first complete download; and that the tar reads
    through to the end. A cached archive is used without network; a download that fails a check
    is deleted (a cached one is kept and named in the error)."""
    sidecar = archive.with_name(archive.name + ".sha256")
    recorded = (sidecar.read_text().split() or [None])[0] if sidecar.exists() else None
    if archive.exists():
        digest = check_archive(archive, expected_size, sha256, archive)
        if sha256 is None and recorded is not None and digest != recorded:
            raise BadInput(f"{archive}: sha256 {digest} differs from the one recorded at download ({sidecar}): "
                           "the file changed; delete it to download it again")
        source = archive_source(archive)
    else:
        part = archive.with_name(archive.name + ".part")
        download(url, part, expected_size)
        try:
            digest = check_archive(part, expected_size, sha256, archive)
            source = archive_source(part, name=archive)
        except BadInput:
            part.unlink()
            raise
        os.replace(part, archive)
    if recorded != digest:
        with atomic_write(sidecar) as f:
            f.write(f"{digest}  {archive.name}\n".encode())
    return digest, source


# ----------------------------------------------------------------------------- tokenize

def encode_stories(stories: list[str]) -> np.ndarray:
    """(n,) uint16 tokens: for each story, EOT then encode_ordinary(story.strip())."""
    enc = gpt2_encoding()
    ids = []
    for story in stories:
        ids.append(EOT)
        ids.extend(enc.encode_ordinary(story.strip()))
    return np.array(ids, dtype=np.uint16)


@contextlib.contextmanager
def story_encoder(workers: int):
    """Yields encode(stories) -> iterator of token arrays, in story order, over `workers` processes
    (batches of BATCH_STORIES stories; with one worker, in this process)."""
    gpt2_encoding()  # built once here (~1 s): forked workers inherit it, others build it at start
    if workers == 1:
        yield lambda stories: map(encode_stories, batched(stories, BATCH_STORIES))
        return
    with multiprocessing.Pool(workers, initializer=gpt2_encoding) as pool:
        yield lambda stories: pool.imap(encode_stories, batched(stories, BATCH_STORIES))


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


def write_split(split_shards: Iterator[Shard], path: Path, encode, name: str, source_label: str) -> SplitStats:
    """Tokenize a split shard by shard into the llm.c token file `path` (written atomically)."""
    stats, start = SplitStats(), time.time()
    with TokenFileWriter(path) as writer, progress(desc=name, unit="tok", unit_scale=True) as bar:
        for shard in prefetch(split_shards):
            random.Random(SHUFFLE_SEED + shard.index).shuffle(shard.stories)
            for tokens in encode(shard.stories):
                writer.write(tokens)
                stats.stories += int(np.count_nonzero(tokens == EOT))
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


def check_output_file(file: str, flag: str) -> Path:
    path = Path(file)
    if path.is_dir():
        raise BadInput(f"{flag} {file}: is a folder, expected a file name")
    check_folder(path.absolute().parent, flag)
    return path


def open_source(args) -> Source:
    """--source as a Source; 'hf' without network is one line naming the alternatives (or, with
    --fallback-synthetic, a warning and the synthetic source)."""
    if args.source == "synthetic":
        return synthetic_source(args.seed, args.synthetic_stories)
    if args.source != "hf":
        return local_source(args.source, "--source")
    try:
        return hf_source(args)
    except Unreachable as e:
        host = urllib.parse.urlparse(args.url).netloc
        where = "Hugging Face" if host == "huggingface.co" else host
        message = f"--source hf: {where} could not be reached ({e}); {LOCAL_ALTERNATIVES}"
        if not args.fallback_synthetic:
            raise BadInput(message) from None
        print(f"warning: {message}. --fallback-synthetic: using SYNTHETIC stories instead", file=sys.stderr)
        return synthetic_source(args.seed, args.synthetic_stories)


@contextlib.contextmanager
def staged(paths: list[Path]):
    """Yields a temp path beside each of `paths`; when the block succeeds they are all renamed into
    place, otherwise removed (so the previous files stay)."""
    temps = [p.with_name(p.name + ".staged") for p in paths]
    try:
        yield temps
        for temp, path in zip(temps, paths):
            os.replace(temp, path)
    finally:
        for temp in temps:
            with contextlib.suppress(FileNotFoundError):
                temp.unlink()


def source_note(label: str, rule: str, val: SplitStats, train: SplitStats) -> str:
    """SOURCE.txt: where the token files came from (plain text, no timestamps: runs compare equal)."""
    return (f"source: {label}\nsplit: {rule}\n"
            f"val: {val.shards} shards, {val.stories} stories, {val.tokens} tokens\n"
            f"train: {train.shards} shards, {train.stories} stories, {train.tokens} tokens\n"
            f"tokens: GPT-2 BPE (tiktoken gpt2), EOT {EOT} before every story; each shard shuffled with "
            f"random.Random({SHUFFLE_SEED} + shard index within its split)\n")


def prepare(args) -> None:
    """python prepare_data.py: see the module docstring."""
    out_dir = check_folder(args.out_dir, "--out-dir")  # before a download, so a bad one fails fast
    tokenizer_file = check_output_file(args.tokenizer_file, "--tokenizer-file")
    source = open_source(args)
    val_source = local_source(args.val_source, "--val-source") if args.val_source else None
    val_shards, train_shards, rule = splits(source, val_source)
    make_folder(out_dir, "--out-dir")
    make_folder(tokenizer_file.absolute().parent, "--tokenizer-file")
    print(f"source: {source.label}\nsplit: {rule}")
    val_file, train_file = out_dir / "TinyStories_val.bin", out_dir / "TinyStories_train.bin"
    note_file = out_dir / "SOURCE.txt"
    with story_encoder(args.workers) as encode, staged([val_file, train_file, tokenizer_file, note_file]) as temps:
        val = write_split(val_shards, temps[0], encode, "val", source.label)
        train = write_split(train_shards, temps[1], encode, "train", source.label)
        write_tokenizer_file(temps[2])
        with atomic_write(temps[3]) as f:
            f.write(source_note(source.label, rule, val, train).encode())
    synthetic_note = " from SYNTHETIC stories (not TinyStories)" if source.synthetic else ""
    print(f"wrote {val_file} ({val.tokens:,} tokens, {val.stories:,} stories) and {train_file} "
          f"({train.tokens:,} tokens, {train.stories:,} stories){synthetic_note}; tokenizer {tokenizer_file}")


# ----------------------------------------------------------------------------- batches

class TokenLoader:
    """Serves (x, y) batches of shape (B, T) from a token file, in file order, wrapping at the end.

    The file is memory-mapped, never loaded whole. One global batch is `world` x B windows of T+1
    tokens laid side by side (each window overlaps the next by one token); rank r takes windows
    r*B .. r*B+B-1, so ranks read disjoint slices. `position` is the token offset of the next
    global batch: it is the whole data state, saved in checkpoints, and means the same thing
    whatever the number of ranks.
    """

    def __init__(self, path, batch_size: int, seq_len: int, rank: int = 0, world: int = 1,
                 vocab_size: int = 50257):
        if batch_size < 1 or seq_len < 1 or not 0 <= rank < world:
            raise ValueError(f"bad loader shape: batch {batch_size}, seq_len {seq_len}, rank {rank} of {world}")
        self.path, self.B, self.T, self.rank, self.world = path, batch_size, seq_len, rank, world
        self.tokens = read_tokens(path, vocab_size)
        self.span = world * batch_size * seq_len  # tokens consumed by one global batch
        if self.tokens.size < self.span + 1:
            raise BadInput(f"{path}: {self.tokens.size} tokens, fewer than one batch needs "
                           f"({world} x {batch_size} x {seq_len} + 1 = {self.span + 1}); lower -b or -t")
        self.position = 0

    def batches_per_epoch(self) -> int:
        return (self.tokens.size - 1) // self.span

    def next_batch(self) -> "tuple[torch.Tensor, torch.Tensor]":
        """x, y: (B, T) int64 on the CPU; y is x shifted by one token."""
        import torch  # imported here: prepare_data.py never needs torch (a 4 s import)

        if self.position + self.span + 1 > self.tokens.size:
            self.position = 0
        start = self.position + self.rank * self.B * self.T
        window = np.asarray(self.tokens[start : start + self.B * self.T + 1], dtype=np.int64)
        self.position += self.span
        buf = torch.from_numpy(window)
        x = buf[:-1].view(self.B, self.T)
        y = buf[1:].view(self.B, self.T)
        return x, y

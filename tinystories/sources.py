"""Story sources: where the stories of --source / --val-source come from, and how they split.

Sources (--source) and how they split into val and train:
  *.tar.gz      the TinyStories archive (what --source hf downloads, see download.py): its .json
                shards in name order; the first is val, the rest train
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
A shard's stories are loaded only when the shard is reached, so a split is never held whole.
"""
import itertools
import json
import tarfile
import zlib
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Iterable, Iterator

from . import synthetic
from .errors import BadInput

HOLDOUT_EVERY = 50  # stories i with i % 50 == 0 are val when a source has no val part of its own
CHUNK_STORIES = 100_000  # stories per shard for .txt / parquet / synthetic sources
PARQUET_ROWS = 8192  # rows read from a parquet file at a time


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
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
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


def archive_source(path: Path) -> Source:
    """The .json members of a TinyStories archive, in name order. Reading the member list reads the
    whole archive, so a corrupt or truncated one fails here, before anything is written."""
    try:
        tar = tarfile.open(path, "r:" if path.name.lower().endswith(".tar") else "r:gz")
        members = sorted((m for m in tar.getmembers() if m.isfile() and m.name.endswith(".json")),
                         key=lambda m: m.name)
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        raise BadInput(f"{path}: corrupt or truncated archive ({one_line(e)})") from None
    if not members:
        raise BadInput(f"{path}: the archive holds no .json shards")

    def load(member):
        where = f"{path}:{member.name}"
        try:
            return parse_json_shard(tar.extractfile(member), where)
        except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
            raise BadInput(f"{where}: corrupt archive ({one_line(e)})") from None

    return Source(str(path), [(f"{path}:{m.name}", partial(load, m)) for m in members], sharded=True)


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
        json_files = sorted(p for p in path.glob("*.json") if p.is_file())  # regular files: no pipe or device
        parquet_files = sorted(p for p in path.glob("*.parquet") if p.is_file())
        if json_files:
            return json_source(json_files, f"JSON shards in {path}")
        if parquet_files:
            return parquet_source(parquet_files, f"parquet files in {path}")
        raise BadInput(f"{flag} {spec}: the folder holds no .json shards or .parquet files")
    if not path.is_file():  # opening a pipe would wait for a writer; a device may never end
        raise BadInput(f"{flag} {spec}: not a regular file (a pipe or a device), expected a file or a folder")
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

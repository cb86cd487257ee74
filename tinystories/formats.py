"""Binary file formats: llm.c token files, llm.c model files, our model file for other blocks, and our
training-state trailer.

Every reader validates before it allocates (sizes are checked against the file's length, so a
forged header cannot ask for a huge buffer) and raises `BadInput` with one line naming the file.
Every writer goes through `atomic_write`: temp file in the same folder, fsync, rename, so a kill at
any instant leaves either the old complete file or the new complete one. Nothing uses pickle.

All headers are 256 little-endian int32 values (1024 bytes); unused entries are 0.

Token file (llm.c `dev/data/*.bin`)
    header[0] = 20240520 (magic), [1] = 1 (version), [2] = token count N,
    [3:13] = the tokenizer that made the tokens (ours; llm.c reads only [0:3]):
        all 0: GPT-2 (llm.c's own files, and ours from GPT-2: byte for byte llm.c's)
        else:  [3] = vocab size V (1..65536), [4] = EOT id (< V),
               [5:13] = the sha256 of the tokenizer's llm.c tokenizer file (tokenizer.py), its 32
                        bytes as they are (header bytes 20..51)
    then N tokens as uint16.               size == 1024 + 2 * N

Model file (llm.c `gpt2_124M.bin` style)
    header[0] = 20240326 (magic), [1] = 3 (fp32) or 5 (bf16, read only),
    [2] block size, [3] vocab size, [4] layers, [5] heads, [6] channels, [7] padded vocab size
    [8:18] = the tokenizer the model is made for (ours; llm.c reads only [0:8]): all 0 for none named
             (GPT-2, or a model made with --vocab-size alone), else the token file's record:
             [8] = vocab size (= [3]), [9] = EOT id, [10:18] = the sha256 of its llm.c tokenizer file
    then the 16 tensors of llmc.py's table, each holding all layers, linear weights as
    (out, in), in fp32 (4 bytes) or bf16 (2 bytes).
    size == 1024 + bytes_per_value * config.num_parameters()

Model file of another block (ours: a model whose GPTConfig architecture is not GPT-2's, which llm.c's
layout cannot hold; DESIGN.md "Models that are not GPT-2's block")
    header[0] = 20261205 (magic: llm.c refuses the file, never misreads it), [1] = 1 (version; fp32),
    [2:18] as in an llm.c model header (sizes, padded vocab, tokenizer record),
    [18:18+A] the architecture: GPTConfig's A architecture fields (config.ARCH_FIELDS) in order, each
              an int: a field of config.ARCH_CHOICES as its index there, a bool as 0/1, an int as
              itself; the rest of the header is 0 (a later field's 0 is its default)
    then the tensors of llmc.py's table for that config, in fp32, as in an llm.c model file.
    size == 1024 + 4 * config.num_parameters(); checkpoints add the same trailer.
    Writers choose the kind from the config (GPT-2's block: llm.c's), readers from the magic.

Checkpoint = model file + training-state trailer (ours)
    A checkpoint is a complete model file followed by a trailer, so llm.c and every model reader
    see an ordinary model file (they read exactly the header and the tensors), while the weights
    and the optimizer state live in one file and are replaced by one atomic rename: they can
    never come from two different moments. The trailer:
        header[0] = 20261123 (state magic), [1] = 2 (version; 1 is still read), [2] = metadata
        length M (bytes), [3] = payload length P (bytes; payload = metadata + tensor data)
        M bytes of UTF-8 JSON metadata: free-form training fields plus
            "weights_sha256": sha256 of the model part (header + tensors) it belongs to,
            "payload_sha256": sha256 of the tensor data that follows,
            "tensors": [{"name", "dtype", "shape"}, ...] in storage order,
            "meta_sha256": sha256 of this JSON without this field (keys sorted, json.dumps'
                defaults), so an edit of any metadata value is found (version 2; version 1 lacks it)
        P - M bytes of raw little-endian tensor data, in that order.
    size == model size + 1024 + P
"""
import contextlib
import errno
import hashlib
import json
import math
import os
import re
import stat
import tempfile
from dataclasses import dataclass, field

import numpy as np

from . import llmc
from .config import ARCH_CHOICES, ARCH_FIELDS, SIZE_FIELDS, GPTConfig
from .errors import BadInput

HEADER_INTS = 256
HEADER_BYTES = 4 * HEADER_INTS
TOKEN_MAGIC, TOKEN_VERSION = 20240520, 1
MODEL_MAGIC, MODEL_VERSION_FP32, MODEL_VERSION_BF16 = 20240326, 3, 5
ARCH_MAGIC, ARCH_VERSION = 20261205, 1  # our model file of another block (fp32)
ARCH_START = 18  # its header's first architecture field
STATE_MAGIC, STATE_VERSION = 20261123, 2
STATE_VERSIONS = (1, 2)  # versions read: 1 has no meta_sha256
STATE_DTYPES = {"float32": np.float32, "int64": np.int64, "uint8": np.uint8}
MAX_TOKEN_COUNT = 2**31 - 1  # llm.c stores the count in an int32
MAX_TOKEN_VOCAB = 1 << 16  # token ids are uint16


# ----------------------------------------------------------------------------- helpers

@contextlib.contextmanager
def atomic_path(path):
    """A temp file's path beside `path`, for a writer that opens files by name; on success fsync the
    file and rename it over `path`. On any error (or a kill) the temp file is removed/abandoned and
    `path` is untouched."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = make_temp_file(path)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp makes 0600; give the file the usual permissions
        os.close(fd)
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError) and not isinstance(e, BadInput):
            raise BadInput(f"{path}: write failed: {e.strerror or e}") from None
        raise
    fsync_folder(folder)  # make the rename itself durable


def make_temp_file(path, where: str | None = None) -> tuple[int, str]:
    """(fd, name) of a new temp file `<name>.<random>.tmp` beside `path`, as atomic_path writes, or
    BadInput naming `where` (default: the path) when it cannot be made there (no such folder, not
    writable, a name too long for the file system)."""
    path = os.fspath(path)
    where = where or path
    folder = os.path.dirname(os.path.abspath(path))
    try:
        return tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    except (FileNotFoundError, NotADirectoryError):
        raise BadInput(f"{where}: folder {folder} does not exist") from None
    except OSError as e:
        if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise BadInput(f"{where}: folder {folder} is not writable ({e.strerror})") from None
        raise BadInput(f"{where}: cannot write in {folder}: {e.strerror}") from None


@contextlib.contextmanager
def atomic_write(path):
    """Open a temp file beside `path` for binary writing; on success fsync it and rename it over
    `path` (atomic_path)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        yield f


def fsync_folder(folder) -> None:
    """Flush a folder's entries (a rename into it) to disk, where the system allows it."""
    with contextlib.suppress(OSError):
        dir_fd = os.open(folder, os.O_RDONLY)
        os.fsync(dir_fd)
        os.close(dir_fd)


def remove_stale_temp_files(path) -> None:
    """Delete the temp files atomic_write(path) abandons when its process is killed mid-write
    (`<name>.<random>.tmp` beside `path`). Only for a writer that owns `path`: another process's
    save in progress would lose its temp file."""
    folder, name = os.path.split(os.path.abspath(os.fspath(path)))
    pattern = re.compile(re.escape(name) + r"\.[a-z0-9_]+\.tmp")
    with contextlib.suppress(OSError):
        for entry in os.listdir(folder):
            if pattern.fullmatch(entry):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(folder, entry))


def current_umask() -> int:
    """The process's umask (os.umask can only read it by setting it)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def make_header(*values: int) -> bytes:
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[: len(values)] = values
    return header.tobytes()


def file_size(path, where: str | None = None) -> int:
    """Size of an existing, readable regular file, or BadInput naming `where` (default: the path) and
    the problem. A pipe or a device is refused before anything opens it: opening a pipe waits for a
    writer, and a device like /dev/zero never ends."""
    path = os.fspath(path)
    where = where or path
    try:
        info = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        raise BadInput(f"{where}: file not found") from None
    except OSError as e:
        raise BadInput(f"{where}: cannot read it: {e.strerror}") from None
    if stat.S_ISDIR(info.st_mode):
        raise BadInput(f"{where}: is a folder, expected a file")
    if not stat.S_ISREG(info.st_mode):
        raise BadInput(f"{where}: not a regular file (a pipe or a device), expected a file")
    if not os.access(path, os.R_OK):
        raise BadInput(f"{where}: file is not readable (permission denied)")
    return info.st_size


def read_small_file(path, limit: int, where: str | None = None) -> bytes:
    """The whole of a regular file of at most `limit` bytes (a config file), or BadInput."""
    size = file_size(path, where)
    if size > limit:
        raise BadInput(f"{where or os.fspath(path)}: {size:,} bytes, too large (at most {limit:,} for this kind of file)")
    with open(path, "rb") as f:
        return f.read()


def read_header(path, what: str) -> np.ndarray:
    """The 256 int32 header of an existing, readable file of at least 1024 bytes, or BadInput."""
    size = file_size(path)
    if size < HEADER_BYTES:
        raise BadInput(f"{path}: too short for a {what} ({size} bytes, the header alone is {HEADER_BYTES})")
    with open(path, "rb") as f:
        return np.frombuffer(f.read(HEADER_BYTES), dtype="<i4")


# ----------------------------------------------------------------------------- token files

@dataclass(frozen=True)
class TokenizerRecord:
    """The tokenizer a token file's header names, header[3:13] (see the module docstring).
    GPT-2 has none: its files keep llm.c's header, zero after the count."""
    vocab_size: int
    eot: int
    sha256: str  # hex digest of the tokenizer's llm.c tokenizer file

    def header_values(self) -> list[int]:
        return [self.vocab_size, self.eot, *np.frombuffer(bytes.fromhex(self.sha256), dtype="<i4").tolist()]


@dataclass(frozen=True)
class TokenHeader:
    count: int
    tokenizer: TokenizerRecord | None  # None: GPT-2


def _token_header(count: int, tokenizer: TokenizerRecord | None) -> bytes:
    return make_header(TOKEN_MAGIC, TOKEN_VERSION, count, *(tokenizer.header_values() if tokenizer else ()))


class TokenFileWriter:
    """Stream uint16 tokens into an llm.c token file, atomically; `tokenizer` is recorded in the
    header (None: GPT-2, llm.c's header exactly).

        with TokenFileWriter(path) as w:
            w.write(np.array([...], dtype=np.uint16))
    The header's count is patched in at the end; the file appears under `path` only when complete.
    """

    def __init__(self, path, tokenizer: TokenizerRecord | None = None):
        self.path = os.fspath(path)
        self.tokenizer = tokenizer
        self.count = 0

    def __enter__(self):
        self._ctx = atomic_write(self.path)
        self._file = self._ctx.__enter__()
        self._file.write(_token_header(0, self.tokenizer))
        return self

    def write(self, tokens) -> None:
        tokens = np.asarray(tokens)
        if tokens.dtype != np.uint16:
            if tokens.size and (tokens.min() < 0 or tokens.max() > 65535):
                raise ValueError("token ids must fit in uint16")
            tokens = tokens.astype(np.uint16)
        if self.count + tokens.size > MAX_TOKEN_COUNT:
            raise BadInput(f"{self.path}: more than {MAX_TOKEN_COUNT} tokens do not fit an llm.c token file")
        self._file.write(tokens.astype("<u2", copy=False).tobytes())
        self.count += tokens.size

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self._file.seek(0)
            self._file.write(_token_header(self.count, self.tokenizer))
            self._file.seek(0, os.SEEK_END)
        return self._ctx.__exit__(exc_type, exc, tb)


def write_tokens(path, tokens, tokenizer: TokenizerRecord | None = None) -> None:
    """A whole token array at once, for the tests and benchmarks (prepare_data.py streams with TokenFileWriter)."""
    with TokenFileWriter(path, tokenizer) as w:
        w.write(tokens)


def read_token_header(path) -> TokenHeader:
    """The count and the tokenizer record of an llm.c token file, after validating magic, version,
    size (1024 + 2 * count) and the record."""
    header = read_header(path, "token file")
    if header[0] != TOKEN_MAGIC:
        raise BadInput(f"{path}: not an llm.c token file (magic {header[0]}, expected {TOKEN_MAGIC})")
    if header[1] != TOKEN_VERSION:
        raise BadInput(f"{path}: unsupported token file version {header[1]} (expected {TOKEN_VERSION})")
    count = int(header[2])
    size = os.path.getsize(path)
    if count < 0 or size != HEADER_BYTES + 2 * count:
        raise BadInput(f"{path}: header says {count} tokens ({HEADER_BYTES + 2 * count} bytes) "
                       f"but the file has {size} bytes (truncated or corrupt)")
    if count == 0:
        raise BadInput(f"{path}: token file holds no tokens")
    return TokenHeader(count, _tokenizer_record(header[3:13], path))


def _tokenizer_record(fields: np.ndarray, path) -> TokenizerRecord | None:
    """The record in a header's 10 tokenizer fields (vocab size, EOT id, sha256), None when all are 0."""
    if not fields.any():
        return None
    vocab_size, eot = int(fields[0]), int(fields[1])
    if not (0 < vocab_size <= MAX_TOKEN_VOCAB and 0 <= eot < vocab_size):
        raise BadInput(f"{path}: bad tokenizer record in the header (vocab size {vocab_size}, EOT id {eot})")
    return TokenizerRecord(vocab_size, eot, fields[2:].astype("<i4").tobytes().hex())


def read_tokens(path, vocab_size: int | None = None) -> np.ndarray:
    """Memory-map an llm.c token file as a read-only uint16 array, after validating its header
    (read_token_header) and that every id is below vocab_size; by default below the vocabulary size of
    the tokenizer the header names (a header naming none is GPT-2's, llm.c's, of GPTConfig's default)."""
    header = read_token_header(path)
    _check_token_range(path, header.count,
                       vocab_size or (header.tokenizer.vocab_size if header.tokenizer else GPTConfig.vocab_size))
    return np.memmap(path, dtype="<u2", mode="r", offset=HEADER_BYTES, shape=(header.count,))


def _check_token_range(path, count: int, vocab_size: int, chunk: int = 1 << 24) -> None:
    """BadInput naming the first id at or above vocab_size. Read in chunks, not through the memory map:
    a map's pages, once read, count in the process's resident memory (1.8 GB for the real train split)."""
    with open(path, "rb") as f:
        f.seek(HEADER_BYTES)
        for start in range(0, count, chunk):
            part = np.fromfile(f, dtype="<u2", count=min(chunk, count - start))
            if int(part.max()) >= vocab_size:
                where = int(np.argmax(part >= vocab_size))
                raise BadInput(f"{path}: token id {int(part[where])} at position {start + where} "
                               f"is outside the vocabulary (size {vocab_size})")


# ----------------------------------------------------------------------------- model files

def model_tensor_shapes(config: GPTConfig) -> list[tuple[str, tuple[int, ...]]]:
    """The tensors of a model file, in file order, with their shapes (llmc.py's table: llm.c's 16 for GPT-2's block)."""
    return [(name, shape) for name, shape, _ in llmc.tensors(config)]


@dataclass
class TrainingState:
    """What a checkpoint carries beside the weights: JSON-able metadata and named numpy tensors."""
    meta: dict
    tensors: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class ModelFile:
    config: GPTConfig
    params: dict[str, np.ndarray]  # name -> fp32 array, shapes of model_tensor_shapes
    state: TrainingState | None  # present only in checkpoints written by ./train
    weights_sha256: str  # of the model part (header + tensors), as stored
    tokenizer: TokenizerRecord | None = None  # the tokenizer its header names (None: none named)


def _model_header(config: GPTConfig, tokenizer: TokenizerRecord | None = None) -> bytes:
    """llm.c's header for GPT-2's block, else ours with the architecture after the tokenizer record."""
    record = tokenizer.header_values() if tokenizer else [0] * (ARCH_START - 8)
    sizes = [config.block_size, config.vocab_size, config.n_layer, config.n_head, config.n_embd, config.padded_vocab_size]
    if config.gpt2_block:
        return make_header(MODEL_MAGIC, MODEL_VERSION_FP32, *sizes, *(record if tokenizer else ()))
    return make_header(ARCH_MAGIC, ARCH_VERSION, *sizes, *record, *arch_values(config))


def arch_values(config: GPTConfig) -> list[int]:
    """The architecture fields as our model header stores them (the module docstring)."""
    values = [getattr(config, name) for name in ARCH_FIELDS]
    return [ARCH_CHOICES[name].index(v) if name in ARCH_CHOICES else int(v) for name, v in zip(ARCH_FIELDS, values)]


def model_bytes(config: GPTConfig, params: dict[str, np.ndarray], tokenizer: TokenizerRecord | None = None) -> bytes:
    """The model part of a file: header (naming `tokenizer`; llm.c's or ours, by the config's block) + the
    table's tensors in fp32, checked against the config."""
    if tokenizer is not None and tokenizer.vocab_size != config.vocab_size:
        raise ValueError(f"a tokenizer of {tokenizer.vocab_size} tokens for a model of {config.vocab_size}")
    parts = [_model_header(config, tokenizer)]
    for name, shape in model_tensor_shapes(config):
        array = np.asarray(params[name], dtype="<f4")
        if array.shape != shape:
            raise ValueError(f"tensor {name} has shape {array.shape}, expected {shape}")
        parts.append(array.tobytes())
    return b"".join(parts)


def write_model(path, config: GPTConfig, params: dict[str, np.ndarray],
                state: TrainingState | None = None, tokenizer: TokenizerRecord | None = None) -> str:
    """Write an fp32 model file (llm.c's for GPT-2's block, else ours), with a training-state trailer
    when `state` is given and its header naming `tokenizer`, atomically. Returns the sha256 of the model part."""
    body = model_bytes(config, params, tokenizer)
    digest = hashlib.sha256(body).hexdigest()
    with atomic_write(path) as f:
        f.write(body)
        if state is not None:
            f.write(_state_bytes(state, digest))
    return digest


def read_model_config(header: np.ndarray, path) -> tuple[GPTConfig, int]:
    """GPTConfig and bytes-per-value from a model header of either kind (by its magic), or BadInput."""
    if header[0] == ARCH_MAGIC:
        if header[1] != ARCH_VERSION:
            raise BadInput(f"{path}: unsupported model file version {header[1]} (expected {ARCH_VERSION})")
        return _checked_config(header, _arch_fields(header, path), path), 4
    return read_llmc_config(header, path)


def read_llmc_config(header: np.ndarray, path) -> tuple[GPTConfig, int]:
    """GPTConfig and bytes-per-value from an llm.c model header (GPT-2's block only, as llm.c reads it), or BadInput."""
    if header[0] != MODEL_MAGIC:
        raise BadInput(f"{path}: not an llm.c model file (magic {header[0]}, expected {MODEL_MAGIC}"
                       f"{f'; {ARCH_MAGIC} is our file of another block' if header[0] == ARCH_MAGIC else ''})")
    if header[1] not in (MODEL_VERSION_FP32, MODEL_VERSION_BF16):
        raise BadInput(f"{path}: unsupported model file version {header[1]} "
                       f"(expected {MODEL_VERSION_FP32} for fp32 or {MODEL_VERSION_BF16} for bf16)")
    return _checked_config(header, {}, path), (4 if header[1] == MODEL_VERSION_FP32 else 2)


def _arch_fields(header: np.ndarray, path) -> dict:
    """The architecture fields of our model header, decoded (the module docstring), or BadInput."""
    end = ARCH_START + len(ARCH_FIELDS)
    if header[end:].any():
        raise BadInput(f"{path}: bad model header: architecture fields this version does not know (a newer file?)")
    defaults = GPTConfig()
    out = {}
    for name, value in zip(ARCH_FIELDS, header[ARCH_START:end].tolist()):
        if name in ARCH_CHOICES:
            if not 0 <= value < len(ARCH_CHOICES[name]):
                raise BadInput(f"{path}: bad model header: {name} code {value} (known: 0 to {len(ARCH_CHOICES[name]) - 1})")
            value = ARCH_CHOICES[name][value]
        elif isinstance(getattr(defaults, name), bool):
            if value not in (0, 1):
                raise BadInput(f"{path}: bad model header: {name} {value} (expected 0 or 1)")
            value = bool(value)
        out[name] = value
    return out


def _checked_config(header: np.ndarray, arch: dict, path) -> GPTConfig:
    """The GPTConfig of a header's sizes ([2:8]) and the architecture `arch`, validated, or BadInput."""
    config = GPTConfig(**dict(zip(SIZE_FIELDS, (int(v) for v in header[2:7]))), **arch)
    try:
        config.validate()
    except ValueError as e:
        raise BadInput(f"{path}: bad model header: {e}") from None
    if header[7] != config.padded_vocab_size:
        raise BadInput(f"{path}: bad model header: padded vocab {header[7]}, expected {config.padded_vocab_size}")
    return config


def model_tokenizer_record(header: np.ndarray, config: GPTConfig, path) -> TokenizerRecord | None:
    """The tokenizer a model header names (header[8:18]), or None; BadInput if its vocabulary is not the model's."""
    record = _tokenizer_record(header[8:18], path)
    if record is not None and record.vocab_size != config.vocab_size:
        raise BadInput(f"{path}: bad model header: it names a tokenizer of {record.vocab_size} tokens "
                       f"for a vocabulary of {config.vocab_size}")
    return record


def read_model(path) -> ModelFile:
    """Read and validate a model file or checkpoint of either kind (llm.c's fp32 or bf16, or ours)."""
    header = read_header(path, "model file")
    config, width = read_model_config(header, path)
    model_size = HEADER_BYTES + width * config.num_parameters()
    size = os.path.getsize(path)
    if size < model_size:
        raise BadInput(f"{path}: truncated model file ({size} bytes, expected {model_size} for its header's config)")
    with open(path, "rb") as f:
        body = f.read(model_size)
        trailer_size = size - model_size
        trailer = f.read(trailer_size) if trailer_size else b""
    digest = hashlib.sha256(body).hexdigest()
    params, offset = {}, HEADER_BYTES
    for name, shape in model_tensor_shapes(config):
        n = int(np.prod(shape))
        if width == 4:
            array = np.frombuffer(body, dtype="<f4", count=n, offset=offset).reshape(shape)
        else:  # bf16 is the top half of an fp32
            raw = np.frombuffer(body, dtype="<u2", count=n, offset=offset).astype(np.uint32) << 16
            array = raw.view(np.float32).reshape(shape)
        params[name] = array
        offset += width * n
    for name, array in params.items():
        if not np.isfinite(array).all():
            raise BadInput(f"{path}: tensor {name} holds NaN or infinite values")
    state = _parse_state(trailer, path, digest) if trailer else None
    return ModelFile(config, params, state, digest, model_tokenizer_record(header, config, path))


# ----------------------------------------------------------------------------- training state

def _state_bytes(state: TrainingState, weights_sha256: str) -> bytes:
    table, blobs = [], []
    for name, array in state.tensors.items():
        array = np.ascontiguousarray(array)
        dtype = array.dtype.name
        if dtype not in STATE_DTYPES:
            raise ValueError(f"state tensor {name}: unsupported dtype {dtype}")
        table.append({"name": name, "dtype": dtype, "shape": list(array.shape)})
        blobs.append(array.astype(np.dtype(STATE_DTYPES[dtype]).newbyteorder("<"), copy=False).tobytes())
    data = b"".join(blobs)
    meta = dict(state.meta, weights_sha256=weights_sha256,
                payload_sha256=hashlib.sha256(data).hexdigest(), tensors=table)
    meta_bytes = json.dumps(dict(meta, meta_sha256=meta_checksum(meta)), sort_keys=True).encode()
    return make_header(STATE_MAGIC, STATE_VERSION, len(meta_bytes), len(meta_bytes) + len(data)) + meta_bytes + data


def meta_checksum(meta: dict) -> str:
    """sha256 of a training state's metadata, less its own meta_sha256 field."""
    rest = {key: value for key, value in meta.items() if key != "meta_sha256"}
    return hashlib.sha256(json.dumps(rest, sort_keys=True).encode()).hexdigest()


def _bad_state(path, problem: str) -> BadInput:
    return BadInput(f"{path}: training state is invalid: {problem}")


def _parse_state_header(head: bytes, path, trailer_size: int) -> tuple[int, int, int]:
    """(version, metadata length, payload length) from a trailer's first 1024 bytes, or BadInput."""
    if trailer_size < HEADER_BYTES:
        raise _bad_state(path, f"{trailer_size} bytes after the model tensors, too few for a state header")
    header = np.frombuffer(head[:HEADER_BYTES], dtype="<i4")
    if header[0] != STATE_MAGIC:
        raise _bad_state(path, f"unexpected bytes after the model tensors (magic {header[0]}, expected {STATE_MAGIC})")
    if header[1] not in STATE_VERSIONS:
        raise _bad_state(path, f"unsupported version {header[1]} (expected {STATE_VERSION})")
    meta_len, payload_len = int(header[2]), int(header[3])
    if not (0 < meta_len <= payload_len) or HEADER_BYTES + payload_len != trailer_size:
        raise _bad_state(path, f"header sizes ({meta_len}, {payload_len}) do not match its {trailer_size} bytes")
    return int(header[1]), meta_len, payload_len


def _parse_meta(raw: bytes, version: int, path) -> dict:
    """The metadata JSON of a trailer, checked against its meta_sha256 (version 2), or BadInput."""
    try:
        meta = json.loads(raw.decode())
        if not isinstance(meta, dict) or not isinstance(meta["tensors"], list):
            raise TypeError
    except (UnicodeDecodeError, ValueError, KeyError, TypeError, RecursionError):
        raise _bad_state(path, "metadata is not the expected JSON") from None
    if version >= 2 and meta.get("meta_sha256") != meta_checksum(meta):
        raise _bad_state(path, "metadata checksum mismatch (corrupt or edited)")
    return meta


def read_state_meta(path) -> dict | None:
    """The training-state metadata of the checkpoint at `path` (checked against its own checksum;
    the weights and tensors are not read), or None for a model file without a training state."""
    header = read_header(path, "model file")
    config, width = read_model_config(header, path)
    model_size = HEADER_BYTES + width * config.num_parameters()
    size = os.path.getsize(path)
    if size <= model_size:
        return None
    with open(path, "rb") as f:
        f.seek(model_size)
        head = f.read(HEADER_BYTES)
        version, meta_len, _ = _parse_state_header(head, path, size - model_size)
        return _parse_meta(f.read(meta_len), version, path)


def _parse_state(trailer: bytes, path, weights_sha256: str) -> TrainingState:
    def bad(problem):
        return _bad_state(path, problem)

    version, meta_len, payload_len = _parse_state_header(trailer, path, len(trailer))
    meta = _parse_meta(trailer[HEADER_BYTES : HEADER_BYTES + meta_len], version, path)
    table = meta["tensors"]
    if meta.get("weights_sha256") != weights_sha256:
        raise bad("it belongs to other weights (weights checksum differs)")
    data = trailer[HEADER_BYTES + meta_len :]
    if hashlib.sha256(data).hexdigest() != meta.get("payload_sha256"):
        raise bad("tensor data checksum mismatch (corrupt)")
    tensors, offset = {}, 0
    for entry in table:
        try:
            name, dtype, shape = entry["name"], np.dtype(STATE_DTYPES[entry["dtype"]]), tuple(int(d) for d in entry["shape"])
            count = math.prod(shape)  # Python ints: a forged shape cannot wrap around
            if not isinstance(name, str) or any(d < 0 for d in shape):
                raise ValueError
        except (KeyError, TypeError, ValueError, OverflowError):
            raise bad(f"tensor table entry {entry!r:.80} is malformed") from None
        nbytes = count * dtype.itemsize
        if offset + nbytes > len(data):
            raise bad(f"tensor {name} runs past the end of the file")
        try:
            tensors[name] = np.frombuffer(data, dtype=dtype.newbyteorder("<"), count=count, offset=offset).reshape(shape)
        except ValueError:  # more dimensions, or a zero-size shape larger, than numpy allows
            raise bad(f"tensor {name} has an impossible shape {shape!r:.80}") from None
        offset += nbytes
    if offset != len(data):
        raise bad(f"{len(data) - offset} unexplained bytes after the tensors")
    return TrainingState(meta, tensors)

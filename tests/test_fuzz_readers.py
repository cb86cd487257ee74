"""Fuzzing the three binary readers: formats.read_tokens, formats.read_model (with the training-state
trailer) and tokenizer.read_tokenizer_file.

Each property takes a small valid file, mutates it (bit flips, truncation, header fields overwritten
with arbitrary int32s, spliced or appended random bytes, a rewritten state metadata JSON) and checks
that the reader either returns a valid result or raises BadInput with one line naming the file --
never another exception, never a hang (Hypothesis deadline), never an allocation out of proportion to
the file (tracemalloc peak, which numpy reports to). tests/fuzz_readers.py runs the same properties
for longer.
"""
import hashlib
import json
import tempfile
import tracemalloc
from datetime import timedelta
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tinystories import formats, tokenizer
from tinystories.config import GPTConfig
from tinystories.errors import BadInput

CI_SETTINGS = settings(max_examples=200, deadline=timedelta(seconds=5), database=None,
                       suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
TINY = GPTConfig(block_size=8, vocab_size=100, n_layer=1, n_head=1, n_embd=4)
INT32 = st.one_of(st.integers(-2**31, 2**31 - 1),
                  st.sampled_from([0, 1, -1, 2, 3, 5, 128, 2**31 - 1, -2**31, 2**30, 50257, 50304]))
WORK = Path(tempfile.mkdtemp(prefix="fuzz_readers_"))


# ----------------------------------------------------------------------------- valid seed files

def token_file() -> bytes:
    ids = np.random.default_rng(0).integers(0, 50257, 200)
    return formats.make_header(formats.TOKEN_MAGIC, formats.TOKEN_VERSION, ids.size) + ids.astype("<u2").tobytes()


def model_part() -> bytes:
    rng = np.random.default_rng(1)
    params = {name: rng.standard_normal(shape).astype(np.float32) for name, shape in formats.model_tensor_shapes(TINY)}
    return formats.model_bytes(TINY, params)


MODEL_SIZE = formats.HEADER_BYTES + 4 * TINY.num_parameters()
STATE_TENSORS = {"adam_m.x": np.arange(6, dtype=np.float32).reshape(2, 3), "torch_rng": np.arange(16, dtype=np.uint8),
                 "position": np.array([7, 9], dtype=np.int64)}


def checkpoint_file(meta_bytes: bytes | None = None) -> bytes:
    """A model file with a state trailer; `meta_bytes` replaces the metadata JSON (sizes kept consistent)."""
    body = model_part()
    state = formats.TrainingState({"step": 3, "run_id": "fuzz"}, STATE_TENSORS)
    trailer = formats._state_bytes(state, hashlib.sha256(body).hexdigest())
    if meta_bytes is not None:
        header = np.frombuffer(trailer[: formats.HEADER_BYTES], dtype="<i4")
        data = trailer[formats.HEADER_BYTES + int(header[2]):]
        trailer = (formats.make_header(formats.STATE_MAGIC, formats.STATE_VERSION, len(meta_bytes),
                                       len(meta_bytes) + len(data)) + meta_bytes + data)
    return body + trailer


def checkpoint_meta() -> dict:
    trailer = checkpoint_file()[MODEL_SIZE:]
    meta_len = int(np.frombuffer(trailer[:16], dtype="<i4")[2])
    return json.loads(trailer[formats.HEADER_BYTES : formats.HEADER_BYTES + meta_len])


def tokenizer_file() -> bytes:
    rng = np.random.default_rng(2)
    pieces = [bytes(rng.integers(0, 256, int(n), dtype=np.uint8)) for n in rng.integers(1, 6, 300)]
    header = formats.make_header(tokenizer.TOKENIZER_MAGIC, tokenizer.TOKENIZER_VERSION, len(pieces), len(pieces) - 1)
    return header + b"".join(bytes([len(p)]) + p for p in pieces)


SEEDS = {"tokens": token_file(), "model": checkpoint_file(), "tokenizer": tokenizer_file()}
# byte offsets of int32 header fields worth forging: the file header's first 8, and the state header's 4
HEADER_FIELDS = {"tokens": [0, 4, 8], "tokenizer": [0, 4, 8, 12],
                 "model": [4 * i for i in range(8)] + [MODEL_SIZE + 4 * i for i in range(4)]}


# ----------------------------------------------------------------------------- mutations

class Mutant(bytes):
    """File bytes that print as the mutations that made them (a failing example stays readable)."""

    def __new__(cls, data, ops):
        self = super().__new__(cls, data)
        self.ops = ops
        return self

    def __repr__(self):
        return f"Mutant({len(self)} bytes; {'; '.join(self.ops)})"


@st.composite
def mutated(draw, kind: str) -> Mutant:
    """The seed file of `kind` after 1-3 random mutations."""
    data, ops = bytearray(SEEDS[kind]), []
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["flip", "truncate", "field", "splice", "append"]))
        size = len(data)
        if op == "flip" and size:
            flips = draw(st.lists(st.tuples(st.integers(0, size - 1), st.integers(0, 7)), min_size=1, max_size=8))
            for pos, bit in flips:
                data[pos] ^= 1 << bit
            ops.append(f"flip (byte, bit) {flips}")
        elif op == "truncate":
            keep = draw(st.integers(0, max(0, size - 1)))
            del data[keep:]
            ops.append(f"truncate to {keep}")
        elif op == "field":
            offset, value = draw(st.sampled_from(HEADER_FIELDS[kind])), draw(INT32)
            if offset + 4 <= size:
                data[offset : offset + 4] = value.to_bytes(4, "little", signed=True)
                ops.append(f"int32 at {offset} = {value}")
        elif op == "splice" and size:
            start, length, new = draw(st.integers(0, size - 1)), draw(st.integers(1, 64)), draw(st.binary(min_size=1, max_size=64))
            data[start : start + length] = new
            ops.append(f"bytes {start}:{start + length} = {new!r}")
        elif op == "append":
            extra = draw(st.binary(min_size=1, max_size=64))
            data += extra
            ops.append(f"append {extra!r}")
    return Mutant(data, ops)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8)


@st.composite
def forged_metadata(draw) -> bytes:
    """A checkpoint whose metadata keeps both checksums right but has a fuzzed tensor table or fields,
    so the reader gets past the checksums and must validate the table itself."""
    meta = checkpoint_meta()
    target = draw(st.sampled_from(["name", "dtype", "shape", "entry", "table", "field"]))
    index = draw(st.integers(0, len(meta["tensors"]) - 1))
    if target == "entry":
        meta["tensors"][index] = draw(JSON_VALUES)
    elif target == "table":
        meta["tensors"] = draw(JSON_VALUES)
    elif target == "field":
        meta[draw(st.sampled_from(["step", "run_id", "weights_sha256", "payload_sha256"]))] = draw(JSON_VALUES)
    else:
        meta["tensors"][index][target] = draw(JSON_VALUES | st.lists(st.integers(-2**70, 2**70), max_size=4))
    text = json.dumps(meta)
    return Mutant(checkpoint_file(text.encode()), [f"metadata {text:.300}"])


# ----------------------------------------------------------------------------- the property

def check_accepted(kind: str, result, data: bytes) -> None:
    """What a reader may return: only a result consistent with the file."""
    if kind == "tokens":
        assert result.dtype == np.uint16 and result.size == (len(data) - formats.HEADER_BYTES) // 2
        record = np.frombuffer(data[12:20], dtype="<i4")  # header[3:5]: the tokenizer's vocab size, EOT id
        assert int(result.max()) < (record[0] if record.any() else 50257)
    elif kind == "tokenizer":
        header = np.frombuffer(data[:16], dtype="<i4")
        assert len(result) == header[2] and all(1 <= len(piece) <= 255 for piece in result)
    else:
        result.config.validate()
        assert all(np.isfinite(a).all() for a in result.params.values())
        if result.state is not None:
            assert result.state.meta["weights_sha256"] == result.weights_sha256


READERS = {"tokens": formats.read_tokens, "model": formats.read_model, "tokenizer": tokenizer.read_tokenizer_file}


def check_reader(kind: str, data: bytes) -> str:
    """Feed `data` to the reader of `kind`: 'accepted' or 'rejected', or an AssertionError / the
    reader's unexpected exception."""
    path = WORK / f"{kind}.bin"
    path.unlink(missing_ok=True)  # a new inode: an earlier memmap never sees this file change
    path.write_bytes(data)
    tracemalloc.start()
    try:
        result = READERS[kind](path)
    except BadInput as e:
        message = str(e)
        assert "\n" not in message and str(path) in message, message
        outcome = "rejected"
    else:
        check_accepted(kind, result, data)
        del result
        outcome = "accepted"
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak < (1 << 20) + 8 * len(data), f"reader allocated {peak} bytes for a {len(data)}-byte file"
    return outcome


# ----------------------------------------------------------------------------- tests

def test_seed_files_are_valid():
    for kind, data in SEEDS.items():
        assert check_reader(kind, data) == "accepted", kind
    assert formats.read_model(WORK / "model.bin").state.meta["step"] == 3


@CI_SETTINGS
@given(mutated("tokens"))
def test_fuzz_token_reader(data):
    check_reader("tokens", data)


@CI_SETTINGS
@given(mutated("model"))
def test_fuzz_model_reader(data):
    check_reader("model", data)


def one_tensor_of_shape(shape) -> Mutant:
    table = [{"name": "a", "dtype": "uint8", "shape": shape}]
    return Mutant(checkpoint_file(json.dumps(dict(checkpoint_meta(), tensors=table)).encode()), [f"shape {shape}"])


@CI_SETTINGS
@given(forged_metadata())
@example(Mutant(checkpoint_file(b"[" * 100_000), ["100,000 nested lists"]))  # deeper than the recursion limit
@example(one_tensor_of_shape([2**32, 2**32]))  # a size that wraps int64 to 0
@example(one_tensor_of_shape([10**30]))  # beyond int64
@example(one_tensor_of_shape([float("inf")]))  # JSON Infinity
@example(one_tensor_of_shape([0, 2**62, 2**62]))  # zero-size, but too big for numpy
@example(one_tensor_of_shape([1] * 65))  # more dimensions than numpy allows
def test_fuzz_state_metadata(data):
    check_reader("model", data)


@CI_SETTINGS
@given(mutated("tokenizer"))
def test_fuzz_tokenizer_reader(data):
    check_reader("tokenizer", data)

"""llm.c token files byte for byte, their validation, and the trainer's TokenLoader."""
import numpy as np
import pytest

from tinystories.loader import TokenLoader
from tinystories.errors import BadInput
from tinystories.formats import (HEADER_BYTES, TokenFileWriter, TokenHeader, TokenizerRecord, read_token_header,
                                 read_tokens, write_tokens)


def test_round_trip_and_exact_bytes(tmp_path):
    path = tmp_path / "t.bin"
    tokens = np.array([50256, 7454, 2402, 257, 640, 0], dtype=np.uint16)
    write_tokens(path, tokens)
    data = path.read_bytes()
    expected_header = np.zeros(256, "<i4")
    expected_header[:3] = [20240520, 1, 6]
    assert data == expected_header.tobytes() + tokens.astype("<u2").tobytes()
    assert len(data) == HEADER_BYTES + 2 * 6
    assert np.array_equal(read_tokens(path), tokens)
    assert read_token_header(path) == TokenHeader(6, None)  # all zero after the count: GPT-2


def test_header_records_the_tokenizer(tmp_path):
    digest = bytes(range(100, 132))
    record = TokenizerRecord(vocab_size=4096, eot=7, sha256=digest.hex())
    tokens = np.array([7, 4095, 0, 12], dtype=np.uint16)
    with TokenFileWriter(tmp_path / "t.bin", record) as w:
        w.write(tokens[:2])
        w.write(tokens[2:])
    data = (tmp_path / "t.bin").read_bytes()
    header = np.frombuffer(data[:HEADER_BYTES], "<i4")
    assert list(header[:5]) == [20240520, 1, 4, 4096, 7]
    assert data[20:52] == digest and not header[13:].any()
    assert read_token_header(tmp_path / "t.bin") == TokenHeader(4, record)
    assert np.array_equal(read_tokens(tmp_path / "t.bin", 4096), tokens)
    write_tokens(tmp_path / "again.bin", tokens, record)
    assert (tmp_path / "again.bin").read_bytes() == data


def test_streamed_writes_equal_one_write(tmp_path):
    tokens = np.arange(10_000, dtype=np.uint16) % 50257
    with TokenFileWriter(tmp_path / "a.bin") as w:
        for part in np.array_split(tokens, 7):
            w.write(part.astype(np.int64))
    write_tokens(tmp_path / "b.bin", tokens)
    assert (tmp_path / "a.bin").read_bytes() == (tmp_path / "b.bin").read_bytes()


def test_writer_rejects_ids_outside_uint16(tmp_path):
    with pytest.raises(ValueError):
        write_tokens(tmp_path / "t.bin", np.array([1, 70_000]))
    assert list(tmp_path.iterdir()) == []  # nothing left behind


def forge(path, header_values, body: bytes):
    header = np.zeros(256, "<i4")
    header[: len(header_values)] = header_values
    path.write_bytes(header.tobytes() + body)
    return path


@pytest.mark.parametrize("header, body, problem", [
    ([20240520, 1, 3], np.array([1, 2, 50257], "<u2").tobytes(), r"outside the vocabulary \(size 50257\)"),
    ([20240520, 1, 3, 320, 0], np.array([1, 2, 320], "<u2").tobytes(), r"outside the vocabulary \(size 320\)"),
    ([20240326, 1, 3], np.array([1, 2, 3], "<u2").tobytes(), "not an llm.c token file"),
    ([20240520, 2, 3], np.array([1, 2, 3], "<u2").tobytes(), "unsupported token file version"),
    ([20240520, 1, 4], np.array([1, 2, 3], "<u2").tobytes(), "truncated or corrupt"),
    ([20240520, 1, 2], np.array([1, 2, 3], "<u2").tobytes(), "truncated or corrupt"),
    ([20240520, 1, 0], b"", "holds no tokens"),
    ([20240520, 1, 3, 0, 5], np.array([1, 2, 3], "<u2").tobytes(), "bad tokenizer record"),
    ([20240520, 1, 3, 70_000, 5], np.array([1, 2, 3], "<u2").tobytes(), "bad tokenizer record"),
    ([20240520, 1, 3, 512, 512], np.array([1, 2, 3], "<u2").tobytes(), "bad tokenizer record"),
])
def test_bad_token_files_are_rejected(tmp_path, header, body, problem):
    path = forge(tmp_path / "bad.bin", header, body)
    with pytest.raises(BadInput, match=problem) as error:
        read_tokens(path)  # the header's vocabulary, or GPT-2's
    assert str(path) in str(error.value) and "\n" not in str(error.value)


def test_short_file_is_rejected(tmp_path):
    path = tmp_path / "short.bin"
    path.write_bytes(b"\0" * 100)
    with pytest.raises(BadInput, match="too short"):
        read_tokens(path)


def loader_file(tmp_path, n=1000):
    path = tmp_path / "tokens.bin"
    write_tokens(path, np.arange(n, dtype=np.uint16))
    return path


def test_loader_batches_shift_by_one(tmp_path):
    loader = TokenLoader(loader_file(tmp_path), batch_size=2, seq_len=8)
    x, y = loader.next_batch()
    assert x.shape == y.shape == (2, 8)
    assert x.flatten().tolist() == list(range(16))
    assert y.flatten().tolist() == list(range(1, 17))
    x2, _ = loader.next_batch()
    assert x2[0, 0].item() == 16


def test_loader_ranks_read_disjoint_slices(tmp_path):
    path = loader_file(tmp_path)
    ranks = [TokenLoader(path, batch_size=2, seq_len=8, rank=r, world=3) for r in range(3)]
    seen = []
    for _ in range(4):
        for loader in ranks:
            x, y = loader.next_batch()
            seen.extend(x.flatten().tolist())
            assert (y.flatten()[:-1] == x.flatten()[1:]).all()
    assert seen == list(range(4 * 3 * 2 * 8))  # together the ranks read the file once, in order


def test_loader_wraps_at_the_end(tmp_path):
    loader = TokenLoader(loader_file(tmp_path, n=50), batch_size=1, seq_len=16)
    assert loader.batches_per_epoch() == 3
    starts = [loader.next_batch()[0][0, 0].item() for _ in range(5)]
    assert starts == [0, 16, 32, 0, 16]


def test_loader_rejects_a_file_smaller_than_one_batch(tmp_path):
    path = loader_file(tmp_path, n=64)
    with pytest.raises(BadInput, match="fewer than one batch"):
        TokenLoader(path, batch_size=4, seq_len=16)
    with pytest.raises(ValueError):
        TokenLoader(path, batch_size=1, seq_len=8, rank=2, world=2)

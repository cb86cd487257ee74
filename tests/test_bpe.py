"""The trained byte-level BPE (bpe.py) and the Tokenizer objects: determinism, round trips, its llm.c
tokenizer file, and finding the tokenizer that made a token file."""
import hashlib
import json
import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import pre_tokenizers

from tinystories import bpe, tokenizer
from tinystories.errors import BadInput
from tinystories.formats import HEADER_BYTES, write_tokens

VOCAB = 1024


@pytest.fixture(scope="module")
def stories(head_stories) -> list[str]:
    return [s.strip() for s in head_stories]


@pytest.fixture(scope="module")
def trained(stories) -> tokenizer.BPETokenizer:
    return tokenizer.BPETokenizer(bpe.train(stories, VOCAB), "trained")


def test_training_is_deterministic_whatever_the_story_order(trained, stories):
    assert trained.vocab_size == VOCAB and trained.eot == 0
    again = bpe.train(stories[::-1], VOCAB)  # a new run, its hash maps seeded afresh
    assert again.to_str() == trained.hf.to_str()


def test_train_refuses_a_vocabulary_the_text_cannot_fill():
    with pytest.raises(BadInput, match="--vocab-size 2000: the train split has only enough distinct pairs for"):
        bpe.train(["the cat sat on the mat"] * 10, 2000)


def test_byte_alphabet_is_the_one_tokenizers_uses(trained):
    alphabet = bpe.byte_alphabet()
    assert set(alphabet) == set(pre_tokenizers.ByteLevel.alphabet())
    assert sorted(alphabet.values()) == list(range(256))
    for i in range(trained.vocab_size):  # the library's own decoder, where a token is whole UTF-8
        piece = trained.token_bytes(i)
        if piece.decode("utf-8", errors="ignore").encode() == piece:
            assert trained.hf.decode([i], skip_special_tokens=False) == piece.decode()


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=200))
def test_arbitrary_unicode_round_trips(trained, text):
    for tok in (trained, tokenizer.gpt2()):
        ids = tok.encode(text)
        assert tok.decode(ids) == text
        assert b"".join(tok.token_bytes(i) for i in ids) == text.encode()  # as llm.c decodes


def test_special_token_text_is_ordinary_text(trained, stories):
    ids = trained.encode("a <|endoftext|> b")
    assert trained.eot not in ids and trained.decode(ids) == "a <|endoftext|> b"
    assert trained.decode([trained.eot]) == "<|endoftext|>"
    assert len(trained.encode(stories[0])) < len(stories[0].encode()) / 2  # merges learned from stories


def test_llmc_tokenizer_file_decodes_every_id_like_the_tokenizer(trained, stories, tmp_path):
    path = tmp_path / "tokenizer.bin"
    tokenizer.write_tokenizer_file(path, trained)
    data = path.read_bytes()
    assert list(np.frombuffer(data[:16], "<i4")) == [20240328, 2, VOCAB, trained.eot]
    assert not np.frombuffer(data[16:HEADER_BYTES], "<i4").any()
    stored = tokenizer.read_tokenizer_file(path)
    assert stored == [trained.token_bytes(i) for i in range(VOCAB)]
    assert hashlib.sha256(data).hexdigest() == trained.fingerprint
    ids = trained.encode(stories[1])
    assert b"".join(stored[i] for i in ids).decode() == stories[1]


def test_a_tokenizer_pickles_as_itself(trained):
    """How a spawned prepare_data.py worker receives it."""
    again = pickle.loads(pickle.dumps(trained))
    assert again.fingerprint == trained.fingerprint
    assert again.encode("a <|endoftext|> b") == trained.encode("a <|endoftext|> b")
    assert pickle.loads(pickle.dumps(tokenizer.gpt2())) is tokenizer.gpt2()


# ----------------------------------------------------------------------------- the tokenizer of a token file

def token_folder(folder, tok, json_tokenizer=None):
    """folder/val.bin made with `tok`, and folder/tokenizer.json of `json_tokenizer` (default: tok's; None for GPT-2)."""
    folder.mkdir()
    write_tokens(folder / "val.bin", tok.encode("Once upon a time, a cat."), tok.record)
    json_tokenizer = json_tokenizer or tok
    if isinstance(json_tokenizer, tokenizer.BPETokenizer):
        bpe.write(folder / bpe.FILE_NAME, json_tokenizer.hf)
    return folder / "val.bin"


def one_line_error(call, *needles):
    with pytest.raises(BadInput) as error:
        call()
    message = str(error.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message, message


def test_for_token_file_finds_the_tokenizer(trained, tmp_path):
    path = token_folder(tmp_path / "bpe", trained)
    found = tokenizer.for_token_file(path)
    assert isinstance(found, tokenizer.BPETokenizer) and found.fingerprint == trained.fingerprint
    assert tokenizer.for_token_file(token_folder(tmp_path / "gpt2", tokenizer.gpt2())) is tokenizer.gpt2()


def test_for_token_file_refuses_a_missing_or_other_tokenizer(trained, stories, tmp_path):
    path = token_folder(tmp_path / "bpe", trained)
    (tmp_path / "bpe" / bpe.FILE_NAME).unlink()
    one_line_error(lambda: tokenizer.for_token_file(path), str(path), f"{VOCAB} tokens", "there is no", bpe.FILE_NAME)

    other = tokenizer.BPETokenizer(bpe.train(stories[:500], 600), "other")
    path = token_folder(tmp_path / "other", trained, other)
    one_line_error(lambda: tokenizer.for_token_file(path), str(path), trained.fingerprint[:16],
                   other.fingerprint[:16], "is another one")


@pytest.mark.parametrize("content, problem", [
    ("not json", "not a readable tokenizer.json"),
    ('{"model": {"type": "BPE"}}', "pre_tokenizer is None"),
    ("wordlevel", "model.type is 'WordLevel', expected 'BPE'"),
    ("no eot", "added tokens []"),
])
def test_read_refuses_other_tokenizer_files(trained, tmp_path, content, problem):
    spec = json.loads(trained.hf.to_str())
    if content == "wordlevel":
        spec["model"] = {"type": "WordLevel", "vocab": {"a": 0}, "unk_token": "a"}
    elif content == "no eot":
        spec["added_tokens"] = []
    if content in ("wordlevel", "no eot"):
        content = json.dumps(spec)
    path = tmp_path / bpe.FILE_NAME
    path.write_text(content)
    one_line_error(lambda: tokenizer.load_bpe(path), str(path), problem)

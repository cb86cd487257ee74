"""The trained BPE's fast encoder (bpe.tiktoken_encoding): exactly the ids `tokenizers` gives, on the
excerpt and on arbitrary unicode, and `tokenizers` alone wherever the conditions of its proof fail."""
import json

import numpy as np
import pytest
import tiktoken
from hypothesis import HealthCheck, find, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer

from tinystories import bpe, tokenizer
from tinystories.bpe import GPT2_PATTERN
from tinystories.errors import BadInput

ODD_TEXT = ["", " ", "  ", "\n", "\n\n ", "'s", "'ll", "1", "2023", "é", "ß", "日本", "🙂", "\u00a0", "\t",
            "<|endoftext|>", "\u0301", "\u200d", "ǅ", "Ⅻ", "\U0001d7d8", "\x00", "\r\n"]


def reference_ids(tok: tokenizer.BPETokenizer, text: str) -> list[int]:
    return tok.hf.encode(text, add_special_tokens=False).ids


@pytest.fixture(scope="module", params=[300, 1024, 4096])
def trained(request, head_stories) -> tokenizer.BPETokenizer:
    return tokenizer.BPETokenizer(bpe.train([s.strip() for s in head_stories], request.param), "trained")


def texts_of(tok: tokenizer.BPETokenizer) -> st.SearchStrategy[str]:
    """Arbitrary unicode, and strings glued from the vocabulary's own tokens and odd pieces (where two
    merge orders would part, if they could)."""
    words = [p.decode() for p in tok.pieces if p.decode("utf-8", "ignore").encode() == p]
    glued = st.lists(st.sampled_from(words + ODD_TEXT), max_size=12).map("".join)
    mixed = st.lists(st.one_of(glued, st.text(max_size=5)), max_size=6).map("".join)
    return st.one_of(st.text(max_size=300), glued, mixed)


def test_trained_tokenizers_encode_with_tiktoken_and_give_the_same_ids_on_the_excerpt(trained, head_stories):
    assert trained.fast is not None, bpe.why_not_tiktoken(trained.hf, trained.pieces)
    for story in head_stories:
        assert trained.encode(story.strip()) == reference_ids(trained, story.strip())
    text = "".join(head_stories[:200])  # whole text, with its <|endoftext|> lines as plain text
    assert trained.encode(text) == reference_ids(trained, text)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_the_same_ids_as_tokenizers_on_arbitrary_unicode(trained, data):
    text = data.draw(texts_of(trained))
    assert trained.encode(text) == reference_ids(trained, text)


def test_lone_surrogates_are_left_to_tokenizers(trained):
    with pytest.raises(TypeError):  # as before: `tokenizers` refuses them; tiktoken would replace them
        trained.encode("a\ud800b")


def hand_made(merges: list[str], extra: list[str]) -> tokenizer.BPETokenizer:
    """A byte-level BPE with the 256 bytes, `extra` tokens (in id order) and `merges`."""
    tokens = [bpe.EOT_TEXT, *sorted(bpe.byte_alphabet()), *extra]
    return tokenizer.BPETokenizer(bpe.from_vocabulary(tokens, merges, "hand-made"), "hand-made")


def plain_tiktoken(tok: tokenizer.BPETokenizer) -> tiktoken.Encoding:
    """tiktoken from the ranks alone, without the checks."""
    ranks = {piece: i for i, piece in enumerate(tok.pieces) if i != tok.eot}
    return tiktoken.Encoding(name="plain", pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens={})


def test_the_property_test_finds_where_plain_tiktoken_differs_and_the_encoder_does_not_use_it():
    """bc is merged before ab, and abc is made by (ab, c): on "abc" `tokenizers` stops at [a, bc], while
    tiktoken merges a + bc, a concatenation in the vocabulary (condition (3) fails)."""
    tok = hand_made(["b c", "a b", "ab c"], ["bc", "ab", "abc"])
    plain = plain_tiktoken(tok)
    differs = find(texts_of(tok), lambda text: plain.encode_ordinary(text) != reference_ids(tok, text),
                   settings=settings(max_examples=2000, database=None))
    assert "abc" in differs
    assert tok.fast is None and bpe.why_not_tiktoken(tok.hf, tok.pieces).startswith("(3) token 259")
    for text in ("abc", "xabcabc", differs):
        assert tok.encode(text) == reference_ids(tok, text)


def test_a_consistent_hand_made_vocabulary_uses_tiktoken():
    tok = hand_made(["a b", "b c", "ab c"], ["ab", "bc", "abc"])
    assert tok.fast is not None
    for text in ("abc", "abcbc", "aabcc", " abc"):
        assert tok.encode(text) == reference_ids(tok, text)


@pytest.mark.parametrize("edit, reason", [
    (lambda spec: spec["model"].update(dropout=0.1), "(1) it sets dropout"),
    (lambda spec: spec["model"].update(ignore_merges=True), "(1) it sets ignore_merges"),
    (lambda spec: spec["model"].update(byte_fallback=True), "(1) it sets byte_fallback"),
    (lambda spec: spec.update(truncation={"direction": "Right", "max_length": 5, "strategy": "LongestFirst",
                                          "stride": 0}), "(1) it sets truncation"),
    (lambda spec: spec["model"]["merges"].reverse(), "(2) merge 0"),
    (lambda spec: spec["model"]["merges"].pop(), "(2) a token of several bytes is not made by a merge"),
    (lambda spec: spec["model"]["merges"].insert(5, spec["model"]["merges"].pop(20)), "(2) merge 6"),
])
def test_files_that_break_a_condition_encode_with_tokenizers_alone(head_stories, edit, reason):
    """The reader refuses each of these files (test_bpe); built past it, straight from `tokenizers`, each
    still never reaches tiktoken: the encoder's own check is a second line of defence."""
    base = tokenizer.BPETokenizer(bpe.train([s.strip() for s in head_stories[:300]], 400), "trained")
    spec = json.loads(base.hf.to_str())
    edit(spec)
    with pytest.raises(BadInput):
        bpe.parse(json.dumps(spec), "edited")
    tok = tokenizer.BPETokenizer(Tokenizer.from_str(json.dumps(spec)), "edited")
    assert tok.fast is None and bpe.why_not_tiktoken(tok.hf, tok.pieces).startswith(reason)
    if "dropout" not in reason:  # dropout: random merges, the same story differs from call to call
        for story in head_stories[:20]:
            assert tok.encode(story) == reference_ids(tok, story)


def test_tokenizer_json_round_trips_unchanged(trained, tmp_path):
    """The file users see stays `tokenizers`' own: written, read back and written again, byte for byte."""
    path, again = tmp_path / "a.json", tmp_path / "b.json"
    bpe.write(path, trained.hf)
    reread = tokenizer.load_bpe(path)
    bpe.write(again, reread.hf)
    assert path.read_bytes() == again.read_bytes() == trained.hf.to_str().encode()
    assert reread.fast is not None and reread.fingerprint == trained.fingerprint


def test_bpe_sample_is_the_train_splits_first_stories_and_deterministic(head_stories, tmp_path):
    """--bpe-sample-bytes N: the BPE is the one trained on the train split's first stories (in source order)
    up to N bytes, the same file on every run, and both splits are encoded with it."""
    from conftest import run_prepare

    source = tmp_path / "s.txt"
    source.write_text("\n<|endoftext|>\n".join(head_stories), encoding="utf-8")
    flags = ["--source", str(source), "--vocab-size", "600", "--bpe-sample-bytes", "300000"]
    one, two = run_prepare(tmp_path / "one", *flags), run_prepare(tmp_path / "two", *flags, workers=2)
    assert (one / bpe.FILE_NAME).read_bytes() == (two / bpe.FILE_NAME).read_bytes()
    for name in ("TinyStories_train.bin", "TinyStories_val.bin"):
        assert (one / name).read_bytes() == (two / name).read_bytes()
    train_split = [s.strip() for i, s in enumerate(head_stories) if i % 50]  # a .txt holds out every 50th as val
    sizes = np.cumsum([len(s.encode()) for s in train_split])
    sample = train_split[: int(np.searchsorted(sizes, 300_000, side="right"))]
    assert (one / bpe.FILE_NAME).read_text() == bpe.train(sample, 600).to_str()
    everything = run_prepare(tmp_path / "all", "--source", str(source), "--vocab-size", "600",
                             "--bpe-sample-bytes", "0")
    whole = bpe.train(train_split, 600).to_str()
    assert (everything / bpe.FILE_NAME).read_text() == whole != bpe.train(sample, 600).to_str()

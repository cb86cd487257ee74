"""A byte-level BPE trained on the stories, kept as a Hugging Face `tokenizer.json`.

`prepare_data.py --vocab-size N` trains one with the `tokenizers` library on the train split:
GPT-2's pre-tokenization (ByteLevel: GPT-2's regex, bytes shown as printable characters), all 256
bytes in the vocabulary from the start (so any text round-trips), then merges learned until there
are N tokens, none longer than 255 bytes (the llm.c tokenizer file stores a length in one byte).

tokenizer.json (the `tokenizers` library's own file)
    model BPE (vocab: token string -> id, merges in order), pre_tokenizer and decoder ByteLevel,
    exactly one added token, `<|endoftext|>` (special, id 0 when trained here). A token string
    spells its bytes in GPT-2's byte alphabet (`byte_alphabet`), except the special token, which
    stands for its own UTF-8 text.

Training is deterministic: `tokenizers` counts words, then repeatedly merges the most frequent
pair, ties broken by the pair's ids; the special token is id 0, the 256 byte characters get ids
1..256 in sorted order and each merge the next id. So the same stories, in any order and in any
process, give the same merges and the same file, byte for byte (tested). It runs on all cores.
"""
import json
import os
import sys
from typing import Iterable

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

from .errors import BadInput
from .formats import MAX_TOKEN_VOCAB, atomic_write, read_small_file
from .sources import one_line

EOT_TEXT = "<|endoftext|>"
FILE_NAME = "tokenizer.json"  # beside the token files it made
MIN_VOCAB = 257  # the 256 bytes and <|endoftext|>: no merges
MAX_VOCAB = MAX_TOKEN_VOCAB  # token files hold uint16 ids
MAX_TOKEN_BYTES = 255
MAX_FILE_BYTES = 64 << 20  # a tokenizer.json of 65,536 tokens is about 4 MB


def byte_alphabet() -> dict[str, int]:
    """GPT-2's byte-level alphabet (`bytes_to_unicode` in its encoder.py), character -> byte: printable
    bytes stand for themselves, the other 68 for the characters from U+0100 on, in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return {**{chr(b): b for b in printable}, **{chr(256 + i): b for i, b in enumerate(others)}}


BYTE_OF_CHAR = byte_alphabet()


def train(texts: Iterable[str], vocab_size: int, exact: bool = True) -> Tokenizer:
    """A byte-level BPE of exactly `vocab_size` tokens learned from `texts`; BadInput when the texts
    hold too few distinct pairs to reach it (with exact=False: as many tokens as they fill, up to it)."""
    if not MIN_VOCAB <= vocab_size <= MAX_VOCAB:
        raise ValueError(f"vocab_size must be in {MIN_VOCAB}..{MAX_VOCAB}, got {vocab_size}")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[AddedToken(EOT_TEXT, special=True)],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  max_token_length=MAX_TOKEN_BYTES, show_progress=sys.stderr.isatty())
    tokenizer.train_from_iterator(texts, trainer)
    if exact and tokenizer.get_vocab_size() != vocab_size:
        raise BadInput(f"--vocab-size {vocab_size}: the train split has only enough distinct pairs for "
                       f"{tokenizer.get_vocab_size()} tokens; use a smaller --vocab-size or more stories")
    return ordinary(tokenizer)


def from_vocabulary(tokens: list[str], merges: list[str], where: str) -> Tokenizer:
    """The byte-level BPE of token strings (in id order, spelled in the byte alphabet, with EOT_TEXT
    among them) and merges ("a b", in rank order), as `train` builds it: for a GGUF file's tokenizer."""
    try:
        model = models.BPE({token: i for i, token in enumerate(tokens)}, [tuple(m.split(" ")) for m in merges])
    except Exception as e:  # the plain Exception `tokenizers` raises for a merge of unknown tokens
        raise BadInput(f"{where}: its tokens and merges are not a BPE ({one_line(e)[:200]})") from None
    tokenizer = Tokenizer(model)
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([AddedToken(EOT_TEXT, special=True)])
    return parse(tokenizer.to_str(), where)


def ordinary(tokenizer: Tokenizer) -> Tokenizer:
    """The tokenizer, set to encode `<|endoftext|>` in a text as ordinary text (like tiktoken's
    encode_ordinary); the file does not store this setting."""
    tokenizer.encode_special_tokens = True
    return tokenizer


def write(path, tokenizer: Tokenizer) -> None:
    """Write tokenizer.json, atomically (the same tokenizer always gives the same bytes)."""
    with atomic_write(path) as f:
        f.write(tokenizer.to_str().encode())


def read(path) -> Tokenizer:
    """Read and validate a byte-level BPE tokenizer.json (the kind `train` makes), or BadInput. Only a
    regular file of at most MAX_FILE_BYTES is read (not a pipe or a device)."""
    path = os.fspath(path)
    data = read_small_file(path, MAX_FILE_BYTES)
    try:
        return parse(data.decode("utf-8"), path)
    except UnicodeDecodeError as e:
        raise BadInput(f"{path}: cannot read it as text ({one_line(e)})") from None


def parse(text: str, where: str) -> Tokenizer:
    """The tokenizer of a tokenizer.json's text, validated (BadInput naming `where` otherwise). The file
    is checked before the `tokenizers` library reads it (some settings make it panic)."""
    try:
        spec = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise BadInput(f"{where}: not a readable tokenizer.json ({one_line(e)[:200]})") from None
    problem = _unsupported(spec) if isinstance(spec, dict) else "not a JSON object"
    if problem:
        raise BadInput(f"{where}: not a byte-level BPE tokenizer.json of this project ({problem})")
    try:
        tokenizer = Tokenizer.from_str(text)
    except Exception as e:  # the plain Exception `tokenizers` raises
        raise BadInput(f"{where}: not a readable tokenizer.json ({one_line(e)[:200]})") from None
    return ordinary(tokenizer)


# Every setting that changes how a tokenizer.json encodes, as `train` writes it (GPT-2's own has the
# same; the empty prefix and suffix are the Hub's spelling of none). The fingerprint covers only each
# id's bytes, so a file that differs anywhere here encodes differently under the same name: refused.
CANONICAL = {
    "": {"truncation": (None,), "padding": (None,), "normalizer": (None,)},
    "model": {"type": ("BPE",), "dropout": (None,), "unk_token": (None,), "continuing_subword_prefix": (None, ""),
              "end_of_word_suffix": (None, ""), "fuse_unk": (False, None), "byte_fallback": (False, None),
              "ignore_merges": (False, None)},
    "pre_tokenizer": {"type": ("ByteLevel",), "add_prefix_space": (False,), "use_regex": (True, None)},
    "decoder": {"type": ("ByteLevel",)},
}
EOT_ENTRY = {"content": EOT_TEXT, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False,
             "special": True}


def _unsupported(spec: dict) -> str | None:
    """What makes a tokenizer.json other than the byte-level BPE described above (CANONICAL, exactly one
    added token, merges in canonical order: canonical_merges), or None."""
    for part, settings in CANONICAL.items():
        section = spec.get(part) if part else spec
        if not isinstance(section, dict):
            return f"{part or 'the file'} is {section!r:.40}, expected a ByteLevel/BPE object"
        for key, allowed in settings.items():
            if section.get(key) not in allowed:
                return f"{part + '.' if part else ''}{key} is {section.get(key)!r:.40}, expected {allowed[0]!r}"
    post = spec.get("post_processor")
    if post is not None and (not isinstance(post, dict) or post.get("type") != "ByteLevel"):
        return f"post_processor {post!r:.60}, expected none or ByteLevel"
    added = spec.get("added_tokens")
    if not (isinstance(added, list) and len(added) == 1 and isinstance(added[0], dict)
            and {k: added[0].get(k) for k in EOT_ENTRY} == EOT_ENTRY):
        return f"added tokens {added!r:.80}, expected only {EOT_TEXT} (special, no stripping)"
    return canonical_merges(spec["model"])


def canonical_merges(model: dict) -> str | None:
    """None when the BPE's vocabulary and merges are in canonical order, as `train` writes them: the
    merges in the order of the ids they make, each making a token of higher id than its two parts,
    and every token longer than one character made by exactly one merge; else what is wrong."""
    vocab, merges = model.get("vocab"), model.get("merges")
    if not (isinstance(vocab, dict) and isinstance(merges, list)):
        return "model.vocab or model.merges is missing"
    if not MIN_VOCAB <= len(vocab) <= MAX_VOCAB:
        return f"vocab size {len(vocab)}, outside {MIN_VOCAB}..{MAX_VOCAB}"
    made = 0
    for rank, merge in enumerate(merges):
        pair = merge.split(" ") if isinstance(merge, str) else merge
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(p, str) for p in pair)):
            return f"merge {rank} ({merge!r:.40}) is not a pair of tokens"
        ids = [vocab.get(pair[0]), vocab.get(pair[1]), vocab.get(pair[0] + pair[1])]
        if None in ids:
            return f"merge {rank} ({' '.join(pair)!r:.40}) joins or makes a token not in its vocab"
        if not (ids[2] > made and ids[2] > max(ids[:2])):
            return f"merges are not in canonical order (merge {rank}, {' '.join(pair)!r:.40}, makes id {ids[2]})"
        made = ids[2]
    joined = sum(len(token) > 1 for token in vocab if token != EOT_TEXT)
    if joined != len(merges):
        return f"{joined} tokens of several bytes but {len(merges)} merges (each such token needs exactly one)"
    return None


def eot(tokenizer: Tokenizer) -> int:
    return tokenizer.token_to_id(EOT_TEXT)


def token_bytes(tokenizer: Tokenizer, where: str) -> list[bytes]:
    """The raw bytes of every id, in id order (BadInput if an id is missing, is not spelled in the
    byte alphabet or holds more than 255 bytes)."""
    pieces = []
    for i in range(tokenizer.get_vocab_size()):
        token = tokenizer.id_to_token(i)
        if token is None:
            raise BadInput(f"{where}: token ids are not contiguous (no token {i})")
        if token == EOT_TEXT:
            piece = token.encode()
        elif all(c in BYTE_OF_CHAR for c in token):
            piece = bytes(BYTE_OF_CHAR[c] for c in token)
        else:
            raise BadInput(f"{where}: token {i} ({token!r:.40}) is not spelled in the byte-level alphabet")
        if not 0 < len(piece) <= MAX_TOKEN_BYTES:
            raise BadInput(f"{where}: token {i} holds {len(piece)} bytes (1..{MAX_TOKEN_BYTES} fit the llm.c tokenizer file)")
        pieces.append(piece)
    return pieces

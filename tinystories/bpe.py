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


# ----------------------------------------------------------------------------- the fast, exact encoder

def tiktoken_encoding(tokenizer: Tokenizer, pieces: list[bytes]):
    """A tiktoken Encoding whose encode_ordinary gives exactly the ids `tokenizer.encode` gives (for
    any text `tokenizer` accepts), about 4x as fast; or None, with why_not_tiktoken's reason, when the
    conditions below do not hold (then only `tokenizer` encodes). `pieces`: every id's bytes.

    The two differ in how they merge. `tokenizers` merges the listed pair (x, y) of lowest merge rank,
    leftmost first. tiktoken merges any adjacent pair whose concatenation is a token, by that token's
    rank (its id), leftmost first, and returns a whole pre-tokenized piece at once when it is a token.
    With ranks = ids they agree when:
      (1) the model has no options that change `tokenizers`' merging or output (dropout, subword prefix
          or suffix, byte fallback, ignore_merges, unknown token, truncation, padding, post-processor);
      (2) all 256 bytes are tokens, and every other token but <|endoftext|> is the result of exactly one
          merge, whose results' ids increase with merge rank, each part of a merge being a byte or the
          result of an earlier merge;
      (3) every token's own bytes encode to that token alone (`tokenizers`' BPE reaches it).
    Proof. By (2) a merge only creates pairs of higher rank, so both run through ranks in increasing
    order, leftmost first, and while they agree they are in the same state. Suppose tiktoken first
    departs from `tokenizers` by merging adjacent tokens x', y' into token t although (x', y') is not
    t's merge (x, y): no pair of lower rank is left anywhere, so every merge of rank below t's is done.
    The bytes of t are then cut just before x' and after y', and no merge so far crossed those cuts, so
    inside them the state is the one `tokenizers` reaches on t's bytes alone after the merges of rank
    below t's. By (3) that state goes on to t, and only t's merge makes t, so it is [x, y], not
    [x', y']. So tiktoken never departs, and both end when no listed pair is left: the same ids. A
    piece that is itself a token encodes to it in both, by (3). Pre-tokenization is GPT-2's regex in
    both (tested on arbitrary unicode); text that is not valid UTF-8 (lone surrogates), which
    `tokenizers` refuses, is left to it."""
    if why_not_tiktoken(tokenizer, pieces) is not None:
        return None
    import tiktoken

    eot_id = eot(tokenizer)
    ranks = {piece: i for i, piece in enumerate(pieces) if i != eot_id}
    return tiktoken.Encoding(name="bpe", pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens={})


# tiktoken's pattern for GPT-2 (r50k_base), the regex of `tokenizers`' ByteLevel pre-tokenizer
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
_PLAIN_MODEL = {"dropout": None, "unk_token": None, "continuing_subword_prefix": None, "end_of_word_suffix": None,
                "fuse_unk": False, "byte_fallback": False, "ignore_merges": False}


def why_not_tiktoken(tokenizer: Tokenizer, pieces: list[bytes]) -> str | None:
    """Which condition of tiktoken_encoding `tokenizer` breaks, or None when it meets them all."""
    spec = json.loads(tokenizer.to_str())
    model = spec["model"]
    changed = [k for k, plain in _PLAIN_MODEL.items() if model.get(k, plain) not in (plain, "")]
    changed += [k for k in ("truncation", "padding", "post_processor") if spec.get(k) is not None]
    if changed:
        return f"(1) it sets {', '.join(changed)}"
    eot_id = eot(tokenizer)
    id_of = {piece: i for i, piece in enumerate(pieces) if i != eot_id}
    if len(id_of) != len(pieces) - 1 or any(bytes([b]) not in id_of for b in range(256)):
        return "(2) two tokens hold the same bytes, or a byte is not a token"
    made, highest = {}, -1  # id of a merge's result -> its merge rank; the highest such id so far
    for rank, merge in enumerate(model["merges"]):
        x, y = merge.split(" ") if isinstance(merge, str) else merge
        parts = [tokenizer.token_to_id(x), tokenizer.token_to_id(y)]
        result = id_of.get(pieces[parts[0]] + pieces[parts[1]]) if None not in parts else None
        if result is None or result in made or any(len(pieces[p]) > 1 and p not in made for p in parts):
            return f"(2) merge {rank} ({x} {y}) makes no new token from earlier ones"
        if result < highest:
            return f"(2) merge {rank} ({x} {y}) makes a token of a lower id than an earlier merge"
        made[result], highest = rank, result
    if len(made) != len(id_of) - 256:
        return "(2) a token of several bytes is not made by a merge"
    for i, piece in enumerate(pieces):
        if i != eot_id and [t.id for t in tokenizer.model.tokenize(spelled(piece))] != [i]:
            return f"(3) token {i} ({piece!r:.40}) does not encode to itself"
    return None


CHAR_OF_BYTE = {b: c for c, b in BYTE_OF_CHAR.items()}


def spelled(piece: bytes) -> str:
    """Bytes spelled in the byte alphabet, as tokenizer.json's tokens are."""
    return "".join(CHAR_OF_BYTE[b] for b in piece)

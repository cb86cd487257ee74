"""GGUF export: a model file as a GGUF file that llama.cpp runs (its `gpt2` or `llama` architecture).

GPT-2's block is written as llama.cpp's `gpt2` (below). The Llama block (create_model.py --arch
llama) is written as its `llama`: metadata llama.context_length, .embedding_length, .feed_forward_length
(the MLP width F), .block_count, .attention.head_count, .attention.head_count_kv,
.attention.layer_norm_rms_epsilon (1e-5), .rope.dimension_count (hs), .rope.freq_base, the same tokenizer
metadata; tensors those of GGUF_NAMES["llama"] (c_attn split into attn_q, attn_k, attn_v; output.weight only
for an untied head). llama.cpp's `llama` rotates adjacent pairs (2j, 2j + 1) of a head where our
model (and Hugging Face's Llama) rotates (j, j + hs/2): attn_q's and attn_k's rows are reordered
within each head to match (interleave_rotary), as llama.cpp's own converter does. GGUF_BLOCKS says
which blocks the export holds; any other is refused in one line. Import reads both architectures.

Written with llama.cpp's own Python package `gguf`. The file holds:

metadata
    general.architecture "gpt2", general.name (the model file's name), general.file_type
    gpt2.context_length (block size), gpt2.embedding_length (C), gpt2.feed_forward_length (4 C),
    gpt2.block_count (L), gpt2.attention.head_count (H), gpt2.attention.layer_norm_epsilon (1e-5)
    tokenizer.ggml.model "gpt2" (byte-level BPE) and .pre "gpt-2" (GPT-2's pre-tokenizing regex, which
    the BPEs of prepare_data.py --vocab-size use too); .tokens (every id's token string in GPT-2's
    byte alphabet, as in vocab.json), .token_type (the end-of-text token CONTROL, the rest NORMAL),
    .merges ("a b", in rank order); .bos_token_id = .eos_token_id = the end-of-text id, and
    .add_bos_token true: llama.cpp then puts the end-of-text token before a prompt, as ./generate
    starts every story with it (a story follows it in the training data), .add_eos_token false
tensors (GGUF lists a shape innermost first; the arrays below are row-major, as numpy holds them)
    token_embd.weight (V, C)       wte without its padding rows; also the output head (llama.cpp
                                   ties it when there is no output.weight)
    position_embd.weight (T, C)
    blk.{i}.attn_norm.weight/.bias (C)      ln_1
    blk.{i}.attn_qkv.weight (3C, C), .bias  q, k, v in that order, (out, in) as llm.c stores them
    blk.{i}.attn_output.weight (C, C), .bias
    blk.{i}.ffn_norm.weight/.bias (C)       ln_2
    blk.{i}.ffn_up.weight (4C, C), .bias
    blk.{i}.ffn_down.weight (C, 4C), .bias
    output_norm.weight/.bias (C)            ln_f

GGUF_TYPES (config.py) names the weight types offered: every 2-D weight is stored in it, 1-D ones (biases, norms) stay
fp32, as llama.cpp's own converter does. q8_0 and q4_0 quantise blocks of 32 values along a row (any
C divisible by 32); llama.cpp's k-quants need rows of a multiple of 256 values and do not fit the
default C = 128. The file is written beside its target and renamed into place (formats.atomic_path).

Import (`import -i FILE.gguf`) reads such a file back (any of these weight types, dequantised to fp32):
the architecture (gpt2 or llama) and metadata must be the ones above, with exactly these tensors and
shapes; a llama file may leave out what llama.cpp defaults (head_count_kv: the heads, freq_base 10000,
the rope and key/value dimensions: the head size) and must not scale its rope. A llama file's head is
tied unless it holds output.weight. Its
tokenizer is GPT-2's when its tokens and merges are GPT-2's; otherwise it is rebuilt as a byte-level
BPE tokenizer.json (bpe.from_vocabulary: the same ids, bytes and merges, so the same fingerprint),
named in the model header and written beside the model file, as import does for a Hugging Face folder.
An f32 file round-trips exactly: export, import and export again give the same tensors.
"""
import json
import math
import os

import numpy as np

from . import bpe, llmc
from .config import ANY, ARCHS, GGUF_TYPES, NORM_EPS, GPTConfig, export_block, llama_block
from .errors import BadInput
from .formats import atomic_path, read_model
from .sources import one_line
from .tokenizer import BPETokenizer, Tokenizer, gpt2

BLOCK_VALUES = 32  # q8_0 and q4_0 quantise rows in blocks of 32 values

# the blocks the export holds (config.export_block): llama.cpp's gpt2 (GPT-2's block) and llama
GGUF_BLOCKS = {"gpt2": {}, "llama": {**ARCHS["llama"], "mlp_hidden": ANY, "n_kv_head": ANY, "tied_head": ANY,
                                     "rope_theta": ANY}}
# per architecture: our table's rows (llmc.py) -> llama.cpp's tensors ({i}: the layer; a tuple: q, k and v)
GGUF_NAMES = {
    "gpt2": {
        "wte": "token_embd.weight", "wpe": "position_embd.weight",
        "ln1w": "blk.{i}.attn_norm.weight", "ln1b": "blk.{i}.attn_norm.bias",
        "qkvw": "blk.{i}.attn_qkv.weight", "qkvb": "blk.{i}.attn_qkv.bias",
        "attprojw": "blk.{i}.attn_output.weight", "attprojb": "blk.{i}.attn_output.bias",
        "ln2w": "blk.{i}.ffn_norm.weight", "ln2b": "blk.{i}.ffn_norm.bias",
        "fcw": "blk.{i}.ffn_up.weight", "fcb": "blk.{i}.ffn_up.bias",
        "fcprojw": "blk.{i}.ffn_down.weight", "fcprojb": "blk.{i}.ffn_down.bias",
        "lnfw": "output_norm.weight", "lnfb": "output_norm.bias",
    },
    "llama": {
        "wte": "token_embd.weight",
        "ln1w": "blk.{i}.attn_norm.weight",
        "qkvw": ("blk.{i}.attn_q.weight", "blk.{i}.attn_k.weight", "blk.{i}.attn_v.weight"),
        "attprojw": "blk.{i}.attn_output.weight",
        "ln2w": "blk.{i}.ffn_norm.weight",
        "fcgatew": "blk.{i}.ffn_gate.weight",
        "fcw": "blk.{i}.ffn_up.weight",
        "fcprojw": "blk.{i}.ffn_down.weight",
        "lnfw": "output_norm.weight",
        "lmheadw": "output.weight",
    },
}


def interleave_rotary(weight: np.ndarray, heads: int) -> np.ndarray:
    """q's or k's rows (heads hs, C) with each head's rows j and j + hs/2 made neighbours 2j and 2j + 1:
    from our rotary pairs to llama.cpp's."""
    return weight.reshape(heads, 2, -1, weight.shape[-1]).swapaxes(1, 2).reshape(weight.shape)


def deinterleave_rotary(weight: np.ndarray, heads: int) -> np.ndarray:
    """interleave_rotary undone: llama.cpp's rotary pairs back to ours."""
    return weight.reshape(heads, -1, 2, weight.shape[-1]).swapaxes(1, 2).reshape(weight.shape)


def rotary_heads(config) -> dict[str, int]:
    """The llama tensors whose rows are rotated (q's and k's of each layer), and their heads."""
    return {f"blk.{i}.attn_{x}.weight": heads for i in range(config.n_layer)
            for x, heads in (("q", config.n_head), ("k", config.kv_heads))}


def gguf_tensors(config, params: dict[str, np.ndarray], arch: str) -> dict[str, np.ndarray]:
    """Our table's tensors -> the GGUF tensors of llama.cpp's `arch` (fp32, row-major), in file order."""
    out = llmc.renamed(config, params, GGUF_NAMES[arch])
    for name, heads in rotary_heads(config).items() if arch == "llama" else ():
        out[name] = np.ascontiguousarray(interleave_rotary(out[name], heads))
    return out


def add_metadata(writer, config, arch: str) -> None:
    """The model's sizes as llama.cpp's `arch` (gpt2 or llama) reads them."""
    writer.add_context_length(config.block_size)
    writer.add_embedding_length(config.n_embd)
    writer.add_feed_forward_length(config.hidden_size)
    writer.add_block_count(config.n_layer)
    writer.add_head_count(config.n_head)
    if arch == "gpt2":
        writer.add_layer_norm_eps(NORM_EPS)
        return
    writer.add_head_count_kv(config.kv_heads)
    writer.add_layer_norm_rms_eps(NORM_EPS)
    writer.add_rope_dimension_count(config.head_size)
    writer.add_rope_freq_base(float(config.rope_theta))


def vocabulary(tokenizer: Tokenizer) -> tuple[list[str], list[str]]:
    """The BPE's token strings in id order and its merges ("a b", in rank order), from its tokenizer.json."""
    from .hf import tokenizer_json

    model = json.loads(tokenizer.json_text() if isinstance(tokenizer, BPETokenizer) else tokenizer_json())["model"]
    tokens = [""] * tokenizer.vocab_size
    for token, index in model["vocab"].items():  # <|endoftext|> included: both BPEs hold it in their vocab
        tokens[index] = token
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    return tokens, merges


def check_type(weight_type: str, config) -> None:
    """BadInput unless `weight_type` is offered and fits the model's rows."""
    if weight_type not in GGUF_TYPES:
        raise BadInput(f"--type {weight_type}: not one of {', '.join(GGUF_TYPES)}")
    odd = [f"{n} {what}" for n, what in ((config.n_embd, "channels"), (config.hidden_size, "MLP width"))
           if n % BLOCK_VALUES]
    if weight_type.startswith("q") and odd:
        raise BadInput(f"--type {weight_type}: quantises rows in blocks of {BLOCK_VALUES} values, and this model's "
                       f"{odd[0]} are not a multiple of {BLOCK_VALUES}; use f16 or f32")


def export_gguf(model_path, output, tokenizer: Tokenizer, weight_type: str = "f16") -> int:
    """Write the GGUF file of a model file or checkpoint (training state ignored) and the tokenizer it
    is made for; returns the file's size in bytes."""
    import gguf

    model = read_model(model_path)
    config = model.config
    arch = export_block(config, GGUF_BLOCKS, f"{model_path}: the GGUF export")
    check_type(weight_type, config)
    qtype = getattr(gguf.GGMLQuantizationType, weight_type.upper())
    file_type = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                 "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0, "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0}[weight_type]
    tokens, merges = vocabulary(tokenizer)
    with atomic_path(output) as tmp:
        writer = gguf.GGUFWriter(tmp, arch)
        writer.add_name(os.path.splitext(os.path.basename(os.fspath(model_path)))[0])
        writer.add_file_type(file_type)
        add_metadata(writer, config, arch)
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre("gpt-2")
        writer.add_token_list(tokens)
        writer.add_token_types([gguf.TokenType.CONTROL if i == tokenizer.eot else gguf.TokenType.NORMAL
                                for i in range(len(tokens))])
        writer.add_token_merges(merges)
        writer.add_bos_token_id(tokenizer.eot)
        writer.add_eos_token_id(tokenizer.eot)
        writer.add_add_bos_token(True)
        writer.add_add_eos_token(False)
        for name, value in gguf_tensors(config, model.params, arch).items():
            kind = qtype if value.ndim == 2 else gguf.GGMLQuantizationType.F32
            writer.add_tensor(name, gguf.quants.quantize(value, kind), raw_dtype=kind)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return os.path.getsize(output)


# ----------------------------------------------------------------------------- import

def read_gguf(path):
    """The GGUFReader of a file, or BadInput."""
    import gguf

    if not os.path.isfile(path):
        raise BadInput(f"{path}: file not found" if not os.path.exists(path) else f"{path}: not a file")
    try:
        return gguf.GGUFReader(path)
    except Exception as e:  # the reader raises ValueError, KeyError, IndexError, ... on a damaged file
        raise BadInput(f"{path}: not a readable GGUF file ({one_line(e)[:200]})") from None


def metadata(reader, key: str, path, kind: type | None = None):
    """A metadata value (number, bool, string, or list of strings/numbers), or BadInput if absent or,
    given `kind` (int, float, str or list: of strings), of another type."""
    value = _metadata(reader, key, path)
    if kind is not None and not _is_kind(value, kind):
        name = {int: "an integer", float: "a number", str: "a string", list: "a list of strings"}[kind]
        raise BadInput(f"{path}: its metadata {key} is {value!r:.40}, expected {name}")
    return value


def _is_kind(value, kind: type) -> bool:
    if isinstance(value, bool):  # a bool is an int to Python, never a size to us
        return False
    if kind is list:
        return isinstance(value, list) and all(isinstance(item, str) for item in value)
    return isinstance(value, (int, float) if kind is float else kind)


def _metadata(reader, key: str, path):
    import gguf

    field = reader.fields.get(key)
    if field is None:
        raise BadInput(f"{path}: no {key} in its metadata (not a GGUF file that export --gguf writes)")
    strings = gguf.GGUFValueType.STRING
    try:
        if field.types[0] == gguf.GGUFValueType.ARRAY:
            items = [field.parts[i] for i in field.data]
            return [bytes(p).decode("utf-8") for p in items] if field.types[-1] == strings else [p[0].item() for p in items]
        value = field.parts[field.data[0]]
        return bytes(value).decode("utf-8") if field.types[0] == strings else value[0].item()
    except (UnicodeDecodeError, IndexError):  # a string that is not UTF-8, an array of arrays
        raise BadInput(f"{path}: its metadata {key} is not a value that export --gguf writes") from None


def read_config(reader, path) -> tuple[GPTConfig, str]:
    """The GPTConfig of a gpt2 or llama GGUF file, and its architecture; BadInput for anything our model
    cannot represent exactly."""
    arch = metadata(reader, "general.architecture", path)
    if arch not in GGUF_NAMES:
        raise BadInput(f"{path}: architecture {arch!r}; only {' and '.join(GGUF_NAMES)} can be imported")
    size = {key: metadata(reader, f"{arch}.{key}", path, int) for key in (
        "context_length", "embedding_length", "feed_forward_length", "block_count", "attention.head_count")}
    tokens = metadata(reader, "tokenizer.ggml.tokens", path, list)
    shape = dict(block_size=size["context_length"], vocab_size=len(tokens), n_layer=size["block_count"],
                 n_head=size["attention.head_count"], n_embd=size["embedding_length"])
    config = GPTConfig(**shape).checked(path)  # the sizes, before the llama fields are read against them
    if arch == "llama":
        config = llama_config(reader, path, shape, size["feed_forward_length"]).checked(path)
    if size["feed_forward_length"] != config.hidden_size:
        raise BadInput(f"{path}: unsupported feed_forward_length {size['feed_forward_length']} (ours is {config.hidden_size})")
    eps_key = "attention.layer_norm_epsilon" if arch == "gpt2" else "attention.layer_norm_rms_epsilon"
    eps = metadata(reader, f"{arch}.{eps_key}", path, float)
    if abs(eps - NORM_EPS) > 1e-9:
        raise BadInput(f"{path}: unsupported {eps_key.split('.')[-1]} {eps} (ours is {NORM_EPS})")
    return config, arch


def llama_config(reader, path, shape: dict, hidden: int) -> GPTConfig:
    """The GPTConfig of a llama GGUF file of sizes `shape` and MLP width `hidden`: the Llama block, with
    its kv heads and rope base, and the head tied unless the file holds output.weight."""
    kv_heads = optional_metadata(reader, "llama.attention.head_count_kv", path, shape["n_head"])
    theta = optional_metadata(reader, "llama.rope.freq_base", path, 10000.0)
    if not math.isfinite(theta) or theta != int(theta) or any(key.startswith("llama.rope.scaling.") for key in reader.fields):
        raise BadInput(f"{path}: unsupported rope (freq_base {theta}, or a rope scaling); ours is plain rope of an "
                       f"integer base")
    head_size = shape["n_embd"] // shape["n_head"]
    for key in ("rope.dimension_count", "attention.key_length", "attention.value_length"):
        if optional_metadata(reader, f"llama.{key}", path, head_size) != head_size:
            raise BadInput(f"{path}: unsupported {key} {metadata(reader, f'llama.{key}', path)} (ours is the head "
                           f"size, {head_size})")
    tied = "output.weight" not in {t.name for t in reader.tensors}
    return llama_block(hidden, kv_heads, tied, int(theta), **shape)


def optional_metadata(reader, key: str, path, default):
    """A number that the file may leave out (llama.cpp then takes `default`)."""
    return metadata(reader, key, path, type(default)) if key in reader.fields else default


def read_params(reader, config: GPTConfig, arch: str, path) -> dict[str, np.ndarray]:
    """Our table's tensors from the GGUF tensors of llama.cpp's `arch` (dequantised to fp32; wte padded
    with zeros)."""
    import gguf

    expected = llmc.renamed_shapes(config, GGUF_NAMES[arch])
    stored = {t.name: t for t in reader.tensors}
    if stored.keys() != expected.keys():
        missing, extra = sorted(expected.keys() - stored.keys()), sorted(stored.keys() - expected.keys())
        raise BadInput(f"{path}: its tensors are not a {arch} model's of its metadata's shape (missing {missing[:3]}, "
                       f"unexpected {extra[:3]})")
    values = {}
    for name, shape in expected.items():
        tensor = stored[name]
        found = tuple(reversed(tensor.shape.tolist()))  # GGUF lists the innermost dimension first
        if found != shape:
            raise BadInput(f"{path}: {name} has shape {list(found)}, expected {list(shape)}")
        try:
            values[name] = gguf.quants.dequantize(np.asarray(tensor.data), tensor.tensor_type).reshape(shape)
        except NotImplementedError:
            raise BadInput(f"{path}: {name} is stored as {tensor.tensor_type.name}, which is not read here") from None
        if not np.isfinite(values[name]).all():
            raise BadInput(f"{path}: {name} holds NaN or infinite values")
    for name, heads in rotary_heads(config).items() if arch == "llama" else ():
        values[name] = deinterleave_rotary(values[name], heads)
    return llmc.gathered(config, values, GGUF_NAMES[arch])


def read_tokenizer(reader, path) -> Tokenizer:
    """GPT-2's tokenizer when the file's tokens and merges are GPT-2's, else its byte-level BPE."""
    if metadata(reader, "tokenizer.ggml.model", path) != "gpt2":
        raise BadInput(f"{path}: tokenizer {metadata(reader, 'tokenizer.ggml.model', path)!r}; only a byte-level BPE "
                       f"('gpt2') can be imported")
    tokens, merges = metadata(reader, "tokenizer.ggml.tokens", path, list), metadata(reader, "tokenizer.ggml.merges", path, list)
    eot = metadata(reader, "tokenizer.ggml.eos_token_id", path, int)
    if not 0 <= eot < len(tokens) or tokens[eot] != bpe.EOT_TEXT:
        raise BadInput(f"{path}: its end-of-text token (eos_token_id {eot}) is not {bpe.EOT_TEXT}")
    if (tokens, merges) == vocabulary(gpt2()):
        return gpt2()
    return BPETokenizer(bpe.from_vocabulary(tokens, merges, path), path)


def import_gguf(path, output) -> GPTConfig:
    """Convert a GGUF file that export --gguf wrote into our fp32 llm.c model file (and its
    tokenizer.json beside it, for a trained BPE). Returns the written model's config."""
    from .hf import write_imported_model

    path = os.fspath(path)
    if os.path.exists(output) and os.path.samefile(path, output):
        raise BadInput(f"-o {output}: is the file it converts; write the model elsewhere")
    reader = read_gguf(path)
    config, arch = read_config(reader, path)
    tokenizer = read_tokenizer(reader, path)
    write_imported_model(output, config, read_params(reader, config, arch, path), tokenizer)
    return config

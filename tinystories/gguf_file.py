"""GGUF export: a model file as a GGUF file that llama.cpp runs (its `gpt2` or `llama` architecture).

GPT-2's block is written as llama.cpp's `gpt2` (below). The Llama block (create_model.py --arch
llama) is written as its `llama`: metadata llama.context_length, .embedding_length, .feed_forward_length
(the MLP width F), .block_count, .attention.head_count, .attention.head_count_kv,
.attention.layer_norm_rms_epsilon (1e-5), .rope.dimension_count (hs), .rope.freq_base, the same tokenizer
metadata; tensors those of LLAMA_NAMES (c_attn split into attn_q, attn_k, attn_v; output.weight only
for an untied head). llama.cpp's `llama` rotates adjacent pairs (2j, 2j + 1) of a head where our
model (and Hugging Face's Llama) rotates (j, j + hs/2): attn_q's and attn_k's rows are reordered
within each head to match (interleave_rotary), as llama.cpp's own converter does. GGUF_BLOCKS says
which blocks the export holds; any other is refused in one line. Import reads the gpt2 architecture only.

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
the architecture and metadata must be the ones above, with exactly these tensors and shapes. Its
tokenizer is GPT-2's when its tokens and merges are GPT-2's; otherwise it is rebuilt as a byte-level
BPE tokenizer.json (bpe.from_vocabulary: the same ids, bytes and merges, so the same fingerprint),
named in the model header and written beside the model file, as import does for a Hugging Face folder.
An f32 file round-trips exactly: export, import and export again give the same tensors.
"""
import json
import os

import numpy as np

from . import bpe, llmc
from .config import ANY, ARCHS, GGUF_TYPES, NORM_EPS, GPTConfig, export_block
from .errors import BadInput
from .formats import atomic_path, read_model
from .sources import one_line
from .tokenizer import BPETokenizer, Tokenizer, gpt2

LAYER_NORM_EPS = NORM_EPS
BLOCK_VALUES = 32  # q8_0 and q4_0 quantise rows in blocks of 32 values

# parameter name (llmc.tensors' third column, `{i}` the layer) -> GGUF tensor name
GGUF_NAMES = {
    "wte.weight": "token_embd.weight",
    "wpe.weight": "position_embd.weight",
    "h.{i}.ln_1.weight": "blk.{i}.attn_norm.weight",
    "h.{i}.ln_1.bias": "blk.{i}.attn_norm.bias",
    "h.{i}.attn.c_attn.weight": "blk.{i}.attn_qkv.weight",
    "h.{i}.attn.c_attn.bias": "blk.{i}.attn_qkv.bias",
    "h.{i}.attn.c_proj.weight": "blk.{i}.attn_output.weight",
    "h.{i}.attn.c_proj.bias": "blk.{i}.attn_output.bias",
    "h.{i}.ln_2.weight": "blk.{i}.ffn_norm.weight",
    "h.{i}.ln_2.bias": "blk.{i}.ffn_norm.bias",
    "h.{i}.mlp.c_fc.weight": "blk.{i}.ffn_up.weight",
    "h.{i}.mlp.c_fc.bias": "blk.{i}.ffn_up.bias",
    "h.{i}.mlp.c_proj.weight": "blk.{i}.ffn_down.weight",
    "h.{i}.mlp.c_proj.bias": "blk.{i}.ffn_down.bias",
    "ln_f.weight": "output_norm.weight",
    "ln_f.bias": "output_norm.bias",
}


# the blocks the export holds (config.export_block): llama.cpp's gpt2 (GPT-2's block) and llama
GGUF_BLOCKS = {"gpt2": {}, "llama": {**ARCHS["llama"], "mlp_hidden": ANY, "n_kv_head": ANY, "tied_head": ANY,
                                     "rope_theta": ANY}}
# our table's rows (llmc.py) -> llama.cpp's llama tensors ({i}: the layer; qkvw: q, k and v)
LLAMA_NAMES = {
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
}


def tensor_layout(config):
    """(llm.c tensor, layer or None, GGUF name, GGUF shape) of every GGUF tensor of a config, in order."""
    for name, shape, parameter in llmc.tensors(config):
        if llmc.per_layer(parameter):
            for i in range(config.n_layer):
                yield name, i, GGUF_NAMES[parameter].format(i=i), shape[1:]
        else:
            yield name, None, GGUF_NAMES[parameter], (config.vocab_size, config.n_embd) if name == "wte" else shape


def gguf_tensors(config, params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Our 16 llm.c tensors -> the GGUF tensors by name (fp32, row-major, shapes of the docstring)."""
    out = {}
    for name, layer, gguf_name, shape in tensor_layout(config):
        value = params[name] if layer is None else params[name][layer]
        out[gguf_name] = np.ascontiguousarray(value[: shape[0]], dtype=np.float32)  # wte: without its padding rows
    return out


def interleave_rotary(weight: np.ndarray, heads: int) -> np.ndarray:
    """q's or k's rows (heads hs, C) with each head's rows j and j + hs/2 made neighbours 2j and 2j + 1:
    from our rotary pairs to llama.cpp's."""
    return weight.reshape(heads, 2, -1, weight.shape[-1]).swapaxes(1, 2).reshape(weight.shape)


def llama_tensors(config, params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Our table's tensors -> the GGUF tensors of llama.cpp's llama (fp32, row-major)."""
    out = llmc.renamed(config, params, LLAMA_NAMES)
    for i in range(config.n_layer):
        for name, heads in ((f"blk.{i}.attn_q.weight", config.n_head), (f"blk.{i}.attn_k.weight", config.kv_heads)):
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
        writer.add_layer_norm_eps(LAYER_NORM_EPS)
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
        tensors = gguf_tensors(config, model.params) if arch == "gpt2" else llama_tensors(config, model.params)
        for name, value in tensors.items():
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
        raise BadInput(f"{path}: no {key} in its metadata (not a GPT-2 GGUF file that export --gguf writes)")
    strings = gguf.GGUFValueType.STRING
    try:
        if field.types[0] == gguf.GGUFValueType.ARRAY:
            items = [field.parts[i] for i in field.data]
            return [bytes(p).decode("utf-8") for p in items] if field.types[-1] == strings else [p[0].item() for p in items]
        value = field.parts[field.data[0]]
        return bytes(value).decode("utf-8") if field.types[0] == strings else value[0].item()
    except (UnicodeDecodeError, IndexError):  # a string that is not UTF-8, an array of arrays
        raise BadInput(f"{path}: its metadata {key} is not a value that export --gguf writes") from None


def read_config(reader, path) -> GPTConfig:
    """The GPTConfig of a gpt2 GGUF file, BadInput for anything our model cannot represent exactly."""
    if metadata(reader, "general.architecture", path) != "gpt2":
        raise BadInput(f"{path}: architecture {metadata(reader, 'general.architecture', path)!r}; only gpt2 can be imported")
    size = {key: metadata(reader, f"gpt2.{key}", path, int) for key in (
        "context_length", "embedding_length", "feed_forward_length", "block_count", "attention.head_count")}
    tokens = metadata(reader, "tokenizer.ggml.tokens", path, list)
    config = GPTConfig(block_size=size["context_length"], vocab_size=len(tokens), n_layer=size["block_count"],
                       n_head=size["attention.head_count"], n_embd=size["embedding_length"])
    if size["feed_forward_length"] != 4 * config.n_embd:
        raise BadInput(f"{path}: unsupported feed_forward_length {size['feed_forward_length']} (ours is 4 * {config.n_embd})")
    eps = metadata(reader, "gpt2.attention.layer_norm_epsilon", path, float)
    if abs(eps - LAYER_NORM_EPS) > 1e-9:
        raise BadInput(f"{path}: unsupported layer_norm_epsilon {eps} (ours is {LAYER_NORM_EPS})")
    try:
        config.validate()
        config.check_fits_in_memory()
    except ValueError as e:
        raise BadInput(f"{path}: {e}") from None
    return config


def read_params(reader, config: GPTConfig, path) -> dict[str, np.ndarray]:
    """The 16 llm.c tensors from the GGUF tensors (dequantised to fp32; wte padded with zeros)."""
    import gguf

    layout = list(tensor_layout(config))
    stored = {t.name: t for t in reader.tensors}
    expected = {gguf_name for _, _, gguf_name, _ in layout}
    if stored.keys() != expected:
        missing, extra = sorted(expected - stored.keys()), sorted(stored.keys() - expected)
        raise BadInput(f"{path}: its tensors are not a gpt2 model's of its metadata's shape (missing {missing[:3]}, "
                       f"unexpected {extra[:3]})")
    params = {name: np.zeros(shape, dtype=np.float32) for name, shape, _ in llmc.tensors(config)}
    for name, layer, gguf_name, shape in layout:
        tensor = stored[gguf_name]
        found = tuple(reversed(tensor.shape.tolist()))  # GGUF lists the innermost dimension first
        if found != shape:
            raise BadInput(f"{path}: {gguf_name} has shape {list(found)}, expected {list(shape)}")
        try:
            value = gguf.quants.dequantize(np.asarray(tensor.data), tensor.tensor_type).reshape(shape)
        except NotImplementedError:
            raise BadInput(f"{path}: {gguf_name} is stored as {tensor.tensor_type.name}, which is not read here") from None
        if not np.isfinite(value).all():
            raise BadInput(f"{path}: {gguf_name} holds NaN or infinite values")
        if layer is None:
            params[name][: shape[0]] = value  # wte: the padding rows stay zero
        else:
            params[name][layer] = value
    return params


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
    config = read_config(reader, path)
    tokenizer = read_tokenizer(reader, path)
    write_imported_model(output, config, read_params(reader, config, path), tokenizer)
    return config

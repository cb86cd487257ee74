"""Hugging Face interop: export a model file to a `transformers` GPT-2 or Llama folder, and import either.

A model of GPT-2's block exports to GPT2LMHeadModel (below); one of the Llama block (create_model.py
--arch llama: RoPE, RMSNorm, SwiGLU, no biases; any kv heads, MLP width, rope base, tied head or not)
to LlamaForCausalLM: config.json a LlamaConfig of our sizes (rms_norm_eps 1e-5, hidden_act silu, no
biases, head_dim C / H, rope_theta, in rope_parameters too), model.safetensors the tensors of
LLAMA_NAMES (c_attn split into q_proj, k_proj, v_proj; our rotary layout is Llama's, so no
permutation), the same tokenizer files, generation config and model card. HF_BLOCKS says which
blocks the export holds: any other (a field it does not list) is refused in one line.

Exported folder (loads with `GPT2LMHeadModel.from_pretrained(folder)`, `AutoTokenizer.from_pretrained
(folder)` and `pipeline("text-generation", model=folder)`, offline)
    config.json             GPT2Config: our shape (the block size as n_positions, and as n_ctx, the old
                            name that llama.cpp's convert_hf_to_gguf.py reads), activation "gelu_new"
                            (GELU, tanh form), LayerNorm eps 1e-5, n_inner null (= 4 C), tied output
                            head, bos/eos = the EOT id. Dropouts are 0.0 because our model has none:
                            eval mode is unaffected either way, and fine-tuning in transformers then
                            trains the same network we trained.
    generation_config.json  bos/eos/pad = the EOT id
    model.safetensors       fp32 GPT-2 state dict, names `transformer.*`:
                              wte.weight (V, C)          our wte without its padding rows
                              wpe.weight (T, C)
                              h.{i}.ln_1.weight / .bias (C)
                              h.{i}.attn.c_attn.weight (C, 3C)   Conv1D layout (in, out) = our (out, in)
                              h.{i}.attn.c_attn.bias (3C)        transposed; q, k, v in that order
                              h.{i}.attn.c_proj.weight (C, C), .bias (C)
                              h.{i}.ln_2.weight / .bias (C)
                              h.{i}.mlp.c_fc.weight (C, 4C), .bias (4C)
                              h.{i}.mlp.c_proj.weight (4C, C), .bias (C)
                              ln_f.weight / .bias (C)
                            `lm_head.weight` is not stored: the head is tied to wte, and transformers
                            re-ties it on load (save_pretrained leaves it out the same way).
                            Metadata: format "pt", the source file's name and weights sha256.
    the tokenizer the model is made for (tokenizer.for_model):
      GPT-2:
        vocab.json, merges.txt  the GPT-2 BPE files (copies of OpenAI's encoder.json and vocab.bpe)
        tokenizer.json          the same tokenizer for the `tokenizers` library (byte-level BPE)
        tokenizer_config.json   tokenizer_class GPT2Tokenizer
      a BPE trained by prepare_data.py --vocab-size:
        tokenizer.json          its own tokenizer.json, as prepare_data.py wrote it (bpe.py)
        tokenizer_config.json   tokenizer_class PreTrainedTokenizerFast
      and for both: <|endoftext|> as bos, eos and unk (tokenizer_config.json, special_tokens_map.json).
      Like GPT-2's tokenizer on the Hub, neither adds the EOT by itself: a story starts after it, so
      prompts start with the text <|endoftext|>, which encodes to the EOT id (the model card says so).
    README.md               a model card (model_card.py): architecture, training and losses as far as
                            the checkpoint records them, the data set and its license, how to load it
Without a tokenizer (`export(..., tokenizer=None)`, for the tests) no tokenizer files are written.

The folder is built in a hidden temp folder beside the target and renamed into place, so the target
is either absent, the old folder, or the complete new one. An existing target is replaced only when it
is empty or holds nothing but files that export writes; anything else needs `force=True`. A target that
is or holds the current folder or the model file is never replaced.

Import reads a GPT-2 or a Llama architecture folder (config.json + model.safetensors, or a sharded
model.safetensors.index.json) in any float dtype and writes our fp32 model file (llm.c's for GPT-2's block), wte padded
to Vp rows of zeros. A folder whose vocabulary is not GPT-2's and whose tokenizer.json is a byte-level
BPE of this project (what export wrote) gives a model whose header names that tokenizer, and the
tokenizer.json beside the model file, where tokenizer.for_model finds it. Pickled weights
(pytorch_model.bin) are refused: nothing here runs pickle.
The config must be model_type "gpt2" with a tanh GELU, n_inner null or 4 C, LayerNorm eps 1e-5, plain
attention scaling and no cross-attention (fields it leaves out take GPT2Config's defaults); the
weights must be exactly the tensors above (names with or without `transformer.`; old files'
attention-mask buffers are skipped), finite, with the config's shapes; an untied lm_head.weight
is accepted only when it equals wte. The config's sizes are checked before anything is allocated:
against the llm.c header's int32 and this machine's memory (GPTConfig), and n_layer against the layers
the safetensors files hold.
A Llama folder (model_type "llama") gives a model of the Llama block (config.llama_block: its sizes,
intermediate_size as the MLP width, num_key_value_heads, rope base, tie_word_embeddings, LlamaConfig's
defaults for the fields it leaves out): hidden_act "silu", rms_norm_eps 1e-5, no attention or MLP
biases, head_dim null or hidden_size / heads, and plain rope (rope_parameters of rope_type "default",
or an older config's rope_theta, no rope_scaling) of an integer base, with exactly the tensors of
LLAMA_NAMES (rotary inv_freq buffers of old files are skipped).
"""
import contextlib
import dataclasses
import json
import os
import re
import shutil
import tempfile

import numpy as np

from . import llmc
from .bpe import EOT_TEXT
from .config import ANY, ARCHS, INT32_MAX, NORM_EPS, GPTConfig, export_block, llama_block
from .errors import BadInput
from .formats import atomic_write, current_umask, file_size, read_model, read_small_file, write_model
from .outputs import remove_stale_folders
from .tokenizer import VOCAB_SIZE, BPETokenizer, Tokenizer, beside, load_bpe, vocabulary_files

SAFETENSORS, SAFETENSORS_INDEX = "model.safetensors", "model.safetensors.index.json"
TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
EXPORT_FILES = frozenset(("config.json", "generation_config.json", SAFETENSORS, "README.md") + TOKENIZER_FILES)

# what GPT2Config assumes for a field that config.json leaves out
GPT2_DEFAULTS = {"vocab_size": 50257, "n_positions": 1024, "n_embd": 768, "n_layer": 12, "n_head": 12,
                 "n_inner": None, "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5,
                 "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False,
                 "add_cross_attention": False, "tie_word_embeddings": True}
# what LlamaConfig assumes for a field that config.json leaves out (rope_theta: of older configs, which
# have no rope_parameters)
LLAMA_DEFAULTS = {"vocab_size": 32000, "max_position_embeddings": 2048, "hidden_size": 4096,
                  "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32,
                  "num_key_value_heads": None, "head_dim": None, "hidden_act": "silu", "rms_norm_eps": 1e-6,
                  "attention_bias": False, "mlp_bias": False, "rope_theta": 10000.0, "rope_scaling": None,
                  "rope_parameters": None, "tie_word_embeddings": False}
TANH_GELUS = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")  # all the tanh approximation of GELU
LAYER_NAME = re.compile(r"(?:transformer\.)?h\.(\d+)\.|model\.layers\.(\d+)\.")  # a block's tensor: its layer
MAX_JSON_BYTES = 16 << 20  # config.json and the safetensors index are kilobytes

# the blocks the export holds (config.export_block): GPT-2's (every field at its default) and Llama's
HF_BLOCKS = {"gpt2": {}, "llama": {**ARCHS["llama"], "mlp_hidden": ANY, "n_kv_head": ANY, "tied_head": ANY,
                                   "rope_theta": ANY}}
# our table's rows (llmc.py) -> LlamaForCausalLM's tensors ({i}: the layer; qkvw: q, k and v)
LLAMA_NAMES = {
    "wte": "model.embed_tokens.weight",
    "ln1w": "model.layers.{i}.input_layernorm.weight",
    "qkvw": tuple(f"model.layers.{{i}}.self_attn.{x}_proj.weight" for x in "qkv"),
    "attprojw": "model.layers.{i}.self_attn.o_proj.weight",
    "ln2w": "model.layers.{i}.post_attention_layernorm.weight",
    "fcgatew": "model.layers.{i}.mlp.gate_proj.weight",
    "fcw": "model.layers.{i}.mlp.up_proj.weight",
    "fcprojw": "model.layers.{i}.mlp.down_proj.weight",
    "lnfw": "model.norm.weight",
    "lmheadw": "lm_head.weight",
}


# ----------------------------------------------------------------------------- tensor layout

def conv1d(name: str, shape: tuple[int, ...]) -> bool:
    """Whether a GPT-2 tensor is a linear weight of a block, which transformers' Conv1D stores as
    (in, out) where llm.c and nn.Linear store (out, in)."""
    return name.startswith("h.") and len(shape) == 2


def hf_state_dict(config: GPTConfig, params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Our 16 llm.c tensors -> GPT-2 state dict (names without the `transformer.` prefix)."""
    out = {}
    for name, _, parameter in llmc.tensors(config):
        for hf_name, value in llmc.split(parameter, params[name], config.n_layer).items():
            out[hf_name] = np.ascontiguousarray(value.T if conv1d(hf_name, value.shape) else value, dtype=np.float32)
    out["wte.weight"] = out["wte.weight"][: config.vocab_size]  # drop the padding rows
    return out


def hf_tensor_shapes(config: GPTConfig) -> dict[str, tuple[int, ...]]:
    """Shape of each GPT-2 state dict tensor (without the prefix) for a config."""
    shapes = {}
    for _, shape, parameter in llmc.tensors(config):
        shape = shape[1:] if llmc.per_layer(parameter) else shape
        for hf_name in llmc.parameter_names(parameter, config.n_layer):
            shapes[hf_name] = shape[::-1] if conv1d(hf_name, shape) else shape
    shapes["wte.weight"] = (config.vocab_size, config.n_embd)
    return shapes


def llmc_params(config: GPTConfig, tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """GPT-2 state dict (validated shapes, no prefix) -> our 16 llm.c tensors, wte padded with zeros,
    wpe cut to the config's block size."""
    params = {}
    for name, _, parameter in llmc.tensors(config):
        values = [tensors[p].T if conv1d(p, tensors[p].shape) else tensors[p]
                  for p in llmc.parameter_names(parameter, config.n_layer)]
        params[name] = np.stack(values) if llmc.per_layer(parameter) else values[0]
    wte = np.zeros((config.padded_vocab_size, config.n_embd), dtype=np.float32)  # (Vp, C)
    wte[: config.vocab_size] = params["wte"]
    params["wte"] = wte
    params["wpe"] = params["wpe"][: config.block_size]
    return params


# ----------------------------------------------------------------------------- export

def gpt2_config_json(config: GPTConfig, eot: int) -> dict:
    return {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
        "vocab_size": config.vocab_size, "n_positions": config.block_size, "n_ctx": config.block_size,
        "n_embd": config.n_embd,
        "n_layer": config.n_layer, "n_head": config.n_head, "n_inner": None,
        "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5,
        "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0, "summary_first_dropout": 0.0,
        "initializer_range": 0.02, "scale_attn_weights": True, "use_cache": True,
        "bos_token_id": eot, "eos_token_id": eot, "tie_word_embeddings": True,
    }


def llama_config_json(config: GPTConfig, eot: int) -> dict:
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": config.vocab_size, "max_position_embeddings": config.block_size, "hidden_size": config.n_embd,
        "intermediate_size": config.hidden_size, "num_hidden_layers": config.n_layer,
        "num_attention_heads": config.n_head, "num_key_value_heads": config.kv_heads, "head_dim": config.head_size,
        "hidden_act": "silu", "rms_norm_eps": NORM_EPS, "attention_bias": False, "mlp_bias": False,
        "rope_theta": float(config.rope_theta), "rope_parameters": {"rope_type": "default", "rope_theta": float(config.rope_theta)},
        "attention_dropout": 0.0, "initializer_range": 0.02, "use_cache": True,
        "bos_token_id": eot, "eos_token_id": eot, "tie_word_embeddings": config.tied_head,
    }


def tokenizer_json() -> str:
    """tokenizer.json for the `tokenizers` library: GPT-2 byte-level BPE from the offline vocabulary."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    vocab_bpe, encoder_json = vocabulary_files()
    tokenizer = Tokenizer(models.BPE.from_file(encoder_json, vocab_bpe))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    tokenizer.add_special_tokens([AddedToken(EOT_TEXT, special=True)])
    return tokenizer.to_str()


def tokenizer_files(tokenizer: Tokenizer, block_size: int) -> dict[str, bytes]:
    """The tokenizer files of the folder (see the module docstring)."""
    special = {"bos_token": EOT_TEXT, "eos_token": EOT_TEXT, "unk_token": EOT_TEXT}
    if isinstance(tokenizer, BPETokenizer):
        files, tokenizer_class = {"tokenizer.json": tokenizer.json_text().encode()}, "PreTrainedTokenizerFast"
    else:
        vocab_bpe, encoder_json = vocabulary_files()
        with open(encoder_json, "rb") as f, open(vocab_bpe, "rb") as g:
            files = {"vocab.json": f.read(), "merges.txt": g.read(), "tokenizer.json": tokenizer_json().encode()}
        tokenizer_class = "GPT2Tokenizer"
    config = dict(special, tokenizer_class=tokenizer_class, add_prefix_space=False, model_max_length=block_size)
    files["tokenizer_config.json"] = _json_bytes(config)
    files["special_tokens_map.json"] = _json_bytes(special)
    return files


def _json_bytes(value: dict) -> bytes:
    return (json.dumps(value, indent=2) + "\n").encode()


def export_files(model_path, folder_name: str, tokenizer: Tokenizer | None) -> dict[str, bytes]:
    """Every file of the Hugging Face folder `folder_name` for the model file at `model_path`, as bytes."""
    from safetensors.numpy import save

    from .model_card import model_card

    model = read_model(model_path)
    config = model.config
    eot = tokenizer.eot if tokenizer else None
    if export_block(config, HF_BLOCKS, f"{model_path}: the Hugging Face export") == "gpt2":
        config_json = gpt2_config_json(config, eot)
        tensors = {f"transformer.{name}": value for name, value in hf_state_dict(config, model.params).items()}
    else:
        config_json = llama_config_json(config, eot)
        tensors = llmc.renamed(config, model.params, LLAMA_NAMES)
    metadata = {"format": "pt", "source": os.path.basename(os.fspath(model_path)),
                "source_weights_sha256": model.weights_sha256}
    files = {
        "config.json": _json_bytes(config_json),
        "generation_config.json": _json_bytes({"bos_token_id": eot, "eos_token_id": eot, "pad_token_id": eot}),
        SAFETENSORS: save(tensors, metadata=metadata),
        "README.md": model_card(model, metadata["source"], folder_name, tokenizer).encode(),
    }
    if tokenizer is not None:
        files.update(tokenizer_files(tokenizer, config.block_size))
    return files


def export(model_path, folder, tokenizer: Tokenizer | None, force: bool = False) -> list[str]:
    """Write the Hugging Face folder for a model file or checkpoint (training state is ignored) and
    `tokenizer`, the one it is made for. Returns the names of the files written."""
    folder = os.path.normpath(os.fspath(folder))
    target = os.path.abspath(folder)  # "." has a name only as an absolute path
    _check_replaceable(folder, model_path, force)
    files = export_files(model_path, os.path.basename(target), tokenizer)
    parent = os.path.dirname(target)
    remove_stale_folders(target)  # of an export killed mid-write
    try:
        tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(target)}.", suffix=".tmp", dir=parent)
    except OSError as e:
        raise BadInput(f"{folder}: cannot create a folder in {parent}: {e.strerror}") from None
    try:
        os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp makes it private; give it a normal folder's mode
        for name, data in files.items():
            with atomic_write(os.path.join(tmp, name)) as f:
                f.write(data)
        _move_into_place(tmp, target)
    except OSError as e:
        raise BadInput(f"{folder}: cannot put the new folder in place: {e.strerror}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already once renamed into place
    return sorted(files)


def _check_replaceable(folder: str, model_path, force: bool) -> None:
    """BadInput unless `folder` is absent or may be replaced: a folder holding only files that export
    writes (any files with force), and neither the current folder nor the model file."""
    if not os.path.exists(folder):
        return
    if not os.path.isdir(folder):
        raise BadInput(f"{folder}: exists and is not a folder")
    for inside, what in ((os.getcwd(), "the current folder"), (os.fspath(model_path), f"the model file {model_path}")):
        if _holds(folder, inside):
            raise BadInput(f"{folder}: replacing this folder would remove {what}; export into a new folder")
    foreign = sorted(set(os.listdir(folder)) - EXPORT_FILES)
    if foreign and not force:
        raise BadInput(f"{folder}: folder holds files that export does not write ({', '.join(foreign[:3])}"
                       f"{', ...' if len(foreign) > 3 else ''}); choose a new folder or pass --force to replace it")


def _holds(folder: str, path: str) -> bool:
    """Whether `path` is `folder` or lies inside it (symbolic links resolved)."""
    folder, path = os.path.realpath(folder), os.path.realpath(path)
    return os.path.commonpath([folder, path]) == folder


def _move_into_place(tmp: str, folder: str) -> None:
    """Rename the finished temp folder to `folder` (absolute), replacing an old one: renamed aside into
    a hidden folder, deleted once the new one is in place, renamed back if that fails."""
    if not os.path.exists(folder):
        os.rename(tmp, folder)
        return
    old = tempfile.mkdtemp(prefix=f".{os.path.basename(folder)}.", suffix=".old", dir=os.path.dirname(folder))
    aside = os.path.join(old, "folder")
    try:
        os.rename(folder, aside)
    except OSError:
        os.rmdir(old)
        raise
    try:
        os.rename(tmp, folder)
    except BaseException:
        os.rename(aside, folder)
        os.rmdir(old)
        raise
    shutil.rmtree(old, ignore_errors=True)


# ----------------------------------------------------------------------------- import

def import_folder(folder, output, block_size: int | None = None) -> GPTConfig:
    """Convert a Hugging Face GPT-2 folder into our fp32 llm.c model file, keeping the first
    `block_size` positions (default: all of them). Returns the written model's config."""
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise BadInput(f"{folder}: not a folder (expected a Hugging Face model folder)"
                       if os.path.exists(folder) else f"{folder}: folder not found")
    if _is_input_file(folder, os.fspath(output)):
        raise BadInput(f"-o {output}: would replace a file of the folder it converts; write the model elsewhere")
    config, tied = read_config(os.path.join(folder, "config.json"))
    if block_size is not None and block_size > config.block_size:
        raise BadInput(f"--block-size: {block_size} is more than the model's {config.block_size} positions")
    tensors = read_tensors(folder, config, tied)
    config = dataclasses.replace(config, block_size=block_size or config.block_size)
    params = llmc_params(config, tensors) if config.gpt2_block else llmc.gathered(config, tensors, LLAMA_NAMES)
    write_imported_model(output, config, params, folder_tokenizer(folder, config))
    return config


def write_imported_model(output, config: GPTConfig, params: dict[str, np.ndarray], tokenizer: Tokenizer | None) -> None:
    """Write an imported model file whose header names `tokenizer` and, for a trained BPE, its
    tokenizer.json beside it (where tokenizer.for_model finds it), unless the same one is there
    already; BadInput, with nothing written, if another one is (import of a folder or a GGUF file)."""
    write_beside = isinstance(tokenizer, BPETokenizer) and _needs_tokenizer_beside(output, tokenizer)
    write_model(output, config, params, tokenizer=tokenizer.record if tokenizer else None)
    if write_beside:
        with atomic_write(beside(os.path.abspath(output))) as f:
            f.write(tokenizer.json_text().encode())


def folder_tokenizer(folder: str, config: GPTConfig) -> BPETokenizer | None:
    """The trained BPE of a folder whose vocabulary is not GPT-2's (its tokenizer.json, which must have
    the config's vocabulary size), or None: GPT-2's vocabulary, or no tokenizer.json."""
    path = os.path.join(folder, "tokenizer.json")
    if config.vocab_size == VOCAB_SIZE or not os.path.exists(path):
        return None
    tokenizer = load_bpe(path)
    if tokenizer.vocab_size != config.vocab_size:
        raise BadInput(f"{path}: {tokenizer.vocab_size} tokens, but config.json has a vocabulary of {config.vocab_size}")
    return tokenizer


def _needs_tokenizer_beside(output, tokenizer: BPETokenizer) -> bool:
    """Whether the tokenizer.json beside the model file `output` is still to be written: False when the
    same tokenizer is there already; BadInput if another one is."""
    path = beside(os.path.abspath(output))
    if not os.path.exists(path):
        return True
    there = load_bpe(path)
    if there.record != tokenizer.record:
        raise BadInput(f"-o {output}: {path} beside it is another tokenizer ({there.name}); "
                       f"write the model into another folder")
    return False


def _is_input_file(folder: str, output: str) -> bool:
    """Whether `output` is the folder's config.json or one of its weight files, which import reads."""
    name = os.path.basename(output)
    beside = os.path.realpath(os.path.dirname(os.path.abspath(output))) == os.path.realpath(folder)
    return beside and (name == "config.json" or name.endswith((".safetensors", SAFETENSORS_INDEX)))


def read_config(path: str) -> tuple[GPTConfig, bool]:
    """GPTConfig of a GPT2Config or LlamaConfig file (block size = n_positions, max_position_embeddings),
    and whether it declares the head tied. BadInput for anything our model cannot represent exactly."""
    if not os.path.exists(path):
        raise BadInput(f"{path}: file not found (a Hugging Face model folder has a config.json)")
    try:
        raw = json.loads(read_small_file(path, MAX_JSON_BYTES))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise BadInput(f"{path}: not valid JSON: {e}") from None
    if not isinstance(raw, dict):
        raise BadInput(f"{path}: expected a JSON object")
    readers = {"gpt2": gpt2_config, "llama": llama_config}
    if raw.get("model_type") not in readers:
        raise BadInput(f"{path}: model_type is {raw.get('model_type')!r}; only GPT-2 ('gpt2') and Llama ('llama') "
                       f"models can be imported")
    config, tied = readers[raw["model_type"]](raw, path)
    return config.checked(path), tied


def config_fields(raw: dict, defaults: dict, sizes: tuple[str, ...], path: str) -> dict:
    """config.json's fields that `defaults` names, the defaults for those it leaves out; BadInput unless
    each of `sizes` is a positive integer."""
    fields = {**defaults, **{k: v for k, v in raw.items() if k in defaults}}
    for name in sizes:
        if type(fields[name]) is not int or fields[name] <= 0:
            raise BadInput(f"{path}: {name} must be a positive integer, got {fields[name]!r}")
    return fields


def refuse_unsupported(checks: list[tuple[bool, str]], path: str) -> None:
    for is_unsupported, what in checks:
        if is_unsupported:
            raise BadInput(f"{path}: unsupported {what}")


def gpt2_config(raw: dict, path: str) -> tuple[GPTConfig, bool]:
    fields = config_fields(raw, GPT2_DEFAULTS, ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head"), path)
    C = fields["n_embd"]
    refuse_unsupported([
        (fields["activation_function"] not in TANH_GELUS,
         f"activation_function {fields['activation_function']!r} (ours is the tanh GELU: {', '.join(TANH_GELUS)})"),
        (fields["n_inner"] not in (None, 4 * C), f"n_inner {fields['n_inner']!r} (ours is 4 * n_embd = {4 * C})"),
        (fields["layer_norm_epsilon"] != NORM_EPS, f"layer_norm_epsilon {fields['layer_norm_epsilon']!r} (ours is 1e-5)"),
        (fields["scale_attn_weights"] is not True, "scale_attn_weights false"),
        (fields["scale_attn_by_inverse_layer_idx"] is not False, "scale_attn_by_inverse_layer_idx true"),
        (fields["add_cross_attention"] is not False, "add_cross_attention true"),
    ], path)
    config = GPTConfig(block_size=fields["n_positions"], vocab_size=fields["vocab_size"],
                       n_layer=fields["n_layer"], n_head=fields["n_head"], n_embd=C)
    return config, fields["tie_word_embeddings"] is not False


def llama_config(raw: dict, path: str) -> tuple[GPTConfig, bool]:
    sizes = ("vocab_size", "max_position_embeddings", "hidden_size", "intermediate_size", "num_hidden_layers",
             "num_attention_heads")
    fields = config_fields(raw, LLAMA_DEFAULTS, sizes, path)
    H, C = fields["num_attention_heads"], fields["hidden_size"]
    rope = fields["rope_parameters"] or {"rope_type": "default", "rope_theta": fields["rope_theta"]}
    theta = rope.get("rope_theta", fields["rope_theta"]) if isinstance(rope, dict) else None
    kv_heads = H if fields["num_key_value_heads"] is None else fields["num_key_value_heads"]
    refuse_unsupported([
        (fields["hidden_act"] != "silu", f"hidden_act {fields['hidden_act']!r} (ours is SwiGLU's 'silu')"),
        (fields["rms_norm_eps"] != NORM_EPS, f"rms_norm_eps {fields['rms_norm_eps']!r} (ours is 1e-5)"),
        (fields["attention_bias"] is not False, "attention_bias true (ours has no biases)"),
        (fields["mlp_bias"] is not False, "mlp_bias true (ours has no biases)"),
        (fields["head_dim"] not in (None, C // H), f"head_dim {fields['head_dim']!r} (ours is hidden_size / heads)"),
        (type(kv_heads) is not int or kv_heads <= 0, f"num_key_value_heads {kv_heads!r}"),
        (fields["rope_scaling"] is not None or not isinstance(rope, dict) or set(rope) - {"rope_type", "rope_theta"}
         or rope.get("rope_type", "default") != "default", f"rope {rope!r} (ours is plain rope, no scaling)"),
        (type(theta) not in (int, float) or not 0 < theta <= INT32_MAX or theta != int(theta),
         f"rope_theta {theta!r} (ours is a positive integer base)"),
    ], path)
    config = llama_block(fields["intermediate_size"], kv_heads, fields["tie_word_embeddings"] is True, int(theta),
                         block_size=fields["max_position_embeddings"], vocab_size=fields["vocab_size"],
                         n_layer=fields["num_hidden_layers"], n_head=H, n_embd=C)
    return config, config.tied_head


def _safetensors_paths(folder: str) -> list[str]:
    """The safetensors file(s) holding the weights; BadInput for pickles or nothing."""
    single, index = os.path.join(folder, SAFETENSORS), os.path.join(folder, SAFETENSORS_INDEX)
    if os.path.isfile(single):
        return [single]
    if os.path.isfile(index):
        try:
            shards = sorted(set(json.loads(read_small_file(index, MAX_JSON_BYTES))["weight_map"].values()))
        except (UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError, RecursionError):
            raise BadInput(f"{index}: not a valid safetensors index (expected a JSON weight_map)") from None
        return [os.path.join(folder, os.path.basename(str(shard))) for shard in shards]
    pickles = sorted(n for n in os.listdir(folder) if n.endswith((".bin", ".pt", ".pth", ".ckpt")))
    if pickles:
        raise BadInput(f"{folder}: weights only in {pickles[0]}, a pickle, which is never loaded here; "
                       f"re-save them as safetensors (save_pretrained(..., safe_serialization=True))")
    raise BadInput(f"{folder}: no {SAFETENSORS} (the weights of a Hugging Face model folder)")


def folder_tensors(config: GPTConfig) -> tuple[dict[str, tuple[int, ...]], str]:
    """The tensors a folder of `config` holds (name without `transformer.` -> shape) and the token
    embedding's name."""
    if config.gpt2_block:
        return hf_tensor_shapes(config), "wte.weight"
    return llmc.renamed_shapes(config, LLAMA_NAMES), LLAMA_NAMES["wte"]


def read_tensors(folder: str, config: GPTConfig, tied: bool) -> dict[str, np.ndarray]:
    """The folder's state dict (GPT-2's names without `transformer.`, or Llama's) as fp32 arrays, after
    checking that exactly the expected tensors are present with the expected shapes and finite values."""
    paths = _safetensors_paths(folder)
    layers = len({int(m.group(1) or m.group(2)) for path in paths for m in map(LAYER_NAME.match, _tensor_names(path)) if m})
    if layers != config.n_layer:  # before the expected names are listed: n_layer may be absurd
        field = "n_layer" if config.gpt2_block else "num_hidden_layers"
        raise BadInput(f"{folder}: config.json gives {field} {config.n_layer:,}, but the weights hold {layers:,} layers")
    expected, embedding = folder_tensors(config)
    tensors, head = {}, None
    for path in paths:
        for name, value in _read_safetensors(path, expected, config).items():
            if name == "lm_head.weight" and name not in expected:
                head = (path, value)
            else:
                tensors[name] = value
    missing = [name for name in expected if name not in tensors]
    if missing:
        raise BadInput(f"{folder}: tensor {missing[0]} missing "
                       f"({len(missing)} of {len(expected)} expected tensors absent)")
    if not tied and config.tied_head:  # transformers would use lm_head.weight as stored; it must be wte for our tied head
        if head is None:
            raise BadInput(f"{folder}: config unties the output head (tie_word_embeddings false) "
                           f"but no lm_head.weight is stored")
        if not np.array_equal(head[1], tensors[embedding]):
            raise BadInput(f"{head[0]}: lm_head.weight differs from {embedding}; "
                           f"our model ties the output head to the embedding")
    return tensors


@contextlib.contextmanager
def _safetensors_file(path: str):
    """safe_open(path); a missing or malformed file is BadInput."""
    from safetensors import SafetensorError, safe_open

    file_size(path)
    try:
        with safe_open(path, framework="pt") as f:
            yield f
    except SafetensorError as e:
        raise BadInput(f"{path}: not a valid safetensors file: {e}") from None


def _tensor_names(path: str) -> list[str]:
    """The names of the tensors in a safetensors file (read from its header only)."""
    with _safetensors_file(path) as f:
        return list(f.keys())


def _read_safetensors(path: str, expected: dict, config: GPTConfig) -> dict[str, np.ndarray]:
    """Tensors of one safetensors file that belong to the state dict, as fp32, validated before
    each is loaded. Drops the `transformer.` prefix and the attention-mask buffers of old files."""
    import torch

    out = {}
    with _safetensors_file(path) as f:
        for key in f.keys():
            name = key.removeprefix("transformer.")
            if name.endswith((".attn.bias", ".attn.masked_bias", ".rotary_emb.inv_freq")):
                continue  # causal-mask and rotary buffers, not weights
            want = expected.get(name, (config.vocab_size, config.n_embd) if name == "lm_head.weight" else None)
            if want is None:
                raise BadInput(f"{path}: unexpected tensor {key} (not part of a model of this config)")
            shape = tuple(f.get_slice(key).get_shape())
            if shape != want:
                raise BadInput(f"{path}: tensor {key} has shape {list(shape)}, expected {list(want)}")
            value = f.get_tensor(key)
            if not value.is_floating_point():
                raise BadInput(f"{path}: tensor {key} has dtype {value.dtype}, expected floating point")
            value = value.to(torch.float32).numpy()
            if not np.isfinite(value).all():
                raise BadInput(f"{path}: tensor {key} holds NaN or infinite values")
            out[name] = value
    return out

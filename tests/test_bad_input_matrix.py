"""Bad input, case by case: every malformed file or flag ends the command with exit status 2 and
exactly one line on stderr naming the file or flag and the problem; no traceback; nothing on disk
changes (a sentinel at the -c / -o path keeps its bytes, no file appears or disappears).

Cases run in-process through tinystories.cli.run (the function the real entry points call), which
keeps ~100 cases fast; test_train.py checks the same path through real subprocesses. Each case is
one pytest id below, so `pytest -v` lists them all.
"""
import dataclasses
import errno
import math
import json
import os
import shutil
import stat
import subprocess
import tempfile

import numpy as np
import pytest
import torch
from conftest import train_flags, write_small_vocab_tokens

from tinystories import cli, formats, llmc, tokenizer
from tinystories.config import ARCHS, GPTConfig, TrainConfig
from tinystories.model import GPT
from tinystories.train import Trainer

SMALL = GPTConfig(block_size=64, vocab_size=512, n_layer=2, n_head=2, n_embd=32)  # train cases
OTHER_VOCAB = dataclasses.replace(SMALL, vocab_size=600)
GPT2_VOCAB = GPTConfig(block_size=64, vocab_size=50257, n_layer=1, n_head=1, n_embd=8)  # generate cases
SMALL_LLAMA = dataclasses.replace(SMALL, n_kv_head=1, **ARCHS["llama"])  # the Llama block's cases: our model file
GQA_GPT2 = dataclasses.replace(GPT2_VOCAB, n_head=2, n_kv_head=1)  # a block that neither export holds
SENTINEL = b"previous checkpoint: must survive"
ROOT_SKIP = "runs as root: permission bits do not stop root"


# ----------------------------------------------------------------------------- valid inputs

def model_params(config: GPTConfig) -> dict:
    model = GPT(config)
    model.init_weights(1)
    return llmc.model_params(model)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Valid files every case starts from: models, token files, a checkpoint after one step."""
    d = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    write_small_vocab_tokens(d / "train.bin", rng.integers(0, SMALL.vocab_size, 4000), SMALL.vocab_size)
    write_small_vocab_tokens(d / "val.bin", rng.integers(0, SMALL.vocab_size, 1000), SMALL.vocab_size)
    formats.write_model(d / "model.bin", SMALL, model_params(SMALL))
    formats.write_model(d / "gpt2vocab.bin", GPT2_VOCAB, model_params(GPT2_VOCAB))
    formats.write_model(d / "llama.bin", SMALL_LLAMA, model_params(SMALL_LLAMA))
    for model, checkpoint in (("model.bin", "ck.bin"), ("llama.bin", "ckllama.bin")):
        cfg = TrainConfig(model=str(d / model), checkpoint=str(d / checkpoint), train_tokens=str(d / "train.bin"),
                          val_tokens=str(d / "val.bin"), max_steps=1, batch_size=2, seq_len=32, val_every=0,
                          sample_every=0, device="cpu")
        Trainer(cfg).run()
    (d / "folder").mkdir()
    return d


MODEL_SIZE = formats.HEADER_BYTES + 4 * SMALL.num_parameters()
METADATA_START = MODEL_SIZE + formats.HEADER_BYTES  # in a checkpoint: after the state header


def tensor_ends(config: GPTConfig) -> list[int]:
    """The byte offset in a model file of config at which each of its tensors ends."""
    return list(np.cumsum([4 * math.prod(s) for _, s in formats.model_tensor_shapes(config)]) + formats.HEADER_BYTES)


TENSOR_ENDS = tensor_ends(SMALL)


# ----------------------------------------------------------------------------- corruptions

def raw(d, name: str) -> bytes:
    return (d / name).read_bytes()


def with_int32(data: bytes, offset: int, value: int) -> bytes:
    return data[:offset] + int(value).to_bytes(4, "little", signed=True) + data[offset + 4:]


def with_float(data: bytes, offset: int, value: float) -> bytes:
    return data[:offset] + np.float32(value).tobytes() + data[offset + 4:]


def edited(data: bytes, old: bytes, new: bytes) -> bytes:
    """data with its one occurrence of `old` replaced by `new` (of the same length)."""
    assert data.count(old) == 1 and len(old) == len(new), old
    return data.replace(old, new)


def flip(data: bytes, offset: int) -> bytes:
    return data[:offset] + bytes([data[offset] ^ 1]) + data[offset + 1:]


def model_field(index: int, value: int, name: str = "model.bin"):
    return lambda d: with_int32(raw(d, name), 4 * index, value)


def state_field(index: int, value: int):
    return lambda d: with_int32(raw(d, "ck.bin"), MODEL_SIZE + 4 * index, value)


def token_field(index: int, value: int):
    return lambda d: with_int32(raw(d, "train.bin"), 4 * index, value)


def checkpoint_with(meta: dict, tensors: dict | None = None, update: dict | None = None):
    """A checkpoint of the small model with a made-up (but well-formed, checksummed) training state:
    the real one's metadata updated with `meta` (None deletes a key), its tensors replaced by `tensors`
    or updated with `update`."""
    def make(d):
        base = formats.read_model(d / "ck.bin").state
        full = {k: v for k, v in dict(base.meta, **meta).items() if v is not None}
        state = formats.TrainingState(full, dict(base.tensors if tensors is None else tensors, **(update or {})))
        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, "made.bin")
            formats.write_model(path, SMALL, formats.read_model(d / "model.bin").params, state)
            return open(path, "rb").read()
    return make


def tokenizer_bytes(vocab=3, version=2, magic=tokenizer.TOKENIZER_MAGIC, pieces=(b"a", b"bc", b"d"), tail=b""):
    body = b"".join(bytes([len(p)]) + p for p in pieces)
    return lambda d: formats.make_header(magic, version, vocab, vocab - 1) + body + tail


def tokenizer_json_with(edit):
    """The inputs' tokenizer.json (a trained BPE of 512 tokens) after edit(spec) changed its JSON."""
    def make(d):
        spec = json.loads(raw(d, "tokenizer.json"))
        edit(spec)
        return json.dumps(spec).encode()
    return make


def setting(part: str, key: str, value):
    def edit(spec):
        (spec[part] if part else spec)[key] = value
    return tokenizer_json_with(edit)


def swap_first_merges(spec):
    merges = spec["model"]["merges"]
    merges[0], merges[1] = merges[1], merges[0]


GGUF_METADATA = {  # what read_config reads first, as export --gguf writes it (a 1-layer model of 2 tokens)
    "gpt2.context_length": ("uint32", 64), "gpt2.embedding_length": ("uint32", 8),
    "gpt2.feed_forward_length": ("uint32", 32), "gpt2.block_count": ("uint32", 1),
    "gpt2.attention.head_count": ("uint32", 1), "tokenizer.ggml.tokens": ("array", ["a", "b"]),
    "gpt2.attention.layer_norm_epsilon": ("float32", 1e-5)}
LLAMA_GGUF_METADATA = {  # the same as llama.cpp's llama
    **{key.replace("gpt2.", "llama."): value for key, value in GGUF_METADATA.items() if "epsilon" not in key},
    "llama.attention.layer_norm_rms_epsilon": ("float32", 1e-5), "llama.attention.head_count_kv": ("uint32", 1)}


def gguf_metadata_with(key: str, kind: str, value):
    """A GGUF file of GGUF_METADATA, or LLAMA_GGUF_METADATA for a llama.* key (no tensors), with `key`
    written as `kind` (a GGUFWriter add_<kind>)."""
    def make(d):
        import gguf

        arch, metadata = ("llama", LLAMA_GGUF_METADATA) if key.startswith("llama.") else ("gpt2", GGUF_METADATA)
        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, "m.gguf")
            writer = gguf.GGUFWriter(path, arch)
            for name, (how, data) in dict(metadata, **{key: (kind, value)}).items():
                getattr(writer, f"add_{how}")(name, data)
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
            writer.close()
            return open(path, "rb").read()
    return make


# ----------------------------------------------------------------------------- the cases

def case(id, command, args, needles, bad=None, env=None, locked=None, skip=None):
    """One malformed input. `args` and `needles` may use {bad} (a file holding bad(d) bytes),
    {ck} (the sentinel checkpoint), {model}, {gpt2vocab}, {train}, {val}, {folder}, {missing}, {afile}, {fifo},
    {device} (a character device like /dev/null, made by root only: its cases are skipped otherwise);
    `locked` names the one of them made unreadable (a file) or unwritable (a folder)."""
    marks = [pytest.mark.skipif(True, reason=skip)] if skip else []
    return pytest.param((command, args, needles, bad, env or {}, locked), id=id, marks=marks)


def cut_cases(prefix: str, name: str, config: GPTConfig) -> list:
    """The model file `name` (of config) cut after each of its tensors but the last."""
    tensors = [tensor for tensor, _ in formats.model_tensor_shapes(config)]
    return [case(f"{prefix}model-cut-after-{tensor}", "train", "-e {bad}", ["{bad}", "truncated"],
                 bad=lambda d, end=int(end): raw(d, name)[:end])
            for tensor, end in zip(tensors[:-1], tensor_ends(config)[:-1])]  # after the last the model part is whole


AS_ROOT = ROOT_SKIP if os.geteuid() == 0 else None
HAS_CUDA = "CUDA is available here" if torch.cuda.is_available() else None
NOT_ROOT = None if os.geteuid() == 0 else "only root makes a device node (and only root can rename over one)"
LONG_NAME = "c" * 250  # fits a file name (255 bytes), but not its temp file's, <name>.<8 characters>.tmp

CASES = [
    # model files (-e)
    case("model-empty", "train", "-e {bad}", ["{bad}", "too short"], bad=lambda d: b""),
    case("model-cut-inside-header", "train", "-e {bad}", ["{bad}", "too short"], bad=lambda d: raw(d, "model.bin")[:500]),
    case("model-cut-after-header", "train", "-e {bad}", ["{bad}", "truncated"], bad=lambda d: raw(d, "model.bin")[:1024]),
    case("model-cut-inside-wte", "train", "-e {bad}", ["{bad}", "truncated"], bad=lambda d: raw(d, "model.bin")[:2000]),
    *cut_cases("", "model.bin", SMALL),
    case("checkpoint-cut-inside-state-header", "train", "-e {bad}", ["{bad}", "training state is invalid"],
         bad=lambda d: raw(d, "ck.bin")[:MODEL_SIZE + 100]),
    case("checkpoint-cut-inside-state-metadata", "train", "-e {bad}", ["{bad}", "training state is invalid"],
         bad=lambda d: raw(d, "ck.bin")[:METADATA_START + 40]),
    case("checkpoint-cut-inside-state-tensors", "train", "-e {bad}", ["{bad}", "training state is invalid"],
         bad=lambda d: raw(d, "ck.bin")[:-100]),
    case("header-huge-block-size", "train", "-e {bad}", ["{bad}", "truncated"], bad=model_field(2, 2**31 - 1)),
    case("header-huge-layers", "train", "-e {bad}", ["{bad}", "truncated"], bad=model_field(4, 2**31 - 1)),
    case("header-huge-channels", "train", "-e {bad}", ["{bad}", "truncated"], bad=model_field(6, 2**30)),
    case("header-negative-layers", "train", "-e {bad}", ["{bad}", "n_layer must be positive"], bad=model_field(4, -2)),
    case("header-negative-block-size", "train", "-e {bad}", ["{bad}", "block_size must be positive"], bad=model_field(2, -64)),
    case("header-vocab-0", "train", "-e {bad}", ["{bad}", "vocab_size must be positive"], bad=model_field(3, 0)),
    case("header-heads-0", "train", "-e {bad}", ["{bad}", "n_head must be positive"], bad=model_field(5, 0)),
    case("header-heads-not-dividing-channels", "train", "-e {bad}", ["{bad}", "divisible"], bad=model_field(5, 3)),
    case("header-padded-vocab-mismatch", "train", "-e {bad}", ["{bad}", "padded vocab"], bad=model_field(7, 513)),
    case("model-wrong-magic", "train", "-e {bad}", ["{bad}", "not an llm.c model file"], bad=model_field(0, 1234)),
    case("model-wrong-version", "train", "-e {bad}", ["{bad}", "unsupported model file version"], bad=model_field(1, 9)),
    case("model-bf16-version-on-fp32-data", "train", "-e {bad}", ["{bad}", "NaN or infinite"],
         bad=model_field(1, 5)),
    case("model-trailing-garbage", "train", "-e {bad}", ["{bad}", "training state is invalid"],
         bad=lambda d: raw(d, "model.bin") + b"junk" * 10),
    case("model-nan-weight", "train", "-e {bad}", ["{bad}", "NaN"],
         bad=lambda d: with_float(raw(d, "model.bin"), int(TENSOR_ENDS[-2]), float("nan"))),
    case("model-inf-weight", "train", "-e {bad}", ["{bad}", "infinite"],
         bad=lambda d: with_float(raw(d, "model.bin"), 2048, float("inf"))),
    case("model-is-a-folder", "train", "-e {folder}", ["{folder}", "folder"]),
    case("model-missing", "train", "-e {missing}", ["{missing}", "not found"]),
    case("model-is-a-token-file", "train", "-e {train}", ["{train}", "not an llm.c model file"]),
    case("model-is-a-pipe", "train", "-e {fifo}", ["{fifo}", "not a regular file"]),
    case("model-is-a-device", "train", "-e /dev/zero", ["/dev/zero", "not a regular file"]),
    case("model-unreadable", "train", "-e {bad}", ["{bad}", "not readable"], bad=lambda d: raw(d, "model.bin"),
         locked="bad", skip=AS_ROOT),
    # our model file of another block (the Llama block)
    *cut_cases("llama-", "llama.bin", SMALL_LLAMA),
    case("llama-header-position-code-unknown", "train", "-e {bad}", ["{bad}", "position code 5"],
         bad=model_field(18, 5, "llama.bin")),
    case("llama-header-bias-not-0-or-1", "train", "-e {bad}", ["{bad}", "bias 2", "0 or 1"],
         bad=model_field(22, 2, "llama.bin")),
    case("llama-header-kv-heads-not-dividing", "train", "-e {bad}", ["{bad}", "divisible by kv heads"],
         bad=model_field(23, 3, "llama.bin")),
    case("llama-header-field-of-a-newer-version", "train", "-e {bad}", ["{bad}", "does not know"],
         bad=model_field(60, 1, "llama.bin")),
    case("llama-model-wrong-version", "train", "-e {bad}", ["{bad}", "unsupported model file version 3"],
         bad=model_field(1, 3, "llama.bin")),
    case("llama-trailing-garbage", "train", "-e {bad}", ["{bad}", "training state is invalid"],
         bad=lambda d: raw(d, "llama.bin") + b"junk" * 10),
    case("llama-state-of-other-weights", "train", "-e {bad}", ["{bad}", "belongs to other weights"],
         bad=lambda d: flip(raw(d, "ckllama.bin"), 4000)),
    case("llama-state-tensor-data-corrupt", "train", "-e {bad}", ["{bad}", "checksum mismatch"],
         bad=lambda d: flip(raw(d, "ckllama.bin"), len(raw(d, "ckllama.bin")) - 5)),
    case("generate-llama-model-cut", "generate", "-e {bad}", ["{bad}", "truncated"],
         bad=lambda d: raw(d, "llama.bin")[:5000]),
    case("export-hf-block-it-cannot-hold", "export", "-e {bad} -o {folder}/hf",
         ["{bad}: the Hugging Face export holds the gpt2 and llama blocks only", "n_kv_head 1"],
         bad=lambda d: formats.model_bytes(GQA_GPT2, model_params(GQA_GPT2))),
    case("export-gguf-block-it-cannot-hold", "export", "-e {bad} --gguf {folder}/m.gguf",
         ["{bad}: the GGUF export holds the gpt2 and llama blocks only", "n_kv_head 1"],
         bad=lambda d: formats.model_bytes(GQA_GPT2, model_params(GQA_GPT2))),
    # the training-state trailer
    case("state-wrong-magic", "train", "-e {bad}", ["{bad}", "unexpected bytes after the model"], bad=state_field(0, 7)),
    case("state-wrong-version", "train", "-e {bad}", ["{bad}", "unsupported version"], bad=state_field(1, 3)),
    case("state-metadata-step-edited", "train", "-e {bad}", ["{bad}", "metadata checksum mismatch"],
         bad=lambda d: edited(raw(d, "ck.bin"), b'"step": 1,', b'"step": 7,')),
    case("state-metadata-position-edited", "train", "-e {bad}", ["{bad}", "metadata checksum mismatch"],
         bad=lambda d: edited(raw(d, "ck.bin"), b'"data_position": 64,', b'"data_position": 94,')),
    case("checkpoint-of-another-run-at-c", "train", "-c {bad}", ["-c {bad}", "another run", "-e {bad}", "--overwrite"],
         bad=lambda d: raw(d, "ck.bin")),
    case("state-sizes-forged", "train", "-e {bad}", ["{bad}", "header sizes"], bad=state_field(3, 2**31 - 1)),
    case("state-of-other-weights", "train", "-e {bad}", ["{bad}", "belongs to other weights"],
         bad=lambda d: flip(raw(d, "ck.bin"), 4000)),
    case("state-tensor-data-corrupt", "train", "-e {bad}", ["{bad}", "checksum mismatch"],
         bad=lambda d: flip(raw(d, "ck.bin"), len(raw(d, "ck.bin")) - 5)),
    case("state-metadata-not-json", "train", "-e {bad}", ["{bad}", "not the expected JSON"],
         bad=lambda d: flip(raw(d, "ck.bin"), METADATA_START)),
    case("state-unknown-format", "train", "-e {bad}", ["{bad}", "unknown format"], bad=checkpoint_with({"format": "x"})),
    case("state-negative-step", "train", "-e {bad}", ["{bad}", "bad step"], bad=checkpoint_with({"step": -1})),
    case("state-lacks-data-position", "train", "-e {bad}", ["{bad}", "lacks 'data_position'"],
         bad=checkpoint_with({"data_position": None})),
    case("state-rng-wrong-dtype", "train", "-e {bad}", ["{bad}", "malformed torch_rng"],
         bad=checkpoint_with({}, update={"torch_rng": np.zeros(8, np.float32)})),
    case("state-lacks-adam-moments", "train", "-e {bad}", ["{bad}", "lacks the AdamW moments"],
         bad=checkpoint_with({}, tensors={})),
    # token files (-i, -j)
    case("tokens-empty", "train", "-i {bad}", ["{bad}", "too short"], bad=lambda d: b""),
    case("tokens-wrong-magic", "train", "-i {bad}", ["{bad}", "not an llm.c token file"], bad=token_field(0, 5)),
    case("tokens-wrong-version", "train", "-i {bad}", ["{bad}", "unsupported token file version"], bad=token_field(1, 2)),
    case("tokens-truncated", "train", "-i {bad}", ["{bad}", "truncated or corrupt"], bad=lambda d: raw(d, "train.bin")[:-7]),
    case("tokens-negative-count", "train", "-i {bad}", ["{bad}", "truncated or corrupt"], bad=token_field(2, -1)),
    case("tokens-count-0", "train", "-i {bad}", ["{bad}", "no tokens"],
         bad=lambda d: formats.make_header(formats.TOKEN_MAGIC, formats.TOKEN_VERSION, 0)),
    case("tokens-id-out-of-range", "train", "-i {bad}", ["{bad}", "outside the vocabulary"],
         bad=lambda d: raw(d, "train.bin")[:-2] + (600).to_bytes(2, "little")),
    case("tokens-fewer-than-one-batch", "train", "-i {bad}", ["{bad}", "fewer than one batch"],
         bad=lambda d: with_int32(raw(d, "train.bin")[:1024 + 20], 8, 10)),  # the first 10 tokens
    case("tokens-is-a-folder", "train", "-i {folder}", ["{folder}", "folder"]),
    case("tokens-missing", "train", "-i {missing}", ["{missing}", "not found"]),
    case("tokens-is-a-model-file", "train", "-i {model}", ["{model}", "not an llm.c token file"]),
    case("tokens-is-a-pipe", "train", "-i {fifo}", ["{fifo}", "not a regular file"]),
    case("tokens-unreadable", "train", "-i {bad}", ["{bad}", "not readable"], bad=lambda d: raw(d, "train.bin"),
         locked="bad", skip=AS_ROOT),
    case("val-tokens-id-out-of-range", "train", "-v 1 -j {bad}", ["{bad}", "outside the vocabulary"],
         bad=lambda d: (600).to_bytes(2, "little").join([raw(d, "val.bin")[:1024], raw(d, "val.bin")[1026:]])),
    # tokenizer files (read by tokenizer.read_tokenizer_file)
    case("tokenizer-wrong-magic", "tokenizer", "{bad}", ["{bad}", "not an llm.c tokenizer file"], bad=tokenizer_bytes(magic=1)),
    case("tokenizer-wrong-version", "tokenizer", "{bad}", ["{bad}", "unsupported tokenizer file version"],
         bad=tokenizer_bytes(version=7)),
    case("tokenizer-vocab-0", "tokenizer", "{bad}", ["{bad}", "bad vocab size"], bad=tokenizer_bytes(vocab=0)),
    case("tokenizer-truncated", "tokenizer", "{bad}", ["{bad}", "truncated"], bad=tokenizer_bytes(vocab=4)),
    case("tokenizer-zero-length-token", "tokenizer", "{bad}", ["{bad}", "bad length 0"],
         bad=tokenizer_bytes(pieces=(b"a", b"", b"d"))),
    case("tokenizer-trailing-bytes", "tokenizer", "{bad}", ["{bad}", "unexpected bytes"], bad=tokenizer_bytes(tail=b"xyz")),
    case("tokenizer-empty", "tokenizer", "{bad}", ["{bad}", "too short"], bad=lambda d: b""),
    # --config files
    case("config-is-a-pipe", "train", "--config {fifo}", ["--config {fifo}", "not a regular file"]),
    case("config-is-a-device", "train", "--config /dev/zero", ["--config /dev/zero", "not a regular file"]),
    case("config-is-a-folder", "train", "--config {folder}", ["--config {folder}", "folder"]),
    case("config-too-large", "train", "--config {bad}", ["--config {bad}", "too large"], bad=lambda d: b"#" * (2 << 20)),
    # train flags
    case("train-seq-len-over-block", "train", "-t 65", ["-t/--seq-len 65", "block size"]),
    case("train-batch-0", "train", "-b 0", ["-b/--batch-size", "positive"]),
    case("train-batch-negative", "train", "-b -3", ["-b/--batch-size", "positive"]),
    case("train-steps-0", "train", "-n 0", ["-n/--max-steps"]),
    case("train-steps-negative", "train", "-n -2", ["-n/--max-steps"]),
    case("train-steps-not-a-number", "train", "-n abc", ["-n/--max-steps", "abc"]),
    case("train-lr-0", "train", "-l 0", ["-l/--lr", "positive"]),
    case("train-lr-negative", "train", "-l -1", ["-l/--lr", "positive"]),
    case("train-lr-infinite", "train", "-l inf", ["-l", "inf"]),
    case("train-beta1-above-1", "train", "--beta1 2", ["--beta1", "2"]),
    *[case(f"train-{flag[2:]}-{value}", "train", f"{flag} {value}", [flag, value, "finite"])
      for flag in ("--weight-decay", "--grad-clip", "--min-lr-ratio", "--eps", "--embed-lr", "--matrix-lr")
      for value in ("inf", "nan")],
    case("train-seed-beyond-int64", "train", "--seed 99999999999999999999999", ["--seed", "int64"]),
    case("train-tensorboard-is-a-file", "train", "--tensorboard {afile}", ["--tensorboard {afile}", "is a file"]),
    case("train-beta2-negative", "train", "--beta2 -1", ["--beta2", "-1"]),
    case("train-device-bogus", "train", "--device bogus", ["--device", "bogus"]),
    case("train-device-cuda-absent", "train", "--device cuda", ["--device cuda", "CUDA"], skip=HAS_CUDA),
    case("train-cuda-graphs-on-cpu", "train", "--cuda-graphs on", ["--cuda-graphs on", "CUDA"]),
    case("train-grad-accum-0", "train", "--grad-accum 0", ["--grad-accum", "positive"]),
    case("train-checkpoint-every-negative", "train", "-k -1", ["-k/--checkpoint-every"]),
    case("train-precision-bogus", "train", "--precision fp8", ["--precision", "fp8"]),
    case("train-lr-decay-bogus", "train", "--lr-decay step", ["--lr-decay", "step"]),
    case("train-unknown-flag", "train", "--bogus 1", ["--bogus"]),
    case("train-abbreviated-flag", "train", "--co 0.5", ["unrecognized arguments: --co"]),  # --config or --cooldown?
    case("train-checkpoint-is-a-folder", "train", "-c {folder}", ["-c {folder}", "folder"]),
    case("train-checkpoint-folder-missing", "train", "-c {missing}/ck.bin", ["-c {missing}/ck.bin", "does not exist"]),
    case("train-checkpoint-folder-is-a-file", "train", "-c {afile}/ck.bin", ["-c {afile}/ck.bin", "does not exist"]),
    case("train-checkpoint-folder-unwritable", "train", "-c {folder}/ck.bin", ["-c {folder}/ck.bin", "not writable"],
         locked="folder", skip=AS_ROOT),
    case("train-checkpoint-is-the-train-tokens", "train", "-i {bad} -c {bad}", ["-c {bad}", "-i"],
         bad=lambda d: raw(d, "train.bin")),
    case("train-metrics-is-the-model", "train", "-e {bad} --metrics {bad}", ["--metrics {bad}", "-e"],
         bad=lambda d: raw(d, "model.bin")),
    case("train-tensorboard-under-a-file", "train", "--tensorboard {afile}/tb", ["--tensorboard {afile}/tb", "cannot write"]),
    case("train-checkpoint-is-a-device", "train", "-c {device}", ["-c {device}", "not a regular file"], skip=NOT_ROOT),
    case("train-checkpoint-is-a-pipe", "train", "-c {fifo}", ["-c {fifo}", "not a regular file"]),
    case("train-metrics-is-a-device", "train", "--metrics {device}", ["--metrics {device}", "not a regular file"],
         skip=NOT_ROOT),
    case("train-checkpoint-is-a-token-file", "train", "-c {bad}", ["-c {bad}", "holds a token file", "--overwrite"],
         bad=lambda d: raw(d, "train.bin")),
    case("train-checkpoint-name-too-long-for-its-temp-file", "train", "-c {folder}/" + LONG_NAME,
         ["-c {folder}/" + LONG_NAME, "File name too long"]),
    case("train-checkpoint-step-file-name-too-long", "train", "-k 1 --keep 1 -c {folder}/" + LONG_NAME[:236] + ".bin",
         ["-c {folder}/" + LONG_NAME[:236] + ".bin", ".step1.bin", "File name too long"]),
    case("train-grad-accum-beyond-the-train-file", "train", "--grad-accum 100000000",
         ["--grad-accum 100000000", "more than the train file"]),
    case("config-nested-too-deeply", "train", "--config {bad}", ["--config {bad}", "nested too deeply"],
         bad=lambda d: b"a = " + b"[" * 5000 + b"]" * 5000),
    case("train-world-size-without-torchrun", "train", "", ["WORLD_SIZE=2", "torchrun"], env={"WORLD_SIZE": "2"}),
    case("train-world-size-not-a-number", "train", "", ["WORLD_SIZE='banana'", "integer"], env={"WORLD_SIZE": "banana"}),
    case("train-world-size-0", "train", "", ["WORLD_SIZE='0'", "1 or more"], env={"WORLD_SIZE": "0"}),
    case("train-rank-outside-the-world", "train", "", ["RANK='2'", "from 0 to 1"], env={"WORLD_SIZE": "2", "RANK": "2"}),
    case("train-local-rank-negative", "train", "", ["LOCAL_RANK='-1'", "from 0 to 0"], env={"LOCAL_RANK": "-1"}),
    # generate
    case("generate-tokens-over-block", "generate", "-e {gpt2vocab} -n 1000", ["-n/--tokens", "block size"]),
    case("generate-top-p-0", "generate", "-e {gpt2vocab} --top-p 0", ["--top-p"]),
    case("generate-top-p-above-1", "generate", "-e {gpt2vocab} --top-p 1.5", ["--top-p", "1.5"]),
    case("generate-temperature-negative", "generate", "-e {gpt2vocab} --temperature -1", ["--temperature"]),
    case("generate-temperature-infinite", "generate", "-e {gpt2vocab} --temperature inf", ["--temperature", "inf"]),
    case("generate-seed-over-64-bits", "generate", "-e {gpt2vocab} -s 99999999999999999999999",
         ["-s/--seed", "99999999999999999999999"]),
    case("generate-seed-negative", "generate", "-e {gpt2vocab} -s -1", ["-s/--seed", "-1"]),
    case("generate-abbreviated-flag", "generate", "-e {gpt2vocab} --temp 0.5", ["unrecognized arguments: --temp"]),
    case("generate-model-missing", "generate", "-e {missing}", ["{missing}", "not found"]),
    case("generate-model-is-a-pipe", "generate", "-e {fifo}", ["{fifo}", "not a regular file"]),
    case("generate-model-not-its-tokenizers-vocab", "generate", "-e {bad}", ["tokenizer.json", "512 tokens", "{bad}",
                                                                            "a vocabulary of 600"],
         bad=lambda d: formats.model_bytes(OTHER_VOCAB, model_params(OTHER_VOCAB))),
    case("generate-weights-overflow", "generate", "-e {bad} -n 5 -s 0", ["{bad}", "NaN or infinite logits", "diverged"],
         bad=lambda d: formats.model_bytes(GPT2_VOCAB, {name: np.full(shape, 3e38, np.float32)
                                                        for name, shape in formats.model_tensor_shapes(GPT2_VOCAB)})),
    case("generate-model-is-a-token-file", "generate", "-e {train}", ["{train}", "not an llm.c model file"]),
    case("generate-tokenizer-is-a-device", "generate", "-e {model} --tokenizer /dev/zero", ["/dev/zero", "not a regular file"]),
    case("generate-tokenizer-is-a-pipe", "generate", "-e {model} --tokenizer {fifo}", ["{fifo}", "not a regular file"]),
    # a hand-edited tokenizer.json: anything that changes how it encodes, which its fingerprint (each id's bytes) misses
    case("tokenizer-json-merges-reordered", "tokenizer.json", "{bad}", ["{bad}", "canonical order"],
         bad=tokenizer_json_with(swap_first_merges)),
    case("tokenizer-json-merge-dropped", "tokenizer.json", "{bad}", ["{bad}", "merges"],
         bad=tokenizer_json_with(lambda spec: spec["model"]["merges"].pop())),
    case("tokenizer-json-truncation", "tokenizer.json", "{bad}", ["{bad}", "truncation"],
         bad=setting("", "truncation", {"direction": "Right", "max_length": 8, "strategy": "LongestFirst", "stride": 0})),
    case("tokenizer-json-padding", "tokenizer.json", "{bad}", ["{bad}", "padding"],
         bad=setting("", "padding", {"strategy": "BatchLongest", "direction": "Right", "pad_to_multiple_of": None,
                                     "pad_id": 0, "pad_type_id": 0, "pad_token": "<|endoftext|>"})),
    case("tokenizer-json-bpe-dropout", "tokenizer.json", "{bad}", ["{bad}", "dropout"], bad=setting("model", "dropout", 0.5)),
    case("tokenizer-json-continuing-subword-prefix", "tokenizer.json", "{bad}", ["{bad}", "continuing_subword_prefix"],
         bad=setting("model", "continuing_subword_prefix", "##")),  # the `tokenizers` library panics on it
    case("tokenizer-json-end-of-word-suffix", "tokenizer.json", "{bad}", ["{bad}", "end_of_word_suffix"],
         bad=setting("model", "end_of_word_suffix", "</w>")),
    case("tokenizer-json-ignore-merges", "tokenizer.json", "{bad}", ["{bad}", "ignore_merges"],
         bad=setting("model", "ignore_merges", True)),
    case("tokenizer-json-normalizer", "tokenizer.json", "{bad}", ["{bad}", "normalizer"],
         bad=setting("", "normalizer", {"type": "Lowercase"})),
    case("tokenizer-json-prefix-space", "tokenizer.json", "{bad}", ["{bad}", "add_prefix_space"],
         bad=setting("pre_tokenizer", "add_prefix_space", True)),
    case("tokenizer-json-eot-stripping", "tokenizer.json", "{bad}", ["{bad}", "added tokens"],
         bad=tokenizer_json_with(lambda spec: spec["added_tokens"][0].update(lstrip=True))),
    case("tokenizer-json-post-processor", "tokenizer.json", "{bad}", ["{bad}", "post_processor"],
         bad=setting("", "post_processor", {"type": "TemplateProcessing", "single": [], "pair": [], "special_tokens": {}})),
    case("tokenizer-json-not-an-object", "tokenizer.json", "{bad}", ["{bad}", "not a JSON object"], bad=lambda d: b"[1]"),
    case("tokenizer-json-is-a-device", "tokenizer.json", "/dev/zero", ["/dev/zero", "not a regular file"]),
    # create_model.py
    case("create-heads-not-dividing-channels", "create", "-o {ck} --heads 3 --channels 32", ["divisible", "heads"]),
    case("create-layers-0", "create", "-o {ck} --layers 0", ["--layers", "positive"]),
    case("create-kv-heads-not-dividing-heads", "create", "-o {ck} --arch llama --heads 4 --kv-heads 3",
         ["heads (4) must be divisible by kv heads (3)"]),
    case("create-arch-unknown", "create", "-o {ck} --arch mamba", ["--arch", "invalid choice: 'mamba'"]),
    case("create-huge-model", "create", "-o {ck} --layers 100 --channels 100000 --heads 1",
         ["12,005,186,200,000 parameters", "GiB of memory"]),
    case("create-block-size-over-int32", "create", "-o {ck} --block-size 3000000000", ["block_size 3,000,000,000", "llm.c header"]),
    case("create-padded-vocab-over-int32", "create", "-o {ck} --vocab-size 2147483600", ["vocab_size 2,147,483,600", "llm.c header"]),
    case("create-seed-over-64-bits", "create", "-o {ck} --seed 99999999999999999999999", ["--seed", "2**64"]),
    case("create-output-folder-missing", "create", "-o {missing}/m.bin --layers 1 --channels 8 --heads 1",
         ["{missing}/m.bin", "does not exist"]),
    case("create-output-is-a-folder", "create", "-o {folder} --layers 1 --channels 8 --heads 1", ["{folder}"]),
    case("create-output-is-a-device", "create", "-o {device} --layers 1 --channels 8 --heads 1",
         ["-o {device}", "not a regular file"], skip=NOT_ROOT),
    case("create-output-is-a-pipe", "create", "-o {fifo} --layers 1 --channels 8 --heads 1", ["-o {fifo}", "not a regular file"]),
    case("create-output-is-a-checkpoint", "create", "-o {bad} --layers 1 --channels 8 --heads 1",
         ["-o {bad}", "holds a checkpoint", "--force"], bad=lambda d: raw(d, "ck.bin")),
    case("create-output-is-a-token-file", "create", "-o {bad} --layers 1 --channels 8 --heads 1",
         ["-o {bad}", "holds a token file", "--force"], bad=lambda d: raw(d, "train.bin")),
    case("create-output-is-its-tokenizer", "create", "-o {bad} --tokenizer {bad} --force",
         ["-o {bad}", "same file as --tokenizer"], bad=lambda d: raw(d, "tokenizer.json")),
    # export and import
    case("export-gguf-over-its-model", "export", "-e {bad} --gguf {bad} --force", ["--gguf {bad}", "same file as -e"],
         bad=lambda d: raw(d, "model.bin")),
    case("export-gguf-over-a-checkpoint", "export", "-e {model} --gguf {bad}", ["--gguf {bad}", "holds a checkpoint", "--force"],
         bad=lambda d: raw(d, "ck.bin")),
    case("export-gguf-over-a-token-file", "export", "-e {model} --gguf {bad}", ["--gguf {bad}", "holds a token file"],
         bad=lambda d: raw(d, "train.bin")),
    case("export-gguf-is-a-device", "export", "-e {model} --gguf {device}", ["--gguf {device}", "not a regular file"],
         skip=NOT_ROOT),
    case("export-gguf-name-too-long", "export", "-e {model} --gguf {folder}/" + LONG_NAME, ["--gguf", "File name too long"]),
    case("import-output-is-a-checkpoint", "import", "-i {folder} -o {bad}", ["-o {bad}", "holds a checkpoint", "--force"],
         bad=lambda d: raw(d, "ck.bin")),
    case("import-output-is-a-device", "import", "-i {folder} -o {device}", ["-o {device}", "not a regular file"],
         skip=NOT_ROOT),
    case("import-output-is-its-input", "import", "-i {bad} -o {bad} --force", ["-o {bad}", "same file as -i"],
         bad=gguf_metadata_with("gpt2.block_count", "uint32", 1)),
    case("import-gguf-string-block-count", "import", "-i {bad} -o {folder}/m.bin", ["{bad}", "block_count", "an integer"],
         bad=gguf_metadata_with("gpt2.block_count", "string", "2")),
    case("import-gguf-float-context-length", "import", "-i {bad} -o {folder}/m.bin", ["{bad}", "context_length", "an integer"],
         bad=gguf_metadata_with("gpt2.context_length", "float32", 64.0)),
    case("import-gguf-bool-head-count", "import", "-i {bad} -o {folder}/m.bin", ["{bad}", "head_count", "an integer"],
         bad=gguf_metadata_with("gpt2.attention.head_count", "bool", True)),
    case("import-gguf-string-epsilon", "import", "-i {bad} -o {folder}/m.bin", ["{bad}", "layer_norm_epsilon", "a number"],
         bad=gguf_metadata_with("gpt2.attention.layer_norm_epsilon", "string", "1e-5")),
    case("import-llama-gguf-no-heads", "import", "-i {bad} -o {folder}/m.bin", ["{bad}", "n_head must be positive"],
         bad=gguf_metadata_with("llama.attention.head_count", "uint32", 0)),
    case("import-llama-gguf-string-kv-heads", "import", "-i {bad} -o {folder}/m.bin", ["{bad}", "head_count_kv", "an integer"],
         bad=gguf_metadata_with("llama.attention.head_count_kv", "string", "1")),
    case("import-llama-gguf-infinite-rope-base", "import", "-i {bad} -o {folder}/m.bin", ["{bad}", "unsupported rope"],
         bad=gguf_metadata_with("llama.rope.freq_base", "float32", float("inf"))),
    case("import-llama-gguf-odd-rope-dimensions", "import", "-i {bad} -o {folder}/m.bin", ["{bad}", "rope.dimension_count 3"],
         bad=gguf_metadata_with("llama.rope.dimension_count", "uint32", 3)),
    case("plot-output-is-a-device", "plot", "{afile} -o {device}", ["-o {device}", "not a regular file"], skip=NOT_ROOT),
    # prepare_data.py
    case("prepare-source-unknown-kind", "prepare", "--source {afile} --out-dir {folder}", ["--source {afile}", "unknown kind"]),
    case("prepare-source-missing", "prepare", "--source {missing} --out-dir {folder}", ["--source {missing}", "no such file"]),
    case("prepare-workers-0", "prepare", "--source synthetic --workers 0 --out-dir {folder}", ["--workers", "positive"]),
    case("prepare-tokenizer-file-is-a-token-file", "prepare",
         "--source synthetic --out-dir {folder} --tokenizer-file {folder}/TinyStories_val.bin",
         ["--tokenizer-file {folder}/TinyStories_val.bin", "TinyStories_val.bin", "another file"]),
    case("prepare-tokenizer-file-is-the-source", "prepare", "--source {afile} --out-dir {folder} --tokenizer-file {afile}",
         ["--source {afile}", "would replace it with --tokenizer-file"]),
    case("prepare-workers-a-fork-bomb", "prepare", "--source synthetic --workers 100000 --out-dir {folder}",
         ["--workers 100000", "per core"]),
    case("prepare-out-dir-is-a-file", "prepare", "--source synthetic --out-dir {afile}", ["--out-dir {afile}"]),
    case("prepare-tokenizer-file-is-a-device", "prepare", "--source synthetic --out-dir {folder} --tokenizer-file {device}",
         ["--tokenizer-file {device}", "not a regular file"], skip=NOT_ROOT),
    case("prepare-tokenizer-file-is-a-model", "prepare", "--source synthetic --out-dir {folder} --tokenizer-file {bad}",
         ["--tokenizer-file {bad}", "holds a model file"], bad=lambda d: raw(d, "model.bin")),
]

ENTRIES = {"train": cli.train_main, "generate": cli.generate_main, "create": cli.create_main,
           "prepare": cli.prepare_main, "tokenizer": lambda argv: tokenizer.read_tokenizer_file(argv[0]),
           "tokenizer.json": lambda argv: tokenizer.load_bpe(argv[0]), "export": cli.export_main,
           "import": cli.import_main, "plot": cli.plot_main}


def test_at_least_40_cases_are_checked():
    runnable = [c for c in CASES if not c.marks]
    assert len(CASES) == len({c.id for c in CASES})
    assert len(runnable) >= 40, len(runnable)


def snapshot(folder) -> dict:
    """Every path under `folder` with its bytes (its size where a locked file cannot be read)."""
    def content(p):
        if not p.is_file():
            return None
        return p.read_bytes() if os.access(p, os.R_OK) else p.stat().st_size
    return {p.relative_to(folder): content(p) for p in sorted(folder.rglob("*"))}


@pytest.mark.parametrize("spec", CASES)
def test_bad_input(spec, inputs, tmp_path, capsys, monkeypatch):
    command, args, needles, bad, env, locked = spec
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    (tmp_path / "ck.bin").write_bytes(SENTINEL)
    (tmp_path / "afile").write_text("a plain file")
    (tmp_path / "folder").mkdir()
    os.mkfifo(tmp_path / "fifo")  # reading it would wait for a writer forever
    if os.geteuid() == 0:  # a /dev/null of our own: a failing case must not break the machine's
        os.mknod(tmp_path / "device", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    shutil.copy(inputs / "tokenizer.json", tmp_path)  # the tokenizer of the bad token files made from inputs'
    places = {"bad": tmp_path / "bad.bin", "ck": tmp_path / "ck.bin", "model": inputs / "model.bin",
              "gpt2vocab": inputs / "gpt2vocab.bin", "train": inputs / "train.bin", "val": inputs / "val.bin",
              "folder": tmp_path / "folder", "missing": tmp_path / "missing", "afile": tmp_path / "afile",
              "fifo": tmp_path / "fifo", "device": tmp_path / "device"}
    if bad is not None:
        places["bad"].write_bytes(bad(inputs))
    if locked:
        places[locked].chmod(0o500 if places[locked].is_dir() else 0)
    argv = args.format(**places).split()
    if command == "train":
        argv = [*train_flags(inputs, learning_rate=None, model=inputs / "model.bin", checkpoint=places["ck"],
                             max_steps=1, device="cpu"), *argv]
    before, inputs_before = snapshot(tmp_path), snapshot(inputs)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        cli.run(ENTRIES[command], argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    for needle in needles:
        assert needle.format(**places) in lines[0], lines[0]
    assert snapshot(tmp_path) == before  # the sentinel is intact; nothing appeared or vanished
    assert not places["device"].exists() or places["device"].is_char_device()
    assert snapshot(inputs) == inputs_before


# ----------------------------------------------------------------------------- full or read-only disks

def mounted(tmp_path, *mount_args):
    """A folder under tmp_path with something mounted on it (unmounted at exit), or skip."""
    folder = tmp_path / "mnt"
    folder.mkdir(exist_ok=True)
    for args in mount_args:
        result = subprocess.run(["mount", *args, str(folder)], capture_output=True, text=True)
        if result.returncode != 0:
            subprocess.run(["umount", str(folder)], capture_output=True)
            pytest.skip(f"cannot mount here: {result.stderr.strip()}")
    return folder


@pytest.fixture
def small_tmpfs(tmp_path):
    folder = mounted(tmp_path, ["-t", "tmpfs", "-o", "size=400k", "tmpfs"])
    yield folder
    subprocess.run(["umount", str(folder)], check=True)


@pytest.fixture
def read_only_folder(tmp_path):
    (tmp_path / "mnt").mkdir()
    (tmp_path / "mnt" / "ck.bin").write_bytes(SENTINEL)
    folder = mounted(tmp_path, ["--bind", str(tmp_path / "mnt")], ["-o", "remount,ro,bind"])
    yield folder
    subprocess.run(["umount", str(folder)], check=True)


def run_train(inputs, capsys, *extra) -> str:
    """./train for one step in-process; the single stderr line of its exit-2 failure."""
    argv = [*train_flags(inputs, val_tokens=None, learning_rate=None, model=inputs / "model.bin", max_steps=1,
                         device="cpu"), *map(str, extra)]
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        cli.run(cli.train_main, argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1, err
    return err[0]


def test_disk_full_keeps_the_previous_checkpoint(inputs, small_tmpfs, capsys):
    """A real full disk (a 400 KiB tmpfs): the previous file at -c survives, no temp file remains."""
    previous = raw(inputs, "model.bin")  # 176 KiB; the new checkpoint (weights + moments) needs 3x
    (small_tmpfs / "ck.bin").write_bytes(previous)
    line = run_train(inputs, capsys, "-c", small_tmpfs / "ck.bin", "--metrics", small_tmpfs.parent / "m.jsonl")
    assert f"{small_tmpfs / 'ck.bin'}: write failed: No space left on device" in line
    assert os.listdir(small_tmpfs) == ["ck.bin"] and (small_tmpfs / "ck.bin").read_bytes() == previous


def test_enospc_on_fsync_keeps_the_previous_file(inputs, tmp_path, monkeypatch):
    """The same without a mount: fsync reports ENOSPC (as it may, when the file system allocates late)."""
    def full_disk(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    target = tmp_path / "model.bin"
    target.write_bytes(SENTINEL)
    monkeypatch.setattr(formats.os, "fsync", full_disk)
    with pytest.raises(formats.BadInput, match="write failed: No space left on device"):
        formats.write_model(target, SMALL, formats.read_model(inputs / "model.bin").params)
    assert os.listdir(tmp_path) == ["model.bin"] and target.read_bytes() == SENTINEL


def test_read_only_checkpoint_folder(inputs, read_only_folder, capsys):
    line = run_train(inputs, capsys, "-c", read_only_folder / "ck.bin")
    assert f"-c {read_only_folder / 'ck.bin'}" in line and "not writable" in line
    with pytest.raises(formats.BadInput, match="not writable|Read-only file system"):
        formats.write_model(read_only_folder / "ck.bin", SMALL, formats.read_model(inputs / "model.bin").params)
    assert (read_only_folder / "ck.bin").read_bytes() == SENTINEL


# ----------------------------------------------------------------------------- JSON nested too deeply

NESTED = "[" * 100_000 + "]" * 100_000  # Python's json recurses once per level


@pytest.mark.parametrize("command, where", [("import", "config.json"), ("plot", "run.jsonl"), ("prepare", "shard.json")])
def test_json_nested_too_deeply_is_one_line(tmp_path, capsys, command, where):
    """Every JSON reader of a user's file: a RecursionError would be a traceback (the config file's TOML is a case above)."""
    folder = tmp_path / "in"
    folder.mkdir()
    (tmp_path / "out").mkdir()
    (folder / where).write_text(f'{{"step": 1, "x": {NESTED}}}\n{{"step": 2}}\n' if command == "plot" else NESTED)
    (folder / "train.json").write_text('[{"story": "Once upon a time."}]')  # prepare's train shard (the first is val)
    argv = {"import": ["-i", str(folder), "-o", str(tmp_path / "m.bin")],
            "plot": [str(folder / where), "-o", str(tmp_path / "loss.png")],
            "prepare": ["--source", str(folder), "--out-dir", str(tmp_path / "out"), "--workers", "1"]}[command]
    before = snapshot(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        cli.run(ENTRIES[command], argv)
    lines = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(lines) == 1, lines
    assert where in lines[0] and ("nested too deeply" in lines[0] or "maximum recursion" in lines[0]), lines[0]
    assert snapshot(tmp_path) == before

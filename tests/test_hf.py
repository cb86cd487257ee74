"""Hugging Face export/import against transformers itself (logits, tokenizer, pipeline), round trips
through transformers-made folders, llm.c bf16 files in, and our model files checked the way llm.c's
C reader checks them. Everything offline (HF_HUB_OFFLINE=1)."""
import errno
import json
import os
import re
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers / huggingface_hub read it

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")
from conftest import assert_one_line_error, rel_err, run_cli  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.numpy import load_file, save_file  # noqa: E402

from tinystories import hf, llmc  # noqa: E402
from tinystories.config import GPTConfig  # noqa: E402
from tinystories.errors import BadInput  # noqa: E402
from tinystories.formats import read_model, write_model  # noqa: E402
from tinystories.model import GPT  # noqa: E402
from tinystories.tokenizer import decode, encode, gpt2  # noqa: E402

TINY = GPTConfig(block_size=32, vocab_size=50257, n_layer=2, n_head=2, n_embd=16)


def random_model(config: GPTConfig, seed: int) -> GPT:
    """GPT-2 initialisation, then random biases and LayerNorms too, so a misplaced one shows."""
    model = GPT(config)
    model.init_weights(seed)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.normal_(1.0 if name.endswith("weight") else 0.0, 0.1, generator=generator)  # LN weight or bias
    return model


def tokens(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, TINY.vocab_size, (batch, length), generator=torch.Generator().manual_seed(seed))


def hf_model(folder) -> "transformers.GPT2LMHeadModel":
    model = transformers.GPT2LMHeadModel.from_pretrained(folder)
    assert not model.training and model.dtype == torch.float32
    return model


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(our model, the model file, the exported folder) for the tiny config."""
    root = tmp_path_factory.mktemp("export")
    model = random_model(TINY, seed=7)
    write_model(root / "model.bin", TINY, llmc.model_params(model))
    hf.export(root / "model.bin", root / "hf", gpt2())
    return model, root / "model.bin", root / "hf"


# ----------------------------------------------------------------------------- llm.c's own checks

def llmc_num_parameters(header: np.ndarray) -> int:
    """llm.c's fill_in_parameter_sizes, written out from DESIGN.md."""
    maxT, V, L, NH, C, Vp = (int(v) for v in header[2:8])
    sizes = [Vp * C, maxT * C, L * C, L * C, L * 3 * C * C, L * 3 * C, L * C * C, L * C,
             L * C, L * C, L * 4 * C * C, L * 4 * C, L * C * 4 * C, L * C, C, C]
    return sum(sizes)


def assert_passes_llmc_reader(path) -> np.ndarray:
    """The checks llm.c's C reader makes on an fp32 model file; returns wte (Vp, C)."""
    data = Path(path).read_bytes()
    header = np.frombuffer(data[:1024], dtype="<i4")
    assert header[0] == 20240326, "magic"
    assert header[1] == 3, "version (fp32)"
    maxT, V, L, NH, C, Vp = (int(v) for v in header[2:8])
    assert min(maxT, V, L, NH, C) > 0 and C % NH == 0
    assert Vp == (V + 127) // 128 * 128 and not header[8:].any()
    assert len(data) == 1024 + 4 * llmc_num_parameters(header)
    wte = np.frombuffer(data, dtype="<f4", count=Vp * C, offset=1024).reshape(Vp, C)
    assert not wte[V:].any(), "padding rows of wte must be zero"
    return wte


def test_llmc_parameter_count_matches_design():
    header = np.zeros(256, dtype="<i4")
    header[:8] = [20240326, 3, 256, 50257, 4, 4, 128, 50304]  # the default model
    assert llmc_num_parameters(header) == 7_265_024


def bf16_llmc_file(path, config: GPTConfig, params: dict) -> dict:
    """Write an llm.c bf16 (version 5) model file: each value's top 16 bits, round to nearest even.
    Returns the fp32 values the file holds exactly."""
    header = np.zeros(256, dtype="<i4")
    header[:8] = [20240326, 5, config.block_size, config.vocab_size, config.n_layer, config.n_head,
                  config.n_embd, config.padded_vocab_size]
    parts, exact = [header.tobytes()], {}
    for name, value in params.items():  # llmc_params keeps the file order
        bits = np.ascontiguousarray(value, dtype="<f4").view("<u4").astype(np.uint64)
        top = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype("<u2")
        parts.append(top.tobytes())
        exact[name] = (top.astype(np.uint32) << 16).view(np.float32)
    Path(path).write_bytes(b"".join(parts))
    return exact


# ----------------------------------------------------------------------------- export

def test_export_matches_our_logits_in_transformers(exported):
    model, _, folder = exported
    theirs = hf_model(folder)
    assert theirs.lm_head.weight.data_ptr() == theirs.transformer.wte.weight.data_ptr(), "head tied on load"
    idx = tokens(2, TINY.block_size)
    with torch.no_grad():
        ours_logits, their_logits = model(idx), theirs(idx).logits  # (B, T, V) each
    assert their_logits.shape == ours_logits.shape == (2, TINY.block_size, TINY.vocab_size)
    assert rel_err(their_logits, ours_logits) <= 1e-5


def test_export_folder_contents(exported):
    model, _, folder = exported
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "gpt2" and config["architectures"] == ["GPT2LMHeadModel"]
    assert (config["n_positions"], config["n_embd"], config["n_layer"], config["n_head"]) == (32, 16, 2, 2)
    assert config["tie_word_embeddings"] is True and config["activation_function"] == "gelu_new"
    tensors = load_file(folder / "model.safetensors")
    assert "lm_head.weight" not in tensors and len(tensors) == 4 + 12 * TINY.n_layer
    params = llmc.model_params(model)
    assert np.array_equal(tensors["transformer.wte.weight"], params["wte"][: TINY.vocab_size])
    assert np.array_equal(tensors["transformer.h.1.attn.c_attn.weight"], params["qkvw"][1].T)  # (C, 3C)
    assert np.array_equal(tensors["transformer.h.0.mlp.c_proj.weight"], params["fcprojw"][0].T)  # (4C, C)
    assert set(os.listdir(folder)) == hf.EXPORT_FILES


def test_tokenizer_from_folder_is_gpt2(exported):
    tokenizer = transformers.AutoTokenizer.from_pretrained(exported[2])
    assert tokenizer("Once upon a time")["input_ids"] == [7454, 2402, 257, 640]
    assert tokenizer.eos_token_id == tokenizer.bos_token_id == 50256
    tricky = "Tom's 3 dogs  ran...\n\n  \"Wow!\" said Lily. café 東京 🙂 it'll've"
    assert tokenizer(tricky)["input_ids"] == encode(tricky)


def test_tokenizer_from_folder_matches_tiktoken_on_real_stories(exported, head_stories):
    tokenizer = transformers.AutoTokenizer.from_pretrained(exported[2])
    assert tokenizer(head_stories)["input_ids"] == [encode(s) for s in head_stories]


def test_pipeline_generates_our_greedy_continuation(exported):
    model, _, folder = exported
    prompt = encode("Once upon a time")
    idx = torch.tensor([prompt])
    with torch.no_grad():
        for _ in range(10):
            idx = torch.cat([idx, model(idx)[:, -1].argmax(-1, keepdim=True)], dim=1)
    generator = transformers.pipeline("text-generation", model=str(folder))
    out = generator("Once upon a time", max_new_tokens=10, do_sample=False)[0]["generated_text"]
    assert out == decode(idx[0].tolist())


def test_export_reads_checkpoint_with_training_state(tmp_path, exported):
    """A trainer checkpoint (model + state trailer) exports the same weights as its model part."""
    from tinystories.formats import TrainingState

    model, _, folder = exported
    state = TrainingState({"step": 3}, {"m": np.ones(2, np.float32)})
    write_model(tmp_path / "ckpt.bin", TINY, llmc.model_params(model), state)
    hf.export(tmp_path / "ckpt.bin", tmp_path / "out", gpt2())
    with safe_open(tmp_path / "out" / "model.safetensors", framework="np") as f:
        assert f.metadata()["source"] == "ckpt.bin"
        assert f.metadata()["source_weights_sha256"] == read_model(tmp_path / "ckpt.bin").weights_sha256
    a, b = load_file(tmp_path / "out" / "model.safetensors"), load_file(folder / "model.safetensors")
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_model_card(tmp_path, exported):
    """README.md: Hugging Face front matter (read by huggingface_hub's ModelCard), and what the
    checkpoint's training state records."""
    from huggingface_hub import ModelCard

    model, _, folder = exported
    card = (folder / "README.md").read_text()
    front = ModelCard(card).data.to_dict()
    assert front["license"] == "cdla-sharing-1.0" and front["datasets"] == ["roneneldan/TinyStories"]
    assert front["language"] == ["en"] and front["library_name"] == "transformers" and "gpt2" in front["tags"]
    assert f"| parameters | {TINY.num_parameters(padded=False):,} |" in card and "no training state" in card
    assert 'GPT2LMHeadModel.from_pretrained("hf")' in card
    from tinystories.formats import TrainingState

    meta = {"step": 300, "counters": {"tokens": 307200, "skipped_steps": 0}, "batch_size": 4, "seq_len": 256,
            "last_train_loss": 4.25, "last_train_step": 300, "last_val_loss": 4.5, "last_val_step": 300,
            "last_val_bits_per_byte": 1.25, "best_val_loss": 4.4, "best_val_step": 200}
    write_model(tmp_path / "ckpt.bin", TINY, llmc.model_params(model), TrainingState(meta))
    hf.export(tmp_path / "ckpt.bin", tmp_path / "stories-7m", gpt2())
    card = (tmp_path / "stories-7m" / "README.md").read_text()
    for row in ("| steps | 300 |", "| tokens seen | 307,200 |", "| train loss (last logged) | 4.2500 (step 300) |",
                "| val loss (last) | 4.5000 (step 300) |", "| val bits per byte (last) | 1.2500 (step 300) |",
                "| val loss (best) | 4.4000 (step 200) |", "CDLA-Sharing-1.0"):
        assert row in card, row
    assert card.startswith("---\n") and "# stories-7m" in card


def test_export_replaces_only_previous_exports(tmp_path, exported):
    _, model_file, _ = exported
    out = tmp_path / "out"
    hf.export(model_file, out, gpt2())
    hf.export(model_file, out, gpt2())  # a previous export is replaced
    (out / "notes.txt").write_text("mine")
    with pytest.raises(BadInput, match="--force"):
        hf.export(model_file, out, gpt2())
    assert (out / "notes.txt").exists()
    hf.export(model_file, out, gpt2(), force=True)
    assert set(os.listdir(out)) == hf.EXPORT_FILES
    assert os.listdir(tmp_path) == ["out"], "no temp folders left behind"


def test_export_never_replaces_the_current_folder_or_the_model_file(tmp_path, exported):
    """-o . (the current folder, a rename cannot move it) and a folder holding -e are refused even with
    --force: one line, nothing changed, no hidden temp folder left beside them."""
    here = tmp_path / "here"
    here.mkdir()
    result = run_cli("export", "-e", str(exported[1]), "-o", ".", "--force", cwd=here)
    assert_one_line_error(result, ".: replacing this folder would remove the current folder")
    run = tmp_path / "run"
    run.mkdir()
    (run / "model.bin").write_bytes(exported[1].read_bytes())
    result = run_cli("export", "-e", "run/model.bin", "-o", "run", "--force", cwd=tmp_path)
    assert_one_line_error(result, "run: replacing this folder would remove the model file run/model.bin")
    assert sorted(os.listdir(tmp_path)) == ["here", "run"] and os.listdir(here) == []
    assert (run / "model.bin").read_bytes() == exported[1].read_bytes() and os.listdir(run) == ["model.bin"]


def test_export_that_cannot_move_the_old_folder_keeps_it(tmp_path, exported, monkeypatch):
    """A rename that fails (a mount point: EBUSY) is one line; the old folder stays, no temp folder remains."""
    out = tmp_path / "out"
    hf.export(exported[1], out, gpt2())
    before = {name: (out / name).read_bytes() for name in os.listdir(out)}
    rename = os.rename

    def busy(source, target):
        if os.path.abspath(source) == str(out):
            raise OSError(errno.EBUSY, os.strerror(errno.EBUSY))
        rename(source, target)

    monkeypatch.setattr(hf.os, "rename", busy)
    with pytest.raises(BadInput, match="out: cannot put the new folder in place: Device or resource busy"):
        hf.export(exported[1], out, gpt2())
    assert os.listdir(tmp_path) == ["out"]
    assert {name: (out / name).read_bytes() for name in os.listdir(out)} == before


def test_small_vocab_exports_without_tokenizer(tmp_path):
    config = GPTConfig(block_size=16, vocab_size=1000, n_layer=1, n_head=2, n_embd=8)
    model = random_model(config, seed=3)
    write_model(tmp_path / "m.bin", config, llmc.model_params(model))
    hf.export(tmp_path / "m.bin", tmp_path / "hf", None)
    assert set(os.listdir(tmp_path / "hf")) == {"config.json", "generation_config.json", "model.safetensors", "README.md"}
    idx = torch.randint(0, 1000, (1, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert rel_err(hf_model(tmp_path / "hf")(idx).logits, model(idx)) <= 1e-5


# ----------------------------------------------------------------------------- import

@pytest.fixture(scope="module")
def transformers_folder(tmp_path_factory):
    """A random GPT2LMHeadModel saved by transformers (safetensors), biases and LayerNorms random."""
    folder = tmp_path_factory.mktemp("transformers") / "gpt2"
    torch.manual_seed(11)
    config = transformers.GPT2Config(vocab_size=50257, n_positions=32, n_embd=16, n_layer=2, n_head=2)
    model = transformers.GPT2LMHeadModel(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(folder, safe_serialization=True)
    return folder


def test_import_then_export_round_trips_tensors(tmp_path, transformers_folder):
    config = hf.import_folder(transformers_folder, tmp_path / "model.bin")
    assert config == TINY
    assert_passes_llmc_reader(tmp_path / "model.bin")
    hf.export(tmp_path / "model.bin", tmp_path / "again", gpt2())
    original = load_file(transformers_folder / "model.safetensors")
    again = load_file(tmp_path / "again" / "model.safetensors")
    assert original.keys() == again.keys()
    for name in original:
        assert original[name].dtype == again[name].dtype == np.float32
        assert original[name].shape == again[name].shape and original[name].tobytes() == again[name].tobytes(), name


def test_imported_model_matches_transformers_logits(tmp_path, transformers_folder):
    hf.import_folder(transformers_folder, tmp_path / "model.bin")
    loaded = read_model(tmp_path / "model.bin")
    ours = llmc.load_params(GPT(loaded.config), loaded.params)
    idx = tokens(2, 32, seed=5)
    with torch.no_grad():
        assert rel_err(ours(idx), hf_model(transformers_folder)(idx).logits) <= 1e-5


def test_import_block_size_keeps_first_positions(tmp_path, transformers_folder):
    hf.import_folder(transformers_folder, tmp_path / "short.bin", block_size=8)
    short = read_model(tmp_path / "short.bin")
    assert short.config.block_size == 8
    wpe = load_file(transformers_folder / "model.safetensors")["transformer.wpe.weight"]
    assert np.array_equal(short.params["wpe"], wpe[:8])
    assert_passes_llmc_reader(tmp_path / "short.bin")


def test_import_half_precision_and_unprefixed_names(tmp_path, transformers_folder):
    """Old-style files: no `transformer.` prefix, causal-mask buffers stored, fp16 values."""
    folder = tmp_path / "old"
    folder.mkdir()
    (folder / "config.json").write_bytes((transformers_folder / "config.json").read_bytes())
    original = load_file(transformers_folder / "model.safetensors")
    old = {k.removeprefix("transformer."): v.astype(np.float16) for k, v in original.items()}
    old["h.0.attn.bias"] = np.tril(np.ones((1, 1, 32, 32), np.float16))
    save_file(old, folder / "model.safetensors", metadata={"format": "pt"})
    hf.import_folder(folder, tmp_path / "m.bin")
    params = read_model(tmp_path / "m.bin").params
    assert np.array_equal(params["wpe"], old["wpe.weight"].astype(np.float32))
    assert np.array_equal(params["qkvw"][1], old["h.1.attn.c_attn.weight"].astype(np.float32).T)


# ----------------------------------------------------------------------------- import of a Llama folder

def llama_folder(folder, tied: bool, **changes):
    """A random LlamaForCausalLM saved by transformers (safetensors): grouped-query attention (2 heads, 1 kv
    head), an MLP width of our own choosing, rope base 500000, random RMSNorm weights; `changes` edit
    the saved config.json."""
    torch.manual_seed(12)
    config = transformers.LlamaConfig(
        vocab_size=300, hidden_size=16, intermediate_size=40, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=32, rms_norm_eps=1e-5, tie_word_embeddings=tied,
        rope_parameters={"rope_type": "default", "rope_theta": 500000.0})
    model = transformers.LlamaForCausalLM(config)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(folder, safe_serialization=True)
    edit_config(folder, **changes)
    return folder


@pytest.mark.parametrize("tied", [False, True])
def test_import_of_a_llama_folder_gives_transformers_logits_and_exports_back(tmp_path, tied):
    folder = llama_folder(tmp_path / "llama", tied)
    config = hf.import_folder(folder, tmp_path / "model.bin")
    assert config == GPTConfig(block_size=32, vocab_size=300, n_layer=2, n_head=2, n_embd=16, position="rope",
                               norm="rmsnorm", mlp="swiglu", mlp_hidden=40, bias=False, n_kv_head=1,
                               tied_head=tied, rope_theta=500000)
    loaded = read_model(tmp_path / "model.bin")
    ours = llmc.load_params(GPT(loaded.config), loaded.params)
    theirs = transformers.LlamaForCausalLM.from_pretrained(folder, attn_implementation="eager")
    idx = torch.randint(0, 300, (2, 32), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert rel_err(ours(idx), theirs(idx).logits) <= 1e-5
    hf.export(tmp_path / "model.bin", tmp_path / "again", None)
    original, again = load_file(folder / "model.safetensors"), load_file(tmp_path / "again" / "model.safetensors")
    assert original.keys() == again.keys()
    assert all(original[name].tobytes() == again[name].tobytes() for name in original)


def test_our_llama_model_reads_back_as_it_was_made(tmp_path):
    """create_model.py's defaults (kv heads = heads, the usual MLP width) come back as defaults."""
    config = GPTConfig(block_size=16, vocab_size=50257, n_layer=1, n_head=2, n_embd=32, position="rope",
                       norm="rmsnorm", mlp="swiglu", bias=False)
    model = GPT(config)
    model.init_weights(3)
    write_model(tmp_path / "m.bin", config, llmc.model_params(model))
    hf.export(tmp_path / "m.bin", tmp_path / "hf", gpt2())
    assert hf.import_folder(tmp_path / "hf", tmp_path / "back.bin") == config
    original, back = read_model(tmp_path / "m.bin"), read_model(tmp_path / "back.bin")
    assert all(np.array_equal(back.params[k], original.params[k]) for k in original.params)


@pytest.mark.parametrize("changes, message", [
    ({"hidden_act": "gelu"}, "unsupported hidden_act 'gelu'"),
    ({"rms_norm_eps": 1e-6}, "unsupported rms_norm_eps 1e-06 (ours is 1e-5)"),
    ({"attention_bias": True}, "unsupported attention_bias true"),
    ({"mlp_bias": True}, "unsupported mlp_bias true"),
    ({"head_dim": 4}, "unsupported head_dim 4"),
    ({"rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4}}, "unsupported rope"),
    ({"rope_parameters": {"rope_type": "default", "rope_theta": 10000.5}}, "unsupported rope_theta 10000.5"),
    ({"rope_parameters": None, "rope_theta": float("inf")}, "unsupported rope_theta inf"),
    ({"num_key_value_heads": 3}, "heads (2) must be divisible by kv heads (3)"),
    ({"num_key_value_heads": 2}, "self_attn.k_proj.weight has shape [8, 16], expected [16, 16]"),
    ({"intermediate_size": 48}, "mlp.down_proj.weight has shape [16, 40], expected [16, 48]"),
    ({"num_hidden_layers": 3}, "config.json gives num_hidden_layers 3, but the weights hold 2 layers"),
    ({"hidden_size": "16"}, "hidden_size must be a positive integer"),
])
def test_import_of_a_llama_folder_our_model_cannot_hold_is_refused(tmp_path, changes, message):
    folder = llama_folder(tmp_path / "bad", False, **changes)
    with pytest.raises(BadInput, match=re.escape(message)):
        hf.import_folder(folder, tmp_path / "out.bin")
    assert not (tmp_path / "out.bin").exists()


# ----------------------------------------------------------------------------- llm.c interop

def test_llmc_bf16_file_exports_and_imports(tmp_path):
    model = random_model(TINY, seed=5)
    exact = bf16_llmc_file(tmp_path / "bf16.bin", TINY, llmc.model_params(model))
    loaded = read_model(tmp_path / "bf16.bin")
    assert all(np.array_equal(loaded.params[k], exact[k]) for k in exact)
    hf.export(tmp_path / "bf16.bin", tmp_path / "hf", gpt2())
    ours = llmc.load_params(GPT(loaded.config), loaded.params)
    idx = tokens(1, 32, seed=2)
    with torch.no_grad():
        assert rel_err(hf_model(tmp_path / "hf")(idx).logits, ours(idx)) <= 1e-5
    hf.import_folder(tmp_path / "hf", tmp_path / "fp32.bin")
    wte = assert_passes_llmc_reader(tmp_path / "fp32.bin")
    back = read_model(tmp_path / "fp32.bin")
    assert np.array_equal(wte, exact["wte"])
    assert all(np.array_equal(back.params[k], exact[k]) for k in exact), "bf16 -> fp32 is exact"


def test_written_model_files_pass_llmc_checks(tmp_path):
    config = GPTConfig(block_size=24, vocab_size=50257, n_layer=3, n_head=3, n_embd=24)
    write_model(tmp_path / "m.bin", config, llmc.model_params(random_model(config, seed=1)))
    assert_passes_llmc_reader(tmp_path / "m.bin")


# ----------------------------------------------------------------------------- bad input

def edit_config(folder, **changes):
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))


def copy_folder(source, target):
    target.mkdir()
    for item in source.iterdir():
        (target / item.name).write_bytes(item.read_bytes())
    return target


@pytest.mark.parametrize("change, message", [
    (lambda f: edit_config(f, model_type="mistral"), "model_type is 'mistral'; only GPT-2"),
    (lambda f: edit_config(f, activation_function="relu"), "unsupported activation_function 'relu'"),
    (lambda f: edit_config(f, n_inner=32), "unsupported n_inner 32"),
    (lambda f: edit_config(f, layer_norm_epsilon=1e-6), "layer_norm_epsilon"),
    (lambda f: edit_config(f, n_embd=15), "divisible"),
    (lambda f: edit_config(f, n_layer="2"), "n_layer must be a positive integer"),
    (lambda f: edit_config(f, n_layer=3), "config.json gives n_layer 3, but the weights hold 2 layers"),
    (lambda f: edit_config(f, n_layer=1000), "config.json gives n_layer 1,000, but the weights hold 2 layers"),
    (lambda f: edit_config(f, n_layer=10**9), "1,000,000,000 layers of 16 channels .* are 3,280,000,805,408 parameters"),
    (lambda f: edit_config(f, n_positions=2**40), "block_size 1,099,511,627,776 is more than an llm.c header holds"),
    (lambda f: ((f / "config.json").unlink(), os.mkfifo(f / "config.json")), "config.json: not a regular file"),
    (lambda f: (f / "config.json").write_text(" " * (17 << 20)), "config.json: 17,825,792 bytes, too large"),
    (lambda f: edit_config(f, n_positions=64), "wpe.weight has shape [32, 16], expected [64, 16]"),
    (lambda f: (f / "config.json").write_text("{not json"), "not valid JSON"),
    (lambda f: (f / "config.json").unlink(), "config.json: file not found"),
    (lambda f: (f / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}"), "not a valid safetensors"),
    (lambda f: (f / "model.safetensors").rename(f / "pytorch_model.bin"), "pickle"),
    (lambda f: (f / "model.safetensors").unlink(), "no model.safetensors"),
])
def test_import_bad_folders(tmp_path, transformers_folder, change, message):
    folder = copy_folder(transformers_folder, tmp_path / "bad")
    change(folder)
    with pytest.raises(BadInput, match=message.replace("[", r"\[").replace("]", r"\]")):
        hf.import_folder(folder, tmp_path / "out.bin")
    assert not (tmp_path / "out.bin").exists()


@pytest.mark.parametrize("name", ["model.safetensors", "config.json"])
def test_import_never_writes_over_its_own_input(tmp_path, transformers_folder, name):
    folder = copy_folder(transformers_folder, tmp_path / "gpt2")
    before = {item.name: item.read_bytes() for item in folder.iterdir()}
    assert_one_line_error(run_cli("import", "-i", "gpt2", "-o", f"gpt2/{name}", cwd=tmp_path),
                          f"-o gpt2/{name}: would replace a file of the folder it converts")
    assert {item.name: item.read_bytes() for item in folder.iterdir()} == before


def test_import_refuses_untied_head_and_nan(tmp_path, transformers_folder):
    tensors = load_file(transformers_folder / "model.safetensors")
    untied = copy_folder(transformers_folder, tmp_path / "untied")
    edit_config(untied, tie_word_embeddings=False)
    save_file(dict(tensors, **{"lm_head.weight": tensors["transformer.wte.weight"] * 2}), untied / "model.safetensors")
    with pytest.raises(BadInput, match="lm_head.weight differs"):
        hf.import_folder(untied, tmp_path / "out.bin")
    save_file(tensors, untied / "model.safetensors")
    with pytest.raises(BadInput, match="no lm_head.weight"):
        hf.import_folder(untied, tmp_path / "out.bin")
    nan = copy_folder(transformers_folder, tmp_path / "nan")
    tensors["transformer.ln_f.bias"] = np.full(16, np.nan, np.float32)
    save_file(tensors, nan / "model.safetensors")
    with pytest.raises(BadInput, match="ln_f.bias holds NaN"):
        hf.import_folder(nan, tmp_path / "out.bin")


@pytest.mark.parametrize("command", [
    ["export", "-e", "missing.bin", "-o", "hf"],
    ["export", "-e", "model.bin", "-o", "busy"],
    ["import", "-i", "missing", "-o", "out.bin"],
    ["import", "-i", "gpt2", "-o", "out.bin", "--block-size", "33"],
    ["import", "-i", "pickled", "-o", "out.bin"],
])
def test_cli_bad_input_is_one_line_exit_2(tmp_path, transformers_folder, exported, command):
    (tmp_path / "model.bin").write_bytes(exported[1].read_bytes())
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("keep")
    copy_folder(transformers_folder, tmp_path / "gpt2")
    (tmp_path / "pickled").mkdir()
    (tmp_path / "pickled" / "config.json").write_bytes((transformers_folder / "config.json").read_bytes())
    (tmp_path / "pickled" / "pytorch_model.bin").write_bytes(b"PK\x03\x04")
    before = sorted(os.listdir(tmp_path))
    assert_one_line_error(run_cli(*command, cwd=tmp_path))
    assert sorted(os.listdir(tmp_path)) == before, "nothing written or left behind"
    assert os.listdir(tmp_path / "busy") == ["keep.txt"]


def test_cli_export_and_import(tmp_path, exported):
    result = run_cli("export", "-e", str(exported[1]), "-o", "hf", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    result = run_cli("import", "-i", "hf", "-o", "back.bin", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "back.bin").read_bytes() == exported[1].read_bytes()

"""The GPT model against Hugging Face transformers, create_model.py end to end, the llm.c model
format round trip (fp32 and bf16), the loss at initialisation, learning, and the KV cache."""
import math
import subprocess

import numpy as np
import pytest
import torch
from conftest import REPO, rel_err, run

from tinystories import formats, llmc
from tinystories.config import ARCHS, GPTConfig
from tinystories.errors import BadInput
from tinystories.formats import HEADER_BYTES, make_header, read_model, write_model
from tinystories.model import GPT, KVCache

DEFAULT = GPTConfig()  # 4 layers, 4 heads, 128 channels, block 256, vocab 50257
SMALL = GPTConfig(block_size=64, vocab_size=50257, n_layer=2, n_head=2, n_embd=64)
SMALL_VOCAB = GPTConfig(block_size=32, vocab_size=1000, n_layer=3, n_head=3, n_embd=48)  # Vp = 1024
# the Llama block with grouped-query attention (4 heads, 2 kv heads), tied and untied head
LLAMA = GPTConfig(block_size=32, vocab_size=1000, n_layer=2, n_head=4, n_embd=64, n_kv_head=2, **ARCHS["llama"])
LLAMA_UNTIED = GPTConfig(block_size=32, vocab_size=1000, n_layer=3, n_head=4, n_embd=32, mlp_hidden=72,
                         tied_head=False, rope_theta=500, **ARCHS["llama"])


def random_model(config: GPTConfig, seed: int) -> GPT:
    """A model whose every parameter is random (biases and LayerNorms too), padding rows zero."""
    model = GPT(config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.1, generator=generator)
        for block in model.h:
            for ln in (block.ln_1, block.ln_2):
                ln.weight.add_(1.0)
        model.ln_f.weight.add_(1.0)
        model.wte.weight[config.vocab_size :].zero_()
    return model


def inputs_and_targets(tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T + 1) tokens -> inputs and next-token targets, (B, T) each (contiguous: GPT.forward
    flattens targets with .view)."""
    return tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()


# ----------------------------------------------------------------------------- Hugging Face parity

HF_CONV1D_WEIGHTS = {"qkvw": "attn.c_attn.weight", "attprojw": "attn.c_proj.weight",
                     "fcw": "mlp.c_fc.weight", "fcprojw": "mlp.c_proj.weight"}  # HF stores these (in, out)
HF_PER_LAYER = {"ln1w": "ln_1.weight", "ln1b": "ln_1.bias", "qkvb": "attn.c_attn.bias",
                "attprojb": "attn.c_proj.bias", "ln2w": "ln_2.weight", "ln2b": "ln_2.bias",
                "fcb": "mlp.c_fc.bias", "fcprojb": "mlp.c_proj.bias", **HF_CONV1D_WEIGHTS}


def llmc_to_hf(params: dict[str, np.ndarray], config: GPTConfig) -> dict[str, torch.Tensor]:
    """The 16 llm.c tensors as a GPT2LMHeadModel state dict (without the tied lm_head)."""
    t = {name: torch.from_numpy(np.array(value)) for name, value in params.items()}
    hf = {"transformer.wte.weight": t["wte"][: config.vocab_size],  # HF has no padding rows
          "transformer.wpe.weight": t["wpe"],
          "transformer.ln_f.weight": t["lnfw"], "transformer.ln_f.bias": t["lnfb"]}
    for llmc_name, hf_name in HF_PER_LAYER.items():
        for layer in range(config.n_layer):
            value = t[llmc_name][layer]
            hf[f"transformer.h.{layer}.{hf_name}"] = value.T if llmc_name in HF_CONV1D_WEIGHTS else value
    return hf


def hf_model(config: GPTConfig, params: dict[str, np.ndarray]):
    transformers = pytest.importorskip("transformers")
    hf_config = transformers.GPT2Config(
        vocab_size=config.vocab_size, n_positions=config.block_size, n_embd=config.n_embd,
        n_layer=config.n_layer, n_head=config.n_head, activation_function="gelu_new",
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, layer_norm_epsilon=1e-5,
        bos_token_id=config.vocab_size - 1, eos_token_id=config.vocab_size - 1)
    model = transformers.GPT2LMHeadModel._from_config(hf_config, attn_implementation="eager")
    missing, unexpected = model.load_state_dict(llmc_to_hf(params, config), strict=False)
    assert missing == ["lm_head.weight"] and unexpected == []  # lm_head is tied to wte
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()
    return model


def gradients_as_llmc(model: GPT) -> dict[str, np.ndarray]:
    """Our gradients in the llm.c layout: load them as the weights of a twin model and export."""
    twin = GPT(model.config)
    with torch.no_grad():
        for p_twin, p in zip(twin.parameters(), model.parameters()):
            p_twin.copy_(p.grad)
    return llmc.model_params(twin)


@pytest.mark.parametrize("config, seed", [(DEFAULT, 0), (SMALL, 1), (SMALL_VOCAB, 2)],
                         ids=["default-4L4H128C", "2L2H64C-block64", "3L3H48C-vocab1000"])
def test_matches_huggingface_gpt2_logits_loss_and_gradients(config, seed):
    ours = random_model(config, seed)
    params = llmc.model_params(ours)
    theirs = hf_model(config, params)
    tokens = torch.randint(0, config.vocab_size, (2, config.block_size), generator=torch.Generator().manual_seed(seed))

    assert rel_err(ours(tokens), theirs(tokens).logits) <= 1e-5  # (B, T, V) at every position

    # HF shifts labels inside: logits at position t score tokens[t + 1]
    hf_loss = theirs(tokens, labels=tokens).loss
    our_loss = ours(*inputs_and_targets(tokens))
    assert rel_err(our_loss, hf_loss) <= 1e-5
    our_loss.backward()
    hf_loss.backward()

    our_grads = llmc_to_hf(gradients_as_llmc(ours), config)
    hf_grads = {name: p.grad for name, p in theirs.named_parameters()}
    assert our_grads.keys() == hf_grads.keys()
    for name, grad in hf_grads.items():
        assert rel_err(our_grads[name], grad) <= 1e-5, name
    assert not ours.wte.weight.grad[config.vocab_size :].any()  # padding rows never learn


def hf_llama(config: GPTConfig, params: dict[str, np.ndarray]):
    """LlamaForCausalLM of config holding our table's tensors, mapped here apart from hf.py."""
    transformers = pytest.importorskip("transformers")
    H, KV, hs = config.n_head, config.kv_heads, config.head_size
    hf_config = transformers.LlamaConfig(
        vocab_size=config.vocab_size, hidden_size=config.n_embd, intermediate_size=config.hidden_size,
        num_hidden_layers=config.n_layer, num_attention_heads=H, num_key_value_heads=KV,
        max_position_embeddings=config.block_size, rms_norm_eps=1e-5, rope_theta=float(config.rope_theta),
        rope_parameters={"rope_type": "default", "rope_theta": float(config.rope_theta)},
        tie_word_embeddings=config.tied_head)
    model = transformers.LlamaForCausalLM._from_config(hf_config, attn_implementation="eager")
    t = {name: torch.from_numpy(np.array(value)) for name, value in params.items()}
    state = {"model.embed_tokens.weight": t["wte"][: config.vocab_size], "model.norm.weight": t["lnfw"]}
    if not config.tied_head:
        state["lm_head.weight"] = t["lmheadw"]
    for i in range(config.n_layer):
        q, k, v = t["qkvw"][i].split([H * hs, KV * hs, KV * hs])
        for name, value in {"self_attn.q_proj": q, "self_attn.k_proj": k, "self_attn.v_proj": v,
                            "self_attn.o_proj": t["attprojw"][i], "mlp.gate_proj": t["fcgatew"][i],
                            "mlp.up_proj": t["fcw"][i], "mlp.down_proj": t["fcprojw"][i]}.items():
            state[f"model.layers.{i}.{name}.weight"] = value
        state[f"model.layers.{i}.input_layernorm.weight"] = t["ln1w"][i]
        state[f"model.layers.{i}.post_attention_layernorm.weight"] = t["ln2w"][i]
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert unexpected == [] and missing == (["lm_head.weight"] if config.tied_head else [])
    return model


@pytest.mark.parametrize("config", [LLAMA, LLAMA_UNTIED], ids=["gqa-tied", "untied-theta500"])
def test_llama_block_matches_huggingface_llama_logits_loss_and_gradients(config):
    ours = random_model(config, seed=8)
    theirs = hf_llama(config, llmc.model_params(ours))
    tokens = torch.randint(0, config.vocab_size, (2, config.block_size), generator=torch.Generator().manual_seed(8))
    assert rel_err(ours(tokens), theirs(tokens).logits) <= 1e-5
    hf_loss, our_loss = theirs(tokens, labels=tokens).loss, ours(*inputs_and_targets(tokens))
    assert rel_err(our_loss, hf_loss) <= 1e-5
    our_loss.backward()
    hf_loss.backward()
    ours_by_name = dict(ours.named_parameters())
    pairs = [("ln_f.weight", "model.norm.weight"), ("h.1.mlp.c_gate.weight", "model.layers.1.mlp.gate_proj.weight"),
             ("h.0.attn.c_proj.weight", "model.layers.0.self_attn.o_proj.weight")]
    theirs_by_name = dict(theirs.named_parameters())
    for our_name, their_name in pairs:
        assert rel_err(ours_by_name[our_name].grad, theirs_by_name[their_name].grad) <= 1e-5, our_name


# ----------------------------------------------------------------------------- create_model.py

def create_model(*flags, cwd) -> subprocess.CompletedProcess:
    return run(REPO / "create_model.py", *flags, cwd=cwd)


def stored_values(L: int, H: int, C: int, T: int, V: int) -> int:
    """Count of the 16 llm.c tensors, written out independently of GPTConfig.num_parameters."""
    Vp = (V + 127) // 128 * 128
    per_layer = C + C + 3 * C * C + 3 * C + C * C + C + C + C + 4 * C * C + 4 * C + C * 4 * C + C
    return Vp * C + T * C + L * per_layer + C + C


def test_create_model_default_file_header_and_size(tmp_path):
    result = create_model(cwd=tmp_path)
    path = tmp_path / "model.bin"
    assert stored_values(4, 4, 128, 256, 50257) == 7_265_024
    assert path.stat().st_size == HEADER_BYTES + 4 * 7_265_024
    header = np.fromfile(path, dtype="<i4", count=256)
    assert header[:8].tolist() == [20240326, 3, 256, 50257, 4, 4, 128, 50304]
    assert not header[8:].any()
    assert "7,259,008 parameters" in result.stdout and "7,265,024" in result.stdout


def test_create_model_flags_change_the_shape(tmp_path):
    create_model("-o", "small.bin", "--layers", "2", "--heads", "2", "--channels", "32", "--block-size", "64",
                 "--vocab-size", "1000", cwd=tmp_path)
    path = tmp_path / "small.bin"
    assert path.stat().st_size == HEADER_BYTES + 4 * stored_values(2, 2, 32, 64, 1000)
    header = np.fromfile(path, dtype="<i4", count=8)
    assert header.tolist() == [20240326, 3, 64, 1000, 2, 2, 32, 1024]


def test_create_model_initialisation_statistics(tmp_path):
    create_model("--layers", "4", cwd=tmp_path)
    p = read_model(tmp_path / "model.bin").params
    V, L = 50257, 4
    for name in ("wte", "wpe", "qkvw", "fcw"):
        values = p[name][:V] if name == "wte" else p[name]
        assert values.std() == pytest.approx(0.02, rel=0.02), name
        assert abs(values.mean()) < 1e-3, name
    for name in ("attprojw", "fcprojw"):  # projections into the residual stream
        assert p[name].std() == pytest.approx(0.02 / math.sqrt(2 * L), rel=0.02), name
    for name in ("qkvb", "attprojb", "fcb", "fcprojb", "ln1b", "ln2b", "lnfb"):
        assert not p[name].any(), name
    for name in ("ln1w", "ln2w", "lnfw"):
        assert (p[name] == 1.0).all(), name
    assert not p["wte"][V:].any()  # the 47 padding rows


def test_create_model_seed_decides_the_bytes(tmp_path):
    small = ["--layers", "1", "--heads", "2", "--channels", "16", "--block-size", "32"]
    create_model("-o", "a.bin", "--seed", "5", *small, cwd=tmp_path)
    create_model("-o", "b.bin", "--seed", "5", *small, cwd=tmp_path)
    create_model("-o", "c.bin", "--seed", "6", *small, cwd=tmp_path)
    a, b, c = ((tmp_path / name).read_bytes() for name in ("a.bin", "b.bin", "c.bin"))
    assert a == b
    assert a != c and a[:HEADER_BYTES] == c[:HEADER_BYTES]


# ----------------------------------------------------------------------------- llm.c format

@pytest.mark.parametrize("config", [SMALL_VOCAB, LLAMA, LLAMA_UNTIED], ids=["gpt2", "llama", "llama-untied"])
def test_model_file_round_trip_is_exact(tmp_path, config):
    model = random_model(config, seed=3)
    write_model(tmp_path / "m.bin", config, llmc.model_params(model))
    model_file = read_model(tmp_path / "m.bin")
    assert model_file.config == config and model_file.state is None
    loaded = llmc.load_params(GPT(model_file.config), model_file.params)
    original = model.state_dict()
    for name, tensor in loaded.state_dict().items():
        assert torch.equal(tensor, original[name]), name


def llama_stored_values(L: int, H: int, KV: int, C: int, F: int, V: int, tied: bool = True) -> int:
    """Values in our file of the Llama block, written out apart from llmc.py's table."""
    hs, Vp = C // H, (V + 127) // 128 * 128
    per_layer = C + (H + 2 * KV) * hs * C + C * C + C + 3 * F * C  # ln1, qkv, proj, ln2, gate/up/down
    return Vp * C + L * per_layer + C + (0 if tied else V * C)


def test_create_model_arch_llama_writes_our_file_recording_the_block(tmp_path):
    result = create_model("-o", "l.bin", "--arch", "llama", "--layers", "3", "--heads", "4", "--kv-heads", "2",
                          "--channels", "64", "--block-size", "32", "--vocab-size", "1000", cwd=tmp_path)
    path = tmp_path / "l.bin"
    F = 192  # 8 C / 3 = 170.7, rounded up to a multiple of 32
    assert path.stat().st_size == HEADER_BYTES + 4 * llama_stored_values(3, 4, 2, 64, F, 1000)
    header = np.fromfile(path, dtype="<i4", count=256)
    assert header[:8].tolist() == [20261205, 1, 32, 1000, 3, 4, 64, 1024] and not header[8:18].any()
    # position rope, norm rmsnorm, mlp swiglu, mlp_hidden 0 (the usual), no bias, 2 kv heads, tied, theta
    assert header[18:26].tolist() == [1, 1, 1, 0, 0, 2, 1, 10000] and not header[26:].any()
    config = read_model(path).config
    assert (config.position, config.norm, config.mlp, config.bias, config.kv_heads, config.hidden_size) == (
        "rope", "rmsnorm", "swiglu", False, 2, F)
    assert "llama block" in result.stdout
    p = read_model(path).params  # Llama initialisation: norms 1, projections smaller, no biases
    assert (p["ln1w"] == 1).all() and (p["lnfw"] == 1).all() and not any(name.endswith("b") for name in p)
    assert p["fcgatew"].std() == pytest.approx(0.02, rel=0.05) and p["fcprojw"].std() < 0.012


def test_llmc_and_every_gpt2_only_reader_refuse_our_file_in_one_line(tmp_path):
    """llm.c checks the magic first (train_gpt2.c: 'Bad magic model file'); so does our llm.c reader."""
    write_model(tmp_path / "l.bin", LLAMA, llmc.model_params(random_model(LLAMA, seed=1)))
    header = np.fromfile(tmp_path / "l.bin", dtype="<i4", count=256)
    assert header[0] != 20240326  # llm.c: "Bad magic model file", never a misread
    with pytest.raises(BadInput) as refused:
        formats.read_llmc_config(header, tmp_path / "l.bin")
    message = str(refused.value)
    assert "\n" not in message and "not an llm.c model file" in message and "20261205" in message
    assert read_model(tmp_path / "l.bin").config == LLAMA  # while the readers of both kinds take it


@pytest.mark.parametrize("slot, value, problem", [(18, 2, "position code 2"), (22, 7, "bias 7"),
                                                  (40, 1, "does not know"), (23, 3, "divisible by kv heads")])
def test_our_file_with_a_bad_architecture_field_is_refused(tmp_path, slot, value, problem):
    write_model(tmp_path / "l.bin", LLAMA, llmc.model_params(random_model(LLAMA, seed=1)))
    data = bytearray((tmp_path / "l.bin").read_bytes())
    data[4 * slot : 4 * slot + 4] = np.int32(value).tobytes()
    (tmp_path / "l.bin").write_bytes(bytes(data))
    with pytest.raises(BadInput, match=problem):
        read_model(tmp_path / "l.bin")


# llm.c's order of the 16 tensors (train_gpt2.c; DESIGN.md), written out apart from llmc.py's table
LLMC_ORDER = ["wte", "wpe", "ln1w", "ln1b", "qkvw", "qkvb", "attprojw", "attprojb",
              "ln2w", "ln2b", "fcw", "fcb", "fcprojw", "fcprojb", "lnfw", "lnfb"]


def assert_tensors_in_llmc_order(path, model: GPT) -> None:
    """Each stretch of the fp32 model file at `path`, in llm.c's order, holds the tensor of that name."""
    data = np.fromfile(path, dtype="<f4", offset=HEADER_BYTES)
    params, offset = llmc.model_params(model), 0
    for name in LLMC_ORDER:
        size = params[name].size
        assert np.array_equal(data[offset : offset + size], params[name].ravel()), f"{name} is not where llm.c has it"
        offset += size
    assert offset == data.size


def test_model_file_holds_the_tensors_in_llmc_order(tmp_path):
    model = random_model(SMALL_VOCAB, seed=6)
    write_model(tmp_path / "m.bin", SMALL_VOCAB, llmc.model_params(model))
    assert_tensors_in_llmc_order(tmp_path / "m.bin", model)


def test_a_reordered_layout_table_is_caught(tmp_path, monkeypatch):
    """Two same-shaped rows of llmc.py's table swapped (ln1w, ln1b): our files still read back what
    they hold, since reader and writer share the table, but they no longer match llm.c's order."""
    table = llmc.tensors

    def swapped(config):
        rows = table(config)
        rows[2], rows[3] = rows[3], rows[2]
        return rows

    monkeypatch.setattr(llmc, "tensors", swapped)
    model = random_model(SMALL_VOCAB, seed=6)
    write_model(tmp_path / "m.bin", SMALL_VOCAB, llmc.model_params(model))
    loaded = llmc.load_params(GPT(SMALL_VOCAB), read_model(tmp_path / "m.bin").params)
    assert all(torch.equal(p, q) for p, q in zip(loaded.parameters(), model.parameters()))
    with pytest.raises(AssertionError, match="ln1w is not where llm.c has it"):
        assert_tensors_in_llmc_order(tmp_path / "m.bin", model)


def test_reads_llmc_bf16_files(tmp_path):
    """llm.c's version 5 stores each value as the top 16 bits of its fp32."""
    config = SMALL_VOCAB
    model = random_model(config, seed=4)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.bfloat16().float())  # values bf16 holds exactly
    params = llmc.model_params(model)
    header = make_header(20240326, 5, config.block_size, config.vocab_size, config.n_layer, config.n_head,
                         config.n_embd, config.padded_vocab_size)
    halves = b"".join((params[name].astype("<f4").view("<u4") >> 16).astype("<u2").tobytes() for name in params)
    path = tmp_path / "bf16.bin"
    path.write_bytes(header + halves)
    assert path.stat().st_size == HEADER_BYTES + 2 * config.num_parameters()

    loaded = llmc.load_params(GPT(config), read_model(path).params)
    original = model.state_dict()
    for name, tensor in loaded.state_dict().items():
        assert torch.equal(tensor, original[name]), name


# ----------------------------------------------------------------------------- training behaviour

def test_initial_loss_is_uniform_over_the_vocabulary():
    model = GPT(DEFAULT)
    model.init_weights(seed=1337)
    tokens = torch.randint(0, DEFAULT.vocab_size, (4, 65), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        loss = model(*inputs_and_targets(tokens))
    assert abs(loss.item() - math.log(50257)) < 0.3


def test_overfits_a_single_batch():
    """The default dims with a 4000-token vocabulary (a cheap output head) memorise one batch of
    random tokens (B=4, T=64); it takes about 40 steps."""
    config = GPTConfig(block_size=64, vocab_size=4000)
    model = GPT(config)
    model.init_weights(seed=0)
    tokens = torch.randint(0, config.vocab_size, (4, 65), generator=torch.Generator().manual_seed(1))
    x, y = inputs_and_targets(tokens)  # (4, 64) each
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    losses = []
    while len(losses) < 100 and (not losses or losses[-1] >= 0.1):
        loss = model(x, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.1, f"loss {losses[0]:.2f} -> {losses[-1]:.3f} after {len(losses)} steps"
    assert not model.wte.weight[config.vocab_size :].any()  # padding rows stay zero under AdamW


# ----------------------------------------------------------------------------- KV cache

@pytest.mark.parametrize("prompt_length", [1, 5])
@pytest.mark.parametrize("config", [GPTConfig(block_size=32, vocab_size=50257, n_layer=2, n_head=4, n_embd=64), LLAMA],
                         ids=["gpt2", "llama-gqa"])
def test_kv_cache_logits_equal_full_forward(prompt_length, config):
    model = random_model(config, seed=5)
    tokens = torch.randint(0, config.vocab_size, (2, config.block_size), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        full = model(tokens)  # (B, T, V)
    cache = KVCache(config, batch=2, device="cpu", dtype=torch.float32)
    cached = [model.next_logits(tokens[:, :prompt_length], cache)]  # prefill: logits after the prompt
    for t in range(prompt_length, config.block_size):  # then one token at a time, to a full block
        cached.append(model.next_logits(tokens[:, t : t + 1], cache))
    assert cache.length == config.block_size
    for i, logits in enumerate(cached):
        assert rel_err(logits, full[:, prompt_length - 1 + i]) <= 1e-5, f"position {prompt_length - 1 + i}"

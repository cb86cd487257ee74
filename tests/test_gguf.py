"""export --gguf: the GGUF file llama.cpp runs, read back with the `gguf` package and run in a real
llama.cpp (llama-cpp-python, built from source by `make llama`; those tests skip without it). The
Hugging Face export goes through llama.cpp's own converter too (its convert_hf_to_gguf.py, from the same
source; LLAMA_CPP_SOURCE or .venv/llama.cpp)."""
import os
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch

from conftest import ARCH_FLAGS, REPO, TINY, assert_one_line_error, run, run_cli, train

from tinystories import tokenizer
from tinystories.bpe import BYTE_OF_CHAR
from tinystories.formats import read_model
from tinystories.generate import generate_tokens
from tinystories.gguf_file import gguf_tensors, metadata
from tinystories.model import read_gpt

PROMPT = "Once upon a time"
TEXT = "Once upon a time, there was a little girl named Lily. She loved to play outside in the sun."
GREEDY_TOKENS = 40
# largest |log p| difference from our fp32 model over TEXT's positions, by weight type: about 3x what
# llama.cpp 0.3.36 (llama-cpp-python) gave on CPU, 2026-12-03 (f32 0.0004/0.0006, f16 0.0014/0.0010,
# q8_0 0.026/0.023 for the BPE/GPT-2 models; q4_0 0.24/0.43 is not tested, see README)
LOGPROB_TOLERANCE = {"f32": 0.002, "f16": 0.005, "q8_0": 0.08}


KINDS = ["gpt2", "bpe", "llama", "llama-bpe"]  # the block (GPT-2's, Llama's) and the tokenizer (GPT-2's, a BPE)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """{"gpt2", "bpe", "llama", "llama-bpe": checkpoint}: the tiny model of GPT-2's block and of the Llama
    block (ARCH_FLAGS) trained 150 steps on synthetic stories, with GPT-2's tokenizer and with a BPE of 400
    tokens (so greedy choices have clear margins)."""
    root = tmp_path_factory.mktemp("gguf")
    for name, flags in (("gpt2", []), ("bpe", ["--vocab-size", "400"])):
        run("prepare_data.py", "--source", "synthetic", "--synthetic-stories", "400", "--out-dir", root / name, *flags)
    checkpoints = {}
    for kind in KINDS:
        arch, data = ("llama" if kind.startswith("llama") else "gpt2"), root / ("bpe" if kind.endswith("bpe") else "gpt2")
        tokenizer_flags = ["--tokenizer", data / "tokenizer.json"] if kind.endswith("bpe") else []
        run("create_model.py", *TINY, *ARCH_FLAGS[arch], *tokenizer_flags, "-o", root / f"{kind}.bin")
        train("-e", root / f"{kind}.bin", "-c", root / f"{kind}-ck.bin", "-i", data / "TinyStories_train.bin",
              "-j", data / "TinyStories_val.bin", "-b", "8", "-t", "64", "-l", "3e-3", "-n", "150", "-v", "0",
              "-s", "0", "--precision", "fp32")
        checkpoints[kind] = root / f"{kind}-ck.bin"
    return checkpoints


def export_gguf(checkpoint, out, weight_type="f32"):
    run_cli("export", "-e", checkpoint, "--gguf", out, "--type", weight_type, check=True)
    return out


# ----------------------------------------------------------------------------- the file, read back with gguf

@pytest.mark.parametrize("kind", KINDS)
def test_gguf_holds_the_model_its_shape_and_its_tokenizer(trained, tmp_path, kind):
    path = export_gguf(trained[kind], tmp_path / "m.gguf")
    reader = gguf.GGUFReader(path)
    model = read_model(trained[kind])
    config, tok = model.config, tokenizer.for_model(trained[kind])
    arch = "llama" if kind.startswith("llama") else "gpt2"
    assert metadata(reader, "general.architecture", path) == arch
    assert [metadata(reader, f"{arch}.{k}", path) for k in ("context_length", "embedding_length", "feed_forward_length",
                                                    "block_count", "attention.head_count")] == [
        config.block_size, config.n_embd, 4 * config.n_embd if arch == "gpt2" else config.hidden_size, config.n_layer,
        config.n_head]
    if arch == "gpt2":
        assert abs(metadata(reader, "gpt2.attention.layer_norm_epsilon", path) - 1e-5) < 1e-12
    else:
        assert abs(metadata(reader, "llama.attention.layer_norm_rms_epsilon", path) - 1e-5) < 1e-12
        assert [metadata(reader, f"llama.{k}", path) for k in ("attention.head_count_kv", "rope.dimension_count",
                                                               "rope.freq_base")] == [1, config.head_size, 10000.0]
    ggml = {k: metadata(reader, f"tokenizer.ggml.{k}", path) for k in (
        "model", "pre", "bos_token_id", "eos_token_id", "add_bos_token", "add_eos_token")}
    assert ggml == {"model": "gpt2", "pre": "gpt-2", "bos_token_id": tok.eot, "eos_token_id": tok.eot,
                    "add_bos_token": True, "add_eos_token": False}
    tokens = metadata(reader, "tokenizer.ggml.tokens", path)
    assert len(tokens) == config.vocab_size and tokens[tok.eot] == "<|endoftext|>"
    assert all(bytes(BYTE_OF_CHAR[c] for c in tokens[i]) == tok.token_bytes(i) for i in range(len(tokens)) if i != tok.eot)
    types = metadata(reader, "tokenizer.ggml.token_type", path)
    assert types[tok.eot] == gguf.TokenType.CONTROL and types.count(gguf.TokenType.NORMAL) == len(tokens) - 1
    expected = gguf_tensors(config, model.params, arch)
    stored = {t.name: np.asarray(t.data).reshape(tuple(reversed(t.shape.tolist()))) for t in reader.tensors}
    assert stored.keys() == expected.keys()
    for name, value in expected.items():
        assert stored[name].dtype == np.float32 and np.array_equal(stored[name], value), name


def test_gguf_f16_and_q8_0_store_the_weights_rounded(trained, tmp_path):
    model = read_model(trained["bpe"])
    expected = gguf_tensors(model.config, model.params, "gpt2")
    sizes = {}
    for weight_type in ("f16", "q8_0", "q4_0"):
        reader = gguf.GGUFReader(export_gguf(trained["bpe"], tmp_path / f"{weight_type}.gguf", weight_type))
        sizes[weight_type] = os.path.getsize(tmp_path / f"{weight_type}.gguf")
        for t in reader.tensors:
            value = expected[t.name]
            if value.ndim == 1:
                assert t.tensor_type == gguf.GGMLQuantizationType.F32
                continue
            assert t.tensor_type.name == weight_type.upper(), t.name
            back = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type).reshape(value.shape)
            if weight_type == "f16":
                assert np.array_equal(back, value.astype(np.float16).astype(np.float32)), t.name
            else:  # within half a quantisation step of each block of 32 (its scale: max |x| / 127 or / 8)
                step = np.abs(value.reshape(-1, 32)).max(axis=1, keepdims=True) / (127 if weight_type == "q8_0" else 8)
                assert (np.abs(back.reshape(-1, 32) - value.reshape(-1, 32)) <= step * 1.01 + 1e-7).all(), t.name
    assert sizes["q4_0"] < sizes["q8_0"] < sizes["f16"]


def test_gguf_bad_inputs_are_one_line_and_keep_the_old_file(trained, tmp_path):
    old = tmp_path / "m.gguf"
    old.write_bytes(b"previous")
    run("create_model.py", "--layers", "1", "--heads", "2", "--channels", "48", "--block-size", "16",
        "-o", tmp_path / "c48.bin")
    result = run_cli("export", "-e", tmp_path / "c48.bin", "--gguf", old, "--type", "q8_0")
    assert_one_line_error(result, "--type q8_0", "48 channels", "multiple of 32")
    assert old.read_bytes() == b"previous"
    assert_one_line_error(run_cli("export", "-e", trained["gpt2"], "--gguf", tmp_path / "no" / "m.gguf"),
                          "does not exist")
    assert_one_line_error(run_cli("export", "-e", trained["gpt2"]), "--output", "--gguf")
    assert_one_line_error(run_cli("export", "-e", trained["gpt2"], "--gguf", old, "--type", "q4_k"), "--type")
    assert old.read_bytes() == b"previous" and sorted(p.name for p in tmp_path.iterdir()) == ["c48.bin", "m.gguf"]


# ----------------------------------------------------------------------------- import: the way back

@pytest.mark.parametrize("kind", KINDS)
def test_import_reads_back_what_export_wrote(trained, tmp_path, kind):
    (tmp_path / "back").mkdir()
    export_gguf(trained[kind], tmp_path / "m.gguf", "f32")
    imported = tmp_path / "back" / "model.bin"
    assert run_cli("import", "-i", tmp_path / "m.gguf", "-o", imported).returncode == 0
    original, back = read_model(trained[kind]), read_model(imported)
    assert back.config == original.config and back.tokenizer == original.tokenizer
    assert all(np.array_equal(back.params[k], original.params[k]) for k in original.params)
    assert (tmp_path / "back" / "tokenizer.json").exists() == kind.endswith("bpe")
    assert tokenizer.for_model(imported).fingerprint == tokenizer.for_model(trained[kind]).fingerprint
    export_gguf(imported, tmp_path / "again.gguf", "f32")
    assert gguf_tensors_of(tmp_path / "again.gguf") == gguf_tensors_of(tmp_path / "m.gguf")  # (its name differs)


def gguf_tensors_of(path) -> dict[str, bytes]:
    return {t.name: bytes(np.asarray(t.data).tobytes()) for t in gguf.GGUFReader(path).tensors}


def test_import_of_an_f16_file_gives_the_rounded_weights(trained, tmp_path):
    export_gguf(trained["bpe"], tmp_path / "m.gguf", "f16")
    assert run_cli("import", "-i", tmp_path / "m.gguf", "-o", tmp_path / "model.bin").returncode == 0
    original, back = read_model(trained["bpe"]), read_model(tmp_path / "model.bin")
    assert np.array_equal(back.params["qkvw"], original.params["qkvw"].astype(np.float16).astype(np.float32))
    assert np.array_equal(back.params["lnfw"], original.params["lnfw"])  # 1-D weights stay f32


def llama_gguf_edited(source, out, drop=(), **values):
    """A copy of the llama GGUF file `source` with the metadata keys `drop` left out and `values` set
    (llama.KEY: a number)."""
    reader, writer = gguf.GGUFReader(source), gguf.GGUFWriter(out, "llama")
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture" or key in drop or key in values:
            continue
        value_type = field.types[0]
        value = metadata(reader, key, source)
        writer.add_key_value(key, value, value_type, sub_type=field.types[-1] if value_type == gguf.GGUFValueType.ARRAY else None)
    for key, value in values.items():
        (writer.add_float32 if isinstance(value, float) else writer.add_uint32)(key, value)
    for t in reader.tensors:
        writer.add_tensor(t.name, np.asarray(t.data), raw_dtype=t.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


def test_import_of_a_llama_gguf_takes_llama_cpp_defaults_for_what_it_leaves_out(tmp_path):
    """head_count_kv, rope.freq_base and rope.dimension_count may be absent (llama.cpp's defaults: the heads,
    10000, the head size): a file without them is a model with as many kv heads as heads."""
    run("create_model.py", *TINY, "--arch", "llama", "-o", tmp_path / "mha.bin")
    export_gguf(tmp_path / "mha.bin", tmp_path / "m.gguf")
    bare = llama_gguf_edited(tmp_path / "m.gguf", tmp_path / "bare.gguf", drop=(
        "llama.attention.head_count_kv", "llama.rope.freq_base", "llama.rope.dimension_count"))
    assert run_cli("import", "-i", bare, "-o", tmp_path / "back.bin").returncode == 0
    original, back = read_model(tmp_path / "mha.bin"), read_model(tmp_path / "back.bin")
    assert back.config == original.config and all(np.array_equal(back.params[k], original.params[k]) for k in original.params)


@pytest.mark.parametrize("values, message", [
    ({"llama.rope.freq_base": 10000.5}, "unsupported rope (freq_base 10000.5"),
    ({"llama.rope.scaling.factor": 4.0}, "rope scaling"),
    ({"llama.rope.dimension_count": 8}, "unsupported rope.dimension_count 8 (ours is the head size, 16)"),
    ({"llama.attention.layer_norm_rms_epsilon": 1e-6}, "unsupported layer_norm_rms_epsilon"),
    ({"llama.attention.head_count_kv": 3}, "heads (2) must be divisible by kv heads (3)"),
    ({"llama.feed_forward_length": 99}, "ffn_gate.weight has shape [96, 32], expected [99, 32]"),
])
def test_a_llama_gguf_our_model_cannot_hold_is_refused_in_one_line(trained, tmp_path, values, message):
    export_gguf(trained["llama"], tmp_path / "m.gguf", "f32")
    bad = llama_gguf_edited(tmp_path / "m.gguf", tmp_path / "bad.gguf", **values)
    assert_one_line_error(run_cli("import", "-i", bad, "-o", tmp_path / "model.bin"), "bad.gguf", message)
    assert not (tmp_path / "model.bin").exists()


def test_import_of_another_architecture_is_refused_in_one_line(tmp_path):
    writer = gguf.GGUFWriter(tmp_path / "phi.gguf", "phi2")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    assert_one_line_error(run_cli("import", "-i", tmp_path / "phi.gguf", "-o", tmp_path / "model.bin"),
                          "architecture 'phi2'", "only gpt2 and llama")


def test_the_rotary_pairs_are_reordered_for_llama_cpp():
    """Our rows (j, j + hs/2) of each head become llama.cpp's neighbours (2j, 2j + 1)."""
    from tinystories.gguf_file import interleave_rotary

    rows = np.arange(2 * 6, dtype=np.float32)[:, None]  # 2 heads of hs 6: rows 0..11
    assert interleave_rotary(rows, 2)[:, 0].tolist() == [0, 3, 1, 4, 2, 5, 6, 9, 7, 10, 8, 11]


def test_import_of_a_damaged_gguf_is_one_line(trained, tmp_path):
    export_gguf(trained["gpt2"], tmp_path / "m.gguf", "f32")
    data = (tmp_path / "m.gguf").read_bytes()
    (tmp_path / "short.gguf").write_bytes(data[: len(data) // 2])
    (tmp_path / "model.bin").write_bytes(b"previous")
    (tmp_path / "text.gguf").write_text("not a GGUF file at all")
    for bad in ("short.gguf", "text.gguf"):
        assert_one_line_error(run_cli("import", "-i", tmp_path / bad, "-o", tmp_path / "model.bin"),
                              bad, "not a readable GGUF file")
    assert_one_line_error(run_cli("import", "-i", tmp_path / "m.gguf", "-o", tmp_path / "m.gguf"), "same file as -i")
    assert (tmp_path / "model.bin").read_bytes() == b"previous" and (tmp_path / "m.gguf").read_bytes() == data
    result = run_cli("import", "-i", tmp_path / "m.gguf", "-o", tmp_path / "out.bin", "--block-size", "8")
    assert_one_line_error(result, "--block-size")


# ----------------------------------------------------------------------------- in a real llama.cpp

def llama(path, n_ctx=64):
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (make llama)")
    return llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, logits_all=True, verbose=False, n_threads=2, seed=0)


def llama_greedy(llm, prompt_ids: list[int], n: int, eot: int) -> list[int]:
    """llama.cpp's greedy continuation of prompt_ids (at most n ids, stopping before an eot)."""
    out = []
    for token in llm.generate(prompt_ids, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0):
        if token == eot:
            break
        out.append(token)
        if len(out) == n:  # before llama.cpp feeds it back
            break
    return out


def our_greedy(checkpoint, prompt_ids: list[int], n: int) -> list[int]:
    model, _ = read_gpt(checkpoint)
    return generate_tokens(model.eval(), prompt_ids, n, torch.Generator(), model_eot(checkpoint), temperature=0.0)


def assert_same_greedy(theirs: list[int], checkpoint, prompt_ids: list[int]) -> None:
    """llama.cpp's greedy ids equal ours, token for token; past the 10th they may part only at a tie: where
    our two most likely tokens are closer than llama.cpp's f32 log-probabilities are to ours."""
    ours = our_greedy(checkpoint, prompt_ids, GREEDY_TOKENS)
    assert len(theirs) > 10
    if theirs == ours:
        return
    first = next(i for i, (a, b) in enumerate(zip(theirs, ours)) if a != b)
    assert first >= 10, (first, theirs, ours)
    logits = our_log_probs(checkpoint, prompt_ids + ours[:first])[-1]
    top = np.sort(logits)[-2:]
    assert top[1] - top[0] < LOGPROB_TOLERANCE["f32"], (first, top)


def model_eot(checkpoint) -> int:
    return tokenizer.for_model(checkpoint).eot


def our_log_probs(checkpoint, ids: list[int]) -> np.ndarray:
    """log p of every next token id at each position of ids (T, V), our fp32 model."""
    model, _ = read_gpt(checkpoint)
    with torch.no_grad():
        return torch.log_softmax(model.eval()(torch.tensor([ids]))[0].float(), dim=-1).numpy()


def llama_log_probs(llm, ids: list[int]) -> np.ndarray:
    llm.reset()
    llm.eval(ids)
    logits = np.asarray(llm.scores[: len(ids)], dtype=np.float64)  # (T, V)
    return logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) - logits.max(-1, keepdims=True)


@pytest.mark.parametrize("kind", KINDS)
def test_llama_cpp_tokenizes_and_continues_a_prompt_as_generate_does(trained, tmp_path, kind):
    llm = llama(export_gguf(trained[kind], tmp_path / "m.gguf", "f32"))
    tok = tokenizer.for_model(trained[kind])
    prompt_ids = [tok.eot] + tok.encode(PROMPT)
    assert llm.tokenize(PROMPT.encode()) == prompt_ids  # the end-of-text token first, by itself (add_bos)
    assert llm.tokenize(TEXT.encode(), add_bos=False) == tok.encode(TEXT)
    theirs = llama_greedy(llm, llm.tokenize(PROMPT.encode()), GREEDY_TOKENS, tok.eot)
    assert_same_greedy(theirs, trained[kind], prompt_ids)
    assert llm.detokenize(theirs).decode("utf-8", errors="replace") == tok.decode(theirs)


@pytest.mark.parametrize("kind", ["bpe", "llama-bpe"])
@pytest.mark.parametrize("weight_type", sorted(LOGPROB_TOLERANCE))
def test_llama_cpp_log_probs_agree_with_ours(trained, tmp_path, weight_type, kind):
    llm = llama(export_gguf(trained[kind], tmp_path / "m.gguf", weight_type))
    tok = tokenizer.for_model(trained[kind])
    ids = [tok.eot] + tok.encode(TEXT)
    ours, theirs = our_log_probs(trained[kind], ids), llama_log_probs(llm, ids)
    scored = np.arange(len(ids) - 1)
    next_ids = np.array(ids[1:])
    difference = np.abs(ours[scored, next_ids] - theirs[scored, next_ids]).max()
    assert difference < LOGPROB_TOLERANCE[weight_type], difference


# ----------------------------------------------------------------------------- llama.cpp's own converter

def converter() -> Path:
    source = Path(os.environ.get("LLAMA_CPP_SOURCE", REPO / ".venv" / "llama.cpp"))
    script = source / "convert_hf_to_gguf.py"
    if not script.exists():
        pytest.skip(f"llama.cpp's convert_hf_to_gguf.py not found in {source} (make llama)")
    return script


@pytest.mark.parametrize("kind", ["gpt2"])  # llama: its converter's Llama path imports sentencepiece first (not installed)
def test_llama_cpp_converter_takes_the_hugging_face_export(trained, tmp_path, kind):
    """llama.cpp's own converter reads our folder and the GGUF it writes continues the prompt as ./generate does."""
    script = converter()
    assert run_cli("export", "-e", trained[kind], "-o", tmp_path / "hf").returncode == 0
    result = subprocess.run([sys.executable, str(script), str(tmp_path / "hf"), "--outtype", "f32",
                             "--outfile", str(tmp_path / "converted.gguf")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    llm = llama(tmp_path / "converted.gguf")
    tok = tokenizer.gpt2()
    prompt_ids = [tok.eot] + tok.encode(PROMPT)
    assert llm.tokenize(PROMPT.encode(), add_bos=False) == prompt_ids[1:]
    theirs = llama_greedy(llm, prompt_ids, GREEDY_TOKENS, tok.eot)  # the end-of-text token put first by hand
    assert_same_greedy(theirs, trained[kind], prompt_ids)


# ----------------------------------------------------------------------------- the Hugging Face export in transformers

@pytest.mark.parametrize("kind", KINDS)
def test_transformers_greedy_text_is_generates(trained, tmp_path, kind):
    """The exported folder (GPT2LMHeadModel or LlamaForCausalLM) in transformers' pipeline, greedy after
    <|endoftext|> + prompt, gives the text ./generate --temperature 0 prints after the prompt."""
    transformers = pytest.importorskip("transformers")
    assert run_cli("export", "-e", trained[kind], "-o", tmp_path / "hf").returncode == 0
    ours = run_cli("generate", "-e", trained[kind], "-p", PROMPT, "-n", str(GREEDY_TOKENS), "--temperature", "0",
                   check=True).stdout
    pipeline = transformers.pipeline("text-generation", model=str(tmp_path / "hf"))
    assert type(pipeline.model).__name__ == ("LlamaForCausalLM" if kind.startswith("llama") else "GPT2LMHeadModel")
    theirs = pipeline("<|endoftext|>" + PROMPT, max_new_tokens=GREEDY_TOKENS, do_sample=False, return_full_text=False)
    assert ours == PROMPT + theirs[0]["generated_text"] + "\n" and len(ours) > len(PROMPT) + 20

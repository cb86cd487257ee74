"""Sampling (temperature, top-k, top-p), KV-cached generation against a full-recompute reference,
streamed decoding, and ./generate end to end (reproducible seeds, one-line errors)."""
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import REPO, run

from tinystories import cli, llmc, tokenizer
from tinystories.config import GPTConfig
from tinystories.device import CPU_BF16_ENV
from tinystories.formats import read_model, write_model
from tinystories.generate import generate_tokens, sample_next, text_pieces
from tinystories.model import GPT
from tinystories.tokenizer import EOT, gpt2

TINY = ["--layers", "1", "--heads", "2", "--channels", "16", "--block-size", "64"]


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    """A tiny random model (block size 64, GPT-2 vocabulary) written by create_model.py."""
    path = tmp_path_factory.mktemp("generate") / "model.bin"
    run("create_model.py", "-o", path, *TINY)
    return path


def tiny_model(seed: int = 0) -> GPT:
    model = GPT(GPTConfig(block_size=32, n_layer=2, n_head=2, n_embd=32))
    model.init_weights(seed)
    return model.eval()


def run_generate(*flags) -> subprocess.CompletedProcess:
    return subprocess.run([str(REPO / "generate"), *flags], capture_output=True, text=True)


def run_generate_in_process(capsys, *flags) -> tuple[int, str, str]:
    """cli.run on the generate command: (exit status, stdout, stderr)."""
    try:
        cli.run(cli.generate_main, list(flags))
        status = 0
    except SystemExit as e:
        status = e.code
    out, err = capsys.readouterr()
    return status, out, err


# ----------------------------------------------------------------------------- sample_next

def random_logits(seed: int, size: int = 1000) -> torch.Tensor:
    return 3 * torch.randn(size, generator=torch.Generator().manual_seed(seed))  # (V,)


@pytest.mark.parametrize("seed", range(5))
def test_greedy_settings_all_take_the_most_likely_token(seed):
    logits = random_logits(seed)
    best = int(torch.argmax(logits))
    generator = torch.Generator().manual_seed(seed)
    for _ in range(20):
        assert sample_next(logits, generator, temperature=0) == best
        assert sample_next(logits, generator, top_k=1) == best
        assert sample_next(logits, generator, top_p=1e-6) == best


@pytest.mark.parametrize("temperature", [1e-45, 1e-300, 5e-324])
def test_a_temperature_too_small_for_the_logits_is_greedy(temperature):
    """logits / temperature overflows to infinity: the limit of sampling as the temperature goes to 0."""
    logits = random_logits(0)
    generator = torch.Generator().manual_seed(0)
    for top_k, top_p in [(0, 1.0), (50, 1.0), (0, 0.9)]:
        assert sample_next(logits, generator, temperature, top_k, top_p) == int(torch.argmax(logits))


def test_main_with_a_tiny_temperature_prints_the_greedy_story(model_path, capsys):
    tiny = run_generate_in_process(capsys, "-e", str(model_path), "-n", "20", "-s", "1", "--temperature", "1e-45")
    greedy = run_generate_in_process(capsys, "-e", str(model_path), "-n", "20", "-s", "1", "--temperature", "0")
    assert tiny == greedy and tiny[0] == 0


def test_top_k_and_top_p_sample_only_inside_their_sets():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = probs.log()
    generator = torch.Generator().manual_seed(0)

    def support(**settings) -> set[int]:
        return {sample_next(logits, generator, **settings) for _ in range(400)}

    assert support() == {0, 1, 2, 3}
    assert support(top_k=2) == {0, 1}
    assert support(top_k=3) == {0, 1, 2}
    assert support(top_p=0.75) == {0, 1}  # 0.5 alone is short of 0.75; 0.5 + 0.3 reaches it
    assert support(top_p=0.85) == {0, 1, 2}
    assert support(top_p=0.45) == {0}


def test_samples_follow_the_softmax_at_the_temperature():
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0])
    generator = torch.Generator().manual_seed(0)
    for temperature in (1.0, 0.5, 2.0):
        draws = torch.tensor([sample_next(logits, generator, temperature) for _ in range(4000)])
        frequencies = torch.bincount(draws, minlength=4) / len(draws)
        expected = torch.softmax(logits / temperature, dim=0)
        assert torch.allclose(frequencies, expected, atol=0.03), (temperature, frequencies, expected)


# ----------------------------------------------------------------------------- generate_tokens

def reference_generation(model: GPT, prompt_ids, max_new_tokens, generator, **settings) -> list[int]:
    """Generation without a cache: the full forward over the whole sequence at every step."""
    ids = list(prompt_ids)
    with torch.no_grad():
        for _ in range(max_new_tokens):
            token = sample_next(model(torch.tensor([ids]))[0, -1], generator, **settings)
            if token == EOT:
                break
            ids.append(token)
    return ids[len(prompt_ids) :]


@pytest.mark.parametrize("settings", [dict(temperature=1.0), dict(temperature=0.8, top_k=100, top_p=0.95),
                                      dict(temperature=0)], ids=["plain", "top-k-top-p", "greedy"])
def test_kv_cache_generation_equals_full_recompute(settings):
    model = tiny_model()
    prompt = [EOT] + tokenizer.encode("Once upon a time")
    n = model.config.block_size - len(prompt) + 1  # fills every position of the block
    cached = generate_tokens(model, prompt, n, torch.Generator().manual_seed(7), EOT, **settings)
    reference = reference_generation(model, prompt, n, torch.Generator().manual_seed(7), **settings)
    assert cached == reference
    assert len(cached) == n  # a random model practically never picks EOT


def test_top_k_1_and_tiny_top_p_generate_the_greedy_story():
    model = tiny_model(seed=3)
    greedy = generate_tokens(model, [EOT], 30, torch.Generator().manual_seed(0), EOT, temperature=0)
    assert generate_tokens(model, [EOT], 30, torch.Generator().manual_seed(1), EOT, top_k=1) == greedy
    assert generate_tokens(model, [EOT], 30, torch.Generator().manual_seed(2), EOT, top_p=1e-6) == greedy
    assert greedy == reference_generation(model, [EOT], 30, None, temperature=0)


def test_generation_stops_before_end_of_text():
    model = tiny_model()
    with torch.no_grad():  # make EOT the most likely token everywhere: logits = wte @ ln_f.bias
        model.ln_f.weight.zero_()
        model.ln_f.bias.fill_(1.0)
        model.wte.weight[EOT].fill_(1.0)
    assert generate_tokens(model, [EOT], 10, torch.Generator().manual_seed(0), EOT, temperature=0) == []


# ----------------------------------------------------------------------------- decoding and main

def test_streamed_pieces_join_to_the_decoded_text():
    text = "Zoë saw a 🦄 and said: “寿司!”"
    ids = tokenizer.encode(text)
    encoding = tokenizer.gpt2_encoding()
    split_characters = [i for i in ids if not is_utf8(encoding.decode_single_token_bytes(i))]
    assert split_characters  # some token holds part of a character: the case worth testing
    pieces = list(text_pieces(gpt2(), ids))
    assert "".join(pieces) == text
    assert "\ufffd" not in "".join(pieces)


def is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


@pytest.mark.parametrize("precision, dtype, native_bf16", [("fp32", torch.float32, "0"), ("bf16", torch.bfloat16, "1"),
                                                       ("bf16", torch.bfloat16, "0")])
def test_main_prints_the_prompt_and_the_sampled_story(model_path, capsys, monkeypatch, precision, dtype, native_bf16):
    """The story is the same whatever the CPU; bf16 on a CPU without native bf16 adds a note."""
    monkeypatch.setenv(CPU_BF16_ENV, native_bf16)  # the CPU kind under test, not this machine's
    status, out, err = run_generate_in_process(capsys, "-e", str(model_path), "-n", "30", "-s", "11",
                                               "-p", "Once upon a time", "--top-k", "50", "--precision", precision)
    emulated = precision == "bf16" and native_bf16 == "0"
    assert status == 0
    assert err == ("note: this CPU has no native bf16; --precision bf16 will be emulated and slow\n" if emulated else "")
    model_file = read_model(model_path)
    model = llmc.load_params(GPT(model_file.config), model_file.params).to(dtype)
    prompt = [EOT] + tokenizer.encode("Once upon a time")
    story = generate_tokens(model, prompt, 30, torch.Generator().manual_seed(11), EOT, top_k=50)
    assert out == "Once upon a time" + tokenizer.decode(story) + "\n"


def test_without_a_seed_main_prints_one_that_reproduces_the_story(model_path, capsys):
    status, first, err = run_generate_in_process(capsys, "-e", str(model_path), "-n", "20")
    assert status == 0 and err.startswith("seed: ")
    seed = err.split()[1]
    status, again, err = run_generate_in_process(capsys, "-e", str(model_path), "-n", "20", "-s", seed)
    assert status == 0 and err == "" and again == first


def test_same_seed_same_story_and_another_seed_another(model_path):
    first = run_generate("-e", str(model_path), "-n", "40", "-s", "7")
    second = run_generate("-e", str(model_path), "-n", "40", "-s", "7")
    other = run_generate("-e", str(model_path), "-n", "40", "-s", "8")
    assert first.returncode == second.returncode == other.returncode == 0, first.stderr
    assert first.stdout == second.stdout
    assert first.stdout != other.stdout
    assert len(first.stdout) > 40  # forty tokens of text, not an early end


def test_corrupt_model_file_is_one_line_exit_2_end_to_end(tmp_path):
    path = tmp_path / "corrupt.bin"
    path.write_bytes(b"not a model" * 200)
    result = run_generate("-e", str(path), "-n", "5")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert str(path) in result.stderr


@pytest.mark.parametrize("problem", ["missing", "truncated", "bad-magic", "too-many-tokens", "long-prompt",
                                     "no-cuda", "other-vocabulary"])
def test_bad_input_is_one_line_and_exit_2(problem, model_path, tmp_path, capsys):
    good = str(model_path)
    truncated, bad_magic = tmp_path / "truncated.bin", tmp_path / "bad_magic.bin"
    truncated.write_bytes(model_path.read_bytes()[:5000])
    bad_magic.write_bytes(b"\0" * 4 + model_path.read_bytes()[4:])
    other_vocab_config = GPTConfig(block_size=8, vocab_size=1000, n_layer=1, n_head=1, n_embd=8)
    write_model(tmp_path / "vocab1000.bin", other_vocab_config, llmc.model_params(GPT(other_vocab_config)))
    flags, named = {
        "missing": (["-e", str(tmp_path / "nope.bin")], "nope.bin"),
        "truncated": (["-e", str(truncated)], "truncated"),
        "bad-magic": (["-e", str(bad_magic)], "magic"),
        "too-many-tokens": (["-e", good, "-n", "65"], "-n"),  # block size 64
        "long-prompt": (["-e", good, "-p", " a" * 70], "-p"),
        "no-cuda": (["-e", good, "--device", "cuda"], "--device"),
        "other-vocabulary": (["-e", str(tmp_path / "vocab1000.bin")], "1000"),
    }[problem]
    if problem == "no-cuda" and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    status, out, err = run_generate_in_process(capsys, *flags, "-s", "1")
    assert status == 2 and out == ""
    assert err.count("\n") == 1 and named in err, err


def test_the_whole_block_can_be_generated(model_path, capsys):
    status, out, _ = run_generate_in_process(capsys, "-e", str(model_path), "-n", "64", "-s", "3")
    assert status == 0 and out.endswith("\n")

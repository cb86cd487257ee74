"""`tinystories eval` and --val-batches all: whole-file loss, perplexity and bits per byte, against a
straightforward float64 computation over the same windows."""
import json
import math

import numpy as np
import pytest
import torch
from conftest import ARCH_FLAGS, arch_model, assert_one_line_error, run, run_cli, story_tokens, train, train_flags

from tinystories import evaluate, formats, llmc, tokenizer
from tinystories.config import GPTConfig
from tinystories.device import resolve_precision
from tinystories.model import GPT


def loaded(path) -> GPT:
    model_file = formats.read_model(path)
    return llmc.load_params(GPT(model_file.config), model_file.params)

CONFIG = GPTConfig(block_size=32, vocab_size=50257, n_layer=2, n_head=2, n_embd=16)


def reference(model: GPT, tokens: np.ndarray, seq_len: int) -> tuple[float, float]:
    """(mean loss, bits per byte) window by window: logits of the whole window, float64 log-softmax,
    and the bytes of the targets decoded back with tiktoken."""
    span, nats, targets, text = seq_len + 1, 0.0, 0, b""
    starts = list(range(0, len(tokens), span))
    for start in starts:
        window = torch.tensor(tokens[start : start + span].astype(np.int64))
        if len(window) < 2:
            continue
        with torch.no_grad():
            logits = model(window[None, :-1])[0].double()  # (t, V)
        logp = torch.log_softmax(logits, dim=-1)
        nats -= float(logp[torch.arange(len(window) - 1), window[1:]].sum())
        targets += len(window) - 1
        text += tokenizer.gpt2_encoding().decode_bytes(window[1:].tolist())
    return nats / targets, nats / math.log(2) / len(text)


def test_windows_cover_the_file_without_overlap():
    assert evaluate.windows(20, 4) == [(0, 5), (5, 10), (10, 15), (15, 20)]
    assert evaluate.windows(23, 4) == [(0, 5), (5, 10), (10, 15), (15, 20), (20, 23)]  # tail of 3: 2 targets
    assert evaluate.windows(21, 4) == [(0, 5), (5, 10), (10, 15), (15, 20)]  # a lone last token is not scored


@pytest.mark.parametrize("n_tokens", [33 * 7, 33 * 7 + 12])
def test_eval_matches_a_straightforward_computation(n_tokens):
    model = GPT(CONFIG)
    model.init_weights(3)
    tokens = story_tokens(60)[:n_tokens]
    got = evaluate.evaluate(model, tokens, tokenizer.gpt2(), 32, batch_size=3, device=torch.device("cpu"))
    want_loss, want_bpb = reference(model, tokens, 32)
    assert got.targets == n_tokens - math.ceil(n_tokens / 33)
    assert abs(got.loss - want_loss) < 1e-6
    assert abs(got.bits_per_byte - want_bpb) < 1e-6
    assert got.perplexity == pytest.approx(math.exp(want_loss), rel=1e-6)


def test_every_batch_has_one_shape_and_padding_scores_nothing():
    """The last batch (a window and the 12-token tail, in a batch of 5) is padded to the full shape, so
    a compiled scorer compiles once; the figures are those of unpadded batches of any size."""
    tokens = story_tokens(60)[: 33 * 6 + 12]
    batches = evaluate.window_batches(evaluate.windows(tokens.size, 32), 5)
    x, y = evaluate.padded_batch(tokens, batches[-1], 32, 5)
    assert x.shape == y.shape == (5, 32) and (y != evaluate.NO_TARGET).sum() == 32 + 11
    assert (x[0] == tokens[165:197]).all() and (y[0] == tokens[166:198]).all()
    assert (x[1, :11] == tokens[198:209]).all() and (y[1, :11] == tokens[199:210]).all()
    assert (x[1, 12:] == 0).all() and (y[1, 11:] == evaluate.NO_TARGET).all() and (x[2:] == 0).all()
    model = GPT(CONFIG)
    model.init_weights(4)
    figures = [evaluate.evaluate(model, tokens, tokenizer.gpt2(), 32, b, torch.device("cpu")) for b in (1, 5, 7)]
    assert len({(f.targets, f.bytes) for f in figures}) == 1
    assert max(f.nats for f in figures) - min(f.nats for f in figures) < 1e-6 * figures[0].nats


def test_bits_per_byte_counts_multibyte_tokens_once():
    """"é" and an emoji: tokens whose bytes are not whole characters still add up to the text's bytes."""
    ids = tokenizer.encode("Café 🙂 smiled.")
    lengths = evaluate.byte_lengths(tokenizer.gpt2())
    assert int(lengths[torch.tensor(ids)].sum()) == len("Café 🙂 smiled.".encode())


@pytest.mark.parametrize("arch", ARCH_FLAGS)
def test_eval_command_json_and_text(workdir, tmp_path, arch):
    model = arch_model(workdir, arch)
    out = run_cli("eval", "-e", model, "-i", workdir / "val.bin", "-t", "32", "--json", "--precision", "fp32",
                  check=True).stdout
    figures = json.loads(out)
    tokens = formats.read_tokens(workdir / "val.bin")
    want_loss, want_bpb = reference(loaded(model), np.asarray(tokens), 32)
    assert abs(figures["loss"] - want_loss) < 1e-6 and abs(figures["bits_per_byte"] - want_bpb) < 1e-6
    assert figures["perplexity"] == pytest.approx(math.exp(figures["loss"]))
    assert figures["precision"] == "fp32" and figures["compiled"] is False  # a small file: compiling would not pay
    default = json.loads(run_cli("eval", "-e", model, "-i", workdir / "val.bin", "-t", "32", "--json",
                                 check=True).stdout)
    assert default["precision"] == resolve_precision("auto", torch.device("cpu"))  # bf16 where the CPU has it
    assert default["loss"] == pytest.approx(want_loss, rel=1e-3) and default["targets"] == figures["targets"]
    text = run_cli("eval", "-e", model, "-i", workdir / "val.bin", "-t", "32", "--precision", "fp32", check=True).stdout
    assert f"loss {figures['loss']:.6f}" in text and f"bits per byte {figures['bits_per_byte']:.6f}" in text


def test_diverged_model_gives_null_in_json_and_says_so_in_text(workdir, tmp_path):
    """Weights finite but huge (as after a diverged run): the loss is NaN, which JSON cannot hold."""
    huge = {name: np.full(shape, 3e38, np.float32) for name, shape in formats.model_tensor_shapes(CONFIG)}
    formats.write_model(tmp_path / "diverged.bin", CONFIG, huge)
    args = ["-m", "tinystories", "eval", "-e", tmp_path / "diverged.bin", "-i", workdir / "val.bin", "-t", "32"]
    figures = json.loads(run(*args, "--json").stdout, parse_constant=lambda name: pytest.fail(f"bare {name}"))
    assert figures["loss"] is figures["perplexity"] is figures["bits_per_byte"] is figures["nats"] is None
    assert figures["targets"] > 0
    assert "loss nan: not finite" in run(*args).stdout
    assert evaluate.EvalResult(targets=1, nats=1000.0, bytes=1).perplexity == math.inf  # exp(1000) overflows


def test_eval_bad_input(workdir, tmp_path):
    result = run_cli("eval", "-e", workdir / "model.bin", "-i", tmp_path / "none.bin")
    assert_one_line_error(result, "none.bin: file not found")
    result = run_cli("eval", "-e", workdir / "model.bin", "-i", workdir / "val.bin", "-t", "65")
    assert_one_line_error(result, "-t/--seq-len 65 exceeds")


def test_val_batches_all_is_the_eval_figure(workdir, tmp_path):
    """./train --val-batches all prints, at the end, what eval gives for the final checkpoint."""
    ck = tmp_path / "ck.bin"
    out = train("-e", workdir / "model.bin", "-c", ck, "-n", "3", *train_flags(workdir, val_every=3),
                "--val-batches", "all", "--precision", "fp32").stdout
    last = [line for line in out.splitlines() if line.startswith("step") and "val loss" in line][-1].split()
    figures = json.loads(run_cli("eval", "-e", ck, "-i", workdir / "val.bin", "-t", "32", "--json", "--precision",
                                 "fp32", check=True).stdout)
    assert last[:2] == ["step", "3/3"]
    assert last[2:5] == ["|", "val", "loss"] and last[-5:-1] == ["val", "bits", "per", "byte"]
    assert abs(float(last[5]) - figures["loss"]) < 2e-6 and abs(float(last[-1]) - figures["bits_per_byte"]) < 2e-6
    meta = formats.read_model(ck).state.meta
    assert abs(meta["last_val_loss"] - figures["loss"]) < 1e-6 and meta["last_val_step"] == 3
    assert abs(meta["last_val_bits_per_byte"] - figures["bits_per_byte"]) < 1e-6
    assert train("-e", workdir / "model.bin", "-n", "1", *train_flags(workdir), "--val-batches", "none",
                 check=False).returncode == 2


def test_prefix_is_whole_windows_or_the_whole_file():
    tokens = np.arange(100)
    assert evaluate.prefix(tokens, 0, 4) is tokens and evaluate.prefix(tokens, 100, 4) is tokens
    assert evaluate.prefix(tokens, 99, 4).tolist() == list(range(95))  # 19 windows of 5
    assert evaluate.prefix(tokens, 4, 4).size == 0


def test_val_max_tokens_scores_what_eval_max_tokens_scores(workdir, tmp_path):
    """./train --val-batches all --val-max-tokens N logs the figures of eval --max-tokens N on the same
    checkpoint: the first N tokens in whole windows (3 of 33 tokens for N = 100)."""
    ck = tmp_path / "ck.bin"
    out = train("-e", workdir / "model.bin", "-c", ck, "-n", "3", *train_flags(workdir, val_every=3),
                "--val-batches", "all", "--val-max-tokens", "100", "--precision", "fp32").stdout
    last = [line for line in out.splitlines() if line.startswith("step") and "val loss" in line][-1].split()
    eval_args = ["eval", "-e", ck, "-i", workdir / "val.bin", "-t", "32", "--json", "--precision", "fp32"]
    figures = json.loads(run_cli(*eval_args, "--max-tokens", "100", check=True).stdout)
    assert figures["targets"] == 3 * 32
    assert abs(float(last[5]) - figures["loss"]) < 2e-6 and abs(float(last[-1]) - figures["bits_per_byte"]) < 2e-6
    whole = json.loads(run_cli(*eval_args, check=True).stdout)
    assert whole["targets"] > figures["targets"] and whole["loss"] != figures["loss"]
    assert json.loads(run_cli(*eval_args, "--max-tokens", "1000000", check=True).stdout) == whole


def test_max_tokens_bad_input(workdir, tmp_path):
    result = run_cli("eval", "-e", workdir / "model.bin", "-i", workdir / "val.bin", "-t", "32", "--max-tokens", "20")
    assert_one_line_error(result, "--max-tokens 20: less than one window of -t + 1 = 33 tokens")
    flags = ["-e", workdir / "model.bin", "-n", "1", *train_flags(workdir, val_every=1)]
    assert_one_line_error(train(*flags, "--val-max-tokens", "100", check=False),
                          "--val-max-tokens 100: needs --val-batches all")
    assert_one_line_error(train(*flags, "--val-batches", "all", "--val-max-tokens", "20", check=False),
                          "--val-max-tokens 20: less than one window of -t + 1 = 33 tokens")


def test_eval_progress_in_a_log_says_the_time_left(monkeypatch, capsys):
    """Where stderr is no terminal (a log), a long scoring prints lines with its rate and the time left."""
    from tinystories import progress

    monkeypatch.setattr(progress, "LINE_SECONDS", 0)
    model = GPT(CONFIG)
    model.init_weights(3)
    evaluate.evaluate(model, story_tokens(60)[: 33 * 7], tokenizer.gpt2(), 32, batch_size=3,
                      device=torch.device("cpu"), progress=True)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and all("tokens/s, about" in line and "s left)" in line for line in lines)
    assert lines[-1].startswith("  eval: 224 of 224 tokens")

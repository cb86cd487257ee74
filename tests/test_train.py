"""The trainer end to end through ./train: exact resume, falling loss, checkpoints, bad input."""
import dataclasses
import os
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import ARCH_FLAGS, ONE_THREAD, TINY, arch_model, assert_one_line_error, logged, run, train, train_flags
import torch

from tinystories import formats
from tinystories.cli import train_parser
from tinystories.config import TrainConfig
from tinystories.device import compile_problem
from tinystories.errors import BadInput


@pytest.mark.parametrize("arch", ARCH_FLAGS)
def test_resume_is_exact(workdir, tmp_path, arch):
    """N steps, stop, resume for M more == N + M steps without a stop, loss for loss (bitwise)."""
    model = arch_model(workdir, arch)
    straight = tmp_path / "straight.bin"
    train("-e", model, "-c", straight, "-n", "6", *train_flags(workdir), env=ONE_THREAD)
    split = tmp_path / "split.bin"
    train("-e", model, "-c", split, "-n", "3", *train_flags(workdir), env=ONE_THREAD)
    out = train("-e", split, "-c", split, "-n", "6", *train_flags(workdir), env=ONE_THREAD).stdout
    assert "resuming run" in out and "at step 3" in out
    a, b = logged(straight, "train_loss"), logged(split, "train_loss")
    assert sorted(a) == sorted(b) == list(range(1, 7))
    assert a == b
    # and the final weights and optimizer moments agree exactly
    fa, fb = formats.read_model(straight), formats.read_model(split)
    for name in fa.params:
        np.testing.assert_array_equal(fa.params[name], fb.params[name])
    for name in fa.state.tensors:
        np.testing.assert_array_equal(fa.state.tensors[name], fb.state.tensors[name])
    assert fa.state.meta["step"] == fb.state.meta["step"] == 6
    assert fa.config == formats.read_model(model).config and fa.config.gpt2_block == (arch == "gpt2")


def test_checkpoint_is_an_llmc_model_file(workdir, tmp_path):
    """The checkpoint starts with an ordinary llm.c model file; ./generate-style readers use it."""
    ck = tmp_path / "ck.bin"
    train("-e", workdir / "model.bin", "-c", ck, "-n", "2", *train_flags(workdir))
    config = formats.read_model(workdir / "model.bin").config
    model_size = 1024 + 4 * config.num_parameters()
    raw = ck.read_bytes()
    header = np.frombuffer(raw[:1024], dtype="<i4")
    assert list(header[:8]) == [20240326, 3, 64, 50257, 2, 2, 32, 50304]
    assert len(raw) > model_size
    trailer = np.frombuffer(raw[model_size:model_size + 16], dtype="<i4")
    assert trailer[0] == formats.STATE_MAGIC
    # a model file holding just the weights part starts a fresh run
    plain = tmp_path / "plain.bin"
    plain.write_bytes(raw[:model_size])
    out = train("-e", plain, "-n", "1", *train_flags(workdir)).stdout
    assert "resuming" not in out


def test_loss_falls_on_real_text(workdir, tmp_path):
    out = train("-e", workdir / "model.bin", "-n", "60",
                *train_flags(workdir, val_every=60, val_batches=4, batch_size=4, learning_rate="3e-3")).stdout
    vals = [float(line.rsplit(" ", 1)[1]) for line in out.splitlines() if "val loss" in line]
    assert len(vals) == 2
    assert abs(vals[0] - np.log(50257)) < 0.3  # random init: uniform over the vocabulary
    assert vals[1] < vals[0] - 2.5


def test_state_from_another_model_is_refused(workdir, tmp_path):
    """A training state spliced onto other weights must not load."""
    ck = tmp_path / "ck.bin"
    train("-e", workdir / "model.bin", "-c", ck, "-n", "1", *train_flags(workdir))
    other = tmp_path / "other.bin"
    run("create_model.py", "-o", other, *TINY, "--seed", "7")
    config = formats.read_model(other).config
    model_size = 1024 + 4 * config.num_parameters()
    spliced = tmp_path / "spliced.bin"
    spliced.write_bytes(other.read_bytes() + ck.read_bytes()[model_size:])
    result = train("-e", spliced, "-c", spliced, "-n", "2", *train_flags(workdir), check=False)
    assert result.returncode == 2
    assert "belongs to other weights" in result.stderr


def bad_model_files(d: Path) -> dict[str, bytes]:
    raw = (d / "model.bin").read_bytes()
    wrong_magic = bytearray(raw); wrong_magic[0:4] = (1234).to_bytes(4, "little")
    wrong_version = bytearray(raw); wrong_version[4:8] = (9).to_bytes(4, "little")
    return {"wrong magic": bytes(wrong_magic), "wrong version": bytes(wrong_version),
            "truncated": raw[: len(raw) // 2], "empty": b""}


@pytest.mark.parametrize("case", ["wrong magic", "wrong version", "truncated", "empty"])
def test_bad_model_file(workdir, tmp_path, case):
    bad = tmp_path / "bad.bin"
    bad.write_bytes(bad_model_files(workdir)[case])
    ck = tmp_path / "ck.bin"
    ck.write_bytes(b"previous checkpoint")
    result = train("-e", bad, "-c", ck, "-n", "1", *train_flags(workdir), check=False)
    assert_one_line_error(result, str(bad))
    assert ck.read_bytes() == b"previous checkpoint"


def test_bad_inputs(workdir, tmp_path):
    d = workdir
    corrupt = tmp_path / "corrupt_tokens.bin"
    corrupt.write_bytes((d / "train.bin").read_bytes()[:-10])
    model = ["-e", d / "model.bin"]
    cases = [
        (["-t", "65", *model], "-t/--seq-len 65 exceeds"),
        (["-b", "0", *model], "-b/--batch-size"),
        (["-b", "-3", *model], "-b/--batch-size"),
        (["-e", tmp_path / "missing.bin"], "missing.bin: file not found"),
        (["-i", tmp_path / "missing_tokens.bin", *model], "missing_tokens.bin: file not found"),
        (["-i", corrupt, *model], "truncated or corrupt"),
        (["-c", tmp_path / "no" / "such" / "dir" / "ck.bin", *model], "does not exist"),
        (["-n", "0", *model], "-n/--max-steps"),
        (["--device", "tpu", *model], "--device"),
    ]
    for extra, needle in cases:
        args = [*train_flags(d, batch_size=None, seq_len=None, learning_rate=None, max_steps=1), *extra]
        assert_one_line_error(train(*args, check=False), needle)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_checkpoint_folder_user(workdir, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    result = train("-e", workdir / "model.bin", "-c", locked / "ck.bin", "-n", "1", *train_flags(workdir), check=False)
    assert_one_line_error(result, "not writable")


def test_unwritable_checkpoint_folder(workdir, tmp_path):
    """A checkpoint path whose folder is really a file cannot be written: clear error, nothing lost."""
    blocker = tmp_path / "afile"
    blocker.write_text("keep me")
    result = train("-e", workdir / "model.bin", "-c", blocker / "ck.bin", "-n", "1", *train_flags(workdir), check=False)
    assert_one_line_error(result, "ck.bin")
    assert blocker.read_text() == "keep me"


@pytest.mark.slow
@pytest.mark.skipif(compile_problem(torch.device("cpu")) is not None, reason="torch.compile cannot work here "
                    "(no C++ compiler); test_hardware checks that such a machine runs eagerly")
def test_compiled_run_is_deterministic_with_the_flag(workdir, tmp_path):
    """--compile on --deterministic: two runs give the same losses bit for bit (without the flag,
    torch.compile's CPU kernels vary in the last digits from run to run)."""
    runs = []
    for name in ("a", "b"):
        metrics = tmp_path / f"{name}.jsonl"
        train("-e", workdir / "model.bin", "-n", "6", "--compile", "on", "--deterministic", "--metrics", metrics,
              *train_flags(workdir))
        runs.append(logged(metrics, "train_loss"))
    assert sorted(runs[0]) == list(range(1, 7))
    assert runs[0] == runs[1]


def test_periodic_samples_are_printed(workdir):
    """-s N prints a decoded sample every N steps; -g caps its length in tokens."""
    out = train("-e", workdir / "model.bin", "-n", "2", *train_flags(workdir, sample_every=1, sample_length=8)).stdout
    assert out.count("sample at step") == 2
    assert "sample at step 1:" in out and "sample at step 2:" in out


def test_the_flags_are_the_config_fields_with_their_defaults():
    """./train with no flags gives TrainConfig() itself: one field per flag, the dataclass's defaults."""
    assert vars(train_parser().parse_args([])) == dataclasses.asdict(TrainConfig())


@pytest.mark.parametrize("setting, needle", [
    ({"learning_rate": float("nan")}, "-l/--lr nan: must be positive and finite"),
    ({"warmup_steps": -1}, "--warmup -1: must be 0 or more"),
    ({"precision": "fp8"}, "--precision fp8: must be one of auto, fp32, bf16"),
])
def test_validate_names_the_flag(setting, needle):
    """Values that never went through argparse (a config built in code, or from a file) are checked too."""
    with pytest.raises(BadInput, match=re.escape(needle)):
        TrainConfig(**setting).validate()

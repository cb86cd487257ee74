"""Nothing a run already wrote is lost: the data-loss cases of a hostile user, each checked by the
hash of the files on disk before and after (as the kill soak does).

- a resumed run that diverges never replaces the good checkpoint, and its stop message says which
  step the file on disk holds;
- re-running a run's starting command refuses to replace its checkpoint and metrics log (the way
  out, resume or --overwrite, is in the one line);
- --keep counts and deletes only its own run's step files;
- a full disk under the metrics log stops the run with one line, keeping the lines before and the
  last checkpoint;
- a sink that cannot start (--tensorboard at a file) stops the run before the metrics log is touched;
- one run per checkpoint: a second run on the same -c stops at once, naming the first's pid;
- the same command again after a run finished says so and writes nothing;
- an export never replaces its input, a checkpoint or a token file, and removes what a killed export left;
- and the cases where two commands disagreed, or a message did not say where a value came from: a GGUF
  export import cannot read, GPT-2's own tokenizer.json, a prompt that is not UTF-8, a config file's
  missing path or byte order mark, a resume with other data or learning rate.
(Devices, pipes and names too long for a temp file are cases of test_bad_input_matrix.py.)
"""
import hashlib
import json
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import REPO, assert_one_line_error, run_cli, write_tiny_run

from tinystories import cli, formats
from tinystories.config import GPTConfig

SMALL = GPTConfig(block_size=32, vocab_size=512, n_layer=2, n_head=2, n_embd=32)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return write_tiny_run(tmp_path_factory.mktemp("safety"), SMALL, n_tokens=20_000, seed=3)


def train(files, *args):
    return run_cli("train", "-i", files / "train.bin", "-b", "2", "-t", "16", "-v", "0", "-s", "0",
                   "--device", "cpu", "--compile", "off", *args)


def digest(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_a_diverging_run_keeps_the_good_checkpoint(files, tmp_path):
    ck = tmp_path / "ck.bin"
    assert train(files, "-e", files / "model.bin", "-c", ck, "-n", "2").returncode == 0
    before = digest(ck)
    result = train(files, "-e", ck, "-c", ck, "-n", "20", "-l", "1e30", "-k", "1", "--max-bad-steps", "3")
    assert_one_line_error(result, "training diverged", f"{ck} is as it was before this run")
    assert digest(ck) == before
    assert formats.read_model(ck).state.meta["step"] == 2
    assert "not saving" in result.stdout


def test_rerunning_the_starting_command_refuses_to_replace_the_run(files, tmp_path):
    ck = tmp_path / "run.bin"
    start = ("-e", files / "model.bin", "-c", ck, "-n", "4")
    assert train(files, *start).returncode == 0
    log = tmp_path / "run.bin.metrics.jsonl"
    before = (digest(ck), digest(log))
    assert_one_line_error(train(files, *start), f"-c {ck}", "another run", f"-e {ck}", "--overwrite")
    assert (digest(ck), digest(log)) == before
    assert train(files, *start, "--overwrite").returncode == 0  # the way out that starts afresh
    assert digest(ck) != before[0]


def test_a_fresh_run_never_empties_another_runs_metrics_log(files, tmp_path):
    log = tmp_path / "shared.jsonl"
    start = ("-e", files / "model.bin", "-n", "2", "--metrics", log)
    assert train(files, *start, "-c", tmp_path / "a.bin").returncode == 0
    before = digest(log)
    assert_one_line_error(train(files, *start, "-c", tmp_path / "b.bin"), f"--metrics {log}", "another run's log",
                          "--overwrite")
    assert digest(log) == before and not (tmp_path / "b.bin").exists()


def run_id(path) -> str:
    return formats.read_model(path).state.meta["run_id"]


def test_keep_counts_and_deletes_only_its_own_runs_files(files, tmp_path):
    ck = tmp_path / "ck.bin"
    assert train(files, "-e", files / "model.bin", "-c", ck, "-n", "6", "-k", "3", "--keep", "2").returncode == 0
    old_run, old_step6 = run_id(ck), digest(tmp_path / "ck.step6.bin")
    result = train(files, "-e", files / "model.bin", "-c", ck, "-n", "2", "-k", "1", "--keep", "1", "--overwrite")
    assert result.returncode == 0, result.stderr
    new_run = run_id(ck)
    assert new_run != old_run
    assert digest(tmp_path / "ck.step6.bin") == old_step6  # the other run's file: neither counted nor deleted
    assert run_id(tmp_path / "ck.step2.bin") == new_run  # this run's latest save is kept ...
    assert not (tmp_path / "ck.step1.bin").exists()  # ... and its older one deleted


@pytest.fixture
def full_tmpfs(tmp_path):
    """A 64 KiB tmpfs filled up to one free 4 KiB page, or skip where mounting is not allowed."""
    folder = tmp_path / "mnt"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    pages = 0
    try:
        while True:
            (folder / f"fill{pages}").write_bytes(b"x" * 4096)
            pages += 1
    except OSError:
        pass
    for name in (f"fill{pages}", "fill0"):  # the partial last one, and one page to spare
        (folder / name).unlink(missing_ok=True)
    yield folder
    subprocess.run(["umount", str(folder)], check=True)


def test_a_full_disk_under_the_metrics_log_stops_with_one_line(files, tmp_path, full_tmpfs):
    ck, log = tmp_path / "ck.bin", full_tmpfs / "m.jsonl"
    result = train(files, "-e", files / "model.bin", "-c", ck, "-n", "400", "-k", "2", "--metrics", log)
    assert_one_line_error(result, f"{log}: cannot write the metrics log", "No space left on device")
    lines = log.read_text().splitlines()
    steps = [json.loads(line)["step"] for line in lines[:-1]]  # the last line may be torn
    assert len(steps) >= 3 and steps == list(range(1, len(steps) + 1))
    saved = formats.read_model(ck)  # the last periodic save is whole and valid
    assert saved.state.meta["step"] % 2 == 0 and saved.state.meta["step"] <= len(lines)


def test_a_sink_that_cannot_start_leaves_the_metrics_log_alone(files, tmp_path):
    ck, afile = tmp_path / "ck.bin", tmp_path / "afile"
    assert train(files, "-e", files / "model.bin", "-c", ck, "-n", "3").returncode == 0
    afile.write_text("not a folder")
    log = tmp_path / "ck.bin.metrics.jsonl"
    before = (digest(ck), digest(log))
    assert_one_line_error(train(files, "-e", ck, "-c", ck, "-n", "5", "--tensorboard", afile),
                          f"--tensorboard {afile}", "is a file")
    assert (digest(ck), digest(log)) == before


# ----------------------------------------------------------------------------- one run per checkpoint

def wait_for(condition, proc, what: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"the first run ended before {what}: {proc.communicate()}"
        assert time.monotonic() < deadline, f"no {what} within {timeout} s"
        time.sleep(0.05)


def test_a_second_run_on_the_same_checkpoint_stops_at_once_naming_the_first(files, tmp_path):
    """The same command in two terminals: the second stops with one line naming the first's pid, and the
    first's checkpoint and metrics log stay its own. A killed run's lock does not outlive it."""
    ck, log, lock = tmp_path / "ck.bin", tmp_path / "ck.bin.metrics.jsonl", tmp_path / "ck.bin.lock"
    start = ("train", "-i", files / "train.bin", "-b", "2", "-t", "16", "-v", "0", "-s", "0", "--device", "cpu",
             "--compile", "off", "-e", files / "model.bin", "-c", ck, "-n", "100000", "-k", "1")
    first = subprocess.Popen([sys.executable, "-m", "tinystories", *map(str, start)], cwd=REPO,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(ck.exists, first, "first save")
        assert lock.read_text().strip() == str(first.pid)
        assert_one_line_error(run_cli(*start), f"-c {ck}", f"another run (pid {first.pid}) is writing it")
        first.send_signal(signal.SIGTERM)
        _, err = first.communicate(timeout=180)
    finally:
        first.kill()
    assert first.returncode == 128 + signal.SIGTERM, err
    saved = formats.read_model(ck).state.meta
    steps = [json.loads(line)["step"] for line in log.read_text().splitlines()]
    assert steps == list(range(1, saved["step"] + 1))  # one run's log, to the step its checkpoint holds
    assert not lock.exists()  # released at the end

    killed = subprocess.Popen([sys.executable, "-m", "tinystories", *map(str, start[:-8]), "-e", ck, "-c", ck,
                               "-n", "100000", "-k", "1"], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: lock.exists() and lock.read_text().strip() == str(killed.pid), killed, "the lock")
    finally:
        killed.kill()
        killed.wait()
    assert lock.exists()  # left behind by the kill, but no longer locked:
    result = train(files, "-e", ck, "-c", ck, "-n", str(formats.read_model(ck).state.meta["step"] + 1))
    assert result.returncode == 0, result.stderr
    assert not lock.exists()


# ----------------------------------------------------------------------------- a finished run, run again

def test_rerunning_a_finished_run_says_so_and_writes_nothing(files, tmp_path):
    ck = tmp_path / "ck.bin"
    assert train(files, "-e", files / "model.bin", "-c", ck, "-n", "3").returncode == 0
    before = {p.name: digest(p) for p in tmp_path.iterdir()}
    for steps in ("3", "2"):  # the same command again, and one asking for fewer steps
        result = train(files, "-e", ck, "-c", ck, "-n", steps)
        assert result.returncode == 0, result.stderr
        assert "the run is complete (at step 3;" in result.stdout and "nothing written" in result.stdout
        assert {p.name: digest(p) for p in tmp_path.iterdir()} == before


# ----------------------------------------------------------------------------- exports never replace inputs

def test_export_refuses_to_replace_its_checkpoint(files, tmp_path):
    """python -m tinystories export --gguf checkpoint.bin: -e's default is checkpoint.bin."""
    ck = tmp_path / "checkpoint.bin"
    assert train(files, "-e", files / "model.bin", "-c", ck, "-n", "1").returncode == 0
    shutil.copy(files / "tokenizer.json", tmp_path)
    before = {p.name: digest(p) for p in tmp_path.iterdir()}
    assert_one_line_error(run_cli("export", "--gguf", "checkpoint.bin", cwd=tmp_path), "--gguf checkpoint.bin",
                          "same file as -e")
    assert_one_line_error(run_cli("export", "-e", files / "model.bin", "--gguf", ck), f"--gguf {ck}",
                          "holds a checkpoint", "--force")
    assert {p.name: digest(p) for p in tmp_path.iterdir()} == before


def test_an_export_removes_what_a_killed_export_left(files, tmp_path):
    stale = [tmp_path / "m.gguf.k1ll3d_x.tmp", tmp_path / ".hf.k1ll3d_x.tmp", tmp_path / ".hf.k1ll3d_y.old"]
    stale[0].write_bytes(b"half a GGUF file")
    for folder in stale[1:]:
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"half")
    result = run_cli("export", "-e", files / "model.bin", "--gguf", tmp_path / "m.gguf", "-o", tmp_path / "hf")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "m.gguf"]


def test_a_gguf_export_that_import_would_refuse_is_refused(tmp_path):
    """A BPE of 257 tokens has no merges: GGUF's BPE needs some, so export refuses rather than writing
    a file that import (and llama.cpp) cannot read."""
    from tinystories import bpe

    bpe.write(tmp_path / "tokenizer.json", bpe.train(["no merges here"], bpe.MIN_VOCAB, exact=False))
    assert run_cli("create", "-o", tmp_path / "m.bin", "--tokenizer", tmp_path / "tokenizer.json", "--layers", "1",
                   "--heads", "1", "--channels", "32", "--block-size", "16").returncode == 0
    assert_one_line_error(run_cli("export", "-e", tmp_path / "m.bin", "--gguf", tmp_path / "m.gguf"),
                          f"--gguf {tmp_path / 'm.gguf'}", "no merges")
    assert not (tmp_path / "m.gguf").exists()


# ----------------------------------------------------------------------------- tokenizers

def test_gpt2s_own_tokenizer_json_makes_a_model_for_gpt2s_token_files(tmp_path):
    from tinystories import hf, tokenizer

    (tmp_path / "tokenizer.json").write_text(hf.tokenizer_json())
    assert run_cli("create", "-o", tmp_path / "m.bin", "--tokenizer", tmp_path / "tokenizer.json", "--layers", "1",
                   "--heads", "1", "--channels", "8").returncode == 0
    model = formats.read_model(tmp_path / "m.bin")
    assert model.tokenizer is None  # as GPT-2's token files name it
    formats.write_tokens(tmp_path / "train.bin", np.arange(1000) % 50257)
    assert tokenizer.for_training(tmp_path / "train.bin", None, tmp_path / "m.bin", model) is tokenizer.gpt2()


def test_a_prompt_that_is_not_utf8_on_a_trained_bpe(files, capsys):
    """./generate -p with bytes that are not UTF-8 (argv gives them as lone surrogates): U+FFFD, as for GPT-2."""
    cli.run(cli.generate_main, ["-e", str(files / "model.bin"), "-p", "caf\udce9 ", "-n", "3", "-s", "0",
                                "--device", "cpu"])
    assert capsys.readouterr().out.startswith("caf\ufffd ")


# ----------------------------------------------------------------------------- config files and resumes

def test_a_config_files_path_that_is_missing_names_its_key(files, tmp_path, capsys):
    config = tmp_path / "run.toml"
    config.write_text('model = "no_such_model.bin"\n')
    with pytest.raises(SystemExit) as exit_info:
        cli.run(cli.train_main, ["--config", str(config), "-i", str(files / "train.bin"), "-v", "0"])
    line = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and "\n" not in line
    assert f"--config {config}: key 'model' = 'no_such_model.bin': file not found" in line and "current folder" in line


def test_a_config_file_with_a_byte_order_mark_is_read(tmp_path):
    from tinystories import config_file

    (tmp_path / "bom.toml").write_bytes("\ufeffmax_steps = 3\n".encode())
    assert config_file.read_toml(str(tmp_path / "bom.toml")) == {"max_steps": 3}


def test_a_resume_says_what_changed(files, tmp_path):
    ck, other = tmp_path / "ck.bin", tmp_path / "other"
    other.mkdir()
    shutil.copy(files / "tokenizer.json", other)
    formats.write_tokens(other / "more.bin", formats.read_tokens(files / "train.bin")[::-1],
                         formats.read_token_header(files / "train.bin").tokenizer)
    assert train(files, "-e", files / "model.bin", "-c", ck, "-n", "2").returncode == 0
    result = train(files, "-e", ck, "-c", ck, "-n", "3", "-i", other / "more.bin", "-l", "2e-3", "--lr-decay", "cosine")
    assert result.returncode == 0, result.stderr
    note = [line for line in result.stderr.splitlines() if line.startswith("note:")]
    assert len(note) == 1, result.stderr
    assert "train_tokens_file (train.bin -> more.bin)" in note[0] and "resuming at its data position" in note[0]
    resuming = [line for line in result.stdout.splitlines() if line.startswith("resuming run")]
    assert "now with learning_rate (0.0003 -> 0.002), lr_decay (none -> cosine)" in resuming[0], resuming

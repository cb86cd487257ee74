"""Nothing a run already wrote is lost: the data-loss cases of a hostile user, each checked by the
hash of the files on disk before and after (as the kill soak does).

- a resumed run that diverges never replaces the good checkpoint, and its stop message says which
  step the file on disk holds;
- re-running a run's starting command refuses to replace its checkpoint and metrics log (the way
  out, resume or --overwrite, is in the one line);
- --keep counts and deletes only its own run's step files;
- a full disk under the metrics log stops the run with one line, keeping the lines before and the
  last checkpoint;
- a sink that cannot start (--tensorboard at a file) stops the run before the metrics log is touched.
"""
import hashlib
import json
import subprocess

import pytest
from conftest import assert_one_line_error, run_cli, write_tiny_run

from tinystories import formats
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

"""Kill soak: SIGKILL ./train 20 times at seeded random moments -- during start-up, right after a step,
and in the middle of writing a checkpoint (-k 1 writes one every step) -- resuming after each kill with
the same command. The run also keeps its 2 latest saves (--keep 2: ck.step<k>.bin) and its best val
checkpoint (-v 3: ck.best.bin). After every kill each of these files, when there is one, is a complete
valid file, and at most one step file more than --keep is left (a kill between a publish and the
deletion); after the last, one uninterrupted resume finishes the run, and its per-step losses equal
those of a run that was never killed, bit for bit (CPU), as do the final weights, the kept step files
and the best checkpoint. Temp files a kill leaves mid-write are removed by the next start. A kill may
leave -c's lock file (ck.bin.lock), never its lock: the next life takes it over, and the end of the run
removes it. Then the same command once more, on the finished run (the most common re-run), says the
run is complete, exits 0 and changes no file. (A life killed after its final save left such a run to
the next life: under load that happened, and the re-run crashed.)

Each life is forked from a process that has already imported torch (multiprocessing's forkserver),
so a life costs no import time; each runs the real command line, tinystories.cli.main(["train", ...]).
The final resume is a plain `python -m tinystories train` subprocess.
"""
import multiprocessing
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, TINY, logged, metrics_log, train_flags

from tinystories import cli, formats

STEPS, KILLS, KEEP = 40, 20, 2
WAIT = 180  # seconds: a guard against hangs only
FORKSERVER = multiprocessing.get_context("forkserver")
FORKSERVER.set_forkserver_preload(["tinystories.cli", "tinystories.train"])


def train_life(argv: list[str], log: str) -> None:
    """One life of the trainer (runs in a forked child): output to `log`, one thread so the soak's
    lives and the final subprocess compute with the same kernels."""
    import torch

    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    torch.set_num_threads(1)
    cli.main(["train", *argv])


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("soak")
    formats.write_tokens(d / "train.bin", np.random.default_rng(0).integers(0, 50257, 8000))
    formats.write_tokens(d / "val.bin", np.random.default_rng(1).integers(0, 50257, 1500))
    cli.create_main(["-o", str(d / "model.bin"), *TINY])  # create_model.py
    return d


def command(files, ck: Path) -> list[str]:
    start = ck if ck.exists() else files / "model.bin"
    return train_flags(files, model=start, checkpoint=ck, checkpoint_every=1, max_steps=STEPS, val_every=3,
                       val_batches=4, keep=KEEP, device="cpu")


def losses(ck: Path) -> dict[int, float]:
    steps = [r["step"] for r in metrics_log(ck) if "train_loss" in r]
    assert len(steps) == len(set(steps)), f"a step logged twice: {steps}"
    return logged(ck, "train_loss")


def temp_files(ck: Path) -> list[str]:
    return sorted(p.name for p in ck.parent.glob(ck.name + ".*.tmp"))


def kept_files(ck: Path) -> dict[str, Path]:
    """The step and best files beside `ck` (complete ones, not temp files), by name."""
    stem = ck.name.removesuffix(".bin")
    return {p.name: p for p in ck.parent.glob(stem + ".*.bin") if p.name != ck.name}


def check_kept(ck: Path, where: str) -> None:
    """Every kept file is a valid checkpoint of the step its name says; the best one is what its
    training state says it is; no more step files than a kill can leave."""
    kept = kept_files(ck)
    steps = [name for name in kept if ".step" in name]
    assert len(steps) <= KEEP + 1, f"{where}: {steps}"
    for name, path in kept.items():
        meta = formats.read_model(path).state.meta
        if ".step" in name:
            assert name == f"{ck.name.removesuffix('.bin')}.step{meta['step']}.bin", where
        else:
            assert name.endswith(".best.bin") and meta["best_val_step"] == meta["step"] == meta["last_val_step"], where
            assert meta["best_val_loss"] == meta["last_val_loss"], where


def wait_until(condition, life) -> None:
    """Poll `condition` every millisecond, until it holds or the life ends."""
    deadline = time.monotonic() + WAIT
    while not condition() and life.is_alive():
        assert time.monotonic() < deadline, "the trainer made no progress"
        time.sleep(0.001)


class Saves:
    """Counts the checkpoints a life completes: each atomic rename gives `ck` a new inode."""

    def __init__(self, ck: Path):
        self.ck = ck
        self.inodes = {self._inode()}

    def _inode(self):
        try:
            return os.stat(self.ck).st_ino
        except FileNotFoundError:
            return None

    def count(self) -> int:
        self.inodes.add(self._inode())
        return len(self.inodes) - 1


def kill_moment(rng: random.Random, ck: Path, life) -> str:
    """Wait for this life's chosen moment and name it: during start-up; after n completed saves; or
    during the write of the save after n completed ones (a temp file beside `ck` that is not one an
    earlier life left behind)."""
    saves, stale = Saves(ck), set(temp_files(ck))
    moment, n = rng.choice(["start-up", "between steps", "mid-write", "mid-write"]), rng.randint(0, 2)
    if moment == "start-up":
        time.sleep(rng.uniform(0.0, 0.5))
        return moment
    if moment == "between steps":
        n = max(n, 1)
    wait_until(lambda: saves.count() >= n, life)
    if moment == "between steps":
        time.sleep(rng.uniform(0.0, 0.1))
    else:
        wait_until(lambda: set(temp_files(ck)) - stale, life)
        time.sleep(rng.uniform(0.0, 0.003))
    return f"{moment} after {n} saves"


@pytest.mark.slow
def test_kill_soak(files, tmp_path):
    reference = tmp_path / "reference.bin"
    life = FORKSERVER.Process(target=train_life, args=(command(files, reference), str(tmp_path / "reference.log")))
    life.start()
    life.join(WAIT)
    assert life.exitcode == 0, (tmp_path / "reference.log").read_text()

    ck, rng, seen_temps, steps, kills = tmp_path / "ck.bin", random.Random(20261123), 0, [], 0
    for kill in range(KILLS):
        log = tmp_path / f"life{kill}.log"
        life = FORKSERVER.Process(target=train_life, args=(command(files, ck), str(log)))
        life.start()
        try:
            moment = kill_moment(rng, ck, life)
        finally:
            life.kill()
            life.join(WAIT)
        where = f"kill {kill} ({moment})"
        assert life.exitcode in (0, -9), f"{where}: {log.read_text()}"
        kills += life.exitcode == -9
        seen_temps += len(temp_files(ck))
        beside = {p.name for p in tmp_path.glob("ck.*")} - {p.name for p in tmp_path.glob("ck.*.tmp")}
        assert beside <= {"ck.bin", "ck.bin.metrics.jsonl", "ck.bin.lock", *kept_files(ck)}, f"{where}: unexpected files {beside}"
        check_kept(ck, where)
        if ck.exists():  # complete and valid, never half-written; never older than before
            steps.append(formats.read_model(ck).state.meta["step"])
            assert steps == sorted(steps), f"{where}: checkpoint went back in time: {steps}"
        if life.exitcode == 0:
            break  # the run finished before this kill

    env = dict(os.environ, OMP_NUM_THREADS="1")
    final = subprocess.run([sys.executable, "-m", "tinystories", "train", *command(files, ck)], cwd=REPO,
                           capture_output=True, text=True, timeout=WAIT, env=env)
    assert final.returncode == 0, final.stderr
    assert list(tmp_path.glob("ck.*.tmp")) == [], "stale temp files were left beside the checkpoints"
    assert not (tmp_path / "ck.bin.lock").exists(), "the finished run left its lock file"
    finished = {p.name: p.read_bytes() for p in tmp_path.glob("ck.*")}
    again = subprocess.run([sys.executable, "-m", "tinystories", "train", *command(files, ck)], cwd=REPO,
                           capture_output=True, text=True, timeout=WAIT, env=env)
    assert again.returncode == 0 and "the run is complete" in again.stdout, again.stderr
    assert {p.name: p.read_bytes() for p in tmp_path.glob("ck.*")} == finished
    expected, got = losses(reference), losses(ck)
    assert sorted(expected) == list(range(1, STEPS + 1))
    assert got == expected
    assert sorted(kept_files(ck)) == ["ck.best.bin", f"ck.step{STEPS - 1}.bin", f"ck.step{STEPS}.bin"]
    expected_kept = kept_files(reference)
    for name, path in kept_files(ck).items():
        a, b = formats.read_model(expected_kept[name.replace("ck.", "reference.")]), formats.read_model(path)
        assert a.state.meta["step"] == b.state.meta["step"]
        assert a.state.meta.get("best_val_loss") == b.state.meta.get("best_val_loss")
        for tensor in a.params:
            np.testing.assert_array_equal(a.params[tensor], b.params[tensor])
    a, b = formats.read_model(reference), formats.read_model(ck)
    for name in a.params:
        np.testing.assert_array_equal(a.params[name], b.params[name])
    print(f"{kills} kills; checkpoint steps after each: {steps}; temp files seen after kills: {seen_temps}")

"""Stopping ./train with signals: SIGINT, SIGTERM or SIGHUP (a closed terminal) finish the current step,
save a checkpoint at the step reached and exit with 128 + the signal's number (130, 143, 129: as shells report it, so a script can
tell an unfinished run from a finished one), and that checkpoint resumes; a second SIGINT exits at once with 130 and
leaves the previous checkpoint loadable (the final save it interrupts never replaces it).

Each test runs the real command in a subprocess; signals are sent only after the step lines (or,
for the second SIGINT, the final save) have been seen, so nothing depends on timing.
"""
import queue
import re
import signal
import subprocess
import sys
import threading

import pytest
from conftest import REPO, metrics_log, train_flags, write_tiny_run

from tinystories import formats
from tinystories.config import GPTConfig

SMALL = GPTConfig(block_size=32, vocab_size=512, n_layer=2, n_head=2, n_embd=32)
WAIT = 180  # seconds: only a guard against a hang, never reached by a working trainer

# ./train, except that once a stop signal has arrived, the final save's fsync holds for a while:
# the second SIGINT is then sure to land in the middle of writing the checkpoint.
HOLD_FINAL_SAVE = """
import os, sys, time
from tinystories import cli, train
stopping, handle, fsync = [], train.StopSignals._handle, os.fsync
def note_stop(self, signum, frame):
    stopping.append(signum)
    handle(self, signum, frame)
def held_fsync(fd):
    if stopping:
        print("final save: fsync held", file=sys.stderr, flush=True)
        time.sleep(WAIT)
    fsync(fd)
train.StopSignals._handle, os.fsync = note_stop, held_fsync
cli.main(["train", *sys.argv[1:]])
""".replace("WAIT", str(WAIT))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return write_tiny_run(tmp_path_factory.mktemp("signals"), SMALL, n_tokens=5000, seed=5)


def train_args(files, ck, *extra):
    return [*train_flags(files, model=ck if ck.exists() else files / "model.bin", checkpoint=ck, val_tokens=None,
                         seq_len=16, learning_rate=None, device="cpu"), *extra]


def default_stop_signals() -> None:
    """In the child before exec: SIGINT and SIGHUP at their defaults, as a terminal's foreground job has
    them (a test run started with nohup, or in the background, would pass them on ignored, and ./train
    rightly leaves an ignored signal ignored)."""
    for signum in (signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)


class Training:
    """A training subprocess whose stdout and stderr lines are collected as they arrive."""

    def __init__(self, argv):
        self.proc = subprocess.Popen([sys.executable, *argv], cwd=REPO, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, preexec_fn=default_stop_signals)
        self.lines = {"stdout": [], "stderr": []}
        self.arrivals = queue.Queue()
        self.readers = [threading.Thread(target=self._collect, args=(name,), daemon=True) for name in self.lines]
        for reader in self.readers:
            reader.start()

    def _collect(self, name):
        for line in getattr(self.proc, name):
            self.lines[name].append(line)
            self.arrivals.put(name)
        self.arrivals.put(None)

    def wait_for(self, stream: str, pattern: str, count: int = 1) -> None:
        """Block until `count` lines of `stream` match `pattern` (or fail if the process ends first)."""
        ended = 0
        while sum(bool(re.search(pattern, line)) for line in self.lines[stream]) < count:
            try:
                if self.arrivals.get(timeout=WAIT) is None:
                    ended += 1
            except queue.Empty:
                pytest.fail(f"no '{pattern}' within {WAIT} s")
            assert ended < 2, f"exited ({self.proc.wait()}) before '{pattern}':\n{''.join(self.lines['stderr'])}"

    def wait(self) -> int:
        """The exit status, once the process has ended and all its output is collected."""
        code = self.proc.wait(timeout=WAIT)
        for reader in self.readers:
            reader.join(timeout=WAIT)
        return code

    def text(self, stream: str) -> str:
        return "".join(self.lines[stream])


@pytest.fixture
def start():
    """start(argv) -> Training; whatever is still running at the end of the test is killed."""
    runs = []

    def start_training(argv) -> Training:
        runs.append(Training(argv))
        return runs[-1]

    yield start_training
    for run in runs:
        if run.proc.poll() is None:
            run.proc.kill()
            run.proc.wait()


def train_steps(ck) -> list[int]:
    return [r["step"] for r in metrics_log(ck) if "train_loss" in r]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=["SIGINT", "SIGTERM", "SIGHUP"])
def test_stop_signal_saves_and_resumes(files, tmp_path, start, signum):
    ck = tmp_path / "ck.bin"
    run = start(["-m", "tinystories", "train", *train_args(files, ck, "-n", "100000")])
    run.wait_for("stdout", r"^step +\d+/100000 \| loss", count=3)
    run.proc.send_signal(signum)
    assert run.wait() == 128 + signum, run.text("stderr")
    out = run.text("stdout")
    stopped = re.search(rf"stopped by {signum.name} at step (\d+)", out)
    assert stopped, out
    step = int(stopped.group(1))
    assert step >= 3 and f"saved checkpoint {ck} at step {step}" in out
    assert formats.read_model(ck).state.meta["step"] == step
    assert train_steps(ck) == list(range(1, step + 1))
    resumed = subprocess.run([sys.executable, "-m", "tinystories", "train", *train_args(files, ck, "-n", str(step + 2))],
                             cwd=REPO, capture_output=True, text=True, timeout=WAIT)
    assert resumed.returncode == 0, resumed.stderr
    assert f"at step {step} " in resumed.stdout
    assert formats.read_model(ck).state.meta["step"] == step + 2
    assert train_steps(ck) == list(range(1, step + 3))


def test_second_sigint_exits_at_once_and_keeps_the_previous_checkpoint(files, tmp_path, start):
    ck = tmp_path / "ck.bin"
    run = start(["-c", HOLD_FINAL_SAVE, *train_args(files, ck, "-n", "100000", "-k", "2")])
    run.wait_for("stdout", r"^saved checkpoint .* at step 2$")
    run.wait_for("stdout", r"^step +3/100000 \| loss")
    run.proc.send_signal(signal.SIGINT)
    run.wait_for("stderr", "final save: fsync held")
    previous = ck.read_bytes()
    run.proc.send_signal(signal.SIGINT)
    assert run.wait() == 130
    assert "second interrupt: exiting now" in run.text("stderr")
    assert ck.read_bytes() == previous  # the interrupted save never replaced it
    saved = formats.read_model(ck)
    assert saved.state.meta["step"] % 2 == 0 and saved.state.meta["step"] >= 2


# ./train, each validation batch announced on stderr and slowed down, so a signal lands during validation
SLOW_VALIDATION = """
import sys, time
from tinystories import cli, evaluate
window_nats = evaluate.window_nats
def announced(*args):
    print("validation batch", file=sys.stderr, flush=True)
    time.sleep(0.05)
    return window_nats(*args)
evaluate.window_nats = announced
cli.main(["train", *sys.argv[1:]])
"""


@pytest.mark.parametrize("val_every", [1000, 3], ids=["step-0 validation", "validation at step 3"])
def test_a_signal_during_validation_stops_it_and_saves(files, tmp_path, start, val_every):
    """SIGTERM (a scheduler's) during a long validation: no waiting for its end, the checkpoint saved."""
    ck = tmp_path / "ck.bin"
    run = start(["-c", SLOW_VALIDATION, *train_args(files, ck, "-n", "100000", "-v", str(val_every), "--val-batches",
                                                       "all", "-j", files / "train.bin")])
    if val_every == 3:
        run.wait_for("stdout", r"^step +3/100000 \| loss")
    run.wait_for("stderr", "^validation batch", count=2 + (val_every == 3) * 150)
    run.proc.send_signal(signal.SIGTERM)
    assert run.wait() == 128 + signal.SIGTERM, run.text("stderr")
    stderr = run.text("stderr")
    batches_after = stderr[stderr.index("SIGTERM: stopping"):].count("validation batch")
    assert batches_after <= 1  # the batch under way when it came (of 147 a validation has)
    step = 0 if val_every == 1000 else 3
    assert f"stopped by SIGTERM at step {step}" in run.text("stdout")
    assert formats.read_model(ck).state.meta["step"] == step
    log = ck.with_name(ck.name + ".metrics.jsonl")  # the cut validation recorded nothing
    assert (log.read_text() == "") if step == 0 else [r["step"] for r in metrics_log(ck) if "val_loss" in r] == [0]

"""Data-parallel training under torchrun (DDP over gloo, on the CPU).

-b is the global batch: 2 ranks at -b 4 each take 2 of the 4 sequences, and must train exactly as
1 process at -b 4 does (the issue's "2 ranks at batch B = 1 rank at batch 2B", with B = 2). "Exactly"
means to fp32 rounding: the ranks' gradients are averaged in another order than one process sums them.
A torchrun starts three processes that each import torch, so the torchrun tests are marked slow and
share two rounds of launches (fixtures `fresh` and `resumed`), each round run side by side.
"""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import ARCH_FLAGS, REPO, TINY, logged, metrics_log, run, train_flags

from tinystories import formats

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
RENDEZVOUS = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
LOSS_RTOL = 1e-5
# Weights: rtol 1e-5 as the losses, atol 1e-5 because Adam scales the rounding noise of a gradient that
# is zero in exact arithmetic (the attention key bias) up to a visible update; a real difference (a
# dropped or doubled micro-batch) moves weights by ~lr = 1e-3 per step.
WEIGHT_TOL = dict(rtol=1e-5, atol=1e-5)


def command(ranks: int, *args) -> list[str]:
    """`python -m tinystories train ...` for one process, under torchrun for two."""
    launcher = TORCHRUN if ranks == 2 else [sys.executable]
    return [*launcher, "-m", "tinystories", "train", "--device", "cpu", *map(str, args)]


def environment(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in RENDEZVOUS}
    return {**env, "OMP_NUM_THREADS": "1", **extra}


def run_together(*commands: list[str], check=True) -> list[subprocess.CompletedProcess]:
    """Run the commands side by side (each torchrun picks its own free port); wait for all."""
    procs = [subprocess.Popen(c, cwd=REPO, env=environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for c in commands]
    results = []
    for c, p in zip(commands, procs):
        out, err = p.communicate()
        if check and p.returncode != 0:
            raise AssertionError(f"{c} failed ({p.returncode}):\n{out}\n{err}")
        results.append(subprocess.CompletedProcess(c, p.returncode, out, err))
    return results


@pytest.fixture(scope="module", params=ARCH_FLAGS)
def workdir(tmp_path_factory, request):
    """A tiny model of each block (ARCH_FLAGS) and token files of ids < 256, so the loss falls fast from ln(50257)."""
    d = tmp_path_factory.mktemp(f"ddp-{request.param}")
    rng = np.random.default_rng(0)
    formats.write_tokens(d / "train.bin", rng.integers(0, 256, 6000).astype(np.uint16))
    formats.write_tokens(d / "val.bin", rng.integers(0, 256, 1000).astype(np.uint16))
    run("create_model.py", "-o", d / "model.bin", *TINY, *ARCH_FLAGS[request.param])
    return d


def flags(d: Path, *extra) -> list:
    # fp32: the comparisons are to fp32 rounding; under bf16 autocast a different per-rank batch
    # shape rounds differently (the default on CPUs with native bf16)
    return [*train_flags(d, batch_size=4, val_every=None, precision="fp32"), *extra]


def assert_same_series(a: dict, b: dict, steps) -> None:
    assert sorted(a) == sorted(b) == list(steps)
    np.testing.assert_allclose([a[s] for s in steps], [b[s] for s in steps], rtol=LOSS_RTOL, atol=0)


def assert_same_weights(path_a: Path, path_b: Path) -> None:
    a, b = formats.read_model(path_a), formats.read_model(path_b)
    for name in a.params:
        np.testing.assert_allclose(a.params[name], b.params[name], **WEIGHT_TOL, err_msg=name)


def copy_checkpoint(source: Path, target: Path) -> Path:
    shutil.copy(source, target)
    shutil.copy(f"{source}.metrics.jsonl", f"{target}.metrics.jsonl")
    return target


@pytest.fixture(scope="module")
def fresh(workdir):
    """Runs from model.bin, side by side, at -b 4 on 1 process ("one*") and 2 ranks ("two*"):
    10 steps with val loss at steps 0, 5, 10; 6 steps with --grad-accum 2; 5 steps to resume from."""
    model, d = workdir / "model.bin", workdir
    val = ["-v", "5", "--val-batches", "3"]
    shapes = {"": ["-n", "10", *val], "_accum": ["-n", "6", "-v", "0", "--grad-accum", "2"], "_half": ["-n", "5", *val]}
    runs = {f"{name}{suffix}": command(ranks, *flags(d, "-e", model, "-c", d / f"{name}{suffix}.bin", *shape))
            for suffix, shape in shapes.items() for name, ranks in (("one", 1), ("two", 2))}
    results = dict(zip(runs, run_together(*runs.values())))
    return {name: (d / f"{name}.bin", result) for name, result in results.items()}


@pytest.fixture(scope="module")
def resumed(fresh, workdir):
    """Steps 6..10 from copies of the 5-step checkpoints: 2 ranks -> 1 process ("on_one"), 2 -> 2
    ("on_two"), 1 -> 2 ("one_to_two"); and steps 11, 12 at -b 2 after the 10-step 1-process run ("rebatched")."""
    d = workdir
    starts = {"on_one": (1, "two_half", "-n", "10"), "on_two": (2, "two_half", "-n", "10"),
              "one_to_two": (2, "one_half", "-n", "10"), "rebatched": (1, "one", "-n", "12", "-v", "0", "-b", "2")}
    runs = {}
    for name, (ranks, start, *extra) in starts.items():
        ck = copy_checkpoint(fresh[start][0], d / f"{name}.bin")
        runs[name] = command(ranks, *flags(d, "-e", ck, "-c", ck, "-v", "5", "--val-batches", "3", *extra))
    results = dict(zip(runs, run_together(*runs.values())))
    return {name: (d / f"{name}.bin", result) for name, result in results.items()}


@pytest.mark.slow
def test_two_ranks_train_as_one_process(fresh):
    (one, _), (two, _) = fresh["one"], fresh["two"]
    assert_same_series(logged(one, "train_loss"), logged(two, "train_loss"), range(1, 11))
    # the gradient norm is taken after DDP's all-reduce: a sum instead of a mean would double it
    assert_same_series(logged(one, "grad_norm"), logged(two, "grad_norm"), range(1, 11))
    # it learns (the Llama block, without biases, moves slower from ln(50257) in 10 steps: 0.04 where GPT-2's moves 0.1+)
    assert logged(one, "train_loss")[10] < logged(one, "train_loss")[1] - 0.03
    assert_same_weights(one, two)
    assert formats.read_model(two).state.meta["world_size"] == 2


@pytest.mark.slow
def test_grad_accumulation_across_ranks(fresh):
    """--grad-accum 2: the first micro-step of each step runs under DDP's no_sync."""
    (one, _), (two, _) = fresh["one_accum"], fresh["two_accum"]
    assert_same_series(logged(one, "train_loss"), logged(two, "train_loss"), range(1, 7))
    assert_same_series(logged(one, "grad_norm"), logged(two, "grad_norm"), range(1, 7))
    assert_same_weights(one, two)


@pytest.mark.slow
def test_val_loss_is_the_mean_over_ranks(fresh):
    (one, _), (two, _) = fresh["one"], fresh["two"]
    assert_same_series(logged(one, "val_loss"), logged(two, "val_loss"), [0, 5, 10])


@pytest.mark.slow
def test_only_rank_0_prints_and_writes(fresh, workdir):
    two, ranks = fresh["two"]
    lines = ranks.stdout.splitlines()
    for step in range(1, 11):
        assert sum(line.startswith(f"step {step:5d}/10 | loss") for line in lines) == 1, ranks.stdout
    assert sum(line.startswith("step ") and "val loss" in line for line in lines) == 3
    assert sum(line.startswith("model ") for line in lines) == 1
    assert sum(line.startswith("saved checkpoint") for line in lines) == 1
    assert "device cpu x 2 process(es)" in ranks.stdout
    assert [r["step"] for r in metrics_log(two) if "train_loss" in r] == list(range(1, 11))  # one writer
    assert sorted(p.name for p in workdir.glob("two.*")) == ["two.best.bin", "two.bin", "two.bin.metrics.jsonl"]  # no temp files


@pytest.mark.slow
def test_checkpoint_resumes_on_another_number_of_ranks(fresh, resumed):
    for name in ("on_one", "on_two", "one_to_two"):
        out, err = resumed[name][1].stdout, resumed[name][1].stderr
        assert "resuming run" in out and "at step 5" in out
        assert "note:" not in err  # the world size may change freely
    on_one, on_two, one_to_two = (resumed[name][0] for name in ("on_one", "on_two", "one_to_two"))
    # 2 ranks resuming on 2 ranks is bitwise the uninterrupted 2-rank run
    assert logged(on_two, "train_loss") == logged(fresh["two"][0], "train_loss")
    assert logged(on_two, "val_loss") == logged(fresh["two"][0], "val_loss")
    # on another number of ranks, the same to fp32 rounding
    for moved, stayed in ((on_one, on_two), (one_to_two, fresh["one"][0])):
        assert_same_series(logged(moved, "train_loss"), logged(stayed, "train_loss"), range(1, 11))
        assert_same_series(logged(moved, "val_loss"), logged(stayed, "val_loss"), [0, 5, 10])
        assert_same_weights(moved, stayed)


@pytest.mark.slow
def test_changed_global_batch_resumes_at_the_same_token_offset(fresh, resumed):
    """A checkpoint's data position is a token offset: at another -b the run goes on from it, with a note."""
    rebatched, result = resumed["rebatched"]
    assert "note: batch_size" in result.stderr and "data position" in result.stderr
    assert formats.read_model(fresh["one"][0]).state.meta["data_position"] == 10 * 4 * 32
    assert formats.read_model(rebatched).state.meta["data_position"] == 10 * 4 * 32 + 2 * 2 * 32


def test_more_ranks_than_gpus_is_one_line(monkeypatch):
    """torchrun --nproc_per_node 2 on a 1-GPU machine: rank 1 would ask for cuda:1."""
    from tinystories.errors import BadInput
    from tinystories.device import pick_device

    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    monkeypatch.setattr("torch.cuda.device_count", lambda: 1)
    assert str(pick_device("auto", 0)) == "cuda:0"
    with pytest.raises(BadInput, match="no CUDA device 1, this machine has 1 .*at most 1 processes per node"):
        pick_device("auto", 1)


def assert_error_line_on_each_rank(stderr: str, needle: str) -> None:
    """Our error line from each rank that got to print it, and no traceback from our code."""
    errors = [line for line in stderr.splitlines() if line.startswith("train: error:")]
    assert errors and all(needle in line for line in errors), stderr
    assert f"tinystories{os.sep}" not in stderr  # torchrun's own traceback names only its files


@pytest.mark.slow
def test_batch_not_divisible_by_world_size(workdir):
    """Each rank prints our one line and exits 2; torchrun then prints its own failure summary and exits 1."""
    [result] = run_together(command(2, *flags(workdir, "-e", workdir / "model.bin", "-b", "3", "-n", "2")),
                            check=False)
    assert result.returncode == 1  # torchrun's own status for a failed worker
    assert_error_line_on_each_rank(result.stderr, "-b/--batch-size 3 is not divisible by the world size 2")
    assert re.search(r"exitcode\s*:\s*2\b", result.stderr)  # torchrun's summary names our exit status
    assert result.stdout == ""


def test_missing_rendezvous_variables(workdir):
    """WORLD_SIZE without torchrun's other variables: one line, exit 2, before any network wait."""
    result = subprocess.run(command(1, *flags(workdir, "-e", workdir / "model.bin", "-n", "2")), cwd=REPO,
                            env=environment(WORLD_SIZE="2", RANK="0"), capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2
    assert result.stderr == "train: error: WORLD_SIZE=2 but MASTER_ADDR, MASTER_PORT not set: start with torchrun\n"
    assert result.stdout == ""

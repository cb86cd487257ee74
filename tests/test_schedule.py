"""--lr-decay wsd (warmup-stable-decay): the schedule's values, and a resumed run that matches an
uninterrupted one."""
from pathlib import Path

import numpy as np
import pytest
from conftest import metrics_log, train, train_flags

from tinystories import formats
from tinystories.config import TrainConfig
from tinystories.optim import learning_rate


def rates(total: int, **settings) -> list[float]:
    cfg = TrainConfig(learning_rate=1.0, min_lr_ratio=0.1, lr_decay="wsd", **settings)
    return [learning_rate(cfg, step, total) for step in range(total)]


def test_wsd_values():
    # 10 steps, 2 of warmup, the last round(0.3 x 10) = 3 decay to 0.1 at the last step
    assert rates(10, warmup_steps=2, cooldown=0.3) == pytest.approx([0.5, 1, 1, 1, 1, 1, 1, 0.7, 0.4, 0.1])
    # the decay never reaches into the warmup; a tiny fraction still decays over one step
    assert rates(5, warmup_steps=2, cooldown=1.0) == pytest.approx([0.5, 1, 0.7, 0.4, 0.1])
    assert rates(4, cooldown=0.01) == pytest.approx([1, 1, 1, 0.1])


def records(ck: Path) -> dict[int, tuple[float, float]]:
    return {r["step"]: (r["train_loss"], r["lr"]) for r in metrics_log(ck) if "train_loss" in r}


def test_wsd_resume_matches_an_uninterrupted_run(workdir, tmp_path):
    """A 6-step run saved at step 3 (kept as straight.step3.bin) and resumed from there logs the same
    losses and rates for steps 4-6 as the run that went on, and ends with the same weights."""
    flags = ["--lr-decay", "wsd", "--cooldown", "0.5", "--warmup", "1", "-n", "6", *train_flags(workdir)]
    straight, resumed = tmp_path / "straight.bin", tmp_path / "resumed.bin"
    train("-e", workdir / "model.bin", "-c", straight, "-k", "3", "--keep", "2", *flags)
    out = train("-e", tmp_path / "straight.step3.bin", "-c", resumed, *flags).stdout
    assert "at step 3" in out
    a, b = records(straight), records(resumed)
    assert sorted(a) == list(range(1, 7)) and b == {step: a[step] for step in (4, 5, 6)}
    # the rate logged after step s is the one step s used (-l 1e-3)
    assert [lr for _, lr in a.values()] == pytest.approx([1e-3 * r for r in rates(6, warmup_steps=1, cooldown=0.5)])
    fa, fb = formats.read_model(straight), formats.read_model(resumed)
    assert all(np.array_equal(fa.params[name], fb.params[name]) for name in fa.params)

"""The divergence guard: a step whose loss or gradient norm is not finite is skipped (weights and AdamW
state untouched) and counted; --max-bad-steps consecutive ones stop the run with BadInput "training
diverged" while the last checkpoint on disk stays intact, loadable and finite.

NaN is injected by patching GPT.forward (the loss of chosen steps times NaN); inf is injected into one
parameter's gradient by an identity op whose backward returns inf (the loss stays finite).
"""
import itertools
import math

import numpy as np
import pytest
from conftest import metrics_log, write_tiny_run
import torch

from tinystories import cli, formats
from tinystories.config import GPTConfig, TrainConfig
from tinystories.model import GPT
from tinystories.train import Trainer

SMALL = GPTConfig(block_size=32, vocab_size=512, n_layer=2, n_head=2, n_embd=32)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return write_tiny_run(tmp_path_factory.mktemp("divergence"), SMALL, n_tokens=3000, seed=3)


def config(files, checkpoint, **overrides) -> TrainConfig:
    settings = dict(model=str(files / "model.bin"), checkpoint=str(checkpoint), checkpoint_every=1,
                    train_tokens=str(files / "train.bin"), val_tokens=str(files / "train.bin"), max_steps=8,
                    batch_size=2, seq_len=16, learning_rate=1e-2, val_every=0, sample_every=0, device="cpu",
                    max_bad_steps=3)
    return TrainConfig(**dict(settings, **overrides))


class InfGradient(torch.autograd.Function):
    """Identity forward; the gradient flowing back to its input is +inf."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return torch.full_like(grad, math.inf)


def poison(monkeypatch, nan_steps=(), inf_grad_steps=()):
    """Patch GPT.forward so that training step k (1-based; one forward in training mode per step here)
    returns a NaN loss (k in nan_steps) or sends inf into the gradient of ln_f.bias (k in inf_grad_steps).
    Forwards in eval mode (a save's check of the weights) are left alone and not counted."""
    original, calls = GPT.forward, itertools.count(1)

    def forward(self, idx, targets=None):
        if not self.training:
            return original(self, idx, targets)
        loss, step = original(self, idx, targets), next(calls)
        if step in nan_steps:
            loss = loss * math.nan
        if step in inf_grad_steps:
            loss = loss + (InfGradient.apply(self.ln_f.bias) * 0).sum()  # same value, inf gradient
        return loss

    monkeypatch.setattr(GPT, "forward", forward)


def state_of(trainer: Trainer) -> dict[str, np.ndarray]:
    """Copies of every weight and AdamW moment."""
    out = {name: p.detach().clone().numpy() for name, p in trainer.model.named_parameters()}
    for name, p in trainer.model.named_parameters():
        for key, value in trainer.optimizer.state.get(p, {}).items():
            out[f"{key}.{name}"] = value.detach().clone().numpy()
    return out


def run_recording(trainer: Trainer) -> dict[int, tuple[dict, dict]]:
    """Run, recording (state before, state after) of every step, keyed by 1-based step."""
    record, original = {}, trainer.train_step._step_with_fallback

    def step_with_fallback(batches):
        before = state_of(trainer)
        result = original(batches)
        record[trainer.state.step + 1] = (before, state_of(trainer))
        return result

    trainer.train_step._step_with_fallback = step_with_fallback
    trainer.run()
    return record


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def metrics(checkpoint) -> dict[int, dict]:
    return {r["step"]: r for r in metrics_log(checkpoint) if "train_loss" in r}


def test_isolated_nan_steps_are_skipped_and_counted(files, tmp_path, monkeypatch):
    poison(monkeypatch, nan_steps={3, 5})
    ck = tmp_path / "ck.bin"
    record = run_recording(Trainer(config(files, ck)))
    assert sorted(record) == list(range(1, 9))  # the run went on to the end
    for step, (before, after) in record.items():
        assert same(before, after) == (step in {3, 5}), step  # a bad step never reaches weights or moments
    logged = metrics(ck)
    assert [s for s, r in logged.items() if math.isnan(r["train_loss"])] == [3, 5]
    saved = formats.read_model(ck)
    assert saved.state.meta["step"] == 8
    assert saved.state.meta["counters"]["skipped_steps"] == 2
    assert all(np.isfinite(a).all() for a in saved.params.values())


def test_inf_gradient_is_caught_by_the_norm(files, tmp_path, monkeypatch):
    poison(monkeypatch, inf_grad_steps={2})
    ck = tmp_path / "ck.bin"
    record = run_recording(Trainer(config(files, ck, max_steps=4)))
    assert same(*record[2]) and not same(*record[3])
    logged = metrics(ck)
    assert math.isfinite(logged[2]["train_loss"]) and not math.isfinite(logged[2]["grad_norm"])
    assert all(math.isfinite(logged[s]["grad_norm"]) for s in (1, 3, 4))
    assert formats.read_model(ck).state.meta["counters"]["skipped_steps"] == 1


def test_consecutive_bad_steps_stop_the_run(files, tmp_path, monkeypatch, capsys):
    """Steps 4-6 are NaN with --max-bad-steps 3: the run stops at step 6 with one line and exit 2,
    which names the step on disk; the saves due at steps 4 and 5 are skipped, so the checkpoint on
    disk is step 3's, exactly its weights and moments."""
    good = tmp_path / "good.bin"
    Trainer(config(files, good, max_steps=3)).run()
    poison(monkeypatch, nan_steps={4, 5, 6})
    ck = tmp_path / "ck.bin"
    argv = ["-e", str(files / "model.bin"), "-c", str(ck), "-k", "1", "-i", str(files / "train.bin"), "-n", "10",
            "-b", "2", "-t", "16", "-l", "1e-2", "-v", "0", "-s", "0", "--device", "cpu", "--max-bad-steps", "3"]
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        cli.run(cli.train_main, argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2
    assert len(err) == 1 and "training diverged: 3 consecutive steps" in err[0] and "step 6" in err[0], err
    assert f"{ck} holds step 3, saved before the first of them" in err[0], err
    saved, reference = formats.read_model(ck), formats.read_model(good)
    assert saved.state.meta["step"] == 3
    assert saved.state.meta["counters"]["skipped_steps"] == 0
    assert all(np.isfinite(a).all() for a in saved.params.values())
    assert same(saved.params, reference.params)
    moments = [k for k in reference.state.tensors if k.startswith("adam_")]
    assert moments and same({k: saved.state.tensors[k] for k in moments}, {k: reference.state.tensors[k] for k in moments})

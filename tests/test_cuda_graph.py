"""The whole-step CUDA graph (--cuda-graphs): the same losses as eager steps, and exact resume.
Needs CUDA (marked gpu: `make test-gpu`); the CPU side of the flag is in the bad-input matrix."""
from pathlib import Path

import pytest
from conftest import write_tiny_run
import torch

from tinystories.config import GPTConfig, TrainConfig
from tinystories.train import Trainer

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

CONFIG = GPTConfig(block_size=64, vocab_size=512, n_layer=2, n_head=2, n_embd=64)


def trainer(folder: Path, **overrides) -> Trainer:
    settings = dict(model=str(folder / "model.bin"), train_tokens=str(folder / "train.bin"), batch_size=4,
                    seq_len=64, learning_rate=1e-3, val_every=0, sample_every=0, device="cuda",
                    compile="off", grad_accum=2)
    return Trainer(TrainConfig(**{**settings, **overrides}))


def run_steps(t: Trainer, steps: int) -> list[float]:
    losses = []
    for _ in range(steps):
        loss, _ = t.train_step(t.next_batches(), 1e-3)
        losses.append(loss.item())
        t.state.step += 1
    return losses


@pytest.fixture
def folder(tmp_path):
    return write_tiny_run(tmp_path, CONFIG, 50_000, seed=3)


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_graph_replays_match_eager_steps(folder, optimizer):
    eager = run_steps(trainer(folder, cuda_graphs="off", optimizer=optimizer), 10)
    graphed_trainer = trainer(folder, cuda_graphs="on", optimizer=optimizer)
    graphed = run_steps(graphed_trainer, 10)
    assert graphed_trainer.train_step.graph.graph is not None  # the later steps were replays
    assert graphed == pytest.approx(eager, rel=1e-5)


def test_graph_keeps_the_divergence_guard_on_the_device(folder):
    t = trainer(folder, cuda_graphs="on")
    run_steps(t, 5)  # warm-up and capture
    with torch.no_grad():
        t.model.ln_f.weight.fill_(float("nan"))
    run_steps(t, 2)
    assert int(t.train_step.bad_in_a_row) == 2 and int(t.train_step.skipped_steps) == 2


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_resume_with_graphs_is_exact(folder, tmp_path, optimizer):
    straight = trainer(folder, cuda_graphs="on", optimizer=optimizer)
    expected = run_steps(straight, 12)
    first = trainer(folder, cuda_graphs="on", checkpoint=str(tmp_path / "ck.bin"), optimizer=optimizer)
    run_steps(first, 6)
    first.save()
    resumed = trainer(folder, cuda_graphs="on", model=str(tmp_path / "ck.bin"), optimizer=optimizer)
    assert resumed.state.step == 6
    assert run_steps(resumed, 6) == expected[6:]

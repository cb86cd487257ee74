"""--optimizer muon and the recipe options: Muon against a slow reference, bad steps, exact resume,
per-group learning rates, --recipe layering and create_model.py --zero-init-proj."""
import math

import numpy as np
import pytest
import torch
from conftest import REPO, TINY, logged, run, train, train_flags

from tinystories import formats, llmc
from tinystories.cli import train_parser
from tinystories.config import RECIPES, GPTConfig, TrainConfig
from tinystories.config_file import parse_with_config
from tinystories.model import GPT
from tinystories.muon import NS_COEFFICIENTS, orthogonalise
from tinystories.optim import make_optimizer, set_learning_rate

TINY_CONFIG = GPTConfig(block_size=16, vocab_size=97, n_layer=2, n_head=2, n_embd=16)


def slow_orthogonalise(u: np.ndarray) -> np.ndarray:
    """Newton-Schulz of one matrix in float64, written out from the definition."""
    a, b, c = NS_COEFFICIENTS
    x = u.T if u.shape[0] > u.shape[1] else u
    x = x / np.linalg.norm(x)
    for _ in range(5):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if u.shape[0] > u.shape[1] else x


def test_orthogonalise_matches_the_slow_version_and_flattens_the_spectrum():
    g = torch.Generator().manual_seed(0)
    for shape in [(16, 16), (64, 16), (16, 64)]:
        u = torch.randn(3, *shape, generator=g)
        o = orthogonalise(u)
        assert o.shape == u.shape
        for ui, oi in zip(u, o):
            np.testing.assert_allclose(oi.numpy(), slow_orthogonalise(ui.double().numpy()), atol=2e-5)
            singular = torch.linalg.svdvals(oi)
            assert singular.min() > 0.5 and singular.max() < 1.3  # all pushed to ~1; the input's spread ~10x


def test_orthogonalise_agrees_with_torch_optim_muon():
    """An independent implementation: torch's own (bf16 inside, hence the tolerance)."""
    from torch.optim._muon import _zeropower_via_newtonschulz

    u = torch.randn(48, 16, generator=torch.Generator().manual_seed(1))
    theirs = _zeropower_via_newtonschulz(u, NS_COEFFICIENTS, 5, 1e-7).float()
    assert (orthogonalise(u[None])[0] - theirs).norm() / theirs.norm() < 0.02


def tiny_model(seed=0) -> GPT:
    model = GPT(TINY_CONFIG)
    model.init_weights(seed)
    return model


def loss_of(model, step: int) -> torch.Tensor:
    idx = torch.randint(0, TINY_CONFIG.vocab_size, (2, 9), generator=torch.Generator().manual_seed(step))
    return model(idx[:, :-1], idx[:, 1:])


def slow_muon_run(model: GPT, cfg: TrainConfig, steps: int) -> None:
    """The reference: per-matrix Muon in float64 (c_attn as q, k, v) with decoupled weight decay,
    torch's AdamW for the rest (decay on the embeddings only)."""
    matrices = {name: p for name, p in model.named_parameters() if p.dim() == 2 and name.startswith("h.")}
    rest = [p for name, p in model.named_parameters() if name not in matrices]
    embeddings = [p for name, p in model.named_parameters() if name.startswith(("wte", "wpe"))]
    adamw = torch.optim.AdamW([{"params": embeddings, "lr": cfg.embed_lr, "weight_decay": cfg.weight_decay},
                               {"params": [p for p in rest if all(p is not e for e in embeddings)], "lr": cfg.learning_rate,
                                "weight_decay": 0.0}], betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, weight_decay=0.0)
    momentum = {name: np.zeros(p.shape) for name, p in matrices.items()}
    mu = cfg.muon_momentum
    for step in range(steps):
        loss_of(model, step).backward()
        with torch.no_grad():
            for name, p in matrices.items():
                grad = p.grad.double().numpy()
                momentum[name] = mu * momentum[name] + (1 - mu) * grad
                update = (1 - mu) * grad + mu * momentum[name]
                parts = np.split(update, 3) if name.endswith("c_attn.weight") else [update]
                step_ = np.concatenate([slow_orthogonalise(m) * 0.2 * math.sqrt(max(m.shape)) for m in parts])
                p.mul_(1 - cfg.matrix_lr * cfg.weight_decay)
                p -= torch.from_numpy(cfg.matrix_lr * step_).float()
        adamw.step()
        model.zero_grad(set_to_none=True)


@pytest.mark.parametrize("weight_decay", [0.0, 0.5])
def test_muon_step_matches_the_slow_reference(weight_decay):
    cfg = TrainConfig(optimizer="muon", learning_rate=2e-3, embed_lr=5e-3, matrix_lr=1e-2, weight_decay=weight_decay)
    ours, reference = tiny_model(), tiny_model()
    optimizer = make_optimizer(ours, cfg)
    set_learning_rate(optimizer, cfg.learning_rate)
    for step in range(3):
        loss_of(ours, step).backward()
        optimizer.step(found_inf=torch.zeros(()))
        optimizer.zero_grad()
    slow_muon_run(reference, cfg, 3)
    start = tiny_model()
    for (name, p), q, p0 in zip(ours.named_parameters(), reference.parameters(), start.parameters()):
        moved = (q - p0).abs().max()
        assert moved > 0, name
        assert (p - q).abs().max() < 1e-3 * moved, name  # fp32 vs float64 orthogonalisation, through AdamW


def test_a_bad_step_changes_nothing():
    model = tiny_model()
    optimizer = make_optimizer(model, TrainConfig(optimizer="muon", learning_rate=1e-2))
    loss_of(model, 0).backward()
    optimizer.step(found_inf=torch.zeros(()))
    before = {name: p.clone() for name, p in model.named_parameters()}
    state = {id(p): {k: v.clone() for k, v in s.items()} for p, s in optimizer.state.items()}
    loss_of(model, 1).backward()
    next(model.parameters()).grad.fill_(float("nan"))
    optimizer.step(found_inf=torch.ones(()))
    assert all(torch.equal(p, before[name]) for name, p in model.named_parameters())
    for p, s in optimizer.state.items():
        for key, value in s.items():
            if key != "step":  # AdamW's fused kernel counts the step either way, like the CUDA one
                assert torch.equal(value, state[id(p)][key]), key


def test_groups_run_at_their_own_rates_on_one_schedule():
    cfg = TrainConfig(optimizer="muon", learning_rate=1e-3, embed_lr=3e-3, matrix_lr=2e-2)
    optimizer = make_optimizer(tiny_model(), cfg)
    set_learning_rate(optimizer, 0.5e-3)  # half of -l, e.g. half-way through a warmup
    rates = sorted({round(g["lr"], 12) for g in optimizer.param_groups})
    assert rates == [0.5e-3, 1.5e-3, 1e-2]
    adamw = make_optimizer(tiny_model(), TrainConfig(learning_rate=1e-3))  # the original: one rate, exactly -l
    set_learning_rate(adamw, 7e-4)
    assert {g["lr"] for g in adamw.param_groups} == {7e-4}


def test_resume_with_muon_is_exact(workdir, tmp_path):
    """A 6-step Muon run saved at step 3 (straight.step3.bin) and resumed from there ends exactly
    where the run that went on did: losses, weights, AdamW moments and Muon momentum."""
    flags = ["--optimizer", "muon", "--matrix-lr", "2e-2", "--embed-lr", "3e-3", "--lr-decay", "wsd", "-n", "6",
             *train_flags(workdir)]
    straight, split = tmp_path / "straight.bin", tmp_path / "split.bin"
    train("-e", workdir / "model.bin", "-c", straight, "-k", "3", "--keep", "2", *flags)
    train("-e", tmp_path / "straight.step3.bin", "-c", split, *flags)
    a, b = logged(straight, "train_loss"), logged(split, "train_loss")
    assert sorted(a) == list(range(1, 7)) and b == {step: a[step] for step in (4, 5, 6)}
    fa, fb = formats.read_model(straight), formats.read_model(split)
    assert "muon_m.h.0.attn.c_attn.weight" in fa.state.tensors and "adam_m.h.0.attn.c_attn.bias" in fa.state.tensors
    assert "adam_m.h.0.attn.c_attn.weight" not in fa.state.tensors
    for name in fa.params:
        np.testing.assert_array_equal(fa.params[name], fb.params[name])
    for name in fa.state.tensors:
        np.testing.assert_array_equal(fa.state.tensors[name], fb.state.tensors[name])
    # resuming a Muon checkpoint with AdamW is refused in one line
    result = train("-e", straight, "-n", "8", *train_flags(workdir), check=False)
    assert result.returncode == 2 and "trained with --optimizer muon" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def parse(argv, tmp_path=None, toml=None) -> TrainConfig:
    if toml is not None:
        (tmp_path / "run.toml").write_text(toml)
        argv = [*argv, "--config", str(tmp_path / "run.toml")]
    return TrainConfig(**vars(parse_with_config(train_parser(), argv, presets=("recipe", RECIPES))))


def test_recipe_values_sit_under_the_config_file_and_the_command_line(tmp_path):
    assert parse([]) == TrainConfig()  # no recipe: the original's defaults
    recipe = RECIPES["fast"]
    assert recipe, "the fast recipe sets something"
    cfg = parse(["--recipe", "fast"])
    assert cfg.recipe == "fast" and all(getattr(cfg, k) == v for k, v in recipe.items())
    key = next(iter(recipe))
    other = {str: "adamw", float: 0.123, int: 7}[type(recipe[key])]
    flag = train_parser()._option_string_actions  # the long flag of that key
    long = next(s for s, action in flag.items() if action.dest == key and s.startswith("--"))
    assert getattr(parse(["--recipe", "fast", long, str(other)]), key) == other
    toml_value = f'"{other}"' if isinstance(other, str) else other
    from_file = parse([], tmp_path, f'recipe = "fast"\n{long[2:].replace("-", "_")} = {toml_value}\n')
    assert from_file.recipe == "fast" and getattr(from_file, key) == other
    assert all(getattr(from_file, k) == v for k, v in recipe.items() if k != key)


def test_the_fast_config_file_is_the_fast_recipe():
    from dataclasses import replace

    from_file = parse(["--config", str(REPO / "configs" / "fast.toml")])
    assert replace(from_file, config=None) == replace(parse(["--recipe", "fast"]), recipe="none")


def test_zero_init_proj(tmp_path):
    plain, zero = tmp_path / "plain.bin", tmp_path / "zero.bin"
    run("create_model.py", "-o", plain, *TINY)
    run("create_model.py", "-o", zero, *TINY, "--zero-init-proj")
    a, b = formats.read_model(plain).params, formats.read_model(zero).params
    proj = [name for name, _, param in llmc.tensors(formats.read_model(plain).config) if "c_proj" in param and "weight" in param]
    assert proj and all(not b[name].any() and a[name].any() for name in proj)
    assert all(np.array_equal(a[name], b[name]) for name in a if name not in proj)

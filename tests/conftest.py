"""Shared fixtures and helpers. Real TinyStories text lives outside the repo, in ../shared/data (see its README)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    # Triton decides at its first import whether to compile or interpret; other packages
    # (transformers) may import it first, so choose the CPU interpreter before any test runs.
    os.environ.setdefault("TRITON_INTERPRET", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
TRAIN_HEAD = "tinystories_v1_train_head.txt"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data, or skip the test when it is absent."""
    if not (SHARED_DATA / TRAIN_HEAD).is_file():
        pytest.skip(f"real TinyStories text not found in {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def head_stories(shared_data) -> list[str]:
    """The 2,316 stories of tinystories_v1_train_head.txt, unstripped, in file order."""
    text = (shared_data / TRAIN_HEAD).read_text(encoding="utf-8")
    stories = [s for s in text.split("<|endoftext|>") if s.strip()]
    assert len(stories) == 2316
    return stories


def write_tiny_run(folder: Path, config, n_tokens: int, seed: int) -> Path:
    """A random-token train.bin and a freshly initialised model.bin of `config` in folder."""
    import numpy as np

    from tinystories import formats, llmc
    from tinystories.model import GPT

    formats.write_tokens(folder / "train.bin", np.random.default_rng(0).integers(0, config.vocab_size, n_tokens))
    model = GPT(config)
    model.init_weights(seed)
    formats.write_model(folder / "model.bin", config, llmc.model_params(model))
    return folder


def run_cli(*args, cwd=REPO) -> subprocess.CompletedProcess:
    """`python -m tinystories ARGS` in `cwd` (this checkout's package, wherever cwd is), output captured."""
    return subprocess.run([sys.executable, "-m", "tinystories", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(REPO)})


def assert_one_line_error(result: subprocess.CompletedProcess, *needles: str) -> None:
    """Bad input: exit status 2 and one line on stderr, `<command>: error: ...`, holding every needle;
    no traceback."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert ": error: " in lines[0], lines[0]
    for needle in needles:
        assert needle in lines[0], lines[0]


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """|actual - expected| / |expected| (Euclidean norms over all elements, in float64)."""
    actual, expected = actual.detach().double(), expected.detach().double()
    return float(torch.linalg.vector_norm(actual - expected) / torch.linalg.vector_norm(expected))

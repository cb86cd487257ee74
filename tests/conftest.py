"""Shared fixtures and helpers. Real TinyStories text lives outside the repo, in ../shared/data (see its README).

Fixtures here (shared_data, head_stories, workdir) reach every test module without an import; the
plain helpers and constants are imported `from conftest import ...`."""
import functools
import io
import json
import os
import random
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from tinystories import formats, plot, tokenizer
from tinystories.cli import prepare_parser, train_parser
from tinystories.config import PrepareConfig

if not torch.cuda.is_available():
    # Triton decides at its first import whether to compile or interpret; other packages
    # (transformers) may import it first, so choose the CPU interpreter before any test runs.
    # (The tinystories modules imported above do not import triton.)
    os.environ.setdefault("TRITON_INTERPRET", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
TRAIN_HEAD = "tinystories_v1_train_head.txt"
TINY = ["--layers", "2", "--heads", "2", "--channels", "32", "--block-size", "64"]  # create_model.py flags
# create_model.py flags of each block the training tests run: GPT-2's, and Llama's with 1 kv head (GQA)
ARCH_FLAGS = {"gpt2": [], "llama": ["--arch", "llama", "--kv-heads", "1"]}


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


@functools.lru_cache
def small_tokenizer(vocab_size: int) -> "tokenizer.BPETokenizer":
    """A byte-level BPE of vocab_size tokens (257..) trained on synthetic stories in a few ms: the
    tokenizer of a small-vocabulary test model's token files."""
    from tinystories import bpe, synthetic

    return tokenizer.BPETokenizer(bpe.train(synthetic.stories(0, 300), vocab_size), "small test BPE")


def write_small_vocab_tokens(path: Path, ids, vocab_size: int) -> None:
    """A token file of `ids` made by small_tokenizer(vocab_size): its header records it and its
    tokenizer.json lies beside it, as prepare_data.py --vocab-size writes them."""
    from tinystories import bpe

    small = small_tokenizer(vocab_size)
    formats.write_tokens(path, ids, small.record)
    bpe.write(tokenizer.beside(path), small.hf)


def write_tiny_run(folder: Path, config, n_tokens: int, seed: int) -> Path:
    """A random-token train.bin (of small_tokenizer(config.vocab_size)) and a freshly initialised
    model.bin of `config` in folder."""
    from tinystories import llmc
    from tinystories.model import GPT

    write_small_vocab_tokens(folder / "train.bin", np.random.default_rng(0).integers(0, config.vocab_size, n_tokens),
                             config.vocab_size)
    model = GPT(config)
    model.init_weights(seed)
    formats.write_model(folder / "model.bin", config, llmc.model_params(model))
    return folder


# ----------------------------------------------------------------------------- commands

# for runs compared bit for bit across processes: bf16 autocast on a CPU with 2 threads does not repeat
# bit for bit (two identical fresh runs differed from their second step in about half the tries on an
# AVX-512 EPYC VM, fp32 and one thread always agreed), so such runs use one thread, as the kill soak does
ONE_THREAD = {"OMP_NUM_THREADS": "1"}


def run(*args, check=True, cwd=REPO, timeout=None, env=None) -> subprocess.CompletedProcess:
    """`python ARGS` in `cwd`, this checkout's package importable wherever cwd is, output captured:
    for the repo's scripts (`run("create_model.py", ...)`); the package's commands go through run_cli.
    `env`: variables to add. With check, a failure fails the test and shows both outputs."""
    result = subprocess.run([sys.executable, *map(str, args)], cwd=cwd, capture_output=True, text=True,
                            timeout=timeout, env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})
    if check and result.returncode != 0:
        raise AssertionError(f"{args} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def run_cli(*args, cwd=REPO, check=False, env=None) -> subprocess.CompletedProcess:
    """`python -m tinystories ARGS` (run with the module prefix); unchecked by default, since its
    callers mostly look at a failure."""
    return run("-m", "tinystories", *args, check=check, cwd=cwd, env=env)


def train(*args, check=True, env=None) -> subprocess.CompletedProcess:
    """`python -m tinystories train ARGS` through run; a failure fails the test unless check=False."""
    return run_cli("train", *args, check=check, env=env)


def run_prepare_data(*flags: str) -> subprocess.CompletedProcess:
    """The original's command, python prepare_data.py FLAGS, unchecked, within 5 minutes."""
    return run("prepare_data.py", *flags, check=False, timeout=300)


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


# ----------------------------------------------------------------------------- training runs

TINY_RUN = {"batch_size": 2, "seq_len": 32, "sample_every": 0, "val_every": 0, "learning_rate": "1e-3"}


def train_flags(folder: Path, **settings) -> list[str]:
    """The ./train flags of a small, fast run on folder/train.bin and folder/val.bin:
    -i train.bin -j val.bin -b 2 -t 32 -s 0 -v 0 -l 1e-3. Each keyword, named as the TrainConfig
    field (batch_size=4, device="cpu", model=path), sets its flag: a default keeps its place, others
    follow in keyword order, each as its first option string (-b, --device, -e). None leaves a flag
    out; True writes a switch alone."""
    option = {action.dest: action.option_strings[0] for action in train_parser()._actions}
    chosen = {"train_tokens": folder / "train.bin", "val_tokens": folder / "val.bin", **TINY_RUN, **settings}
    flags = []
    for name, value in chosen.items():
        if value is not None:
            flags += [option[name]] if value is True else [option[name], str(value)]
    return flags


def story_tokens(limit_stories=400) -> np.ndarray:
    """Tokens of real TinyStories text (EOT before each story), or synthetic-looking text without it."""
    path = SHARED_DATA / TRAIN_HEAD
    if path.exists():
        stories = [s.strip() for s in path.read_text(encoding="utf-8").split("<|endoftext|>") if s.strip()]
    else:
        stories = [f"Once upon a time there was a cat number {i}. The cat was happy." for i in range(2000)]
    ids = []
    for story in stories[:limit_stories]:
        ids += [tokenizer.EOT] + tokenizer.encode(story)
    return np.array(ids, dtype=np.uint16)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A tiny model (create_model.py TINY) and train/val token files from real stories."""
    d = tmp_path_factory.mktemp("train")
    tokens = story_tokens()
    cut = len(tokens) // 10
    formats.write_tokens(d / "val.bin", tokens[:cut])
    formats.write_tokens(d / "train.bin", tokens[cut:])
    run("create_model.py", "-o", d / "model.bin", *TINY)
    return d


def arch_model(folder: Path, arch: str) -> Path:
    """folder's model.bin (create_model.py TINY) for GPT-2's block; for another, a TINY model of that
    block beside it, made on first use."""
    path = folder / ("model.bin" if arch == "gpt2" else f"model-{arch}.bin")
    if not path.exists():
        run("create_model.py", "-o", path, *TINY, *ARCH_FLAGS[arch])
    return path


def metrics_log(path) -> list[dict]:
    """The records of a trainer's metrics log, read by plot.read_metrics: `path` is the log itself
    (*.jsonl) or a checkpoint, whose log is CHECKPOINT.metrics.jsonl beside it. Held to what a run
    writes: every line one whole record (plot's reader would skip a blank or torn line)."""
    log = Path(path) if str(path).endswith(".jsonl") else Path(f"{path}.metrics.jsonl")
    records = plot.read_metrics(log)
    assert len(records) == len(log.read_text().splitlines()), f"{log}: a blank or torn line"
    return records


def logged(path, field: str) -> dict[int, object]:
    """{step: value} of `field` in the records of metrics_log(path) that have it."""
    return {r["step"]: r[field] for r in metrics_log(path) if field in r}


# ----------------------------------------------------------------------------- prepare (test_data, test_download)

def reference_tokens(split_shards: list[list[str]], bpe_tokenizer=None) -> list[int]:
    """llm.c's tokenization of one split: shard i shuffled with random.Random(1337 + i), then
    EOT + encode_ordinary(story.strip()) for every story (with `bpe_tokenizer`: its EOT and encode)."""
    if bpe_tokenizer is None:
        eot, encode = tokenizer.EOT, tokenizer.gpt2_encoding().encode_ordinary
    else:
        eot, encode = bpe_tokenizer.eot, bpe_tokenizer.encode
    tokens = []
    for i, stories in enumerate(split_shards):
        stories = list(stories)
        random.Random(1337 + i).shuffle(stories)
        for story in stories:
            tokens.append(eot)
            tokens.extend(encode(story.strip()))
    return tokens


def run_prepare(out: Path, *flags: str, workers: int = 1) -> Path:
    """data.prepare in this process; returns the output folder (the GPT-2 tokenizer file is written
    there too; with --vocab-size that is the default)."""
    from tinystories import data  # imports huggingface_hub: only for the tests that prepare

    tokenizer_file = [] if "--vocab-size" in flags else ["--tokenizer-file", str(out / "gpt2_tokenizer.bin")]
    args = prepare_parser().parse_args([*flags, "--out-dir", str(out), *tokenizer_file, "--workers", str(workers)])
    data.prepare(PrepareConfig(**vars(args)))
    return out


def split_tokens(out: Path, split: str) -> list[int]:
    return formats.read_tokens(out / f"TinyStories_{split}.bin").tolist()


def shard_json(stories: list[str]) -> bytes:
    """A shard as in the Hugging Face archive: objects with a "story" and other fields."""
    items = [{"story": s, "instruction": {"prompt": "Write a story.", "words": ["a", "b"]}, "summary": "x",
              "source": "GPT-4"} for s in stories]
    return json.dumps(items).encode()


def write_archive(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, payload in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return path


# ----------------------------------------------------------------------------- numbers

def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """|actual - expected| / |expected| (Euclidean norms over all elements, in float64)."""
    actual, expected = actual.detach().double(), expected.detach().double()
    return float(torch.linalg.vector_norm(actual - expected) / torch.linalg.vector_norm(expected))

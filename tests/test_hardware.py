"""What runs where: device, precision, head loss, CUDA graphs and torch.compile chosen for hardware
this machine may not have (CUDA capabilities, Apple's MPS, CPUs with or without native bf16), with
the hardware queries replaced; and torch.compile falling back to eager when it cannot work here."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, run, train_flags, write_small_vocab_tokens

from tinystories import device as dev
from tinystories.config import TrainConfig
from tinystories.errors import BadInput
from tinystories.kernels.fused_ce import fused_head_loss
from tinystories.model import plain_head_loss
from tinystories.optim import fused_skips_bad_steps
from tinystories.train import Trainer

CUDA, MPS, CPU = torch.device("cuda", 0), torch.device("mps"), torch.device("cpu")


@pytest.fixture
def gpu(monkeypatch):
    """Pretend one CUDA GPU of a chosen compute capability is present: gpu((7, 5))."""
    def install(capability):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    return install


# ----------------------------------------------------------------------------- device

@pytest.mark.parametrize("cuda, mps, local_rank, expected", [
    (True, True, None, "cuda"), (False, True, None, "mps"), (False, False, None, "cpu"),
    (False, True, 0, "cpu"),  # torchrun: MPS takes one process, so auto is the CPU (gloo)
])
def test_auto_device(monkeypatch, cuda, mps, local_rank, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: int(cuda))
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
    assert dev.pick_device("auto", local_rank).type == expected


def test_mps_is_taken_when_present_and_refused_when_absent_or_under_torchrun(monkeypatch):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert dev.pick_device("mps") == MPS
    with pytest.raises(BadInput, match="--device mps: MPS runs one process"):
        dev.pick_device("mps", local_rank=0)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(BadInput, match="--device mps: MPS .* is not available"):
        dev.pick_device("mps")


# ----------------------------------------------------------------------------- precision

@pytest.mark.parametrize("forced, native", [("0", False), ("1", True)])
def test_cpu_bf16_detection_can_be_forced(monkeypatch, forced, native):
    monkeypatch.setenv(dev.CPU_BF16_ENV, forced)
    assert dev.cpu_has_native_bf16() is native
    assert dev.resolve_precision("auto", CPU) == ("bf16" if native else "fp32")


def test_a_bad_cpu_bf16_setting_is_named(monkeypatch):
    monkeypatch.setenv(dev.CPU_BF16_ENV, "yes")
    with pytest.raises(BadInput, match="TINYSTORIES_CPU_BF16='yes': must be 0 or 1"):
        dev.cpu_has_native_bf16()


def test_explicit_bf16_on_a_cpu_without_it_says_it_will_be_slow(monkeypatch, capsys):
    monkeypatch.setenv(dev.CPU_BF16_ENV, "0")
    assert dev.resolve_precision("bf16", CPU) == "bf16"
    assert "no native bf16" in capsys.readouterr().err
    monkeypatch.setenv(dev.CPU_BF16_ENV, "1")
    assert dev.resolve_precision("bf16", CPU) == "bf16"
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("capability, expected", [((9, 0), "bf16"), ((8, 0), "bf16"), ((7, 5), "fp16"),
                                                  ((7, 0), "fp16"), ((6, 1), "fp32")])
def test_auto_precision_on_cuda_follows_the_tensor_cores(gpu, capability, expected):
    gpu(capability)
    assert dev.resolve_precision("auto", CUDA) == expected


def test_auto_precision_on_mps_is_fp32(monkeypatch):
    monkeypatch.setenv(dev.CPU_BF16_ENV, "1")  # whatever the CPU beside it has
    assert dev.resolve_precision("auto", MPS) == "fp32"


def test_bf16_on_a_gpu_without_bf16_tensor_cores_says_so(gpu, capsys):
    gpu((7, 5))
    assert dev.resolve_precision("bf16", CUDA) == "bf16"
    assert "compute capability 7.5" in capsys.readouterr().err


@pytest.mark.parametrize("device", [CPU, MPS])
def test_fp16_needs_cuda(device):
    with pytest.raises(BadInput, match="--precision fp16 needs a CUDA device"):
        dev.resolve_precision("fp16", device)


# ----------------------------------------------------------------------------- head loss, graphs, optimizer

def test_auto_head_loss_is_triton_only_from_compute_capability_8(gpu):
    gpu((7, 5))
    assert dev.select_head_loss("auto", CUDA, "fp16").load() is fused_head_loss
    assert dev.select_head_loss("auto", MPS).load() is fused_head_loss
    assert dev.select_head_loss("plain", MPS).load() is plain_head_loss
    gpu((8, 0))
    triton = pytest.importorskip("tinystories.kernels.triton_ce")
    assert dev.select_head_loss("auto", CUDA, "bf16").load() is triton.triton_head_loss


@pytest.mark.parametrize("capability, precision, allowed", [((7, 5), "fp16", True), ((7, 5), "bf16", False),
                                                            ((6, 1), "fp32", False), ((8, 0), "bf16", True)])
def test_triton_head_loss_where_triton_supports_it(gpu, capability, precision, allowed):
    triton = pytest.importorskip("tinystories.kernels.triton_ce")
    gpu(capability)
    if allowed:
        assert dev.select_head_loss("triton", CUDA, precision).load() is triton.triton_head_loss
    else:
        with pytest.raises(BadInput, match="--head-loss triton.* needs compute capability"):
            dev.select_head_loss("triton", CUDA, precision)


def test_cuda_graphs_are_off_under_fp16_loss_scaling():
    assert dev.use_cuda_graphs("auto", CUDA, False, "bf16")
    assert not dev.use_cuda_graphs("auto", CUDA, False, "fp16")
    with pytest.raises(BadInput, match="--cuda-graphs on is not supported with fp16"):
        dev.use_cuda_graphs("on", CUDA, False, "fp16")
    assert not dev.use_cuda_graphs("auto", MPS, False, "fp32")


def test_mps_uses_foreach_adamw_whose_bad_steps_are_skipped_on_the_host():
    assert fused_skips_bad_steps(CPU) and fused_skips_bad_steps(CUDA)
    assert not fused_skips_bad_steps(MPS)


# ----------------------------------------------------------------------------- compile: the choice

def test_compile_auto_is_off_on_mps_and_for_short_runs(monkeypatch, capsys):
    monkeypatch.setattr(dev, "compile_problem", lambda device: pytest.fail("not asked for"))
    assert not dev.use_compile("auto", 10_000, MPS)
    assert not dev.use_compile("auto", 199, CPU)
    assert not dev.use_compile("off", 10_000, CPU)
    assert capsys.readouterr().err == ""


def test_compile_where_it_cannot_work(monkeypatch, capsys):
    monkeypatch.setattr(dev, "compile_problem", lambda device: "no working C++ compiler found")
    assert not dev.use_compile("auto", 200, CPU)
    assert capsys.readouterr().err == "note: --compile auto: no working C++ compiler found; running eagerly\n"
    with pytest.raises(BadInput, match="--compile on: torch.compile cannot work here: no working C"):
        dev.use_compile("on", 1, CPU)
    monkeypatch.setattr(dev, "compile_problem", lambda device: None)
    assert dev.use_compile("auto", 200, CPU) and dev.use_compile("on", 1, CPU)


def test_compile_options_change_only_the_cpu_fp32_compile():
    """The fp32 CPU step's GELU computes tanh through exp; bf16 on CPU and every GPU compile as before."""
    assert dev.compile_options(CPU, "fp32") == {"cpp.use_decompose_tanh": True}
    assert dev.compile_options(CPU, "bf16") is None
    assert dev.compile_options(CUDA, "fp32") is None and dev.compile_options(MPS, "fp32") is None


def test_a_missing_cpu_compiler_is_found_the_way_inductor_looks():
    from torch._inductor import config

    with config.patch({"cpp.cxx": (None, "/nonexistent/g++")}):
        assert dev.compile_problem(CPU) == "no working C++ compiler found (tried /nonexistent/g++; set CXX to one)"


def test_cuda_compile_needs_triton_and_compute_capability_7(gpu, monkeypatch):
    gpu((6, 1))
    monkeypatch.setattr(dev.importlib.util, "find_spec", lambda name: object())
    assert "compute capability 7.0" in dev.compile_problem(CUDA)
    gpu((7, 0))
    assert dev.compile_problem(CUDA) is None
    monkeypatch.setattr(dev.importlib.util, "find_spec", lambda name: None)
    assert dev.compile_problem(CUDA) == "the triton package is not installed"


# ----------------------------------------------------------------------------- compile: end to end

@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A model with a 300-token vocabulary (fast steps) and a token file of that tokenizer."""
    d = tmp_path_factory.mktemp("hardware")
    write_small_vocab_tokens(d / "train.bin", np.random.default_rng(0).integers(0, 300, 4000), 300)
    run("create_model.py", "-o", d / "model.bin", "--layers", "1", "--heads", "2", "--channels", "16",
        "--block-size", "16", "--tokenizer", d / "tokenizer.json")
    return d


def train_without_a_compiler(d: Path, *flags) -> subprocess.CompletedProcess:
    """./train with CXX naming a compiler that does not exist (inductor's only other candidate, a
    conda-installed g++, is off unless TORCH_INDUCTOR_INSTALL_GXX is set)."""
    env = {k: v for k, v in __import__("os").environ.items() if k != "TORCH_INDUCTOR_INSTALL_GXX"}
    argv = [*train_flags(d, model=d / "model.bin", val_tokens=d / "train.bin", seq_len=16, learning_rate=None,
                         device="cpu", log_every=50), *map(str, flags)]
    return subprocess.run([sys.executable, "-m", "tinystories", "train", *argv],
                          cwd=REPO, env={**env, "CXX": "/nonexistent/g++"}, capture_output=True, text=True)


def test_without_a_compiler_auto_runs_eagerly_and_on_is_refused(tiny):
    auto = train_without_a_compiler(tiny, "-n", "200")
    assert auto.returncode == 0, auto.stderr
    assert "note: --compile auto: no working C++ compiler found (tried /nonexistent/g++" in auto.stderr
    assert "Traceback" not in auto.stderr and "compiled" not in auto.stdout
    assert "step   200/200" in auto.stdout
    on = train_without_a_compiler(tiny, "-n", "2", "--compile", "on")
    assert on.returncode == 2 and on.stdout == ""
    assert on.stderr.count("\n") == 1 and on.stderr.startswith("train: error: --compile on: ") and "C++" in on.stderr


def failing_compile(model, options=None):
    """A torch.compile stand-in whose model fails its first call after leaving gradients behind, as a
    lazily compiled backward pass may fail once part of the gradients have been accumulated."""
    def forward(idx, targets=None):
        model(idx, targets).backward()
        raise RuntimeError("inductor could not compile this\nsecond line")
    return forward


def tiny_config(d: Path, compile_flag: str) -> TrainConfig:
    return TrainConfig(model=str(d / "model.bin"), train_tokens=str(d / "train.bin"), val_tokens=str(d / "train.bin"),
                       max_steps=3, batch_size=2, seq_len=16, learning_rate=1e-2, val_every=0, sample_every=0,
                       device="cpu", compile=compile_flag)


def step_losses(out: str) -> list[str]:
    return [line.split("| loss ")[1].split()[0] for line in out.splitlines() if "| loss " in line]


def test_a_compile_failure_at_the_first_step_falls_back_to_eager(tiny, monkeypatch, capsys):
    Trainer(tiny_config(tiny, "off")).run()
    eager = step_losses(capsys.readouterr().out)
    monkeypatch.setattr(dev, "compile_problem", lambda device: None)
    monkeypatch.setattr(dev, "COMPILE_AUTO_MIN_STEPS", 1)
    monkeypatch.setattr(torch, "compile", failing_compile)
    Trainer(tiny_config(tiny, "auto")).run()
    out, err = capsys.readouterr()
    assert err == ("note: torch.compile failed at the first step (RuntimeError: inductor could not compile this); "
                   "running eagerly\n")
    assert len(eager) == 3 and step_losses(out) == eager  # the failed attempt left nothing behind
    with pytest.raises(BadInput, match=r"--compile on: torch.compile failed at the first step \(RuntimeError: "):
        Trainer(tiny_config(tiny, "on")).run()

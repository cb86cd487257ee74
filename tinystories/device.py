"""Where and how to compute, one decision at a time: the process's place in a torchrun job and its
device, the numeric precision, torch.compile, CUDA graphs, and the output layer + loss implementation.
runtime.py makes these decisions in their order for train, generate and eval.

Every choice here comes from a flag (--device, --precision, --compile, --head-loss) whose `auto`
value picks the fast option the machine supports, and always has a plain PyTorch fallback:

    device     CUDA, else Apple's MPS (one process), else the CPU
    precision  config.PRECISION_POLICY (7.x GPUs have fp16 tensor cores and no bf16 ones)
    compile    runs of COMPILE_AUTO_MIN_STEPS steps or more, on CPU (needs a working C++ compiler)
               and CUDA (needs triton and compute capability 7.0+); never by default on MPS
    head loss  registry.HEAD_LOSSES: the Triton kernel on CUDA 8.0+ when triton imports, else the
               chunked PyTorch version

The hardware is asked through functions the tests replace (torch.cuda.get_device_capability,
torch.backends.mps.is_available, cpu_has_native_bf16, compile_problem); TINYSTORIES_CPU_BF16=0 or 1
overrides the CPU's bf16 detection, so the suite runs as either kind of CPU on any machine.
"""
import contextlib
import importlib.util
import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .config import COMPILE_AUTO_MIN_STEPS
from .errors import BadInput
from .registry import AUTO_HEAD_LOSSES, HEAD_LOSSES, HeadLoss


@dataclass(frozen=True)
class Distributed:
    """Where this process sits: rank, world size, device. Distributed(device) is one process without
    torchrun; from_environment joins the torchrun job this process was started in, if any."""
    device: torch.device
    world: int = 1
    rank: int = 0
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def master(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_environment(cls, device_flag: str) -> "Distributed":
        """torchrun's WORLD_SIZE, RANK and LOCAL_RANK (one process without them), the device for
        --device (the local rank's GPU under torchrun), and the process group when there are several."""
        env = os.environ
        world = env_int("WORLD_SIZE", 1, 1)
        rank, local_rank = env_int("RANK", 0, 0, world - 1), env_int("LOCAL_RANK", 0, 0, world - 1)
        if world > 1:
            missing = [v for v in ("MASTER_ADDR", "MASTER_PORT", "RANK") if v not in env]
            if missing:
                raise BadInput(f"WORLD_SIZE={world} but {', '.join(missing)} not set: start with torchrun")
        device = pick_device(device_flag, local_rank if world > 1 else None)
        if world > 1:
            if device.type == "cuda":
                torch.cuda.set_device(device)
            dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        return cls(device, world, rank, local_rank)

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        """Sum a tensor over the ranks (identity on one process)."""
        if self.enabled:
            value = value.clone()
            dist.all_reduce(value)
        return value

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """Average a scalar tensor over the ranks (gloo has no average: the sum over the world size)."""
        return self.sum(value) / self.world if self.enabled else value

    def any(self, flag: bool) -> bool:
        """True when `flag` is true on any rank (all ranks must stop together)."""
        if not self.enabled:
            return flag
        value = torch.tensor(float(flag), device=self.device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def close(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()


def env_int(name: str, default: int, low: int, high: int | None = None) -> int:
    """The integer in environment variable `name` (one torchrun sets), `default` when unset;
    BadInput naming the variable unless it lies in [low, high]."""
    text = os.environ.get(name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < low or (high is not None and value > high):
        allowed = f"from {low} to {high}" if high is not None else f"{low} or more"
        raise BadInput(f"{name}={text!r}: must be an integer {allowed} (torchrun sets it; unset it to run one process)")
    return value


def pick_device(flag: str, local_rank: int | None = None) -> torch.device:
    """The device for --device. auto: CUDA when present, else MPS for a single process, else the CPU.
    local_rank is set under torchrun (several processes; MPS takes one only)."""
    if flag == "auto":
        mps = torch.backends.mps.is_available() and local_rank is None
        flag = "cuda" if torch.cuda.is_available() else "mps" if mps else "cpu"
    try:
        device = torch.device(flag)
    except RuntimeError:
        raise BadInput(f"--device: unknown device '{flag}' (use auto, cpu, cuda, cuda:N or mps)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise BadInput(f"--device {flag}: CUDA is not available on this machine")
        if local_rank is not None and device.index is None:
            device = torch.device("cuda", local_rank)
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise BadInput(f"--device {flag}: no CUDA device {device.index}, this machine has {count} "
                           f"(under torchrun, start at most {count} processes per node)")
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise BadInput(f"--device {flag}: MPS (the GPU of Apple Silicon Macs) is not available on this machine")
        if local_rank is not None:
            raise BadInput(f"--device {flag}: MPS runs one process; start without torchrun")
    elif device.type != "cpu":
        raise BadInput(f"--device: unsupported device '{flag}' (use auto, cpu, cuda, cuda:N or mps)")
    return device


CPU_BF16_ENV = "TINYSTORIES_CPU_BF16"  # 0 or 1: act as a CPU without / with native bf16


def cpu_has_native_bf16() -> bool:
    """True where the CPU has bf16 matrix instructions (AVX512-BF16 or AMX), or as TINYSTORIES_CPU_BF16
    (0 or 1) says when it is set."""
    forced = os.environ.get(CPU_BF16_ENV)
    if forced is not None:
        if forced not in ("0", "1"):
            raise BadInput(f"{CPU_BF16_ENV}={forced!r}: must be 0 or 1 (or unset to detect the CPU)")
        return forced == "1"
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def cuda_capability(device: torch.device) -> tuple[int, int]:
    """The GPU's compute capability, e.g. (8, 0) for an A100, (7, 5) for a T4."""
    return tuple(torch.cuda.get_device_capability(device))


def capability_text(device: torch.device) -> str:
    return "%d.%d" % cuda_capability(device)


def resolve_precision(flag: str, device: torch.device) -> str:
    """'fp32', 'bf16' or 'fp16' (autocast; fp16 with loss scaling); auto as config.PRECISION_POLICY says."""
    if flag == "auto":
        if device.type == "cuda":
            capability = cuda_capability(device)
            return "bf16" if capability >= (8, 0) else "fp16" if capability >= (7, 0) else "fp32"
        return "bf16" if device.type == "cpu" and cpu_has_native_bf16() else "fp32"
    if flag == "fp16" and device.type != "cuda":
        raise BadInput(f"--precision fp16 needs a CUDA device, this run uses {device} (use auto, fp32 or bf16)")
    if flag == "bf16" and device.type == "cpu" and not cpu_has_native_bf16():
        print("note: this CPU has no native bf16; --precision bf16 will be emulated and slow", file=sys.stderr)
    if flag == "bf16" and device.type == "cuda" and cuda_capability(device) < (8, 0):
        print(f"note: this GPU (compute capability {capability_text(device)}) has no bf16 "
              f"tensor cores; --precision bf16 will be slow (auto picks fp16 here)", file=sys.stderr)
    return flag


def allow_tf32(device: torch.device) -> None:
    """On CUDA, let what stays fp32 use TF32 tensor cores (master weights stay fp32)."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device, precision: str):
    if precision in AUTOCAST_DTYPES:
        # no cast cache: a CUDA graph cannot record it, and each weight is cast once per step anyway
        return torch.autocast(device_type=device.type, dtype=AUTOCAST_DTYPES[precision], cache_enabled=False)
    return contextlib.nullcontext()


def compile_problem(device: torch.device) -> str | None:
    """Why torch.compile (inductor) cannot work on `device` here, or None when it should: on the CPU
    it needs a C++ compiler (found as inductor finds it: $CXX, else g++, or clang++ on macOS), on
    CUDA the triton package and compute capability 7.0+."""
    if device.type == "cpu":
        from torch._inductor import config, cpp_builder

        try:
            cpp_builder.get_cpp_compiler()
        except Exception:  # inductor's InvalidCxxCompiler, or a compiler that fails to start
            cxx = config.cpp.cxx
            tried = ", ".join([cxx] if isinstance(cxx, str) else [c for c in cxx if c])
            return f"no working C++ compiler found (tried {tried}; set CXX to one)"
    elif device.type == "cuda":
        if importlib.util.find_spec("triton") is None:
            return "the triton package is not installed"
        if cuda_capability(device) < (7, 0):
            return f"triton needs compute capability 7.0 or newer, this GPU has {capability_text(device)}"
    return None


def use_compile(flag: str, total_steps: int, device: torch.device) -> bool:
    """--compile: on, off, or auto = on for runs of COMPILE_AUTO_MIN_STEPS steps or more on CPU and
    CUDA. auto looks at the whole run, not the steps left, so a resumed run computes as it began.
    Where compile cannot work here, auto prints a note and runs eagerly; on is refused."""
    wanted = flag == "on" or (flag == "auto" and total_steps >= COMPILE_AUTO_MIN_STEPS and device.type != "mps")
    problem = compile_problem(device) if wanted else None
    if problem and flag == "on":
        raise BadInput(f"--compile on: torch.compile cannot work here: {problem} (use --compile off or auto)")
    if problem:
        print(f"note: --compile auto: {problem}; running eagerly", file=sys.stderr)
    return wanted and problem is None


def compile_options(device: torch.device, precision: str) -> dict | None:
    """Inductor options for torch.compile (None: its defaults). On CPU in fp32, tanh (the GELU's) is
    computed through exp, which is faster than Sleef's tanh there (BENCHMARKS.md); it differs from it
    in the last bits only. Other devices and precisions keep the defaults."""
    if device.type == "cpu" and precision == "fp32":
        return {"cpp.use_decompose_tanh": True}
    return None


def use_cuda_graphs(flag: str, device: torch.device, distributed: bool, precision: str) -> bool:
    """--cuda-graphs: auto = on for a single CUDA process (graphs are not combined with DDP, nor with
    fp16's loss scaler, whose scale changes from step to step in Python-side bookkeeping)."""
    if flag == "on" and device.type != "cuda":
        raise BadInput(f"--cuda-graphs on needs a CUDA device, this run uses {device}")
    if flag == "on" and distributed:
        raise BadInput("--cuda-graphs on is not supported under torchrun with several processes (use auto or off)")
    if flag == "on" and precision == "fp16":
        raise BadInput("--cuda-graphs on is not supported with fp16 precision (use auto, or --precision bf16/fp32)")
    return flag == "on" or (flag == "auto" and device.type == "cuda" and not distributed and precision != "fp16")


def select_head_loss(flag: str, device: torch.device, precision: str = "fp32") -> HeadLoss:
    """The registry's output layer + loss for --head-loss (registry.HEAD_LOSSES): the one named, or for
    auto the first of AUTO_HEAD_LOSSES that auto allows on this device and that can run here (the
    Triton kernel on CUDA 8.0+ when triton imports, else the chunked PyTorch version). BadInput when
    the one named cannot run here."""
    if flag != "auto":
        head = HEAD_LOSSES[flag]
        problem = head_loss_problem(head, device, precision)
        if problem:
            others = [name for name in ("auto", *HEAD_LOSSES) if name != flag]
            raise BadInput(problem.format(flag=f"--head-loss {flag}", use=f"use {', '.join(others[:-1])} or {others[-1]}"))
        return head
    for name in AUTO_HEAD_LOSSES:
        head = HEAD_LOSSES[name]
        auto_here = head.auto_capability is None or (device.type == "cuda" and cuda_capability(device) >= head.auto_capability)
        if auto_here and head_loss_problem(head, device, precision) is None:
            return head
    raise AssertionError("AUTO_HEAD_LOSSES ends with one that runs anywhere")


def head_loss_problem(head: HeadLoss, device: torch.device, precision: str) -> str | None:
    """Why `head` cannot run on `device` under `precision` (a message with {flag} and {use} to fill
    in), or None when it can; loads it, so a missing package is found here."""
    if head.device is not None and device.type != head.device:
        return f"{{flag}} needs a {head.device.upper()} device ({{use}})"
    if device.type == "cuda":
        needed = head.bf16_capability if precision == "bf16" else head.capability
        if cuda_capability(device) < needed:
            return (f"{{flag}}{' with bf16' if precision == 'bf16' else ''} needs compute capability {needed[0]}.{needed[1]} "
                    f"or newer, this GPU has {capability_text(device)} ({{use}})")
    try:
        head.load()
    except ImportError:
        return f"{{flag}}: the {head.package} package is not installed"
    return None

"""Where and how to compute: the process's place in a torchrun job and its device, the numeric
precision, torch.compile, and the output layer + loss implementation. Used by train and generate.

Every choice here comes from a flag (--device, --precision, --compile, --head-loss) whose `auto`
value picks the fast option the machine supports, and always has a plain PyTorch fallback.
"""
import contextlib
import os
import sys

import torch
import torch.distributed as dist

from .config import COMPILE_AUTO_MIN_STEPS
from .errors import BadInput


class Distributed:
    """Where this process sits: rank, world size, device. One process without torchrun."""

    def __init__(self, device_flag: str):
        env = os.environ
        self.world = int(env.get("WORLD_SIZE", "1"))
        self.rank = int(env.get("RANK", "0"))
        self.local_rank = int(env.get("LOCAL_RANK", "0"))
        self.enabled = self.world > 1
        if self.enabled:
            missing = [v for v in ("MASTER_ADDR", "MASTER_PORT", "RANK") if v not in env]
            if missing:
                raise BadInput(f"WORLD_SIZE={self.world} but {', '.join(missing)} not set: start with torchrun")
        self.device = pick_device(device_flag, self.local_rank if self.enabled else None)
        if self.enabled:
            backend = "nccl" if self.device.type == "cuda" else "gloo"
            if self.device.type == "cuda":
                torch.cuda.set_device(self.device)
            dist.init_process_group(backend=backend)
        self.master = self.rank == 0

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """Average a scalar tensor over the ranks (identity on one process)."""
        if self.enabled:
            value = value.clone()
            dist.all_reduce(value)  # sum (gloo has no average)
            value /= self.world
        return value

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


def pick_device(flag: str, local_rank: int | None = None) -> torch.device:
    if flag == "auto":
        flag = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(flag)
    except RuntimeError:
        raise BadInput(f"--device: unknown device '{flag}' (use auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise BadInput(f"--device {flag}: CUDA is not available on this machine")
        if local_rank is not None and device.index is None:
            device = torch.device("cuda", local_rank)
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise BadInput(f"--device {flag}: no CUDA device {device.index}, this machine has {count} "
                           f"(under torchrun, start at most {count} processes per node)")
    elif device.type != "cpu":
        raise BadInput(f"--device: unsupported device '{flag}' (use auto, cpu, cuda or cuda:N)")
    return device


def cpu_has_native_bf16() -> bool:
    """True where the CPU has bf16 matrix instructions (AVX512-BF16 or AMX)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(flag: str, device: torch.device) -> str:
    """'fp32' or 'bf16' (autocast). auto: bf16 on CUDA with bf16 support and on CPUs with native bf16
    instructions, fp32 elsewhere."""
    if flag == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
        return "bf16" if cpu_has_native_bf16() else "fp32"
    if flag == "bf16" and device.type == "cpu" and not cpu_has_native_bf16():
        print("note: this CPU has no native bf16; --precision bf16 will be emulated and slow", file=sys.stderr)
    return flag


def allow_tf32(device: torch.device) -> None:
    """On CUDA, let what stays fp32 use TF32 tensor cores (master weights stay fp32)."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def autocast(device: torch.device, precision: str):
    if precision == "bf16":
        # no cast cache: a CUDA graph cannot record it, and each weight is cast once per step anyway
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16, cache_enabled=False)
    return contextlib.nullcontext()


def use_compile(flag: str, total_steps: int) -> bool:
    """--compile: on, off, or auto = on for runs of COMPILE_AUTO_MIN_STEPS steps or more. auto looks
    at the whole run, not the steps left, so a resumed run computes as it began."""
    return flag == "on" or (flag == "auto" and total_steps >= COMPILE_AUTO_MIN_STEPS)


def use_cuda_graphs(flag: str, device: torch.device, distributed: bool) -> bool:
    """--cuda-graphs: auto = on for a single CUDA process (graphs are not combined with DDP here)."""
    if flag == "on" and device.type != "cuda":
        raise BadInput(f"--cuda-graphs on needs a CUDA device, this run uses {device}")
    if flag == "on" and distributed:
        raise BadInput("--cuda-graphs on is not supported under torchrun with several processes (use auto or off)")
    return flag == "on" or (flag == "auto" and device.type == "cuda" and not distributed)


def select_head_loss(flag: str, device: torch.device):
    """The output layer + loss implementation for --head-loss. auto: the Triton kernel on CUDA when
    triton imports, else the chunked PyTorch version; plain: the reference formulation."""
    from .kernels.fused_ce import fused_head_loss
    from .model import plain_head_loss

    if flag == "plain":
        return plain_head_loss
    if flag == "chunked" or (flag == "auto" and device.type != "cuda"):
        return fused_head_loss
    if device.type != "cuda":
        raise BadInput("--head-loss triton needs a CUDA device (use auto, chunked or plain)")
    try:
        from .kernels.triton_ce import triton_head_loss
    except ImportError:
        if flag == "triton":
            raise BadInput("--head-loss triton: the triton package is not installed") from None
        return fused_head_loss
    return triton_head_loss

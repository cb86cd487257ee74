"""How a run computes, decided once: the resolved execution choices of a training run (or of
./generate and eval), each from its flag and the machine (device.py holds each decision).

The decisions depend on each other, so they are made in this order:

    process group   torchrun's ranks (one process without torchrun)
    device          --device; under torchrun the local rank's GPU
    precision       --precision, for that device
    head loss       --head-loss, for that device and precision (registry.HEAD_LOSSES)
    CUDA graphs     --cuda-graphs, for that device, precision and number of processes; the optimizer
                    is built for it (capturable), so it comes before the optimizer
    compile         --compile, for that device and the run's length (-n, or one epoch)
"""
from dataclasses import dataclass

import torch

from .config import TrainConfig
from .device import (Distributed, allow_tf32, pick_device, resolve_precision, select_head_loss, use_compile,
                     use_cuda_graphs)
from .errors import BadInput
from .registry import HEAD_LOSSES, HeadLoss


@dataclass(frozen=True)
class Runtime:
    dist: Distributed
    precision: str  # fp32, bf16 or fp16 (autocast; fp16 with loss scaling)
    head_loss: HeadLoss
    compile: bool = False  # torch.compile the model
    cuda_graphs: bool = False  # replay each step as one CUDA graph
    compile_required: bool = False  # --compile on: failing to compile is an error, not a fall back to eager
    cuda_graphs_required: bool = False  # --cuda-graphs on: likewise for the graph capture

    @property
    def device(self) -> torch.device:
        return self.dist.device

    def to_device(self, batch: tuple) -> tuple:
        """CPU tensors (a loader's batch) on the run's device; from pinned memory, without waiting, on CUDA."""
        if self.device.type == "cuda":
            return tuple(t.pin_memory().to(self.device, non_blocking=True) for t in batch)
        return tuple(t.to(self.device) for t in batch)

    def synchronize(self) -> None:
        """Wait for the device to finish the work queued so far."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        elif self.device.type == "mps":
            torch.mps.synchronize()

    @classmethod
    def single(cls, device: torch.device, precision: str = "fp32", head_loss: str = "plain", **switches) -> "Runtime":
        """One process on `device`, no torchrun: for tests and benchmarks that build a TrainStep themselves."""
        return cls(Distributed(device), precision, HEAD_LOSSES[head_loss], **switches)


def training_runtime(cfg: TrainConfig, total_steps: int) -> Runtime:
    """The choices of a training run of `total_steps` steps, in the order above."""
    dist = Distributed.from_environment(cfg.device)
    if cfg.batch_size % dist.world:
        raise BadInput(f"-b/--batch-size {cfg.batch_size} is not divisible by the world size {dist.world}")
    precision = resolve_precision(cfg.precision, dist.device)
    head_loss = select_head_loss(cfg.head_loss, dist.device, precision)
    cuda_graphs = use_cuda_graphs(cfg.cuda_graphs, dist.device, dist.enabled, precision)
    compile_model = use_compile(cfg.compile, total_steps, dist.device)
    allow_tf32(dist.device)
    return Runtime(dist, precision, head_loss, compile_model, cuda_graphs, compile_required=cfg.compile == "on",
                   cuda_graphs_required=cfg.cuda_graphs == "on")


def inference_runtime(device_flag: str, precision_flag: str) -> Runtime:
    """./generate and eval: one process, the device and precision their flags ask for, the reference head."""
    device = pick_device(device_flag)
    return Runtime.single(device, resolve_precision(precision_flag, device))

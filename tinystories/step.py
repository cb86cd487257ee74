"""The device work of one training step, and its fall backs.

    batches -> [forward -> backward] x grad_accum -> clip -> optimizer -> divergence guard

A TrainStep is built from a model and an optimizer in memory and a Runtime (runtime.py): tests and
benchmarks make one without a Trainer, a model file or a process group. Around the plain step:
- precision: autocast (runtime.precision); under fp16 dynamic loss scaling (torch.amp.GradScaler),
  whose scale is part of a run's state (loss_scale);
- the divergence guard: a step whose loss or gradient norm is not finite is skipped on the device
  (the optimizer's found_inf), counted in skipped_steps and in bad_in_a_row, without waiting;
- torch.compile (runtime.compile): the first step compiles; if that fails the step runs eagerly from
  then on, with a note (under --compile on: BadInput). The failed attempt changed no weights:
  compiling comes before the update, and its partial gradients are dropped;
- CUDA graphs (runtime.cuda_graphs): the whole step recorded once and replayed (cuda_graph.py); a
  capture failure falls back to eager steps the same way.
"""
import contextlib
import sys

import torch

from .cuda_graph import Batches, CUDAGraphStep
from .device import autocast, compile_options
from .errors import BadInput
from .optim import Optimizers, set_learning_rate
from .runtime import Runtime


def failure_reason(error: Exception) -> str:
    """'Type: first line' of the root cause of an error (not dynamo's or inductor's wrapper of it)."""
    while error.__cause__ is not None:
        error = error.__cause__
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}{': ' + lines[0] if lines else ''}"


class TrainStep:
    def __init__(self, model: torch.nn.Module, optimizer: Optimizers, runtime: Runtime, grad_accum: int = 1,
                 grad_clip: float = 1.0, skipped_steps: int = 0, loss_scale: dict | None = None):
        self.model, self.optimizer, self.runtime = model, optimizer, runtime
        self.grad_accum, self.grad_clip = grad_accum, grad_clip
        device = runtime.device
        # fp16: dynamic loss scaling; a step whose scaled gradients overflow is skipped like any non-finite
        # step (a no-op for other precisions)
        self.scaler = torch.amp.GradScaler(device.type, enabled=runtime.precision == "fp16")
        if loss_scale:
            self.scaler.load_state_dict(loss_scale)
        # the divergence guard, kept on the device so a step never waits for it
        self.skipped_steps = torch.tensor(skipped_steps, device=device)
        self.bad_in_a_row = torch.zeros((), dtype=torch.long, device=device)
        self.compiled = runtime.compile
        self.forward_model = self._wrap_model()
        self.compile_pending = self.compiled  # until the first step has compiled, or fallen back
        self.graph = CUDAGraphStep(self._step_with_fallback) if runtime.cuda_graphs else None

    def __call__(self, batches: Batches, lr: float) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step at rate `lr` (-l's; see set_learning_rate) over grad_accum micro-batches.
        Returns (mean loss, grad norm) as device tensors, without waiting for the device. When either
        is non-finite the update is skipped on the device, so a bad step never reaches the weights (on
        MPS, with foreach AdamW, the step waits for the device to decide)."""
        set_learning_rate(self.optimizer, lr)
        if self.graph is None:
            return self._step_with_fallback(batches)
        try:
            return self.graph(batches)
        except BadInput:
            raise
        except Exception as e:  # a capture failure: run eagerly from here on, unless graphs were asked for
            if self.runtime.cuda_graphs_required:
                raise BadInput(f"--cuda-graphs on: capturing the training step failed: {failure_reason(e)}") from None
            print(f"note: CUDA graph capture failed ({failure_reason(e)}); continuing without graphs", file=sys.stderr)
            self.graph = None
            self.optimizer.zero_grad(set_to_none=True)
            return self._device_step(batches)

    @torch.no_grad()
    def finite_loss(self, batch: tuple[torch.Tensor, torch.Tensor]) -> bool:
        """Whether the weights as they are now give a finite loss on `batch` (x, y): the check before a
        save, so a checkpoint never holds weights that a diverging run has made useless (finite, but
        too large to compute with). Waits for the device."""
        runtime = self.runtime
        self.model.eval()
        with autocast(runtime.device, runtime.precision):
            loss = self.model(*batch)
        self.model.train()
        return bool(torch.isfinite(loss))

    def loss_scale(self) -> dict | None:
        """fp16's loss scale and its growth count (None under other precisions)."""
        return self.scaler.state_dict() if self.scaler.is_enabled() else None

    def _wrap_model(self):
        """The model the step calls: compiled (self.compiled) and under DDP as the run needs."""
        model, runtime = self.model, self.runtime
        if self.compiled:
            model = torch.compile(model, options=compile_options(runtime.device, runtime.precision))
        if runtime.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            device = runtime.device
            model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        return model

    def _step_with_fallback(self, batches: Batches) -> tuple[torch.Tensor, torch.Tensor]:
        """_device_step; at the first step of a compiled model, where torch.compile compiles, a failure
        falls back to the eager model."""
        if not self.compile_pending:
            return self._device_step(batches)
        try:
            result = self._device_step(batches)
        except Exception as e:  # anything dynamo, inductor, a C++ compiler or triton may raise
            self._stop_compiling(e)
            result = self._device_step(batches)
        self.compile_pending = False
        return result

    def _stop_compiling(self, error: Exception) -> None:
        reason = failure_reason(error)
        if self.runtime.compile_required:
            raise BadInput(f"--compile on: torch.compile failed at the first step ({reason}); use --compile off") from None
        print(f"note: torch.compile failed at the first step ({reason}); running eagerly", file=sys.stderr)
        self.compiled = False
        self.forward_model = self._wrap_model()
        self.optimizer.zero_grad(set_to_none=True)

    def _device_step(self, batches: Batches) -> tuple[torch.Tensor, torch.Tensor]:
        """The device work of a step on its micro-batches: forward, backward, clip, optimizer, guard.
        Waits for nothing and keeps its state in place, so a CUDA graph can record it."""
        runtime = self.runtime
        total = torch.zeros((), device=runtime.device)
        for micro, (x, y) in enumerate(batches):
            sync = micro == len(batches) - 1
            with (contextlib.nullcontext() if sync or not runtime.dist.enabled else self.forward_model.no_sync()):
                with autocast(runtime.device, runtime.precision):
                    loss = self.forward_model(x, y) / self.grad_accum
                self.scaler.scale(loss).backward()
            total += loss.detach()
        self.scaler.unscale_(self.optimizer)  # fp16: back to true gradients (an overflow stays inf)
        max_norm = self.grad_clip if self.grad_clip > 0 else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        total = runtime.dist.mean(total)
        finite = torch.isfinite(total) & torch.isfinite(norm)
        if self.optimizer.skips_bad_steps_on_device:
            self.optimizer.step(found_inf=(~finite).float())
        elif bool(finite):  # foreach AdamW (MPS) has no found_inf: decide on the host, waiting for the step
            self.optimizer.step()
        self.scaler.update()  # fp16: halve the scale after an overflow, grow it after 2000 clean steps
        self.optimizer.zero_grad(set_to_none=True)
        self.bad_in_a_row.copy_(torch.where(finite, 0, self.bad_in_a_row + 1))
        self.skipped_steps += (~finite).long()
        return total, norm

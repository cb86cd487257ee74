"""The optimizer and the learning-rate schedule of a training run.

AdamW (fused: one kernel per update, on CPU and CUDA; foreach on MPS) with weight decay on matrices
and embeddings only, as GPT-2 did, or Muon (muon.py) for the blocks' matrices with AdamW for the
rest; embeddings, matrices and the rest may each have their own peak rate. The LR warms up
linearly, then stays constant or decays (cosine or linear) to min_lr_ratio x the peak at the last
step, or stays constant and decays linearly over the last `cooldown` fraction of the steps
(warmup-stable-decay, wsd). Every group follows the same schedule, scaled to its own peak.
"""
import math

import torch

from .config import TrainConfig
from .muon import Muon


def parameter_groups(model: torch.nn.Module) -> dict[str, list[torch.nn.Parameter]]:
    """The model's parameters by role: the token and position embeddings (the token embedding is also
    the output head), the blocks' weight matrices, and the rest (biases, LayerNorms)."""
    groups = {"embeddings": [], "matrices": [], "others": []}
    for name, p in model.named_parameters():
        if p.requires_grad:
            role = "embeddings" if name.startswith(("wte", "wpe")) else "matrices" if p.dim() >= 2 else "others"
            groups[role].append(p)
    return groups


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig, capturable: bool = False) -> "Optimizers":
    """AdamW for every parameter (--optimizer adamw), or Muon for the blocks' matrices and AdamW for
    the rest (muon). The embeddings run at --embed-lr, the matrices at --matrix-lr, the rest at -l;
    weight decay applies to embeddings and matrices only (GPT-2 practice). AdamW is fused (one kernel
    per update) where its found_inf input works, which lets the step skip a bad update on the device;
    foreach elsewhere (see fused_skips_bad_steps). capturable (CUDA): the step count and the learning
    rates live on the device, so a CUDA graph can record the update; set the rates with
    set_learning_rate."""
    groups = parameter_groups(model)
    device = groups["embeddings"][0].device

    def group(params, peak_lr, weight_decay, **options):
        lr = torch.tensor(peak_lr, device=device) if capturable else peak_lr
        return {"params": params, "lr": lr, "lr_scale": peak_lr / cfg.learning_rate, "weight_decay": weight_decay,
                **options}

    embeddings = group(groups["embeddings"], cfg.embed_lr or cfg.learning_rate, cfg.weight_decay)
    others = group(groups["others"], cfg.learning_rate, 0.0)
    matrix_lr = cfg.matrix_lr or cfg.learning_rate
    fused = fused_skips_bad_steps(device)
    adamw_groups = [embeddings, others]
    parts = []
    if cfg.optimizer == "muon":
        by_shape = {}  # one Muon group per weight shape: c_attn (q, k, v: split in 3), c_proj, c_fc, ...
        for p in groups["matrices"]:
            by_shape.setdefault(p.shape, []).append(p)
        parts.append(Muon([group(params, matrix_lr, cfg.weight_decay, split=3 if shape[0] == 3 * shape[1] else 1)
                           for shape, params in by_shape.items()],
                          lr=matrix_lr, momentum=cfg.muon_momentum))
    else:
        adamw_groups.insert(0, group(groups["matrices"], matrix_lr, cfg.weight_decay))
    parts.append(torch.optim.AdamW(adamw_groups, lr=adamw_groups[0]["lr"], betas=(cfg.beta1, cfg.beta2),
                                   eps=cfg.eps, fused=fused, foreach=not fused, capturable=capturable))
    return Optimizers(parts)


class Optimizers:
    """One or more torch optimizers over disjoint parameters, stepped as one: what the trainer,
    GradScaler.unscale_ and the checkpoint use."""

    def __init__(self, parts: list[torch.optim.Optimizer]):
        self.parts = parts

    @property
    def param_groups(self) -> list[dict]:
        return [g for part in self.parts for g in part.param_groups]

    @property
    def state(self) -> dict:
        return {p: s for part in self.parts for p, s in part.state.items()}

    @property
    def skips_bad_steps_on_device(self) -> bool:
        """Whether step(found_inf) skips a bad update by itself (fused AdamW, Muon); otherwise the
        caller must not call step() for a bad one."""
        return all(isinstance(part, Muon) or part.defaults["fused"] for part in self.parts)

    def step(self, found_inf: torch.Tensor | None = None) -> None:
        """Update every parameter; found_inf (0-d float, 1 = bad step) skips it on the device."""
        for part in self.parts:
            part.found_inf = found_inf
            part.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for part in self.parts:
            part.zero_grad(set_to_none=set_to_none)


def fused_skips_bad_steps(device: torch.device) -> bool:
    """Whether fused AdamW on `device` honours found_inf (skips the update when it is 1): yes on CPU
    and CUDA. torch 2.13's MPS kernel accepts found_inf and ignores it, so MPS takes the foreach
    version (the long-standing one there) and the trainer skips bad steps on the host."""
    return device.type != "mps"


def set_learning_rate(optimizer: Optimizers, lr: float) -> None:
    """Set the rate of this step: `lr` is -l's; every group runs at lr x its lr_scale (its peak rate
    over -l's). In place where a rate is a device tensor (capturable), so no step waits."""
    for group in optimizer.param_groups:
        rate = lr * group["lr_scale"]
        if torch.is_tensor(group["lr"]):
            group["lr"].fill_(rate)
        else:
            group["lr"] = rate


def learning_rate(cfg: TrainConfig, step: int, total_steps: int) -> float:
    """LR for 0-based `step`: linear warmup, then constant or decay to min_lr_ratio * lr at the end."""
    peak = cfg.learning_rate
    if step < cfg.warmup_steps:
        return peak * (step + 1) / cfg.warmup_steps
    if cfg.lr_decay == "none":
        return peak
    if cfg.lr_decay == "wsd":
        return wsd_rate(cfg, step, total_steps)
    progress = (step - cfg.warmup_steps) / max(1, total_steps - 1 - cfg.warmup_steps)
    progress = min(1.0, progress)
    floor = peak * cfg.min_lr_ratio
    if cfg.lr_decay == "cosine":
        return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return peak - (peak - floor) * progress  # linear


def wsd_rate(cfg: TrainConfig, step: int, total_steps: int) -> float:
    """Warmup-stable-decay after the warmup: the peak until the last D = max(1, round(cooldown x
    total_steps)) steps (never into the warmup), then down a straight line that reaches
    min_lr_ratio x peak at the last step: step total - D + i (i = 1..D) runs at peak - (peak - floor) i / D."""
    peak = cfg.learning_rate
    start = max(cfg.warmup_steps, total_steps - max(1, round(cfg.cooldown * total_steps)))
    if step < start:
        return peak
    progress = min(1.0, (step - start + 1) / (total_steps - start))
    return peak - (peak - peak * cfg.min_lr_ratio) * progress

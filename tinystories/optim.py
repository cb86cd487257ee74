"""The optimizer and the learning-rate schedule of a training run.

AdamW (fused: one kernel per update, on CPU and CUDA; foreach on MPS) with weight decay on matrices
and embeddings only, as GPT-2 did; the LR warms up linearly, then stays constant or decays (cosine or
linear) to min_lr_ratio x the peak at the last step, or stays constant and decays linearly over the
last `cooldown` fraction of the steps (warmup-stable-decay, wsd).
"""
import math

import torch

from .config import TrainConfig


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig, capturable: bool = False) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices and embeddings only (GPT-2 practice). Fused (one kernel
    per update) where its found_inf input works, which lets train_step skip a bad update on the
    device; foreach elsewhere (see fused_skips_bad_steps). capturable (CUDA): the step count and the
    learning rate live on the device, so a CUDA graph can record the update; set the rate with
    set_learning_rate."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    lr = torch.tensor(cfg.learning_rate, device=params[0].device) if capturable else cfg.learning_rate
    fused = fused_skips_bad_steps(params[0].device)
    return torch.optim.AdamW(groups, lr=lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, fused=fused,
                             foreach=not fused, capturable=capturable)


def fused_skips_bad_steps(device: torch.device) -> bool:
    """Whether fused AdamW on `device` honours found_inf (skips the update when it is 1): yes on CPU
    and CUDA. torch 2.13's MPS kernel accepts found_inf and ignores it, so MPS takes the foreach
    version (the long-standing one there) and the trainer skips bad steps on the host."""
    return device.type != "mps"


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every group's rate: in place where it is a device tensor (capturable), so no step waits."""
    for group in optimizer.param_groups:
        if torch.is_tensor(group["lr"]):
            group["lr"].fill_(lr)
        else:
            group["lr"] = lr


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

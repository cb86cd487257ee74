"""The optimizer and the learning-rate schedule of a training run.

AdamW (fused: one kernel per update, on CPU and CUDA) with weight decay on matrices and embeddings
only, as GPT-2 did; the LR warms up linearly, then stays constant or decays (cosine or linear) to
min_lr_ratio x the peak at the last step.
"""
import math

import torch

from .config import TrainConfig


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices and embeddings only (GPT-2 practice). Fused (one kernel
    per update, on CPU and CUDA), which also lets train_step skip a bad update on the device."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, fused=True)


def learning_rate(cfg: TrainConfig, step: int, total_steps: int) -> float:
    """LR for 0-based `step`: linear warmup, then constant or decay to min_lr_ratio * lr at the end."""
    peak = cfg.learning_rate
    if step < cfg.warmup_steps:
        return peak * (step + 1) / cfg.warmup_steps
    if cfg.lr_decay == "none":
        return peak
    progress = (step - cfg.warmup_steps) / max(1, total_steps - 1 - cfg.warmup_steps)
    progress = min(1.0, progress)
    floor = peak * cfg.min_lr_ratio
    if cfg.lr_decay == "cosine":
        return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return peak - (peak - floor) * progress  # linear

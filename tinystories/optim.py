"""The optimizer and the learning-rate schedule of a training run.

--optimizer names an entry of registry.OPTIMIZERS: a builder of Parts (a torch optimizer and what
the trainer and the checkpoint need of it) from the model's parameter Roles. AdamW (fused: one kernel per update, on CPU and CUDA; foreach on MPS) with weight decay on matrices
and embeddings only, as GPT-2 did, or Muon (muon.py) for the blocks' matrices with AdamW for the
rest; embeddings, matrices and the rest may each have their own peak rate. The LR warms up
linearly, then stays constant or decays (cosine or linear) to min_lr_ratio x the peak at the last
step, or stays constant and decays linearly over the last `cooldown` fraction of the steps
(warmup-stable-decay, wsd). Every group follows the same schedule, scaled to its own peak.
"""
import math
from dataclasses import dataclass

import torch

from . import registry
from .config import TrainConfig


class Roles:
    """The model's parameters by role, and torch parameter groups of them at each role's peak rate: the
    token and position embeddings and the output head (the token embedding, or an untied lm_head; at --embed-lr), the
    blocks' weight matrices (at --matrix-lr), and the rest, biases and LayerNorms (at -l). Weight
    decay applies to embeddings and matrices only (GPT-2 practice). capturable (CUDA): the rates are
    device tensors, so a CUDA graph can record the update; set them with set_learning_rate."""

    def __init__(self, model: torch.nn.Module, cfg: TrainConfig, capturable: bool = False):
        self.embeddings, self.matrices, self.others = [], [], []
        for name, p in model.named_parameters():
            if p.requires_grad:
                role = self.embeddings if name.startswith(("wte", "wpe", "lm_head")) else self.matrices if p.dim() >= 2 else self.others
                role.append(p)
        self.cfg, self.capturable = cfg, capturable
        self.device = self.embeddings[0].device
        self.matrix_lr = cfg.matrix_lr or cfg.learning_rate

    def group(self, params: list, peak_lr: float, weight_decay: float, **options) -> dict:
        """A torch parameter group at `peak_lr`; lr_scale is its peak over -l's, which the schedule scales."""
        lr = torch.tensor(peak_lr, device=self.device) if self.capturable else peak_lr
        return {"params": params, "lr": lr, "lr_scale": peak_lr / self.cfg.learning_rate, "weight_decay": weight_decay,
                **options}

    def embedding_group(self) -> dict:
        return self.group(self.embeddings, self.cfg.embed_lr or self.cfg.learning_rate, self.cfg.weight_decay)

    def matrix_group(self, params: list | None = None, **options) -> dict:
        return self.group(self.matrices if params is None else params, self.matrix_lr, self.cfg.weight_decay, **options)

    def other_group(self) -> dict:
        return self.group(self.others, self.cfg.learning_rate, 0.0)


@dataclass
class Part:
    """One torch optimizer over some of the parameters, and what the trainer and the checkpoint need of it."""
    optimizer: torch.optim.Optimizer  # its step takes found_inf (0-d float, 1 = a bad step)
    moments: dict[str, str]  # the state it saves: state key -> checkpoint tensor prefix
    state_name: str  # what that state is called in messages ("AdamW moments")
    skips_bad_steps: bool  # step(found_inf) skips a bad update on the device by itself
    counts_steps: bool = False  # its state holds a step count per parameter (AdamW's bias correction)


class SkippingAdamW(torch.optim.AdamW):
    """AdamW whose step takes found_inf: fused AdamW skips the update on the device when it is 1 (it
    reads the found_inf attribute, the protocol torch's GradScaler uses)."""

    def step(self, found_inf: torch.Tensor | None = None):
        self.found_inf = found_inf
        return super().step()


def adamw_part(groups: list[dict], roles: Roles) -> Part:
    """AdamW over `groups`: fused (one kernel per update) where its found_inf input works, which lets
    the step skip a bad update on the device; foreach elsewhere (see fused_skips_bad_steps)."""
    cfg, fused = roles.cfg, fused_skips_bad_steps(roles.device)
    adamw = SkippingAdamW(groups, lr=groups[0]["lr"], betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, fused=fused,
                          foreach=not fused, capturable=roles.capturable)
    return Part(adamw, {"exp_avg": "adam_m", "exp_avg_sq": "adam_v"}, "AdamW moments", skips_bad_steps=fused, counts_steps=True)


def adamw_parts(roles: Roles, cfg: TrainConfig) -> list[Part]:
    """--optimizer adamw: AdamW for every parameter."""
    return [adamw_part([roles.matrix_group(), roles.embedding_group(), roles.other_group()], roles)]


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig, capturable: bool = False) -> "Optimizers":
    """The optimizer --optimizer names (registry.OPTIMIZERS) over the model's parameters (see Roles)."""
    build = registry.load(registry.OPTIMIZERS[cfg.optimizer])
    return Optimizers(build(Roles(model, cfg, capturable), cfg))


class Optimizers:
    """One or more torch optimizers over disjoint parameters, stepped as one: what the trainer,
    GradScaler.unscale_ and the checkpoint use."""

    def __init__(self, parts: list[Part]):
        self.parts = parts

    @property
    def param_groups(self) -> list[dict]:
        return [g for part in self.parts for g in part.optimizer.param_groups]

    @property
    def state(self) -> dict:
        return {p: s for part in self.parts for p, s in part.optimizer.state.items()}

    @property
    def skips_bad_steps_on_device(self) -> bool:
        """Whether step(found_inf) skips a bad update by itself; otherwise the caller must not call
        step() for a bad one."""
        return all(part.skips_bad_steps for part in self.parts)

    def step(self, found_inf: torch.Tensor | None = None) -> None:
        """Update every parameter; found_inf (0-d float, 1 = bad step) skips it on the device."""
        for part in self.parts:
            part.optimizer.step(found_inf=found_inf)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for part in self.parts:
            part.optimizer.zero_grad(set_to_none=set_to_none)

    def state_tensors(self, names: dict) -> dict[str, torch.Tensor]:
        """The state every part saves, as checkpoint tensors "<prefix>.<parameter name>" (names: id(p) -> name)."""
        return {f"{part.moments[key]}.{names[id(p)]}": value for part in self.parts
                for p, state in part.optimizer.state.items() for key, value in state.items() if key in part.moments}

    def load_state_tensors(self, saved, names: dict, step: int) -> list[str]:
        """Put the checkpoint tensors back: saved(key, p) gives the tensor "<prefix>.<name>" of parameter p,
        or None. `step` is the run's step (AdamW's step count). Returns what is missing, as "<state name>
        of <parameter>" (nothing is expected to be missing after step 0)."""
        missing = []
        for part in self.parts:
            params = [p for g in part.optimizer.param_groups for p in g["params"]]
            restored = {}
            for i, p in enumerate(params):
                moments = {key: saved(f"{prefix}.{names[id(p)]}", p) for key, prefix in part.moments.items()}
                if None in moments.values():
                    missing.append(f"{part.state_name} of {names[id(p)]}")
                    continue
                restored[i] = {"step": torch.tensor(float(step)), **moments} if part.counts_steps else moments
            full = part.optimizer.state_dict()
            full["state"] = restored
            part.optimizer.load_state_dict(full)
        return missing


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

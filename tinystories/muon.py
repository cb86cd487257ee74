"""Muon: momentum, then orthogonalised updates, for the blocks' weight matrices.

For a weight matrix W (out, in) with gradient G, one step is

    M  <- mu M + (1 - mu) G                 momentum (an average of past gradients)
    U  <- (1 - mu) G + mu M                 Nesterov: look one step ahead
    O  <- orthogonalise(U)                  ~ U's singular vectors with every singular value ~1
    W  <- W (1 - lr wd) - lr 0.2 sqrt(max(out, in)) O

orthogonalise runs 5 Newton-Schulz iterations X <- a X + (b A + c A^2) X with A = X X^T on U / |U|,
with the coefficients (a, b, c) = (3.4445, -4.7750, 2.0315) of Keller Jordan's Muon, which push every
singular value into roughly [0.5, 1.3] in 5 matrix-product steps. 0.2 sqrt(max(out, in)) gives the
update the RMS of a typical AdamW update (Moonlight's scaling), so Muon takes learning rates on
AdamW's scale.

A weight that holds several matrices side by side is orthogonalised per matrix: `split` = 3 for
attention's c_attn (q, k and v stacked, (3C, C)). The weights of a parameter group (one shape each:
the c_attn, attention c_proj, c_fc and MLP c_proj of all layers) are stacked and updated as one batch,
so a step is a few dozen kernels, not a dozen per weight.

Like the trainer's fused AdamW, a step takes `found_inf` (step(found_inf); 1 = a non-finite loss
or gradient): then neither the weights nor the momentum change. Everything stays on the device and
the learning rate may be a device tensor, so a CUDA graph can record the step.
"""
import math
from dataclasses import dataclass

import torch

from .config import TrainConfig
from .optim import Part, Roles, adamw_part

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
NS_STEPS = 5


def orthogonalise(u: torch.Tensor, steps: int = NS_STEPS) -> torch.Tensor:
    """Newton-Schulz orthogonalisation of a batch of matrices u (n, rows, cols), in fp32."""
    a, b, c = NS_COEFFICIENTS
    tall = u.size(1) > u.size(2)
    x = u.float().mT if tall else u.float()  # (n, r, k) with r <= k: the Gram matrix is the small side
    x = x / x.norm(dim=(1, 2), keepdim=True).clamp(min=1e-7)  # every singular value <= 1
    for _ in range(steps):
        gram = x @ x.mT  # (n, r, r)
        x = torch.baddbmm(x, torch.baddbmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)  # a x + (b A + c A^2) x
    return x.mT if tall else x


def orthogonalise_batches(batches: list[torch.Tensor]) -> list[torch.Tensor]:
    """orthogonalise for several batches of matrices; those whose matrices have one shape, or its
    transpose, share one call (c_attn's q, k, v with attention's c_proj; c_fc with the MLP's c_proj)."""
    wide = [b.mT if b.size(1) > b.size(2) else b for b in batches]
    by_shape = {}
    for i, b in enumerate(wide):
        by_shape.setdefault(b.shape[1:], []).append(i)
    result = [None] * len(batches)
    for indices in by_shape.values():
        joined = orthogonalise(torch.cat([wide[i] for i in indices]))
        for i, part in zip(indices, joined.split([wide[i].size(0) for i in indices])):
            result[i] = part.mT if batches[i].size(1) > batches[i].size(2) else part
    return result


class Muon(torch.optim.Optimizer):
    """Muon for 2-D weights. Every parameter of a group must have the same shape (they are updated
    as one stacked batch); a group's `split` k says each weight is k matrices stacked along its rows
    (k = 3 for c_attn). lr may be a float or a 0-d device tensor (capturable)."""

    def __init__(self, params, lr, momentum: float = 0.95, weight_decay: float = 0.0, split: int = 1):
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay, "split": split})
        for group in self.param_groups:
            if len({p.shape for p in group["params"]}) > 1:
                raise ValueError("Muon: the parameters of a group must have one shape")

    @torch.no_grad()
    def step(self, found_inf: torch.Tensor | None = None):
        """One update of every parameter with a gradient; found_inf (0-d float, 1 = a bad step) keeps
        the weights and the momentum as they are."""
        keep = None if found_inf is None else found_inf == 0  # 0-d bool on the device
        stacks = [self._momentum(group, params) for group in self.param_groups
                  if (params := [p for p in group["params"] if p.grad is not None])]
        for stack, o in zip(stacks, orthogonalise_batches([stack.matrices() for stack in stacks])):
            self._apply(stack, o.reshape(stack.weights.shape).to(stack.weights.dtype), keep)

    def _momentum(self, group: dict, params: list[torch.Tensor]) -> "Stack":
        """The group's weights, momentum and gradients stacked; the new momentum and the update."""
        mu = group["momentum"]
        buffers = [self.state[p].setdefault("momentum_buffer", torch.zeros_like(p)) for p in params]
        weights, grads, momentum = torch.stack(params), torch.stack([p.grad for p in params]), torch.stack(buffers)
        new_momentum = momentum.lerp(grads, 1 - mu)  # (n, rows, cols)
        return Stack(group, params, buffers, weights, momentum, new_momentum, grads.lerp(new_momentum, mu))

    def _apply(self, stack: "Stack", o: torch.Tensor, keep: torch.Tensor | None) -> None:
        """Write the group's new weights and momentum from o (n, rows, cols), unless `keep` is False."""
        group, weights, lr = stack.group, stack.weights, stack.group["lr"]
        rows, cols = stack.matrices().shape[1:]
        new_weights = weights - (lr * 0.2 * math.sqrt(max(rows, cols))) * o
        if group["weight_decay"]:
            new_weights -= (lr * group["weight_decay"]) * weights
        if keep is not None:
            new_weights = torch.where(keep, new_weights, weights)
            new_momentum = torch.where(keep, stack.new_momentum, stack.momentum)
        else:
            new_momentum = stack.new_momentum
        torch._foreach_copy_(stack.params, new_weights.unbind())
        torch._foreach_copy_(stack.buffers, new_momentum.unbind())


def muon_parts(roles: Roles, cfg: TrainConfig) -> list[Part]:
    """--optimizer muon: Muon for the blocks' weight matrices, one group per shape (c_attn's q, k, v
    split in 3; c_proj, c_fc, ...), and AdamW for the embeddings and the rest."""
    by_shape = {}
    for p in roles.matrices:
        by_shape.setdefault(p.shape, []).append(p)
    groups = [roles.matrix_group(params, split=3 if shape[0] == 3 * shape[1] else 1) for shape, params in by_shape.items()]
    muon = Muon(groups, lr=roles.matrix_lr, momentum=cfg.muon_momentum)
    return [Part(muon, {"momentum_buffer": "muon_m"}, "Muon momentum", skips_bad_steps=True),
            adamw_part([roles.embedding_group(), roles.other_group()], roles)]


@dataclass
class Stack:
    """One Muon group during a step: its n weights, their momentum and so on as (n, rows, cols) tensors."""
    group: dict
    params: list[torch.Tensor]
    buffers: list[torch.Tensor]  # the momentum buffers of params, in the optimizer's state
    weights: torch.Tensor
    momentum: torch.Tensor
    new_momentum: torch.Tensor
    update: torch.Tensor

    def matrices(self) -> torch.Tensor:
        """The update as the matrices it orthogonalises: (n k, rows / k, cols) for split k."""
        n, rows, cols = self.update.shape
        return self.update.view(n * self.group["split"], rows // self.group["split"], cols)

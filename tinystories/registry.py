"""What --optimizer and --head-loss can name: one table each, the one place an implementation is registered.

An entry names the function that builds or computes it as "module:function", imported only when it
is chosen, so this module (and config.py, which takes the flags' choices from here) never imports
torch. Adding an optimizer or an output-layer loss is its own module plus one line here.

    OPTIMIZERS   name -> the builder `(roles: optim.Roles, cfg: TrainConfig) -> list[optim.Part]`;
                 each Part declares what the trainer and the checkpoint need of it: the optimizer
                 state it saves (state key -> checkpoint tensor prefix), whether its step skips a
                 bad update on the device (found_inf), whether its state counts steps (AdamW)
    HEAD_LOSSES  name -> HeadLoss: the loss `(h (N, C), weight (V, C), targets (N,)) -> scalar`,
                 and the hardware it needs; --head-loss auto takes the first entry that `auto`
                 allows on the run's device (device.select_head_loss)
"""
import importlib
from dataclasses import dataclass


def load(target: str):
    """The object named by "module:attribute"."""
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


OPTIMIZERS = {
    "adamw": "tinystories.optim:adamw_parts",  # AdamW for every parameter (the original's)
    "muon": "tinystories.muon:muon_parts",  # Muon for the blocks' matrices, AdamW for the rest
}


@dataclass(frozen=True)
class HeadLoss:
    """An output layer + cross-entropy implementation and what it needs to run."""
    name: str
    target: str  # "module:function"
    device: str | None = None  # the device type it runs on; None: any
    capability: tuple[int, int] = (0, 0)  # on CUDA: the compute capability it needs ...
    bf16_capability: tuple[int, int] = (0, 0)  # ... and under bf16
    package: str | None = None  # an optional package it imports (not installed: auto passes it over)
    auto_capability: tuple[int, int] | None = None  # auto picks it on CUDA of at least this; None: everywhere

    def load(self):
        return load(self.target)


HEAD_LOSSES = {
    "chunked": HeadLoss("chunked", "tinystories.kernels.fused_ce:fused_head_loss"),
    # Triton 3 supports 8.0+; on 7.x it compiles (bf16 excepted) but has not run there, so auto skips it
    "triton": HeadLoss("triton", "tinystories.kernels.triton_ce:triton_head_loss", device="cuda", capability=(7, 0),
                       bf16_capability=(8, 0), package="triton", auto_capability=(8, 0)),
    "plain": HeadLoss("plain", "tinystories.model:plain_head_loss"),  # the reference formulation
}
AUTO_HEAD_LOSSES = ("triton", "chunked")  # --head-loss auto: the first of these that can run here

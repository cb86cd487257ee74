"""What a checkpoint holds and how a run resumes from one.

A checkpoint (-c) is a model file (llm.c's, or ours for another block) with our training-state
trailer (formats.py owns the bytes). What a run restores from it is a RunState; the trailer's
metadata says where the run stands and how it was trained:

    format          "tinystories-train-state"
    run_id, step    the run and the number of steps done
    data_position   token offset of the next global batch (the same on any number of ranks)
    model_config    the GPTConfig it belongs to (GPTConfig.record)
    batch_size, seq_len, grad_accum, world_size, train_tokens_file, train_tokens_count, optimizer,
    learning_rate, lr_decay   how it was trained (training_setup; optimizer is absent in older
                    checkpoints: adamw; the token count and the schedule's two are absent before issue 32)
    counters        skipped_steps, tokens, and under fp16 grad_scaler (the loss scale)
    RESULT_KEYS     where logged so far: last_train_loss, last_train_step, last_val_loss,
                    last_val_step, last_val_bits_per_byte (--val-batches all, else null),
                    best_val_loss, best_val_step (the lowest val loss of the run and its step;
                    <name>.best.bin holds that step's state); export's model card reads them

and its tensors are the optimizer's state, as each optimizer declares it (optim.Part: AdamW's
moments `adam_m.<param>`, `adam_v.<param>`, Muon's momentum `muon_m.<param>`), the torch RNG
state (`torch_rng`) and, for a run on a trained BPE, its tokenizer.json (`tokenizer_json`, UTF-8
bytes; the model header names the same tokenizer, tokenizer.for_model reads it). Rank 0 writes it;
resuming puts every one of these back, so N steps + resume for M steps equal N + M steps without a
stop. A checkpoint is never written from non-finite weights.
"""
import os
import uuid
from dataclasses import dataclass, field

import numpy as np
import torch

from . import llmc
from .config import TrainConfig
from .errors import BadInput
from .formats import ModelFile, TrainingState, read_state_meta, write_model
from .optim import Optimizers
from .outputs import CHECKPOINT, MODEL, check_output, same_file
from .tokenizer import Tokenizer, checkpoint_tensors

STATE_FORMAT = "tinystories-train-state"
RESULT_KEYS = ("last_train_loss", "last_train_step", "last_val_loss", "last_val_step", "last_val_bits_per_byte",
               "best_val_loss", "best_val_step")
# a resumed run with other values no longer repeats the run (it says so; the data position stays)
SETUP_KEYS = ("batch_size", "seq_len", "grad_accum", "train_tokens_file", "train_tokens_count")
SCHEDULE_KEYS = ("learning_rate", "lr_decay")  # may change on purpose (a lower -l after a divergence): said, no note


@dataclass
class RunState:
    """Everything about a run that a checkpoint restores, besides the weights and the optimizer."""
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    step: int = 0  # steps done
    tokens: int = 0  # tokens trained on
    skipped_steps: int = 0  # steps skipped for a non-finite loss or gradient
    data_position: int = 0  # token offset of the next global batch
    loss_scale: dict | None = None  # fp16's GradScaler state
    results: dict = field(default_factory=dict)  # RESULT_KEYS: the last losses and the best val loss so far


def training_setup(cfg: TrainConfig, seq_len: int, world: int, train_tokens: int) -> dict:
    """How a run trains, as its checkpoints record it (`train_tokens`: the count of -i's tokens)."""
    return {"train_tokens_file": os.path.basename(cfg.train_tokens), "train_tokens_count": train_tokens,
            "batch_size": cfg.batch_size, "seq_len": seq_len, "grad_accum": cfg.grad_accum, "world_size": world,
            "optimizer": cfg.optimizer, "learning_rate": cfg.learning_rate, "lr_decay": cfg.lr_decay}


def state_meta(state: RunState, setup: dict, model) -> dict:
    counters = {"skipped_steps": state.skipped_steps, "tokens": state.tokens}
    if state.loss_scale:
        counters["grad_scaler"] = state.loss_scale
    return {"format": STATE_FORMAT, "run_id": state.run_id, "step": state.step, "data_position": state.data_position,
            "model_config": model.config.record(), **setup, "counters": counters, **state.results}


def save(path: str, model, optimizer: Optimizers, state: RunState, setup: dict, tokenizer: Tokenizer) -> None:
    """Write the model's weights, the optimizer's state, the RNG state, `state` and the tokenizer to
    `path`, atomically. BadInput, writing nothing, when a weight is not finite."""
    params = llmc.model_params(model)
    bad = [name for name, array in params.items() if not np.isfinite(array).all()]
    if bad:
        raise BadInput(f"{path}: not saved: the weights at step {state.step} hold NaN or infinite values "
                       f"(in {bad[0]}); the file on disk is unchanged")
    names = {id(p): name for name, p in model.named_parameters()}
    tensors = {key: value.detach().float().cpu().numpy() for key, value in optimizer.state_tensors(names).items()}
    tensors["torch_rng"] = torch.get_rng_state().numpy()
    tensors.update(checkpoint_tensors(tokenizer))
    write_model(path, model.config, params, TrainingState(state_meta(state, setup, model), tensors), tokenizer.record)


def restore(model_file: ModelFile, path: str, model, optimizer: Optimizers, setup: dict) -> RunState:
    """Put a checkpoint's optimizer state and RNG state back; returns its RunState (after checking
    that it belongs to this model file and was trained with setup's optimizer)."""
    meta = check_resumable(model_file, path)
    trained_with = meta.get("optimizer", "adamw")
    if trained_with != setup["optimizer"]:
        raise BadInput(f"{path}: checkpoint was trained with --optimizer {trained_with}; resume it with the same "
                       f"optimizer (not {setup['optimizer']})")
    names = {id(p): name for name, p in model.named_parameters()}
    missing = optimizer.load_state_tensors(lambda key, p: saved_tensor(model_file.state, key, p, path), names, meta["step"])
    if missing and meta["step"] > 0:
        raise BadInput(f"{path}: training state lacks the {missing[0]}")
    rng = model_file.state.tensors.get("torch_rng")
    if rng is not None:
        try:
            torch.set_rng_state(torch.from_numpy(rng.copy()))
        except (TypeError, RuntimeError):  # wrong dtype or size
            raise BadInput(f"{path}: training state holds a malformed torch_rng") from None
    counters = meta.get("counters", {})
    return RunState(run_id=meta["run_id"], step=meta["step"], tokens=counters.get("tokens", 0),
                    skipped_steps=counters.get("skipped_steps", 0), data_position=meta["data_position"],
                    loss_scale=counters.get("grad_scaler"), results={k: meta[k] for k in RESULT_KEYS if k in meta})


def changed_setup(model_file: ModelFile, setup: dict, keys=SETUP_KEYS) -> list[str]:
    """The `keys` whose values differ from those the checkpoint was trained with (and records), as
    'key (old -> new)'."""
    meta = model_file.state.meta
    return [f"{key} ({meta[key]} -> {setup[key]})" for key in keys if key in meta and meta[key] != setup[key]]


def check_resumable(model_file: ModelFile, path: str) -> dict:
    """The checkpoint's metadata, after checking that it belongs to this model file."""
    meta = model_file.state.meta
    if meta.get("format") != STATE_FORMAT:
        raise BadInput(f"{path}: training state has an unknown format {meta.get('format')!r}")
    if meta.get("model_config") != model_file.config.record():
        raise BadInput(f"{path}: training state belongs to another model config ({meta.get('model_config')})")
    for key in ("run_id", "step", "data_position"):
        if key not in meta:
            raise BadInput(f"{path}: training state lacks '{key}'")
    if not isinstance(meta["step"], int) or meta["step"] < 0 or not isinstance(meta["data_position"], int):
        raise BadInput(f"{path}: training state has a bad step or data position")
    return meta


def saved_tensor(state: TrainingState, key: str, p: torch.Tensor, path: str) -> torch.Tensor | None:
    """The checkpoint tensor `key` for parameter p (None if absent); BadInput if its shape is wrong."""
    value = state.tensors.get(key)
    if value is None:
        return None
    if tuple(value.shape) != tuple(p.shape):
        raise BadInput(f"{path}: training state tensor {key} has the wrong shape {tuple(value.shape)}")
    return torch.from_numpy(value.copy())


def check_output_paths(cfg: TrainConfig, metrics_path: str | None, derived_paths: list[str]) -> None:
    """BadInput unless -c, the metrics log and the files a run writes beside -c (`derived_paths`: its
    step and best files) can be written (outputs.check_output), and neither -c nor the metrics log
    would overwrite an input."""
    paths = {"-e": cfg.model, "-i": cfg.train_tokens, "-j": cfg.val_tokens, "-c": cfg.checkpoint,
             "--metrics": metrics_path}
    for output, source in (("-c", "-i"), ("-c", "-j"), ("--metrics", "-e"), ("--metrics", "-i"),
                           ("--metrics", "-j"), ("--metrics", "-c")):
        if same_file(paths[output], paths[source]):
            raise BadInput(f"{output} {paths[output]}: is the same file as {source}, which it would overwrite")
    if cfg.checkpoint:
        check_output(cfg.checkpoint, "-c", replaces=(MODEL, CHECKPOINT), force="--overwrite", forced=cfg.overwrite)
        for derived in derived_paths:
            check_output(derived, f"-c {cfg.checkpoint}: its file", replaces=(CHECKPOINT,))
    if metrics_path:
        check_output(metrics_path, "--metrics" if cfg.metrics else f"-c {cfg.checkpoint}: its metrics log")


def check_not_another_run(checkpoint: str, run_id: str) -> None:
    """BadInput when `checkpoint` (-c) holds a checkpoint of a run other than run_id: starting a run
    must not replace another run's checkpoint and its metrics log (--overwrite allows it)."""
    theirs = run_id_or_none(checkpoint)
    if theirs is not None and theirs != run_id:
        step = read_state_meta(checkpoint).get("step")
        raise BadInput(f"-c {checkpoint}: holds step {step} of another run; resume it with -e {checkpoint}, "
                       f"or pass --overwrite to replace it (and the metrics log)")


def run_id_or_none(path: str) -> str | None:
    """The run id of the checkpoint at `path`; None when there is none: no such file, a model file
    without training state, or a file that is not a checkpoint we can read."""
    if not os.path.isfile(path):
        return None
    try:
        meta = read_state_meta(path)
    except BadInput:
        return None
    return None if meta is None else meta.get("run_id")


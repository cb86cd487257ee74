"""What a checkpoint holds and how a run resumes from one.

A checkpoint (-c) is an llm.c model file with our training-state trailer (formats.py owns the
bytes). The trailer's metadata says where the run stands:

    format          "tinystories-train-state"
    run_id, step    the run and the number of steps done
    data_position   token offset of the next global batch (the same on any number of ranks)
    model_config    the GPTConfig it belongs to
    batch_size, seq_len, grad_accum, world_size, train_tokens_file   how it was trained
    counters        skipped_steps, tokens
    RESULT_KEYS     where logged so far: last_train_loss, last_train_step, last_val_loss,
                    last_val_step, last_val_bits_per_byte (--val-batches all, else null),
                    best_val_loss, best_val_step (the lowest val loss of the run and its step;
                    <name>.best.bin holds that step's state); export's model card reads them

    optimizer       adamw or muon (absent in older checkpoints: adamw)

and its tensors are the AdamW moments (`adam_m.<param>`, `adam_v.<param>`), Muon's momentum of each
matrix it trains (`muon_m.<param>`), and the torch RNG state (`torch_rng`). Rank 0 writes it;
resuming puts every one of these back, so N steps + resume for M steps equal N + M steps without a
stop.
"""
import os
from dataclasses import asdict

import torch

from . import llmc
from .config import GPTConfig, TrainConfig
from .errors import BadInput
from .formats import ModelFile, TrainingState, write_model
from .muon import Muon
from .optim import Optimizers

STATE_FORMAT = "tinystories-train-state"
RESULT_KEYS = ("last_train_loss", "last_train_step", "last_val_loss", "last_val_step", "last_val_bits_per_byte",
               "best_val_loss", "best_val_step")


def state_meta(cfg: TrainConfig, config: GPTConfig, run_id: str, step: int, data_position: int,
               counters: dict, world: int, seq_len: int) -> dict:
    return {
        "format": STATE_FORMAT,
        "run_id": run_id,
        "step": step,
        "data_position": data_position,
        "train_tokens_file": os.path.basename(cfg.train_tokens),
        "model_config": asdict(config),
        "batch_size": cfg.batch_size,
        "seq_len": seq_len,
        "grad_accum": cfg.grad_accum,
        "world_size": world,
        "counters": counters,
        "optimizer": cfg.optimizer,
    }


# optimizer state key -> checkpoint tensor prefix
MOMENTS = {"exp_avg": "adam_m", "exp_avg_sq": "adam_v", "momentum_buffer": "muon_m"}


def save(path: str, model, optimizer: Optimizers, meta: dict) -> None:
    """Write the model's weights, the optimizer's moments and the RNG state to `path`, atomically."""
    tensors = {}
    for name, p in model.named_parameters():
        for key, value in optimizer.state.get(p, {}).items():
            if key in MOMENTS:
                tensors[f"{MOMENTS[key]}.{name}"] = value.detach().float().cpu().numpy()
    tensors["torch_rng"] = torch.get_rng_state().numpy()
    write_model(path, model.config, llmc.model_params(model), TrainingState(meta, tensors))


def restore(model_file: ModelFile, path: str, model, optimizer: Optimizers, optimizer_name: str) -> dict:
    """Put a checkpoint's optimizer moments and RNG state back; returns its metadata (after checking
    that it belongs to this model file and was trained with `optimizer_name`)."""
    meta = check_resumable(model_file, path)
    trained_with = meta.get("optimizer", "adamw")
    if trained_with != optimizer_name:
        raise BadInput(f"{path}: checkpoint was trained with --optimizer {trained_with}; resume it with the same "
                       f"optimizer (not {optimizer_name})")
    restore_optimizer(optimizer, model, model_file.state, path)
    rng = model_file.state.tensors.get("torch_rng")
    if rng is not None:
        try:
            torch.set_rng_state(torch.from_numpy(rng.copy()))
        except (TypeError, RuntimeError):  # wrong dtype or size
            raise BadInput(f"{path}: training state holds a malformed torch_rng") from None
    return meta


def check_resumable(model_file: ModelFile, path: str) -> dict:
    """The checkpoint's metadata, after checking that it belongs to this model file."""
    meta = model_file.state.meta
    if meta.get("format") != STATE_FORMAT:
        raise BadInput(f"{path}: training state has an unknown format {meta.get('format')!r}")
    if meta.get("model_config") != asdict(model_file.config):
        raise BadInput(f"{path}: training state belongs to another model config ({meta.get('model_config')})")
    for key in ("run_id", "step", "data_position"):
        if key not in meta:
            raise BadInput(f"{path}: training state lacks '{key}'")
    if not isinstance(meta["step"], int) or meta["step"] < 0 or not isinstance(meta["data_position"], int):
        raise BadInput(f"{path}: training state has a bad step or data position")
    return meta


def restore_optimizer(optimizer: Optimizers, model, state: TrainingState, path: str) -> None:
    """Put the moments of a checkpoint back into each of the optimizer's parts (with AdamW's step count)."""
    names = {id(p): name for name, p in model.named_parameters()}
    step = float(state.meta["step"])
    for part in optimizer.parts:
        keys = ("momentum_buffer",) if isinstance(part, Muon) else ("exp_avg", "exp_avg_sq")
        params = [p for g in part.param_groups for p in g["params"]]
        saved = {}
        for i, p in enumerate(params):
            moments = {key: saved_moment(state, f"{MOMENTS[key]}.{names[id(p)]}", p, path) for key in keys}
            if None in moments.values():
                if step == 0:
                    continue
                kind = "Muon momentum" if isinstance(part, Muon) else "AdamW moments"
                raise BadInput(f"{path}: training state lacks the {kind} of {names[id(p)]}")
            saved[i] = moments if isinstance(part, Muon) else {"step": torch.tensor(step), **moments}
        full = part.state_dict()
        full["state"] = saved
        part.load_state_dict(full)


def saved_moment(state: TrainingState, key: str, p: torch.Tensor, path: str) -> torch.Tensor | None:
    """The checkpoint tensor `key` for parameter p (None if absent); BadInput if its shape is wrong."""
    value = state.tensors.get(key)
    if value is None:
        return None
    if tuple(value.shape) != tuple(p.shape):
        raise BadInput(f"{path}: training state tensor {key} has the wrong shape {tuple(value.shape)}")
    return torch.from_numpy(value.copy())


def check_output_paths(cfg: TrainConfig, metrics_path: str | None) -> None:
    """BadInput unless -c can be written and neither -c nor the metrics log would overwrite an input."""
    if cfg.checkpoint:
        folder = os.path.dirname(os.path.abspath(cfg.checkpoint))
        if not os.path.isdir(folder):
            raise BadInput(f"-c {cfg.checkpoint}: folder {folder} does not exist")
        if not os.access(folder, os.W_OK):
            raise BadInput(f"-c {cfg.checkpoint}: folder {folder} is not writable")
        if os.path.isdir(cfg.checkpoint):
            raise BadInput(f"-c {cfg.checkpoint}: is a folder, expected a file name")
    paths = {"-e": cfg.model, "-i": cfg.train_tokens, "-j": cfg.val_tokens, "-c": cfg.checkpoint,
             "--metrics": metrics_path}
    for output, source in (("-c", "-i"), ("-c", "-j"), ("--metrics", "-e"), ("--metrics", "-i"),
                           ("--metrics", "-j"), ("--metrics", "-c")):
        if same_file(paths[output], paths[source]):
            raise BadInput(f"{output} {paths[output]}: is the same file as {source}, which it would overwrite")


def same_file(a: str | None, b: str | None) -> bool:
    return bool(a and b) and os.path.exists(a) and os.path.exists(b) and os.path.samefile(a, b)

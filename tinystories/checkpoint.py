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

and its tensors are the AdamW moments (`adam_m.<param>`, `adam_v.<param>`) and the torch RNG state
(`torch_rng`). Rank 0 writes it; resuming puts every one of these back, so N steps + resume for M
steps equal N + M steps without a stop.
"""
import os
from dataclasses import asdict

import torch

from . import llmc
from .config import GPTConfig, TrainConfig
from .errors import BadInput
from .formats import ModelFile, TrainingState, write_model

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
    }


def save(path: str, model, optimizer: torch.optim.AdamW, meta: dict) -> None:
    """Write the model's weights, the AdamW moments and the RNG state to `path`, atomically."""
    tensors = {}
    for name, p in model.named_parameters():
        moments = optimizer.state.get(p, {})
        if "exp_avg" in moments:
            tensors[f"adam_m.{name}"] = moments["exp_avg"].detach().float().cpu().numpy()
            tensors[f"adam_v.{name}"] = moments["exp_avg_sq"].detach().float().cpu().numpy()
    tensors["torch_rng"] = torch.get_rng_state().numpy()
    write_model(path, model.config, llmc.model_params(model), TrainingState(meta, tensors))


def restore(model_file: ModelFile, path: str, model, optimizer: torch.optim.AdamW) -> dict:
    """Put a checkpoint's AdamW moments and RNG state back; returns its metadata (after checking
    that it belongs to this model file)."""
    meta = check_resumable(model_file, path)
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


def restore_optimizer(optimizer: torch.optim.AdamW, model, state: TrainingState, path: str) -> None:
    """Put the AdamW moments and step count of a checkpoint back into `optimizer`."""
    step = float(state.meta["step"])
    index = {id(p): i for i, p in enumerate(p for g in optimizer.param_groups for p in g["params"])}
    saved = {}
    for name, p in model.named_parameters():
        m, v = state.tensors.get(f"adam_m.{name}"), state.tensors.get(f"adam_v.{name}")
        if m is None or v is None:
            if step == 0:
                continue
            raise BadInput(f"{path}: training state lacks the AdamW moments of {name}")
        if tuple(m.shape) != tuple(p.shape) or tuple(v.shape) != tuple(p.shape):
            raise BadInput(f"{path}: training state moments of {name} have the wrong shape")
        saved[index[id(p)]] = {"step": torch.tensor(step), "exp_avg": torch.from_numpy(m.copy()),
                               "exp_avg_sq": torch.from_numpy(v.copy())}
    full = optimizer.state_dict()
    full["state"] = saved
    optimizer.load_state_dict(full)


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

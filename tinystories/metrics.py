"""Where the trainer's records go: sinks. A sink has write(record) and close(); Sinks fans out to
several. Only rank 0 opens any.

Records: {"step", "train_loss", "lr", "grad_norm", "ms_per_step", "tokens_per_s", "tokens",
"time"} per logged step; {"step", "val_loss", "tokens"} per validation (plus "val_bits_per_byte"
with --val-batches all); {"step", "sample"} per printed sample (its text).

    MetricsLog        the JSON-lines log (-c or --metrics), every record as it is
    TensorBoardSink   --tensorboard DIR: event files through torch.utils.tensorboard (tb extra)
    WandbSink         --wandb PROJECT[/RUN]: a Weights & Biases run (wandb extra)
TensorBoard and W&B get the numbers under the names of SCALARS and the sample as text. A resumed
run continues the same log: MetricsLog drops the records after the checkpoint's step, TensorBoard
gets purge_step = that step + 1 (events of the interrupted tail are hidden), and W&B resumes the
run whose id is the checkpoint's run_id (resume="allow"). W&B ignores steps it has already seen, so
the re-run tail's records are dropped there; resuming is exact, so they equal the ones it keeps.
"""
import importlib
import json
import os

from .errors import BadInput
from .formats import atomic_write

# record field -> TensorBoard tag / W&B key; "tokens" is the number of tokens seen so far
SCALARS = {"train_loss": "train/loss", "val_loss": "val/loss", "val_bits_per_byte": "val/bits_per_byte",
           "lr": "train/lr", "grad_norm": "train/grad_norm", "tokens_per_s": "train/tokens_per_s",
           "ms_per_step": "train/ms_per_step", "tokens": "train/tokens"}
# flag -> (module it needs, pyproject extra that installs it)
EXTRAS = {"tensorboard": ("torch.utils.tensorboard", "tb"), "wandb": ("wandb", "wandb")}


def metrics_path(metrics: str | None, checkpoint: str | None) -> str | None:
    """--metrics, else <checkpoint>.metrics.jsonl beside -c, else None (no log)."""
    if metrics:
        return metrics
    return checkpoint + ".metrics.jsonl" if checkpoint else None


class MetricsLog:
    """JSON lines, one record per logged step. Each record is one write() of a whole line, so a
    kill leaves at most a torn last line, which readers skip. On resume, records past the resumed
    step (from the interrupted tail of the earlier run) are dropped, atomically."""

    def __init__(self, path: str, resume_step: int | None):
        self.path = path
        if resume_step is not None and os.path.exists(path):
            self._truncate_after(resume_step)
        elif os.path.exists(path):
            with atomic_write(path):  # a fresh run starts a fresh log
                pass
        try:
            self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as e:
            raise BadInput(f"{path}: cannot write metrics log: {e.strerror}") from None

    def _truncate_after(self, step: int) -> None:
        with open(self.path, "rb") as f:
            lines = f.read().split(b"\n")
        kept = []
        for line in lines:
            try:
                if json.loads(line)["step"] <= step:
                    kept.append(line + b"\n")
            except (ValueError, KeyError, TypeError):
                continue  # torn or foreign line
        with atomic_write(self.path) as f:
            f.write(b"".join(kept))

    def write(self, record: dict) -> None:
        os.write(self.fd, (json.dumps(record) + "\n").encode())

    def close(self) -> None:
        os.close(self.fd)


def check_extras(cfg) -> None:
    """BadInput naming the extra to install when --tensorboard or --wandb lacks its package, or when
    --wandb is not PROJECT or PROJECT/RUN."""
    for flag, (module, extra) in EXTRAS.items():
        if getattr(cfg, flag) is None:
            continue
        try:
            importlib.import_module(module)
        except ImportError:
            raise BadInput(f"--{flag} needs the '{extra}' extra: pip install -e '.[{extra}]'") from None
    parts = (cfg.wandb or "x").split("/")
    if len(parts) > 2 or not all(parts):
        raise BadInput(f"--wandb {cfg.wandb}: expected PROJECT or PROJECT/RUN")


def scalars(record: dict) -> dict[str, float]:
    """The record's numbers under their TensorBoard / W&B names; "tokens" only from train records
    (a val record repeats the step's count)."""
    values = {tag: record[field] for field, tag in SCALARS.items() if field in record}
    if "train_loss" not in record:
        values.pop(SCALARS["tokens"], None)
    return values


class TensorBoardSink:
    """TensorBoard event files in `folder`; a resumed run purges the events after `resume_step`."""

    def __init__(self, folder: str, resume_step: int | None):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(folder, purge_step=None if resume_step is None else resume_step + 1)

    def write(self, record: dict) -> None:
        for tag, value in scalars(record).items():
            self.writer.add_scalar(tag, value, record["step"])
        if "sample" in record:
            self.writer.add_text("sample", record["sample"], record["step"])

    def close(self) -> None:
        self.writer.close()


class WandbSink:
    """A Weights & Biases run: project/name from --wandb, id = the training run's id (resumed runs
    continue it). WANDB_MODE=offline keeps it in ./wandb (or $WANDB_DIR) for `wandb sync` later."""

    def __init__(self, spec: str, run_id: str, config: dict):
        import wandb

        project, _, name = spec.partition("/")
        try:
            self.run = wandb.init(project=project, name=name or None, id=run_id, resume="allow", config=config)
        except Exception as e:  # no account, no network, a refused id: say so before training starts
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise BadInput(f"--wandb {spec}: W&B could not start the run ({first}); log in (wandb login) "
                           f"or set WANDB_MODE=offline") from None

    def write(self, record: dict) -> None:
        values = scalars(record)
        if "sample" in record:
            values["sample"] = record["sample"]
        self.run.log(values, step=record["step"])

    def close(self) -> None:
        self.run.finish()


class Sinks:
    """Every sink of a run (none on ranks other than 0): each record goes to all of them."""

    def __init__(self, sinks: list):
        self.sinks = sinks

    def write(self, record: dict) -> None:
        for sink in self.sinks:
            sink.write(record)

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()


def open_sinks(cfg, path: str | None, run_id: str, resume_step: int | None, config: dict) -> Sinks:
    """Rank 0's sinks: the JSON-lines log at `path` (if any), TensorBoard, W&B, as the flags ask.
    `config` is what W&B records as the run's configuration."""
    sinks = [MetricsLog(path, resume_step)] if path else []
    if cfg.tensorboard:
        sinks.append(TensorBoardSink(cfg.tensorboard, resume_step))
    if cfg.wandb:
        sinks.append(WandbSink(cfg.wandb, run_id, config))
    return Sinks(sinks)

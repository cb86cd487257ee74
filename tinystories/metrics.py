"""Where the trainer's records go: sinks. A sink has write(record) and close(); Sinks fans out to
several. Only rank 0 opens any.

Records: {"step", "train_loss", "lr", "grad_norm", "ms_per_step", "tokens_per_s", "tokens",
"time"} per logged step; {"step", "val_loss", "tokens"} per validation (plus "val_bits_per_byte"
with --val-batches all); {"step", "sample"} per printed sample (its text).

    Console           what ./train prints: a line per record, and the run's other events
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
import math
import os
import sys

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


def check_fresh_log(path: str) -> None:
    """BadInput when --metrics names a log that holds records: a fresh run empties its log, and this one
    is another run's (--overwrite allows it; a log beside -c is covered by -c's own check)."""
    if os.path.isfile(path) and os.path.getsize(path) > 0:
        raise BadInput(f"--metrics {path}: holds another run's log, which a fresh run would empty; choose another "
                       f"file, or pass --overwrite to replace it")


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
            except (ValueError, KeyError, TypeError, RecursionError):
                continue  # torn or foreign line
        with atomic_write(self.path) as f:
            f.write(b"".join(kept))

    def write(self, record: dict) -> None:
        try:
            os.write(self.fd, (json.dumps(record) + "\n").encode())
        except OSError as e:  # a full disk, most likely: stop the run with one line
            raise BadInput(f"{self.path}: cannot write the metrics log ({e.strerror}); stopping "
                           f"(the lines before are kept, and so is the last checkpoint on disk)") from None

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

        if os.path.exists(folder) and not os.path.isdir(folder):
            raise BadInput(f"--tensorboard {folder}: is a file, expected a folder for the event files")
        try:
            self.writer = SummaryWriter(folder, purge_step=None if resume_step is None else resume_step + 1)
        except OSError as e:  # a parent that is a file, a folder it may not write
            raise BadInput(f"--tensorboard {folder}: cannot write event files there: {e.strerror or e}") from None

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


def open_sinks(cfg, console: "Console", path: str | None, run_id: str, resume_step: int | None, config: dict) -> Sinks:
    """Rank 0's sinks: the console, the JSON-lines log at `path` (if any), TensorBoard, W&B, as the flags
    ask. `config` is what W&B records as the run's configuration. The log, which a fresh run empties,
    opens last: a sink that cannot start stops the run before anything is written."""
    sinks = [console]
    if cfg.tensorboard:
        sinks.append(TensorBoardSink(cfg.tensorboard, resume_step))
    if cfg.wandb:
        sinks.append(WandbSink(cfg.wandb, run_id, config))
    if path:
        sinks.insert(1, MetricsLog(path, resume_step))
    return Sinks(sinks)


class Console:
    """What ./train prints: a line per train, val and sample record, and the run's other events. Only
    rank 0 prints (Console(total_steps, enabled=False) elsewhere)."""

    def __init__(self, total_steps: int, enabled: bool = True):
        self.total_steps, self.enabled = total_steps, enabled

    def print(self, text: str, error: bool = False) -> None:
        if self.enabled:
            print(text, file=sys.stderr if error else sys.stdout, flush=True)

    def write(self, record: dict) -> None:
        at = f"step {record['step']:5d}/{self.total_steps}"
        if "train_loss" in record:
            loss, norm = record["train_loss"], record["grad_norm"]
            note = "" if math.isfinite(loss) and math.isfinite(norm) else "  (non-finite: update skipped)"
            self.print(f"{at} | loss {loss:.6f} | norm {norm:.4f} | lr {record['lr']:.2e} | "
                       f"{record['ms_per_step']:.1f} ms | {record['tokens_per_s']:,.0f} tok/s{note}")
        elif "val_loss" in record:
            bpb = record.get("val_bits_per_byte")
            self.print(f"{at} | val loss {record['val_loss']:.6f}" + ("" if bpb is None else f" | val bits per byte {bpb:.6f}"))
        elif "sample" in record:
            self.print(f"sample at step {record['step']}:\n{record['sample']}\n---")

    def started(self, cfg, runtime, config, seq_len: int, loader, tokenizer: str) -> None:
        """The run's model, runtime, batch and train data."""
        c, tokens_per_step = config, cfg.batch_size * seq_len * cfg.grad_accum
        self.print(f"model {cfg.model}: {c.n_layer} layers, {c.n_head} heads, {c.n_embd} channels, block {c.block_size}, "
                   f"{c.num_parameters(padded=False):,} parameters")
        self.print(f"device {runtime.device} x {runtime.dist.world} process(es), precision {runtime.precision}, "
                   f"head loss {runtime.head_loss.name}{', compiled' if runtime.compile else ''}"
                   f"{', CUDA graph' if runtime.cuda_graphs else ''}; "
                   f"batch {cfg.batch_size} x {seq_len} tokens x {cfg.grad_accum} accumulation = {tokens_per_step:,} tokens/step")
        self.print(f"train {cfg.train_tokens}: {loader.tokens.size:,} tokens of the {tokenizer} "
                   f"({loader.batches_per_epoch() // cfg.grad_accum:,} steps/epoch); {self.total_steps} steps")

    def resumed(self, state, changed: list[str], schedule: list[str] = ()) -> None:
        """`changed`: what changes the data a step sees (a note); `schedule`: the learning rate's settings."""
        other = f"; now with {', '.join(schedule)}" if schedule else ""
        self.print(f"resuming run {state.run_id} at step {state.step} (data position {state.data_position:,}){other}")
        if changed:
            self.print(f"note: {', '.join(changed)} {'differs' if len(changed) == 1 else 'differ'} from the checkpoint's; "
                       f"resuming at its data position anyway (losses will not match an uninterrupted run)", error=True)

    def saved(self, path: str, step: int) -> None:
        self.print(f"saved checkpoint {path} at step {step}")

    def saved_best(self, path: str, val_loss: float) -> None:
        self.print(f"saved best checkpoint {path} (val loss {val_loss:.6f})")

    def not_saved(self, path: str, step: int) -> None:
        self.print(f"note: not saving {path} at step {step}: the weights give a non-finite loss; it keeps its last save")

    def stopped(self, reason: str, step: int) -> None:
        self.print(f"stopped by {reason} at step {step}")

    def close(self) -> None:
        pass

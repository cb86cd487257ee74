"""Loss curves of one or more training runs, from the trainer's metrics files, as one chart.

Metrics file (JSON lines, written by the trainer): one JSON object per line; blank lines are skipped,
and so is a torn last line (no newline, not valid JSON: the trainer was killed mid-write).
    {"step": int, "train_loss": float, "lr": float, "tokens_per_s": float, "ms_per_step": float,
     "tokens": int (tokens processed so far), "time": float (seconds since start)}
Some records also, or only, carry "val_loss". Every record needs "step"; the losses and "tokens",
where present, must be numbers (NaN is drawn as a gap). Other fields are ignored.

Against tokens, a record without "tokens" (a val-only record, say) is placed at step x tokens per
step, the ratio of the last record that has both.
"""
import json
import os
from dataclasses import dataclass

import numpy as np

from .errors import BadInput
from .formats import atomic_write

LOSS_FIELDS = ("train_loss", "val_loss")


@dataclass
class Curves:
    """One run's loss curves: x positions and losses of the train and val records."""
    label: str
    train_x: np.ndarray
    train_loss: np.ndarray
    val_x: np.ndarray
    val_loss: np.ndarray


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def read_metrics(path) -> list[dict]:
    """The records of a metrics file, each checked for a numeric step and numeric loss/tokens fields.
    A last line without its newline that is not valid JSON is a write torn by a kill: skipped."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise BadInput(f"{path}: {'is not a file' if os.path.exists(path) else 'file not found'}")
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = f.read().split("\n")  # the last item is "" when the file ends with a newline
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (ValueError, RecursionError) as e:
            if number == len(lines):
                break  # torn last write
            problem = "nested too deeply" if isinstance(e, RecursionError) else e.msg
            raise BadInput(f"{path}: line {number}: not valid JSON ({problem})") from None
        records.append(_checked(record, path, number))
    if not records:
        raise BadInput(f"{path}: empty metrics file")
    return records


def _checked(record, path, number: int) -> dict:
    if not isinstance(record, dict):
        raise BadInput(f"{path}: line {number}: expected a JSON object")
    if not _is_number(record.get("step")):
        raise BadInput(f"{path}: line {number}: record has no numeric 'step'")
    for name in LOSS_FIELDS + ("tokens",):
        if name in record and not _is_number(record[name]):
            raise BadInput(f"{path}: line {number}: '{name}' is {record[name]!r}, not a number")
    return record


def curves(records: list[dict], label: str, path, x: str) -> Curves:
    """Train and val loss of one run against "step" or "tokens"."""
    position = _position_function(records, path) if x == "tokens" else (lambda r: r["step"])
    series = {}
    for name in LOSS_FIELDS:
        chosen = [r for r in records if name in r]
        series[name] = (np.array([position(r) for r in chosen], dtype=float),
                        np.array([r[name] for r in chosen], dtype=float))
    if not any(np.isfinite(loss).any() for _, loss in series.values()):
        raise BadInput(f"{path}: no train_loss or val_loss values to plot")
    return Curves(label, *series["train_loss"], *series["val_loss"])


def _position_function(records: list[dict], path):
    with_tokens = [r for r in records if "tokens" in r and r["step"] > 0]
    if not with_tokens:
        raise BadInput(f"{path}: no record has 'tokens' with a positive step; plot against steps (--x step)")
    tokens_per_step = with_tokens[-1]["tokens"] / with_tokens[-1]["step"]
    return lambda r: r["tokens"] if "tokens" in r else r["step"] * tokens_per_step


def run_labels(paths) -> list[str]:
    """Each file's stem, less the trainer's ".metrics" (ckpt.bin.metrics.jsonl -> ckpt.bin); the path
    as given where two files share a stem."""
    stems = [os.path.splitext(os.path.basename(os.fspath(p)))[0].removesuffix(".metrics") for p in paths]
    return [stem if stems.count(stem) == 1 else os.fspath(p) for stem, p in zip(stems, paths)]


def draw(runs: list[Curves], x: str, log: bool):
    """A matplotlib Figure (no pyplot, no global state): one colour per run, train loss as a thin
    line, val loss as a thicker line with markers."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure
    from matplotlib.ticker import EngFormatter, FormatStrFormatter

    fig = Figure(figsize=(9, 5.5), dpi=120, layout="constrained")
    ax = fig.add_subplot()
    log_x = log and x == "tokens"
    palette = colormaps["tab10"].colors
    for i, run in enumerate(runs):
        colour = palette[i % len(palette)]
        train_x, train_loss, val_x, val_loss = run.train_x, run.train_loss, run.val_x, run.val_loss
        if log_x:  # position 0 has no place on a log axis
            train_x, train_loss = train_x[train_x > 0], train_loss[train_x > 0]
            val_x, val_loss = val_x[val_x > 0], val_loss[val_x > 0]
        if train_loss.size:
            ax.plot(train_x, train_loss, color=colour, linewidth=0.9, alpha=0.6, label=f"{run.label} train")
        if val_loss.size:
            ax.plot(val_x, val_loss, color=colour, linewidth=2, marker="o", markersize=4, label=f"{run.label} val")
    ax.set_xlabel("tokens processed" if x == "tokens" else "step (optimizer updates)")
    ax.set_ylabel("loss (cross-entropy, nats per token)")
    ax.set_title(f"Train and val loss by {'tokens processed' if x == 'tokens' else 'step'}"
                 f"{(' (log-log)' if log_x else ' (log loss axis)') if log else ''}")
    if log_x:
        ax.set_xscale("log")
    if x == "tokens":
        ax.xaxis.set_major_formatter(EngFormatter(sep=""))  # 200k, 1.5M
    if log:
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))  # 2, 3, 4 rather than 2 x 10^0
        ax.yaxis.set_minor_formatter(FormatStrFormatter("%g"))
        ax.grid(True, which="minor", alpha=0.15)
    ax.grid(True, which="major", alpha=0.4)
    ax.legend(loc="upper right", fontsize="small")
    return fig


def plot(paths, output, x: str = "step", log: bool = False) -> list[Curves]:
    """Draw the runs of the metrics files `paths` into the image `output` (type from its extension),
    atomically. Returns the curves drawn."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    image_type = os.path.splitext(os.fspath(output))[1].lstrip(".").lower()
    supported = FigureCanvasAgg.get_supported_filetypes()
    if image_type not in supported:
        raise BadInput(f"{output}: unsupported image type {image_type!r} (use .png, .svg or .pdf)")
    runs = [curves(read_metrics(p), label, p, x) for p, label in zip(paths, run_labels(paths))]
    fig = draw(runs, x, log)
    with atomic_write(output) as f:
        fig.savefig(f, format=image_type)
    return runs


def summary(run: Curves) -> str:
    """One line: the last train loss and the best val loss of a run."""
    def last(values):
        finite = values[np.isfinite(values)]
        return f"{finite[-1]:.4f}" if finite.size else "-"

    val = run.val_loss[np.isfinite(run.val_loss)]
    best_val = f"{val.min():.4f}" if val.size else "-"
    return f"{run.label}: last train loss {last(run.train_loss)}, best val loss {best_val}"

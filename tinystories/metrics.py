"""The training metrics log: one JSON record per logged step, in a JSON-lines file.

Records: {"step", "train_loss", "lr", "grad_norm", "ms_per_step", "tokens_per_s", "tokens",
"time"} per logged step and {"step", "val_loss", "tokens"} per validation. A sink is anything with
write(record) and close(); MetricsLog is the one there is today.
"""
import json
import os

from .errors import BadInput
from .formats import atomic_write


def metrics_path(metrics: str | None, checkpoint: str | None) -> str | None:
    """--metrics, else <checkpoint>.metrics.jsonl beside -c, else None (no log)."""
    if metrics:
        return metrics
    return checkpoint + ".metrics.jsonl" if checkpoint else None


class MetricsLog:
    """JSON lines, one record per logged step. Each record is one write() of a whole line, so a
    kill leaves at most a torn last line, which readers skip. On resume, records past the resumed
    step (from the interrupted tail of the earlier run) are dropped, atomically."""

    def __init__(self, path: str | None, resume_step: int | None):
        self.path = path
        if path is None:
            return
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
        if self.path is not None:
            os.write(self.fd, (json.dumps(record) + "\n").encode())

    def close(self) -> None:
        if self.path is not None:
            os.close(self.fd)

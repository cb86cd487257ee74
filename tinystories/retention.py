"""Which checkpoint files a run keeps beside -c: the --keep most recent saves and the best one.

For -c <name>.bin (or any other name: then <name> is the whole of it):
    <name>.bin           the latest save (checkpoint.save, atomic)
    <name>.step<k>.bin   with --keep N: the save at step k, for the N most recent saves; published
                         from <name>.bin as a hard link (the same bytes, no copy) under a temp name
                         that is then renamed, and older ones are deleted only after that rename
    <name>.best.bin      when validation runs: the checkpoint of the lowest val loss so far, written
                         at the step of that validation; its training state says which
                         (best_val_step, best_val_loss)
Only files of its own run (by the run id in their training state) are counted and deleted: another
run's step files under the same name are left alone. Every file appears by an atomic rename, so a kill at any moment leaves each one complete and valid
(or absent). A kill between a publish and the deletions leaves one step file too many; the next
save deletes it.
"""
import contextlib
import os
import re
import shutil
import tempfile

from .checkpoint import run_id_or_none
from .formats import atomic_write, fsync_folder


class Retention:
    def __init__(self, path: str, keep: int, run_id: str):
        self.path, self.keep, self.run_id = path, keep, run_id
        self.stem = path[: -len(".bin")] if path.endswith(".bin") else path
        self.best_path = f"{self.stem}.best.bin"

    def paths(self, last_step: int, validates: bool) -> list[str]:
        """The files beside -c a run to `last_step` may write: its last step file (the longest name),
        and the best checkpoint when it validates."""
        return [self.step_path(last_step)] * (self.keep > 0) + [self.best_path] * validates

    def step_path(self, step: int) -> str:
        return f"{self.stem}.step{step}.bin"

    def step_files(self) -> list[tuple[int, str]]:
        """(step, path) of this run's step files on disk, oldest first."""
        folder, name = os.path.split(os.path.abspath(self.stem))
        pattern = re.compile(re.escape(name) + r"\.step(\d+)\.bin")
        found = [(int(m.group(1)), os.path.join(folder, entry))
                 for entry in (os.listdir(folder) if os.path.isdir(folder) else []) if (m := pattern.fullmatch(entry))]
        return sorted((step, path) for step, path in found if run_id_or_none(path) == self.run_id)

    def remove_stale_temp_files(self) -> None:
        """Delete the temp files of step/best files that a kill left mid-write (only the run that
        owns -c may do this)."""
        folder, name = os.path.split(os.path.abspath(self.stem))
        pattern = re.compile(re.escape(name) + r"\.(step\d+|best)\.bin\.[a-z0-9_]+\.tmp")
        for entry in os.listdir(folder):
            if pattern.fullmatch(entry):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(folder, entry))

    def after_save(self, step: int) -> None:
        """With --keep N: publish the save just written as the step file, then drop the oldest."""
        if self.keep <= 0:
            return
        publish(self.path, self.step_path(step))
        for _, old in self.step_files()[: -self.keep]:
            os.unlink(old)


def publish(source: str, target: str) -> None:
    """Make `target` hold the bytes of the (never modified in place) file `source`, atomically: a hard
    link under a temp name renamed over `target`, or a copy through atomic_write where the file system
    has no hard links."""
    folder = os.path.dirname(os.path.abspath(target))
    tmp = tempfile.mktemp(prefix=os.path.basename(target) + ".", suffix=".tmp", dir=folder)
    try:
        os.link(source, tmp)
    except OSError:
        with open(source, "rb") as src, atomic_write(target) as dst:
            shutil.copyfileobj(src, dst)
        return
    try:
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_folder(folder)  # the data is already durable: -c's save synced it

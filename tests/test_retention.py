"""--keep N and <name>.best.bin: which files a run keeps, what they hold, and that resuming
remembers the best val loss."""
import os
from pathlib import Path

from conftest import assert_one_line_error, logged, train, train_flags

from tinystories import formats, retention
from tinystories.cli import train_parser
from tinystories.config import TrainConfig
from tinystories.train import Trainer


def val_losses(ck: Path) -> dict[int, float]:
    return logged(ck, "val_loss")


def test_keep_and_best(workdir, tmp_path):
    ck = tmp_path / "ck.bin"
    train("-e", workdir / "model.bin", "-c", ck, "-n", "6", "-k", "2", "--keep", "2",
          *train_flags(workdir, val_every=3, val_batches=2))
    assert sorted(os.listdir(tmp_path)) == ["ck.best.bin", "ck.bin", "ck.bin.metrics.jsonl", "ck.step4.bin", "ck.step6.bin"]
    assert formats.read_model(tmp_path / "ck.step4.bin").state.meta["step"] == 4
    assert (tmp_path / "ck.step6.bin").read_bytes() == ck.read_bytes()
    vals = val_losses(ck)  # steps 0, 3, 6
    best_step = min(vals, key=vals.get)
    best = formats.read_model(tmp_path / "ck.best.bin").state.meta
    assert best["step"] == best["best_val_step"] == best_step and best["best_val_loss"] == vals[best_step]
    last = formats.read_model(ck).state.meta
    assert (last["best_val_step"], last["best_val_loss"]) == (best_step, vals[best_step])
    assert (last["last_val_step"], last["last_val_loss"]) == (6, vals[6])
    # a resumed run starts from the best so far, not from nothing
    args = train_parser().parse_args(["-e", str(ck), "-c", str(ck), "-n", "8", *train_flags(workdir, val_every=3)])
    trainer = Trainer(TrainConfig(**vars(args)))
    assert trainer.state.results["best_val_loss"] == vals[best_step] and trainer.state.step == 6
    trainer.sinks.close()
    trainer.release()  # -c's lock: run() would give it up at its end


def test_publish_copies_where_hard_links_fail(tmp_path, monkeypatch):
    source = tmp_path / "a.bin"
    source.write_bytes(b"checkpoint bytes")
    (tmp_path / "b.bin").write_bytes(b"old")

    def no_links(src, dst):
        raise OSError("links not supported")

    monkeypatch.setattr(os, "link", no_links)
    retention.publish(str(source), str(tmp_path / "b.bin"))
    assert (tmp_path / "b.bin").read_bytes() == b"checkpoint bytes"
    assert sorted(os.listdir(tmp_path)) == ["a.bin", "b.bin"]


def test_stale_temp_files_of_kept_files_are_removed(tmp_path):
    for name in ("ck.step3.bin.abc_1.tmp", "ck.best.bin.x9.tmp", "other.step3.bin.abc.tmp", "ck.step3.bin"):
        (tmp_path / name).write_bytes(b"")
    retention.Retention(str(tmp_path / "ck.bin"), keep=1, run_id="r").remove_stale_temp_files()
    assert sorted(os.listdir(tmp_path)) == ["ck.step3.bin", "other.step3.bin.abc.tmp"]


def test_keep_needs_a_checkpoint(workdir):
    result = train("-e", workdir / "model.bin", "-n", "1", "--keep", "2", *train_flags(workdir), check=False)
    assert_one_line_error(result, "--keep 2: needs -c")

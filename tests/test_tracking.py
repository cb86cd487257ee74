"""--tensorboard and --wandb, offline: what the event files and the offline W&B run hold, that a
resumed run continues them, and the one-line error when the extra is not installed."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, assert_one_line_error, metrics_log, train, train_flags

from tinystories import formats


def field(records: list[dict], name: str) -> dict[int, object]:
    return {r["step"]: r[name] for r in records if name in r}


# ----------------------------------------------------------------------------- TensorBoard

def event_data(folder: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    return events


def scalars(events, tag: str) -> dict[int, float]:
    points = events.Scalars(tag)
    assert len({p.step for p in points}) == len(points), f"{tag}: a step logged twice"
    return {p.step: p.value for p in points}


def test_tensorboard_events_and_resume(workdir, tmp_path):
    pytest.importorskip("tensorboard")
    ck, tb = tmp_path / "ck.bin", tmp_path / "tb"
    flags = [*train_flags(workdir, val_every=2, sample_every=3, sample_length=4, val_batches=2), "--tensorboard", tb]
    train("-e", workdir / "model.bin", "-c", ck, "-n", "3", "-k", "2", "--keep", "2", *flags)
    # resume from the save at step 2: the first run's step-3 events are the interrupted tail
    train("-e", tmp_path / "ck.step2.bin", "-c", ck, "-n", "4", *flags)
    records, events = metrics_log(ck), event_data(tb)
    train_records = [r for r in records if "train_loss" in r]
    for tag, name in (("train/loss", "train_loss"), ("train/lr", "lr"), ("train/grad_norm", "grad_norm"),
                      ("train/tokens", "tokens"), ("val/loss", "val_loss")):
        assert scalars(events, tag) == pytest.approx(field(train_records if tag == "train/tokens" else records, name),
                                                     rel=1e-6), tag
    assert sorted(scalars(events, "train/loss")) == [1, 2, 3, 4] and sorted(scalars(events, "val/loss")) == [0, 2, 4]
    assert sorted(scalars(events, "train/tokens_per_s")) == [1, 2, 3, 4]
    texts = {e.step: e.tensor_proto.string_val[0].decode() for e in events.Tensors("sample/text_summary")}
    assert texts == field(records, "sample") and sorted(texts) == [3]


# ----------------------------------------------------------------------------- Weights & Biases

def wandb_records(path: Path):
    """The protobuf records of a .wandb file: a 7-byte header (":W&B", magic, version), then
    LevelDB-log framing in 32 KiB blocks (4-byte checksum, 2-byte length, 1-byte type: 1 full,
    2 first, 3 middle, 4 last part of a record)."""
    from wandb.proto import wandb_internal_pb2

    data, block = path.read_bytes(), 32768
    assert data[:4] == b":W&B"
    position, pending = 7, b""
    while position + 7 <= len(data):
        if block - position % block < 7:  # the rest of a block is padding
            position += block - position % block
            continue
        length, kind = int.from_bytes(data[position + 4 : position + 6], "little"), data[position + 6]
        chunk, position = data[position + 7 : position + 7 + length], position + 7 + length
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record


def wandb_run(folder: Path) -> tuple[object, dict[int, dict]]:
    """(the run record, {step: {key: value}}) of an offline run folder."""
    run, history = None, {}
    for record in wandb_records(next(folder.glob("run-*.wandb"))):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run = record.run
        elif kind == "history":
            history[record.history.step.num] = {item.key or "/".join(item.nested_key): json.loads(item.value_json)
                                                for item in record.history.item}
    return run, history


def test_wandb_offline_run_and_resume(workdir, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    for name, value in (("WANDB_MODE", "offline"), ("WANDB_DIR", str(tmp_path)), ("WANDB_SILENT", "true")):
        monkeypatch.setenv(name, value)
    ck = tmp_path / "ck.bin"
    flags = [*train_flags(workdir, val_every=2, sample_every=2, sample_length=4, val_batches=2), "--wandb", "stories/first"]
    train("-e", workdir / "model.bin", "-c", ck, "-n", "2", *flags)
    run_id = formats.read_model(ck).state.meta["run_id"]
    train("-e", ck, "-c", ck, "-n", "3", *flags)
    folders = sorted((tmp_path / "wandb").glob("offline-run-*"))
    assert len(folders) == 2
    records = metrics_log(ck)
    (first, first_history), (second, second_history) = wandb_run(folders[0]), wandb_run(folders[1])
    assert first.run_id == second.run_id == run_id  # the resumed run continues the same W&B run
    assert (first.project, first.display_name) == ("stories", "first")
    history = {**first_history, **second_history}
    assert sorted(first_history) == [0, 1, 2] and sorted(second_history) == [3]
    for key, name in (("train/loss", "train_loss"), ("val/loss", "val_loss"), ("train/lr", "lr"),
                      ("train/tokens", "tokens"), ("sample", "sample")):
        chosen = [r for r in records if "train_loss" in r] if key == "train/tokens" else records
        assert {s: row[key] for s, row in history.items() if key in row} == field(chosen, name), key


# ----------------------------------------------------------------------------- without the extras

@pytest.mark.parametrize("flag, module, extra", [("--tensorboard", "torch.utils.tensorboard", "tb"),
                                                 ("--wandb", "wandb", "wandb")])
def test_missing_extra_is_one_line_before_training(workdir, tmp_path, flag, module, extra):
    ck = tmp_path / "ck.bin"
    code = (f"import sys; sys.modules[{module!r}] = None; from tinystories import cli; "
            f"cli.main(sys.argv[1:])")
    args = ["train", "-e", workdir / "model.bin", "-c", ck, "-n", "1", *train_flags(workdir), flag, tmp_path / "x"]
    result = subprocess.run([sys.executable, "-c", code, *map(str, args)], cwd=REPO, capture_output=True, text=True)
    assert_one_line_error(result, f"{flag} needs the '{extra}' extra: pip install -e '.[{extra}]'")
    assert result.stdout == "" and not ck.exists()


def test_bad_wandb_spec(workdir):
    result = train("-e", workdir / "model.bin", "-n", "1", *train_flags(workdir), "--wandb", "a/b/c", check=False)
    assert_one_line_error(result, "--wandb a/b/c: expected PROJECT or PROJECT/RUN")

"""Loss plots: the picture is a real PNG of the expected size, the chart holds exactly the data of the
metrics files, tokens are placed right, and bad metrics files are one-line errors."""
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_one_line_error, run_cli

from tinystories import plot
from tinystories.errors import BadInput

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TOKENS_PER_STEP = 8 * 256


def write_metrics(path, steps: int, val_every: int = 10, seed: int = 0, val_tokens: bool = True) -> Path:
    """Records shaped like the trainer's: a train record per step, a val record every val_every."""
    rng = np.random.default_rng(seed)
    lines = [{"step": 0, "val_loss": 10.9, "tokens": 0} if val_tokens else {"step": 0, "val_loss": 10.9}]
    for step in range(1, steps + 1):
        loss = 2 + 8.8 * math.exp(-step / 30) + 0.05 * rng.standard_normal()
        lines.append({"step": step, "train_loss": loss, "lr": 1e-3, "tokens_per_s": 1e5, "ms_per_step": 20.0,
                      "tokens": step * TOKENS_PER_STEP, "time": 0.02 * step})
        if step % val_every == 0:
            val = {"step": step, "val_loss": loss + 0.05}
            lines.append({**val, "tokens": step * TOKENS_PER_STEP} if val_tokens else val)
    Path(path).write_text("".join(json.dumps(r) + "\n" for r in lines))
    return Path(path)


def test_plot_writes_a_readable_png(tmp_path):
    from matplotlib.image import imread

    metrics = write_metrics(tmp_path / "run.jsonl", steps=50)
    runs = plot.plot([metrics], tmp_path / "loss.png")
    data = (tmp_path / "loss.png").read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    image = imread(tmp_path / "loss.png")
    assert image.shape == (660, 1080, 4)  # 9 x 5.5 inches at 120 dpi, RGBA
    assert image[..., :3].std() > 0.05, "not a blank picture"
    assert runs[0].train_loss.size == 50 and runs[0].val_loss.size == 6


def test_chart_holds_the_data_of_every_run(tmp_path):
    a = write_metrics(tmp_path / "lr1e-3.jsonl", steps=40, seed=1)
    b = write_metrics(tmp_path / "lr3e-4.jsonl", steps=30, val_every=15, seed=2)
    runs = [plot.curves(plot.read_metrics(p), label, p, "step") for p, label in zip([a, b], ["lr1e-3", "lr3e-4"])]
    ax = plot.draw(runs, "step", log=False).axes[0]
    labels = [line.get_label() for line in ax.lines]
    assert labels == ["lr1e-3 train", "lr1e-3 val", "lr3e-4 train", "lr3e-4 val"]
    assert ax.lines[0].get_color() == ax.lines[1].get_color() != ax.lines[2].get_color()
    records = [json.loads(line) for line in a.read_text().splitlines()]
    train = [(r["step"], r["train_loss"]) for r in records if "train_loss" in r]
    assert np.array_equal(np.column_stack(ax.lines[0].get_data()), np.array(train))
    assert list(ax.lines[3].get_xdata()) == [0, 15, 30]
    assert ax.lines[1].get_linewidth() > ax.lines[0].get_linewidth() and ax.lines[1].get_marker() == "o"
    assert ax.get_xlabel() and ax.get_ylabel() and ax.get_title()


def test_tokens_axis_and_log_scale(tmp_path):
    metrics = write_metrics(tmp_path / "run.jsonl", steps=20, val_tokens=False)
    run = plot.curves(plot.read_metrics(metrics), "run", metrics, "tokens")
    assert np.array_equal(run.train_x, np.arange(1, 21) * TOKENS_PER_STEP)
    assert np.array_equal(run.val_x, np.array([0, 10, 20]) * TOKENS_PER_STEP)  # val records lack "tokens"
    ax = plot.draw([run], "tokens", log=True).axes[0]
    assert ax.get_xscale() == ax.get_yscale() == "log"
    assert list(ax.lines[1].get_xdata()) == [10 * TOKENS_PER_STEP, 20 * TOKENS_PER_STEP], "x = 0 left out on a log axis"
    assert plot.draw([run], "step", log=True).axes[0].get_xscale() == "linear"
    plot.plot([metrics], tmp_path / "loss.svg", x="tokens", log=True)
    assert b"<svg" in (tmp_path / "loss.svg").read_bytes()[:1000]


def test_torn_last_line_is_skipped_and_labels_unique(tmp_path):
    metrics = write_metrics(tmp_path / "run.jsonl", steps=5)
    with open(metrics, "a") as f:
        f.write('{"step": 6, "train_lo')  # the trainer was killed mid-write
    assert [r["step"] for r in plot.read_metrics(metrics)] == [0, 1, 2, 3, 4, 5]
    (tmp_path / "other").mkdir()
    assert plot.run_labels([metrics, tmp_path / "ckpt.bin.metrics.jsonl"]) == ["run", "ckpt.bin"]
    twin = tmp_path / "other" / "run.jsonl"
    assert plot.run_labels([metrics, twin]) == [str(metrics), str(twin)]


@pytest.mark.parametrize("content, message", [
    (None, "file not found"),
    ("", "empty metrics file"),
    ("\n\n", "empty metrics file"),
    ('{"step": 1, "train_loss": 3.0}\n{"step": 2,\n{"step": 3, "train_loss": 2.0}\n', "line 2: not valid JSON"),
    ('[1, 2]\n', "line 1: expected a JSON object"),
    ('{"train_loss": 3.0}\n', "line 1: record has no numeric 'step'"),
    ('{"step": 1, "val_loss": "low"}\n', "line 1: 'val_loss' is 'low', not a number"),
    ('{"step": 1, "lr": 0.1}\n{"step": 2, "lr": 0.1}\n', "no train_loss or val_loss values"),
])
def test_bad_metrics_files(tmp_path, content, message):
    path = tmp_path / "m.jsonl"
    if content is not None:
        path.write_text(content)
    (tmp_path / "loss.png").write_bytes(b"old picture")
    with pytest.raises(BadInput, match=message) as error:
        plot.plot([path], tmp_path / "loss.png")
    assert str(path) in str(error.value) and "\n" not in str(error.value)
    assert (tmp_path / "loss.png").read_bytes() == b"old picture", "the old picture is kept"


def test_tokens_axis_needs_tokens(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"step": 1, "train_loss": 3.0}\n')
    with pytest.raises(BadInput, match="--x step"):
        plot.plot([path], tmp_path / "loss.png", x="tokens")


def test_cli_plot(tmp_path):
    write_metrics(tmp_path / "a.jsonl", steps=30)
    write_metrics(tmp_path / "b.jsonl", steps=30, seed=3)
    result = run_cli("plot", "a.jsonl", "b.jsonl", "-o", "loss.png", "--x", "tokens", "--log", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "loss.png").read_bytes().startswith(PNG_SIGNATURE)
    assert "a: last train loss" in result.stdout and "b: last train loss" in result.stdout


@pytest.mark.parametrize("args", [["missing.jsonl"], ["bad.jsonl"], ["a.jsonl", "-o", "loss.xyz"]])
def test_cli_bad_input_is_one_line_exit_2(tmp_path, args):
    write_metrics(tmp_path / "a.jsonl", steps=3)
    (tmp_path / "bad.jsonl").write_text('{"step": 1, "train_loss": 3.0}\nnot json\n{"step": 2}\n')
    assert_one_line_error(run_cli("plot", *args, cwd=tmp_path))
    assert sorted(os.listdir(tmp_path)) == ["a.jsonl", "bad.jsonl"]

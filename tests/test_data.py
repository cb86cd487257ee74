"""prepare_data.py end to end: every local source kind against llm.c's recipe written out plainly,
determinism, labelling of synthetic stories, and every kind of bad input through the real CLI."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import (REPO, assert_one_line_error, reference_tokens, run_cli, run_prepare, run_prepare_data, shard_json,
                      split_tokens, write_archive)

from tinystories import bpe, data, sources, synthetic, tokenizer
from tinystories.formats import read_token_header
from tinystories.tokenizer import EOT

SPLITS = ("val", "train")
OUTPUTS = ["SOURCE.txt", "TinyStories_train.bin", "TinyStories_val.bin", "gpt2_tokenizer.bin"]


def chunks(stories: list[str], size: int) -> list[list[str]]:
    return [stories[i : i + size] for i in range(0, len(stories), size)]


def output_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


@pytest.fixture
def three_shards(head_stories) -> list[list[str]]:
    return [head_stories[0:40], head_stories[40:70], head_stories[70:120]]


def write_json_folder(folder: Path, shards: list[list[str]]) -> Path:
    folder.mkdir()
    for i, stories in enumerate(shards):
        (folder / f"data{i:02d}.json").write_bytes(shard_json(stories))
    return folder


def write_text(path: Path, stories: list[str]) -> Path:
    """The layout of TinyStories-train.txt: each story followed by a line <|endoftext|>."""
    path.write_text("".join(s.strip() + "\n<|endoftext|>\n" for s in stories), encoding="utf-8")
    return path


def write_parquet(path: Path, stories: list[str], column: str = "text") -> Path:
    pq.write_table(pa.table({column: stories, "other": list(range(len(stories)))}), path, row_group_size=17)
    return path


def test_json_folder_follows_llmc(tmp_path, three_shards):
    source = write_json_folder(tmp_path / "shards", three_shards)
    out = run_prepare(tmp_path / "out", "--source", str(source))
    val, train = split_tokens(out, "val"), split_tokens(out, "train")
    assert val == reference_tokens(three_shards[:1])  # first shard = val, index 0
    assert train == reference_tokens(three_shards[1:])  # the rest = train, indices 0, 1 (as llm.c)
    assert val[0] == train[0] == EOT
    assert val.count(EOT) == 40 and train.count(EOT) == 80  # one EOT per story
    assert (out / "gpt2_tokenizer.bin").stat().st_size > 300_000
    assert "val: 1 shards, 40 stories" in (out / "SOURCE.txt").read_text()


def test_archive_shards_in_name_order(tmp_path, three_shards):
    members = {"data02.json": shard_json(three_shards[2]), "README.md": b"not a shard",
               "data00.json": shard_json(three_shards[0]), "data01.json": shard_json(three_shards[1])}
    archive = write_archive(tmp_path / "TinyStories_all_data.tar.gz", members)
    out = run_prepare(tmp_path / "out", "--source", str(archive))
    assert split_tokens(out, "val") == reference_tokens(three_shards[:1])
    assert split_tokens(out, "train") == reference_tokens(three_shards[1:])


def test_text_file_holds_out_every_50th_story(tmp_path, head_stories, monkeypatch):
    monkeypatch.setattr(sources, "CHUNK_STORIES", 30)
    stories = head_stories[:230]
    out = run_prepare(tmp_path / "out", "--source", str(write_text(tmp_path / "s.txt", stories)))
    val = [s for i, s in enumerate(stories) if i % 50 == 0]
    train = [s for i, s in enumerate(stories) if i % 50 != 0]
    assert split_tokens(out, "val") == reference_tokens(chunks(val, 30))
    assert split_tokens(out, "train") == reference_tokens(chunks(train, 30))  # 8 shards of 30 (last 5)


def test_parquet_file_and_huggingface_folder(tmp_path, head_stories, monkeypatch):
    monkeypatch.setattr(sources, "CHUNK_STORIES", 25)
    stories = head_stories[:120]
    out = run_prepare(tmp_path / "one", "--source", str(write_parquet(tmp_path / "s.parquet", stories, "story")))
    assert split_tokens(out, "val") == reference_tokens(chunks(stories[::50], 25))
    assert split_tokens(out, "train") == reference_tokens(
        chunks([s for i, s in enumerate(stories) if i % 50], 25))

    folder = tmp_path / "hf"
    folder.mkdir()
    write_parquet(folder / "train-00001-of-00002.parquet", stories[60:100])
    write_parquet(folder / "train-00000-of-00002.parquet", stories[:60])
    write_parquet(folder / "validation-00000-of-00001.parquet", stories[100:])
    out = run_prepare(tmp_path / "two", "--source", str(folder))
    assert split_tokens(out, "val") == reference_tokens(chunks(stories[100:], 25))
    assert split_tokens(out, "train") == reference_tokens(chunks(stories[:100], 25))


def test_separate_val_source(tmp_path, head_stories, monkeypatch):
    monkeypatch.setattr(sources, "CHUNK_STORIES", 50)
    train, val = head_stories[:80], head_stories[80:100]
    out = run_prepare(tmp_path / "out", "--source", str(write_text(tmp_path / "train.txt", train)),
                      "--val-source", str(write_parquet(tmp_path / "val.parquet", val)))
    assert split_tokens(out, "val") == reference_tokens([val])
    assert split_tokens(out, "train") == reference_tokens(chunks(train, 50))


def test_two_runs_are_byte_identical_whatever_the_workers(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "CHUNK_STORIES", 700)
    flags = ["--source", "synthetic", "--synthetic-stories", "3000", "--seed", "7"]
    one = output_bytes(run_prepare(tmp_path / "one", *flags, workers=1))
    two = output_bytes(run_prepare(tmp_path / "two", *flags, workers=2))
    assert one == two
    assert sorted(one) == OUTPUTS


# ----------------------------------------------------------------------------- interrupted runs

def default_sigint() -> None:
    """In the child before exec: SIGINT at its default, as a terminal's foreground job has it. A
    SIGINT ignored by whatever started the test run would be inherited (and rightly honoured, as for
    a shell's background job), and the Ctrl-C below would do nothing."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_long_prepare(out: Path) -> subprocess.Popen:
    """prepare_data.py with 2 workers on a million synthetic stories (minutes of work), in a process
    group of its own, once it has begun writing (a temp file beside the outputs)."""
    proc = subprocess.Popen([sys.executable, str(REPO / "prepare_data.py"), "--source", "synthetic",
                             "--synthetic-stories", "1000000", "--workers", "2", "--out-dir", str(out),
                             "--tokenizer-file", str(out / "gpt2_tokenizer.bin")],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=default_sigint)
    deadline = time.monotonic() + 120
    while not list(out.glob("*.tmp")):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    return proc


@pytest.mark.parametrize("signum, to_group, line", [
    (signal.SIGINT, True, "interrupted"),  # a terminal's Ctrl-C reaches the whole process group, the workers included
    (signal.SIGTERM, False, "stopped by SIGTERM"),  # `kill PID`: it stops its workers itself, none prints a traceback
], ids=["ctrl-c", "sigterm"])
def test_a_stop_signal_stops_it_at_once_quietly_and_leaves_nothing(tmp_path, signum, to_group, line):
    proc = start_long_prepare(tmp_path / "out")
    if to_group:
        os.killpg(proc.pid, signum)
    else:
        proc.send_signal(signum)
    start = time.monotonic()
    try:
        _, err = proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"prepare_data.py still running 10 s after {signum.name}")
    assert time.monotonic() - start < 5
    assert (proc.returncode, err) == (128 + signum, line + "\n")
    assert list((tmp_path / "out").iterdir()) == []


def test_a_second_run_on_the_same_out_dir_stops_at_once(tmp_path):
    """Its first step would remove the temp files of the first run, which it takes for a killed one's."""
    out = tmp_path / "out"
    proc = start_long_prepare(out)
    try:
        second = run_prepare_data("--source", "synthetic", "--synthetic-stories", "200", "--out-dir", out,
                                  "--tokenizer-file", out / "gpt2_tokenizer.bin")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
    assert_one_line_error(second, f"--out-dir {out}", f"another run (pid {proc.pid})")


def test_a_run_after_a_killed_one_removes_its_temp_files(tmp_path):
    out = tmp_path / "out"
    proc = start_long_prepare(out)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
    assert [p.name for p in out.iterdir() if ".staged." in p.name]  # what the kill left
    run_prepare(out, "--source", "synthetic", "--synthetic-stories", "200")
    assert sorted(p.name for p in out.iterdir()) == OUTPUTS


def test_synthetic_source_is_labelled_and_seeded(tmp_path, capsys):
    out = run_prepare(tmp_path / "out", "--source", "synthetic", "--synthetic-stories", "200")
    printed = capsys.readouterr().out
    assert "SYNTHETIC stories" in printed.splitlines()[0]
    assert "from SYNTHETIC stories (not TinyStories)" in printed.splitlines()[-1]
    assert (out / "SOURCE.txt").read_text().startswith("source: SYNTHETIC stories")
    stories = list(synthetic.stories(1337, 200))
    assert split_tokens(out, "val") == reference_tokens([stories[::50]])
    assert list(synthetic.stories(5, 50)) == list(synthetic.stories(5, 50)) != list(synthetic.stories(6, 50))
    assert len(set(stories)) == 200 and all(s.endswith(".") for s in stories)


# ----------------------------------------------------------------------------- --vocab-size

def test_vocab_size_trains_a_bpe_on_the_train_split(tmp_path, head_stories, monkeypatch):
    monkeypatch.setattr(sources, "CHUNK_STORIES", 120)
    stories = head_stories[:400]
    out = run_prepare(tmp_path / "out", "--source", str(write_text(tmp_path / "s.txt", stories)), "--vocab-size", "512")
    assert sorted(p.name for p in out.iterdir()) == ["SOURCE.txt", "TinyStories_train.bin", "TinyStories_val.bin",
                                                     "tokenizer.bin", "tokenizer.json"]
    val = [s for i, s in enumerate(stories) if i % 50 == 0]
    train = [s for i, s in enumerate(stories) if i % 50 != 0]
    expected = bpe.train((s.strip() for s in train), 512).to_str()  # the train split only
    assert (out / "tokenizer.json").read_text() == expected
    bpe_tokenizer = tokenizer.load_bpe(out / "tokenizer.json")
    assert split_tokens(out, "val") == reference_tokens(chunks(val, 120), bpe_tokenizer)
    assert split_tokens(out, "train") == reference_tokens(chunks(train, 120), bpe_tokenizer)
    for split in SPLITS:
        assert read_token_header(out / f"TinyStories_{split}.bin").tokenizer == bpe_tokenizer.record
        assert tokenizer.for_token_file(out / f"TinyStories_{split}.bin").fingerprint == bpe_tokenizer.fingerprint
    assert tokenizer.read_tokenizer_file(out / "tokenizer.bin") == bpe_tokenizer.pieces
    assert "byte-level BPE of 512 tokens trained on the train split" in (out / "SOURCE.txt").read_text()


def test_vocab_size_runs_are_byte_identical(tmp_path, head_stories):
    source = write_text(tmp_path / "s.txt", head_stories[:300])
    one = output_bytes(run_prepare(tmp_path / "one", "--source", str(source), "--vocab-size", "600"))
    result = run_cli("prepare", "--source", source, "--vocab-size", "600", "--out-dir", tmp_path / "two", "--workers", "2")
    assert result.returncode == 0, result.stderr
    assert output_bytes(tmp_path / "two") == one  # another process (hash maps seeded afresh), 2 workers


@pytest.mark.parametrize("value", ["256", "65537", "0", "-5", "x", "1e3"])
def test_bad_vocab_size_is_one_line(value):
    assert_one_line_error(run_cli("prepare", "--source", "synthetic", "--vocab-size", value), "--vocab-size")


def test_vocab_size_larger_than_the_text_allows_is_one_line(tmp_path):
    stories = write_text(tmp_path / "s.txt", [f"Tom had {n} red balls. He gave one to Sue." for n in range(200)])
    result = run_cli("prepare", "--source", stories, "--vocab-size", "60000", "--out-dir", tmp_path / "out")
    assert_one_line_error(result, "--vocab-size 60000", "only enough distinct pairs")
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- bad input, via the CLI

def make_bad_input(kind: str, tmp: Path, stories: list[str]) -> tuple[list[str], list[str]]:
    """(flags, fragments the one error line must contain) for each kind of bad input."""
    good_shard = shard_json(stories[:3])
    if kind == "missing path":
        return ["--source", str(tmp / "nope.txt")], ["--source", "nope.txt: no such file"]
    if kind == "missing val path":
        txt = write_text(tmp / "s.txt", stories[:10])
        return ["--source", str(txt), "--val-source", str(tmp / "nope")], ["--val-source", "no such file"]
    if kind == "unknown kind":
        (tmp / "stories.csv").write_text("a,b\n")
        return ["--source", str(tmp / "stories.csv")], ["stories.csv", "unknown kind of source"]
    if kind == "folder without shards":
        (tmp / "empty").mkdir()
        return ["--source", str(tmp / "empty")], ["empty", "no .json shards or .parquet files"]
    if kind == "corrupt archive":
        (tmp / "a.tar.gz").write_bytes(bytes(range(256)) * 100)
        return ["--source", str(tmp / "a.tar.gz")], ["a.tar.gz", "corrupt or truncated archive"]
    if kind == "truncated archive":
        whole = write_archive(tmp / "whole.tar.gz", {f"data{i:02d}.json": shard_json(stories[i * 50 : i * 50 + 50])
                                                     for i in range(3)}).read_bytes()
        (tmp / "cut.tar.gz").write_bytes(whole[: len(whole) // 2])
        return ["--source", str(tmp / "cut.tar.gz")], ["cut.tar.gz", "corrupt or truncated archive"]
    if kind == "shard without story":
        folder = tmp / "shards"
        folder.mkdir()
        (folder / "data00.json").write_bytes(good_shard)
        (folder / "data01.json").write_text(json.dumps([{"text": "Once upon a time."}]))
        return ["--source", str(folder)], ["data01.json", '"story"']
    if kind == "bad train shard after val":  # val completes first; nothing may replace the old pair
        folder = tmp / "shards"
        folder.mkdir()
        for i in range(3):
            (folder / f"data{i:02d}.json").write_bytes(good_shard)
        (folder / "data03.json").write_text("[{\"story\": \"cut off")
        return ["--source", str(folder)], ["data03.json", "not a valid JSON shard"]
    if kind == "empty text file":
        (tmp / "empty.txt").write_text("\n<|endoftext|>\n\n")
        return ["--source", str(tmp / "empty.txt")], ["empty.txt", "val split is empty"]
    if kind == "empty val source":
        (tmp / "empty.txt").write_text("\n")
        txt = write_text(tmp / "s.txt", stories[:10])
        return ["--source", str(txt), "--val-source", str(tmp / "empty.txt")], ["empty.txt: the val split is empty"]
    if kind == "source is a pipe":
        os.mkfifo(tmp / "fifo.txt")
        return ["--source", str(tmp / "fifo.txt")], ["--source", "fifo.txt", "not a regular file"]
    if kind == "one story":
        return ["--source", str(write_text(tmp / "one.txt", stories[:1]))], ["one.txt", "train split is empty"]
    if kind == "one shard":
        folder = tmp / "shards"
        folder.mkdir()
        (folder / "data00.json").write_bytes(good_shard)
        return ["--source", str(folder)], ["1 shard, too few for a val split"]
    if kind == "unwritable out dir":
        (tmp / "file").write_text("x")
        txt = write_text(tmp / "s.txt", stories[:10])
        return ["--source", str(txt), "--out-dir", str(tmp / "file" / "out")], ["--out-dir", "cannot create"]
    raise AssertionError(kind)


BAD_INPUTS = ["missing path", "missing val path", "unknown kind", "folder without shards", "corrupt archive",
              "truncated archive", "shard without story", "bad train shard after val", "empty text file",
              "empty val source", "source is a pipe", "one story", "one shard", "unwritable out dir"]


@pytest.mark.parametrize("kind", BAD_INPUTS)
def test_bad_input_is_one_line_and_leaves_old_outputs(tmp_path, head_stories, kind):
    out = tmp_path / "out"
    out.mkdir()
    old = {"TinyStories_val.bin": b"old val", "TinyStories_train.bin": b"old train", "SOURCE.txt": b"old",
           "gpt2_tokenizer.bin": b"old tokenizer"}
    for name, payload in old.items():
        (out / name).write_bytes(payload)
    flags, fragments = make_bad_input(kind, tmp_path, head_stories)
    if "--out-dir" not in flags:
        flags += ["--out-dir", str(out)]
    result = run_prepare_data(*flags, "--tokenizer-file", str(out / "gpt2_tokenizer.bin"), "--workers", "2")
    assert_one_line_error(result, *fragments)
    assert result.stderr.startswith("prepare_data.py: error: ")
    assert output_bytes(out) == old  # untouched, and no temp files left beside them


def test_text_file_parsing(tmp_path):
    path = tmp_path / "s.txt"
    path.write_text("Story one.\n<|endoftext|>\nStory two\nline 2\n<|endoftext|>\n\n<|endoftext|>\nNo separator")
    assert list(sources.text_stories(path)) == ["Story one.\n", "Story two\nline 2\n", "No separator"]
    path.write_bytes(b"caf\xe9\n<|endoftext|>\n")
    with pytest.raises(data.BadInput, match="s.txt: not UTF-8"):
        list(sources.text_stories(path))


def test_failed_run_creates_no_output_folder(tmp_path):
    with pytest.raises(data.BadInput, match="no such file"):
        run_prepare(tmp_path / "new" / "out", "--source", str(tmp_path / "missing.txt"))
    assert list(tmp_path.iterdir()) == []

"""--config FILE.toml: keys are long flag names with '_', values checked like the command line's,
flags given on the command line win, bad keys and values are one line and exit 2."""
import pytest
from conftest import REPO

from tinystories import cli
from tinystories.config import TrainConfig
from tinystories.config_file import parse_with_config
from tinystories.errors import BadInput


def parse(tmp_path, text: str, *argv):
    path = tmp_path / "run.toml"
    path.write_text(text)
    return TrainConfig(**vars(parse_with_config(cli.train_parser(), ["--config", str(path), *argv])))


def test_values_come_from_the_file(tmp_path):
    cfg = parse(tmp_path, 'max_steps = 300\nlr = 1e-3\nlr_decay = "wsd"\ncooldown = 0.5\ndeterministic = true\n'
                          'val_batches = "all"\nmetrics = "m.jsonl"\nwarmup = 10\n')
    assert (cfg.max_steps, cfg.learning_rate, cfg.lr_decay, cfg.cooldown) == (300, 1e-3, "wsd", 0.5)
    assert cfg.deterministic is True and cfg.val_batches == "all" and cfg.metrics == "m.jsonl"
    assert cfg.warmup_steps == 10 and cfg.batch_size == 4  # untouched flags keep their defaults
    assert parse(tmp_path, "lr = 1\n").learning_rate == 1.0  # a TOML integer is a number too


def test_command_line_wins(tmp_path):
    cfg = parse(tmp_path, "max_steps = 300\nbatch_size = 16\n", "-n", "7", "--batch-size", "2")
    assert (cfg.max_steps, cfg.batch_size) == (7, 2)


@pytest.mark.parametrize("text, needle", [
    ("max_stepz = 3\n", "unknown key 'max_stepz'"),
    ("max-steps = 3\n", "unknown key 'max-steps' (write max_steps)"),
    ("config = 'other.toml'\n", "unknown key 'config'"),
    ("max_steps = 1.5\n", "key 'max_steps'"),
    ("max_steps = '300'\n", "key 'max_steps': '300' must be a number"),
    ("batch_size = 1.5\n", "key 'batch_size': 1.5 is not accepted"),
    ("deterministic = 1\n", "key 'deterministic': 1 must be true or false"),
    ("lr_decay = 'cubic'\n", "key 'lr_decay': 'cubic' must be one of none, cosine, linear, wsd"),
    ("device = 0\n", "key 'device': 0 must be a string"),
    ("seed = true\n", "key 'seed': True must be a string or a number"),
    ("val_every = [1, 2]\n", "key 'val_every'"),
    ("max_steps = \n", "not valid TOML"),
])
def test_bad_files_name_the_key(tmp_path, text, needle):
    with pytest.raises(BadInput, match="--config .*run.toml") as info:
        parse(tmp_path, text)
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_bad_file_through_the_command_is_one_line_exit_2(tmp_path, capsys):
    (tmp_path / "run.toml").write_text("max_stepz = 3\n")
    with pytest.raises(SystemExit) as info:
        cli.main(["train", "--config", str(tmp_path / "run.toml")])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("train: error: --config") and "max_stepz" in err[0]
    with pytest.raises(SystemExit):
        cli.main(["train", "--config", str(tmp_path / "missing.toml")])
    assert "missing.toml: file not found" in capsys.readouterr().err


def test_value_out_of_range_in_a_file_is_checked_like_the_flag(tmp_path, capsys):
    """Ranges are TrainConfig.validate()'s: a file's value gets the flag's own one-line error."""
    (tmp_path / "run.toml").write_text("batch_size = 0\n")
    with pytest.raises(SystemExit) as info:
        cli.main(["train", "--config", str(tmp_path / "run.toml")])
    err = capsys.readouterr().err.strip().splitlines()
    assert info.value.code == 2 and err == ["train: error: -b/--batch-size 0: must be positive"]


@pytest.mark.parametrize("name", ["quickstart.toml", "cpu.toml"])
def test_shipped_configs_parse(name):
    args = parse_with_config(cli.train_parser(), ["--config", str(REPO / "configs" / name)])
    cfg = TrainConfig(**vars(args))
    if name == "quickstart.toml":  # the original's -n 10000 -b 32 -t 256 -l 1e-3 -v 500 -s 500
        quick = TrainConfig(**vars(cli.train_parser().parse_args(
            "-e model.bin -c checkpoint.bin -n 10000 -b 32 -t 256 -l 1e-3 -v 500 -s 500".split())))
        assert cfg == type(cfg)(**{**vars(quick), "config": cfg.config})
    else:
        assert cfg.lr_decay == "wsd" and cfg.keep == 2

"""--config FILE.toml: flag values from a TOML file (stdlib tomllib).

A key is a long flag's name without the leading dashes and with '_' for '-': `max_steps = 300` is
`--max-steps 300`, `lr = 1e-3` is `--lr 1e-3`, `deterministic = true` is `--deterministic`. Values
are TOML strings, integers, floats or booleans, checked by the flag's own parser (type, range,
choices), so a file accepts exactly what the command line accepts. The file only sets the parser's
defaults (argparse set_defaults): flags on the command line win. A preset (./train's --recipe) sits
below both. An unknown key or a value of the wrong type is one line naming the file and the key
(BadInput, exit 2).

The keys are found from the parser's own actions, so the file keeps working however the flags are
declared, as long as their long names stay.
"""
import argparse
import os
import tomllib

from .errors import BadInput
from .formats import read_small_file

FLAG = "--config"
MAX_BYTES = 1 << 20  # a config file of flag values is a few hundred bytes


def parse_with_config(parser: argparse.ArgumentParser, argv, presets: tuple[str, dict] | None = None,
                      input_files=lambda args: ()) -> argparse.Namespace:
    """parser.parse_args(argv), with defaults first taken from the file named by --config, if any.
    presets = (dest, {name: {dest: value}}): the flag `dest` (./train's --recipe, set in the file or on
    the command line) names a preset whose values stand in for the defaults, under the file's values
    and the command line's. input_files(args): the dests that name files the command reads; one the
    file sets (and the command line keeps) must exist, else BadInput naming the file and its key."""
    path = config_path(parser, argv)
    file_values = config_defaults(parser, path) if path is not None else {}
    parser.set_defaults(**file_values)
    if presets is not None:
        dest, table = presets
        chosen = getattr(parser.parse_args(argv), dest)
        parser.set_defaults(**{**table.get(chosen, {}), **file_values})
    args = parser.parse_args(argv)
    for dest in input_files(args):
        value = getattr(args, dest)
        if dest in file_values and value == file_values[dest] and not os.path.exists(value):
            raise BadInput(f"{FLAG} {path}: key '{dest}' = {value!r}: file not found (a relative path is taken from "
                           f"the current folder, {os.getcwd()}, not from the config file's)")
    return args


def config_path(parser: argparse.ArgumentParser, argv) -> str | None:
    """The --config value in argv, read with a parser that knows only that flag."""
    option = long_options(parser)[FLAG[2:].replace("-", "_")]
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument(*option.option_strings, dest="config", default=None)
    known, _ = pre.parse_known_args(argv)
    return known.config


def long_options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """Each action with a long flag, by config key: '--max-steps' -> 'max_steps'."""
    keys = {}
    for action in parser._actions:
        for option in action.option_strings:
            if option.startswith("--") and not isinstance(action, argparse._HelpAction):
                keys[option[2:].replace("-", "_")] = action
    return keys


def read_toml(path: str) -> dict:
    """The file's table; only a regular file of at most MAX_BYTES is read (not a pipe or a device)."""
    data = read_small_file(path, MAX_BYTES, f"{FLAG} {path}")
    try:
        return tomllib.loads(data.decode("utf-8-sig"))  # -sig: a byte order mark (some editors write one) is skipped
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise BadInput(f"{FLAG} {path}: not valid TOML: {e}") from None
    except RecursionError:  # arrays or tables nested thousands deep
        raise BadInput(f"{FLAG} {path}: not valid TOML for flag values: nested too deeply") from None


def config_defaults(parser: argparse.ArgumentParser, path: str) -> dict:
    """{dest: value} for every key of the file, each checked against its flag; BadInput otherwise."""
    options = long_options(parser)
    defaults = {}
    for key, value in read_toml(path).items():
        action = options.get(key)
        if action is None or key == "config":
            hint = f" (write {key.replace('-', '_')})" if key.replace("-", "_") in options else ""
            raise BadInput(f"{FLAG} {path}: unknown key '{key}'{hint}; keys are the long flags of "
                           f"{parser.prog} with '_' for '-', e.g. max_steps")
        defaults[action.dest] = flag_value(action, value, f"{FLAG} {path}: key '{key}'")
    return defaults


def flag_value(action: argparse.Action, value, where: str):
    """A TOML value as the flag's parser would take it from the command line; BadInput otherwise."""
    if action.nargs == 0:  # store_true / store_false
        if not isinstance(value, bool):
            raise BadInput(f"{where}: {value!r} must be true or false")
        return value if action.const is True else not value
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise BadInput(f"{where}: {value!r} must be a string or a number")
    parsed = value
    if action.type is not None:
        try:
            parsed = action.type(str(value))
        except (ValueError, argparse.ArgumentTypeError) as e:
            raise BadInput(f"{where}: {value!r} is not accepted ({e or 'wrong type'})") from None
    elif not isinstance(value, str):
        raise BadInput(f"{where}: {value!r} must be a string")
    if isinstance(value, str) and not isinstance(parsed, str):
        raise BadInput(f"{where}: {value!r} must be a number, not a string")
    if action.choices is not None and parsed not in action.choices:
        raise BadInput(f"{where}: {value!r} must be one of {', '.join(map(str, action.choices))}")
    return parsed

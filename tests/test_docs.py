"""The documentation checked against the code: README.md and docs/ name only flags that exist, docs/training.md
lists every ./train flag with its default, and the README's layout map names every module of the package."""
import re
import shlex
from dataclasses import fields

import pytest

from conftest import REPO
from tinystories import cli
from tinystories.config import TrainConfig

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
TRAINING = REPO / "docs" / "training.md"

# how a command starts in the docs -> the parser of its flags
PARSERS = {
    "./train": cli.train_parser, "./generate": cli.generate_parser,
    "prepare_data.py": cli.prepare_parser, "create_model.py": cli.create_parser,
    **{f"tinystories {name}": getattr(cli, f"{name}_parser") for name in cli.COMMANDS},
}
COMMAND = re.compile(r"(\./train|\./generate|prepare_data\.py|create_model\.py|tinystories (?:"
                     + "|".join(cli.COMMANDS) + r"))\b(.*)")
SHELL_END = re.compile(r"\s(?:#|\||&&|;|>)\s.*")  # a comment, a pipe or the next command ends the flags


def command_lines(text: str):
    """Each command the text shows: the lines of its ```bash blocks and its `inline code`, cut where a
    shell comment, pipe or second command begins."""
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    spans = re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", text, flags=re.S))
    for line in [line for block in blocks for line in block.splitlines()] + spans:
        for match in COMMAND.finditer(line):
            yield match.group(1), SHELL_END.sub("", match.group(2))


def flags_of(rest: str) -> list[str]:
    try:
        words = shlex.split(rest)
    except ValueError:  # an unclosed quote in a shortened example: split on spaces
        words = rest.split()
    return [w.split("=")[0] for w in words if re.fullmatch(r"--?[a-zA-Z][\w-]*(=.*)?", w)]


def documented_commands():
    for path in DOCS:
        for command, rest in command_lines(path.read_text(encoding="utf-8")):
            yield path.relative_to(REPO), command, rest


def test_the_docs_show_commands():
    """The scan below finds the commands (so an empty scan cannot pass for a clean one)."""
    found = {command for _, command, _ in documented_commands()}
    assert {"./train", "./generate", "prepare_data.py", "create_model.py", "tinystories eval",
            "tinystories export", "tinystories import", "tinystories plot"} <= found


def test_every_flag_in_a_documented_command_exists():
    unknown = []
    for path, command, rest in documented_commands():
        known = PARSERS[command]()._option_string_actions
        unknown += [f"{path}: {command} {flag}" for flag in flags_of(rest) if flag not in known]
    assert not unknown, "flags that do not exist:\n" + "\n".join(unknown)


def flag_table(path) -> dict[str, str]:
    """The first and last cells of each row of the markdown table(s) in path: flag spellings -> default."""
    rows = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| `-") and len(cells) >= 3:
            for spelling in re.findall(r"`(-[^`]+)`", cells[0]):
                rows[spelling] = cells[-1]
    return rows


def same_default(documented: str, default) -> bool:
    """A table's default cell ("`model.bin`", "3e-4", "none", "off", "auto") against the field's value."""
    text = documented.split()[0].strip("`") if documented.split() else ""
    if default is None:
        return text == "none"
    if isinstance(default, bool):
        return text == ("on" if default else "off")
    if isinstance(default, (int, float)):
        try:
            return float(text) == default
        except ValueError:
            return False
    return text == str(default)


@pytest.mark.parametrize("setting", fields(TrainConfig), ids=lambda f: f.metadata["flag"])
def test_every_train_flag_is_documented_with_its_default(setting):
    table = flag_table(TRAINING)
    long_flag = setting.metadata["flag"].split("/")[-1]
    assert long_flag in table, f"{long_flag} is missing from docs/training.md's flag table"
    assert same_default(table[long_flag], setting.default), (
        f"docs/training.md gives {long_flag}'s default as {table[long_flag]!r}; the code's is {setting.default!r}")


def test_the_default_check_can_fail():
    assert not same_default("3e-4", 1e-3) and not same_default("none", "model.bin") and not same_default("off", True)
    assert same_default("`model.bin`", "model.bin") and same_default("1e-8", 1e-8) and same_default("off", False)


def test_the_layout_map_names_every_module():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    layout = readme[readme.index("## Layout"):]
    package = REPO / "tinystories"
    modules = [f"tinystories/{p.name}" for p in package.glob("*.py") if not p.name.startswith("__")]
    folders = [f"tinystories/{p.name}/" for p in package.iterdir() if (p / "__init__.py").is_file()]
    missing = [name for name in modules + folders if name not in layout]
    assert not missing, f"README.md's Layout does not name {missing}"


def test_the_package_points_to_the_one_map():
    import tinystories

    assert "README.md" in tinystories.__doc__ and "tinystories/" not in tinystories.__doc__

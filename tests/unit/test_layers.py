"""The layering rule, enforced: fednas/ (library) ← strategies/ ← simulations/ (top).

Read from the source with :mod:`ast` (every ``import``, including those inside functions):

* ``fednas`` never imports ``strategies`` or ``simulations``; ``strategies`` never imports
  ``simulations``; nothing in the three packages but ``simulations`` itself imports
  ``simulations`` (the console script points into it; tests may import anything);
* inside ``fednas`` only :data:`CODEC` imports ``flwr`` (Flower's record types);
* no import cycles: the graph of modules, with an edge for every import and, where a module
  imports one from another package, to the ``__init__`` of every package above the imported
  one that the importer is not inside (Python runs it first; the three top-level
  ``__init__`` files import nothing at module level but the version, checked too), has no
  strongly connected component of more than one module (Tarjan).

The checks run on a copy of the tree with a deliberately added upward import (and a cycle)
to show that they fail.
"""

from __future__ import annotations

import ast
import shutil
from collections import defaultdict
from pathlib import Path

import pytest
from conftest import REPO

ROOT = REPO
LAYERS = ("fednas", "strategies", "simulations")  # bottom to top
CODEC = "fednas.federated.codec"


def modules(root: Path) -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, is a package ``__init__``) for the three layers."""
    found = {}
    for layer in LAYERS:
        for path in sorted((root / layer).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            package = parts[-1] == "__init__"
            found[".".join(parts[:-1] if package else parts)] = (path, package)
    return found


def imports(name: str, path: Path, package: bool) -> list[tuple[str, int, bool]]:
    """(imported module, line, at module level) for every import statement of a module."""
    tree = ast.parse(path.read_text(), filename=str(path))
    top = {id(node) for node in tree.body}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = name.split(".") if package else name.split(".")[:-1]
                parts = parts[:len(parts) - node.level + 1]
                base = ".".join([*parts, *([node.module] if node.module else [])])
            targets = [base, *(f"{base}.{a.name}" for a in node.names)]
        else:
            continue
        out += [(t, node.lineno, id(node) in top) for t in targets]
    return out


def check(root: Path) -> list[str]:
    """Every violation of the rules in the module docstring, one line each."""
    mods = modules(root)
    rank = {layer: i for i, layer in enumerate(LAYERS)}
    problems: list[str] = []
    edges: dict[str, set[str]] = defaultdict(set)
    for name, (path, package) in mods.items():
        layer = name.split(".")[0]
        for target, line, at_top in imports(name, path, package):
            where = f"{path.relative_to(root)}:{line}"
            head = target.split(".")[0]
            if head == "flwr" and layer == "fednas" and name != CODEC:
                problems.append(f"{where}: {name} imports {target} (flwr only in {CODEC})")
            if head in rank and rank[head] > rank[layer]:
                problems.append(f"{where}: upward import {name} -> {target}")
            version = target.startswith("fednas.version")
            if name in LAYERS and at_top and head in rank and not version:
                problems.append(f"{where}: {name}/__init__.py imports {target} at module level")
            if target in mods and target != name:
                edges[name].add(target)
                parts = target.split(".")
                for depth in range(2, len(parts)):  # packages above it that Python runs first
                    above = ".".join(parts[:depth])
                    if not name.startswith(above + "."):  # (not one being imported already)
                        edges[name].add(above)
    problems += [f"import cycle: {' -> '.join(sorted(c))}" for c in cycles(edges)]
    return problems


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for start in sorted(edges):
        if start in index:
            continue
        work = [(start, iter(sorted(edges.get(start, ()))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(component)
    return found


def test_layers_point_one_way_and_no_cycles():
    assert check(ROOT) == []


def test_every_module_is_seen():
    mods = modules(ROOT)
    assert {"fednas.spaces.registry", "strategies.fednas", "simulations.cli",
            CODEC} <= set(mods)
    assert len([m for m in mods if m.startswith("fednas.")]) > 60


@pytest.fixture
def tree_copy(tmp_path) -> Path:
    for layer in LAYERS:
        shutil.copytree(ROOT / layer, tmp_path / layer,
                        ignore=shutil.ignore_patterns("__pycache__", "*.toml"))
    return tmp_path


def test_check_fails_on_an_upward_import(tree_copy):
    target = tree_copy / "fednas" / "federated" / "aggregation.py"
    target.write_text(target.read_text() + "\n\ndef _late():\n"
                      "    from simulations.federated import FederatedPipeline\n\n"
                      "    return FederatedPipeline\n")
    (tree_copy / "strategies" / "fedex.py").write_text(
        (tree_copy / "strategies" / "fedex.py").read_text() + "\nimport simulations.cli\n")
    problems = check(tree_copy)
    assert any("upward import fednas.federated.aggregation -> simulations.federated" in p
               for p in problems), problems
    assert any("upward import strategies.fedex -> simulations.cli" in p for p in problems)


def test_check_fails_on_flwr_outside_the_codec_and_on_a_cycle(tree_copy):
    shards = tree_copy / "fednas" / "federated" / "shards.py"
    shards.write_text(shards.read_text() + "\nfrom flwr.app import ArrayRecord\n"
                      "from fednas.federated.aggregation import Contribution\n")
    problems = check(tree_copy)
    assert any("fednas.federated.shards imports flwr.app" in p for p in problems), problems
    assert any(p.startswith("import cycle:") and "fednas.federated.shards" in p
               and "fednas.federated.aggregation" in p for p in problems), problems


def test_check_fails_on_a_cycle_through_a_package_init(tree_copy):
    """Importing fednas.spaces.ops runs fednas/spaces/__init__.py (which imports the cell
    space): a module that the cell space needs must not import anything under spaces."""
    flops = tree_copy / "fednas" / "models" / "flops.py"
    flops.write_text(flops.read_text() + "\nfrom fednas.spaces.ops import OPS\n")
    problems = check(tree_copy)
    assert any(p.startswith("import cycle:") and "fednas.models.flops" in p
               and "fednas.spaces" in p for p in problems), problems

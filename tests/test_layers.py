"""The package's layers import in one direction only, read from the source (ast, nothing imported).

The stages, earliest first; a module may import from its own stage and earlier ones only:

    io            files: atomic writes, tensor files, tables as files
    data          datasets, their splits and generated images
    config        the config's schema, validation and rule params (it knows the data loaders)
    runtime       devices, threads, the job context (it turns config errors into job exits)
    models        the model libraries' towers, loading and pretraining
    preflight     `config.preflight`: checks a whole config against the data loaders and model
                  libraries before any job runs, so it sits above both
    units         residual units: layout, unit map, decomposition, unit files
    spectral      PCA, intrinsic dimension, similarity of units
    alignment     classifiers, the ResiDual variants, the epoch loop, training, fine-tuning
    heads         head scores, selection, probes, maps (they use alignment's classifiers)
    descriptions  text descriptions of units
    report        tables, charts, findings, the report: the last stage, nothing imports it
    residual      the package's own `__init__`: the public API, above everything

Function-level imports count as much as top-level ones (they run too, only later), and so do
imports under `TYPE_CHECKING` (a type from a later stage is a dependency on it). Importing
`a.b.c` also runs the package `a.b`'s `__init__`, so that is an edge too (except the root's).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "residual"
STAGES = [
    ("io", ["residual.io"]),
    ("data", ["residual.data"]),
    ("config", ["residual.config"]),
    ("runtime", ["residual.runtime"]),
    ("libraries", ["residual.libraries"]),
    ("models", ["residual.models"]),
    ("preflight", ["residual.config.preflight"]),
    ("units", ["residual.units"]),
    ("spectral", ["residual.spectral"]),
    ("alignment", ["residual.alignment"]),
    ("heads", ["residual.heads"]),
    ("descriptions", ["residual.descriptions"]),
    ("report", ["residual.report"]),
    ("residual", ["residual"]),
]


def modules(root: Path = SOURCE) -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its own name)."""
    found = {}
    for path in sorted((root / PACKAGE).rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(name: str, path: Path, known: dict[str, Path]) -> Iterator[str]:
    """The package's modules that importing `name` runs: each one it names, and the packages above
    those (but the root)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # `from a import b` imports module a.b where there is one, else a name of a
            targets += [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
    for target in targets:
        if target == PACKAGE or target.startswith(PACKAGE + "."):
            parts = target.split(".")
            for end in range(2, len(parts) + 1):
                yield ".".join(parts[:end])


def graph(known: dict[str, Path]) -> dict[str, set[str]]:
    return {name: {target for target in imports(name, path, known) if target != name} for name, path in known.items()}


def stage(module: str) -> int:
    """The position in STAGES of the longest prefix naming `module`; ValueError if none does."""
    matches = [
        (len(prefix), position)
        for position, (_, prefixes) in enumerate(STAGES)
        for prefix in prefixes
        # the root names its own `__init__` only: a new top-level module needs a stage of its own
        if module == prefix or (prefix != PACKAGE and module.startswith(prefix + "."))
    ]
    if not matches:
        raise ValueError(f"{module} belongs to no stage: add its package to STAGES in {Path(__file__).name}")
    return max(matches)[1]


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in sorted(edges.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def upward(edges: dict[str, set[str]]) -> list[str]:
    """Each import of a later stage from an earlier one, as 'importer (stage) -> imported (stage)'."""
    return [
        f"{source} ({STAGES[stage(source)][0]}) -> {target} ({STAGES[stage(target)][0]})"
        for source, targets in sorted(edges.items())
        for target in sorted(targets)
        if stage(target) > stage(source)
    ]


@pytest.fixture(scope="module")
def edges() -> dict[str, set[str]]:
    known = modules()
    assert len(known) > 50 and "residual.models" in known, f"the package was not found under {SOURCE}"
    return graph(known)


def test_every_module_has_a_stage(edges: dict[str, set[str]]) -> None:
    unstaged = []
    for module in edges:
        try:
            stage(module)
        except ValueError as error:
            unstaged.append(str(error))
    assert not unstaged, "\n".join(unstaged)


def test_no_import_cycle(edges: dict[str, set[str]]) -> None:
    found = cycles(edges)
    assert not found, "modules that import each other (directly or around a cycle):\n" + "\n".join(map(" <-> ".join, found))


def test_no_import_from_a_later_stage(edges: dict[str, set[str]]) -> None:
    found = upward(edges)
    assert not found, "imports from a later stage into an earlier one:\n" + "\n".join(found)


def test_the_checks_find_what_they_must(tmp_path: Path) -> None:
    """A made-up package with one cycle and one upward import: both are named."""
    files = {
        "residual/__init__.py": "",
        "residual/io/__init__.py": "",
        "residual/io/a.py": "from residual.io import b\n",
        "residual/io/b.py": "def late():\n    from .a import x\n",
        "residual/units/__init__.py": "",
        "residual/units/c.py": "import residual.io.a\n",
        "residual/models/__init__.py": "from residual.units.c import thing\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    found = graph(modules(tmp_path))
    assert found["residual.units.c"] == {"residual.io", "residual.io.a"}
    assert cycles(found) == [["residual.io.a", "residual.io.b"]]
    assert upward(found) == ["residual.models (models) -> residual.units (units)", "residual.models (models) -> residual.units.c (units)"]
    for unstaged in ("residual_other", "residual.plugins"):
        with pytest.raises(ValueError, match=f"{unstaged} belongs to no stage"):
            stage(unstaged)

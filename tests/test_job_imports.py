"""Table and chart jobs import only what they use (issue 23): the modules each table or chart
script imports load no torch, torchvision, scipy or scikit-learn, and the table scripts no altair,
checked in a fresh interpreter per script."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

SCRIPTS = REPO / "workflow_scripts"
HEAVY = ("torch", "torchvision", "scipy", "sklearn", "open_clip", "timm")
# Scripts that read tensors through the stages' torch modules: the findings table (unit maps,
# the description dictionary, the world's attributes) and the head maps' pictures (the maps).
READ_TENSORS = {"findings_table", "map_chart"}
JOBS = sorted(path.stem for path in SCRIPTS.glob("*.py") if "table" in path.stem or path.stem == "chart")


def imported_modules(script: Path) -> list[str]:
    tree = ast.parse(script.read_text())
    modules = [node.module for node in tree.body if isinstance(node, ast.ImportFrom) and node.module]
    return modules + [alias.name for node in tree.body if isinstance(node, ast.Import) for alias in node.names]


def loaded_after_importing(modules: list[str]) -> set[str]:
    code = "import importlib, sys\nfor name in sys.argv[1:]: importlib.import_module(name)\nprint(' '.join(sorted(sys.modules)))"
    run = subprocess.run([sys.executable, "-c", code, *modules], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    return {name.split(".")[0] for name in run.stdout.split()}


def test_every_table_and_chart_script_is_checked() -> None:
    assert {"chart", "heads_table", "main_table", "runtime_table"} <= set(JOBS) and READ_TENSORS <= {*JOBS, "map_chart"}


@pytest.mark.parametrize("job", [job for job in JOBS if job not in READ_TENSORS])
def test_a_table_or_chart_job_imports_no_torch(job: str) -> None:
    loaded = loaded_after_importing(imported_modules(SCRIPTS / f"{job}.py"))
    assert not loaded & set(HEAVY), f"workflow_scripts/{job}.py loads {sorted(loaded & set(HEAVY))}"
    if job != "chart":
        assert "altair" not in loaded, f"workflow_scripts/{job}.py, a table job, loads altair"

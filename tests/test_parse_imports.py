"""Parsing the workflow imports no model library: every cluster job parses the Snakefile again.

The rules import the plain facts they need (versions, rule params, config checks) from modules that
import none of the heavy libraries; the model checks of the preflight run in a child process whose
pass is remembered (`residual.config.preflight.model_problems`).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from snakemake_runs import REPO, TINY

from residual.config import preflight
from residual.config.preflight import PreflightError, model_problems
from residual.config.validate import load_config

HEAVY = ("torch", "torchvision", "open_clip", "timm", "transformers", "altair", "scipy", "sklearn")
RULE_IMPORT = re.compile(r"^from (residual[\w.]*) import", re.M)


def rule_modules() -> list[str]:
    """The modules that the Snakefile and rules/*.smk import, by their `from residual... import` lines."""
    files = [REPO / "Snakefile", *sorted((REPO / "rules").glob("*.smk"))]
    return sorted({name for path in files for name in RULE_IMPORT.findall(path.read_text())})


def heavy_libraries(modules: list[str]) -> dict[str, list[str]]:
    """For each module, imported one after the other in a fresh interpreter, the heavy libraries loaded once it is imported."""
    probe = (
        "import importlib, json, sys\n"
        "loaded = {}\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        f"    loaded[name] = [lib for lib in {HEAVY!r} if lib in sys.modules]\n"
        "print(json.dumps(loaded))\n"
    )
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=REPO)
    return json.loads(run.stdout.splitlines()[-1])


def test_the_rules_import_something() -> None:
    modules = rule_modules()
    assert "residual.config.preflight" in modules and "residual.alignment.options" in modules, modules


def test_parsing_the_workflow_imports_no_heavy_library() -> None:
    """The first module after which a heavy library is loaded is the one that imports it."""
    heavy = {name: libraries for name, libraries in heavy_libraries(rule_modules()).items() if libraries}
    assert not heavy, heavy


def test_a_pass_of_the_model_checks_is_remembered_and_a_failure_is_not(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    models = {name: spec for name, spec in load_config(TINY)["models"].items() if not spec.get("appendix")}
    assert model_problems(models, tmp_path) == []
    assert len(list(tmp_path.glob("*.ok"))) == 1

    def no_child(*args: object, **kwargs: object) -> None:
        raise AssertionError("a remembered pass starts no process")

    monkeypatch.setattr(preflight.subprocess, "run", no_child)
    assert model_problems(models, tmp_path) == []
    monkeypatch.undo()

    changed = {**models, "odd": {"library": "timm", "arch": "swin_tiny_patch4_window7_224", "pretrained": None}}
    problems = model_problems(changed, tmp_path)
    assert len(problems) == 1 and problems[0].startswith("models.odd.arch: 'swin_tiny_patch4_window7_224' does not decompose"), problems
    assert len(list(tmp_path.glob("*.ok"))) == 1  # not remembered: checked again next time


def test_a_checkpoint_file_that_appears_or_goes_is_checked_again(tmp_path: Path) -> None:
    weights = tmp_path / "weights.safetensors"
    models = {"vit": {"library": "timm", "arch": "vit_small_patch16_224", "pretrained": str(weights), "kwargs": {"depth": 2}}}
    absent = preflight._models_key(models)
    weights.write_bytes(b"")
    assert preflight._models_key(models) != absent


def test_a_child_that_fails_is_an_error_naming_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(preflight.sys, "executable", shutil.which("false"))
    with pytest.raises(PreflightError, match=r"the model checks stopped \(.*residual\.config\.preflight\.models, exit 1\)"):
        model_problems({"vit": {"library": "timm", "arch": "vit_small_patch16_224", "pretrained": None}}, tmp_path)
    assert not list(tmp_path.glob("*.ok"))


def test_the_options_name_every_variant() -> None:
    from residual.alignment.options import VARIANT_KEYS
    from residual.alignment.variants import VARIANTS

    assert list(VARIANT_KEYS) == list(VARIANTS)


def test_passes_are_remembered_for_the_machine_in_residual_cache_or_the_user_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RESIDUAL_CACHE", str(tmp_path / "cache"))
    assert preflight.verdict_folder() == tmp_path / "cache" / "preflight"
    monkeypatch.delenv("RESIDUAL_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert preflight.verdict_folder() == tmp_path / "xdg" / "residual" / "preflight"

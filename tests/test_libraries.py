"""The library registry: every registered library has all its facts, and the schema, the package
lists and the registry agree."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from residual.libraries import ADAPTER_FUNCTIONS, LIBRARIES, Library

REPO = Path(__file__).resolve().parents[1]
TEXT_SPECS = {"open_clip": {"arch": "ViT-B-32"}, "timm": {"arch": "vit_small_patch16_224"}, "transformers": {"arch": "CLIPModel"}}


def missing_facts(library: Library) -> list[str]:
    """The facts a registered library lacks: adapter functions, its package in pyproject.toml and envs/."""
    adapter = library.module()
    required = [*ADAPTER_FUNCTIONS, *(["encode_text"] if any(library.text({**spec, "kwargs": {}}) for spec in TEXT_SPECS.values()) else [])]
    missing = [f"adapter function {name}" for name in required if not callable(getattr(adapter, name, None))]
    if not library.package or not library.depth or not library.checkpoint_fields:
        missing.append("package, depth or checkpoint fields")
    for listing in ("pyproject.toml", "envs/residual.yaml"):
        if library.package not in (REPO / listing).read_text():
            missing.append(f"package {library.package!r} in {listing}")
    return missing


@pytest.mark.parametrize("name", sorted(LIBRARIES))
def test_every_library_has_its_facts(name: str) -> None:
    assert missing_facts(LIBRARIES[name]) == []


def test_a_library_lacking_a_fact_fails() -> None:
    incomplete = Library("residual.models.checkpoint", "no-such-package", (("depth",),), ("pretrained",), lambda spec: True)
    missing = missing_facts(incomplete)
    assert "adapter function tower" in missing and "adapter function encode_text" in missing
    assert "package 'no-such-package' in pyproject.toml" in missing


def test_schema_enum_is_the_registry() -> None:
    schema = yaml.safe_load((REPO / "src/residual/config/schema.yaml").read_text())
    enum = schema["properties"]["models"]["additionalProperties"]["properties"]["library"]["enum"]
    assert sorted(enum) == sorted(LIBRARIES)


def test_registry_facts_need_no_model_library() -> None:
    """The registry and its facts are read without importing any model library (the workflow plans with them)."""
    code = (
        "import sys; from residual.libraries import LIBRARIES\n"
        "spec = {'library': 'transformers', 'arch': 'CLIPModel', 'pretrained': None, 'kwargs': {'num_hidden_layers': 2}}\n"
        "facts = [(l.package, l.vision_depth(spec), l.local_checkpoints(spec), l.text(spec)) for l in LIBRARIES.values()]\n"
        "print(sorted(m for m in ('open_clip', 'timm', 'transformers') if m in sys.modules))"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert run.stdout.strip() == "[]"

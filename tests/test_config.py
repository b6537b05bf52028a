"""The config schema: the shipped configs validate, defaults fill in, mistakes are named."""

from __future__ import annotations

import copy

import pytest
import yaml
from conftest import REPO

from residual.config import ConfigError, active_models, load_config, validate_config


@pytest.mark.parametrize("path", ["config.yaml", "configs/demo.yaml", "tests/configs/tiny.yaml"])
def test_shipped_configs_validate(path: str) -> None:
    config = load_config(REPO / path)
    assert config["encode"]["dtype"] in ("float16", "float32")
    assert all(spec["seed"] == config["seed"] or "seed" in spec for spec in config["models"].values())


def test_paper_config_models() -> None:
    config = load_config(REPO / "config.yaml")
    assert active_models(config) == ["clip_l", "openclip_l", "blip_l", "vit_l", "dinov2_l"]
    assert len(active_models({**config, "appendix_models": True})) == 7
    assert len([d for d in config["datasets"].values() if d["role"] == "task"]) == 11


def test_defaults_are_filled() -> None:
    config = validate_config({"models": {"m": {"library": "timm", "arch": "vit_tiny_patch16_224", "pretrained": None}},
                              "datasets": {"d": {"loader": "digits", "split": {"rule": "official"}}}})
    assert config["seed"] == 42 and config["encode"]["batch_size"] == 64
    assert config["models"]["m"]["seed"] == 42 and config["models"]["m"]["kwargs"] == {}


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda c: c["encode"].update(batchsize=3), r"at `encode`.*'batchsize' was unexpected"),
        (lambda c: c["models"]["clip_b32"].update(library="keras"), r"at `models.clip_b32.library`"),
        (lambda c: c["encode"].update(batch_size="64"), r"at `encode.batch_size`: '64' is not of type 'integer'"),
        (lambda c: c["datasets"]["digits"]["split"].update(rule="holdout", val=None), r"at `datasets.digits.split.val`"),
        (lambda c: c["datasets"]["digits"]["split"].pop("test"), r"'test' is a required property"),
    ],
)
def test_mistakes_name_the_key(edit, message: str) -> None:
    config = yaml.safe_load((REPO / "configs/demo.yaml").read_text())
    broken = copy.deepcopy(config)
    edit(broken)
    with pytest.raises(ConfigError, match=message):
        validate_config(broken)

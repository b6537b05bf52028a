"""The config schema: the shipped configs validate, defaults fill in, mistakes are named."""

from __future__ import annotations

import copy
import re

import pytest
import yaml
from conftest import REPO
from snakemake_runs import TINY, tiny_config

from residual.config.validate import (
    ConfigError,
    active_models,
    id_datasets,
    load_config,
    validate_config,
)


@pytest.mark.parametrize("path", ["config.yaml", "configs/demo.yaml", "configs/architectures.yaml", "tests/configs/tiny.yaml"])
def test_shipped_configs_validate(path: str) -> None:
    config = load_config(REPO / path)
    assert config["encode"]["dtype"] in ("float16", "float32")
    assert all(spec["seed"] == config["seed"] or "seed" in spec for spec in config["models"].values())


def test_paper_config_models() -> None:
    config = load_config(REPO / "config.yaml")
    assert active_models(config) == ["clip_l", "openclip_l", "blip_l", "vit_l", "dinov2_l"]
    assert len(active_models({**config, "appendix_models": True})) == 8
    assert len([d for d in config["datasets"].values() if d["role"] == "task"]) == 11


def test_defaults_are_filled() -> None:
    config = validate_config({"models": {"m": {"library": "timm", "arch": "vit_tiny_patch16_224", "pretrained": None}},
                              "datasets": {"d": {"loader": "digits", "split": {"rule": "official"}}}})
    assert config["seed"] == 42 and config["encode"]["batch_size"] == 64
    assert config["models"]["m"]["seed"] == 42 and config["models"]["m"]["kwargs"] == {}
    assert config["reference_dataset"] == "d" and id_datasets(config) == ["d"]  # no imagenet: the first dataset
    assert config["training"]["variants"][0] == "base" and config["analysis"]["id_samples"] == 50000


def test_imagenet_is_the_default_reference() -> None:
    datasets = {name: {"loader": name, "split": {"rule": "official"}} for name in ("mnist", "imagenet")}
    config = validate_config({"models": {"m": {"library": "timm", "arch": "vit_tiny_patch16_224", "pretrained": None}}, "datasets": datasets})
    assert config["reference_dataset"] == "imagenet"


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda c: c["encode"].update(batchsize=3), r"at `encode`.*'batchsize' was unexpected"),
        (lambda c: c["models"]["world_clip"].update(library="keras"), r"at `models.world_clip.library`"),
        (lambda c: c["encode"].update(batch_size="64"), r"at `encode.batch_size`: '64' is not of type 'integer'"),
        (lambda c: c["datasets"]["random"]["split"].update(rule="holdout", val=None), r"at `datasets.random.split.val`"),
        (lambda c: c["datasets"]["random"]["split"].pop("test"), r"'test' is a required property"),
    ],
)
def test_mistakes_name_the_key(edit, message: str) -> None:
    config = yaml.safe_load((REPO / "configs/demo.yaml").read_text())
    broken = copy.deepcopy(config)
    edit(broken)
    with pytest.raises(ConfigError, match=message):
        validate_config(broken)


@pytest.mark.parametrize(
    ("edit", "key", "bad"),
    [
        (lambda c: c.update(reference_dataset="imagenet"), "reference_dataset", "imagenet"),
        (lambda c: c["analysis"].update(id_datasets=["digits", "cifar10"]), "analysis.id_datasets", "cifar10"),
    ],
)
def test_dataset_names_must_be_datasets_of_the_config(edit, key: str, bad: str) -> None:
    """Keys naming datasets are checked against `datasets`: the message names the key, the bad
    name and the datasets there are."""
    config = tiny_config()
    edit(config)
    expected = f"at `{key}`: '{bad}' is not one of the config's datasets ['digits', 'random']"
    with pytest.raises(ConfigError, match=re.escape(expected)):
        validate_config(config)


def test_id_datasets_default_to_the_reference_dataset() -> None:
    """analysis.id_datasets null (or absent) means the reference dataset only; a list is kept as given."""
    config = tiny_config()
    config["analysis"]["id_datasets"] = None
    assert id_datasets(validate_config(config)) == ["digits"]
    config = tiny_config()
    del config["analysis"]["id_datasets"]
    config["reference_dataset"] = "random"
    assert id_datasets(validate_config(config)) == ["random"]
    assert id_datasets(load_config(TINY)) == ["digits", "random"]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda c: c["training"].update(variants=["base", "fine_tune"]), r"at `training\.variants\.1`: 'fine_tune' is not one of"),
        (lambda c: c.update(finetune={"max_train_images": 0}), r"at `finetune\.max_train_images`: 0 is less than the minimum of 1"),
        (lambda c: c["training"].update(lambda_init="zeros"), r"at `training\.lambda_init`: 'zeros' is not one of"),
        (lambda c: c["training"].update(logits="softmax"), r"at `training\.logits`: 'softmax' is not one of"),
        (lambda c: c["training"].update(class_means="median"), r"at `training\.class_means`: 'median' is not one of"),
    ],
)
def test_training_mistakes_name_the_key(edit, message: str) -> None:
    """Unknown variants and training conventions are refused, naming the key."""
    config = tiny_config()
    edit(config)
    with pytest.raises(ConfigError, match=message):
        validate_config(config)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda c: c.update(run_name="x </script><img src=x onerror=alert(2)>"), r"at `run_name`: .* without '<'"),
        (lambda c: c.update(run_name="run {x}"), r"at `run_name`: .* or braces"),
        (lambda c: c.update(run_name="two\nlines"), r"at `run_name`: .* One line of text"),
        (lambda c: c["heads"].update(scores=[]), r"at `heads\.scores`: \[\] should be non-empty"),
        (lambda c: c["heads"].update(fractions=[]), r"at `heads\.fractions`: \[\] should be non-empty"),
        (lambda c: c["analysis"].update(id_datasets=[]), r"at `analysis\.id_datasets`: \[\] should be non-empty; .*null means"),
        (lambda c: c["descriptions"].update(datasets=[]), r"at `descriptions\.datasets`: \[\] should be non-empty"),
        (lambda c: c["heads"].update(random_seeds=[]), r"at `heads\.random_seeds`: \[\] should be non-empty; the random score needs"),
    ],
    ids=["run name with a script", "run name with braces", "run name on two lines", "no scores", "no fractions",
         "no id datasets", "no described datasets", "random without seeds"],
)  # fmt: skip
def test_settings_that_reach_html_or_make_no_sense_empty_are_refused(edit, message: str) -> None:
    """A run name that Snakemake's report or its params would read as markup or wildcards, and a list
    left empty where nothing could run, stop at the config check, naming the key."""
    config = tiny_config()
    edit(config)
    with pytest.raises(ConfigError, match=message):
        validate_config(config)


def test_a_run_name_of_plain_punctuation_and_random_without_scores_of_it_are_accepted() -> None:
    config = tiny_config()
    config["run_name"] = "R&D \"q\" *b* `c`_ |d| [1]_ \\ $ % # ~ ^ Workflow_ &lt;img&gt; -->"
    config["heads"].update(scores=["supervised"], random_seeds=[])
    assert validate_config(config)["heads"]["random_seeds"] == []

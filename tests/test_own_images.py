"""Your own images (`loader: imagefolder`, docs/datasets.md "Your own images"): class folders or a
table, on trees of PNGs the tests write; then the docs' steps from a folder of images to the report."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
import yaml
from conftest import REPO
from PIL import Image
from snakemake_runs import snakemake, tiny_config

from residual.alignment.options import ClassifierSpec
from residual.config.errors import ConfigError
from residual.config.params import split_params
from residual.config.preflight import check_config, missing_inputs
from residual.config.validate import validate_config
from residual.data.imagefolder import DEFAULT_TEMPLATES
from residual.data.sequences import DatasetError
from residual.data.sources import class_templates, load_source
from residual.data.splits import split_table
from residual.io.tensors import open_tensors

DOCS = REPO / "docs/datasets.md"
TINY = tiny_config()
# The docs' example tree: data/pets/{cat,dog,guinea_pig}/.
PETS = ("cat", "dog", "guinea_pig")


def write_images(folder: Path, count: int, label: int, size: int = 32) -> None:
    """`count` PNGs whose red channel is 40 x `label` (so an item's label can be read off its pixels)
    over seeded noise in green and blue."""
    folder.mkdir(parents=True, exist_ok=True)
    generator = np.random.default_rng(label)
    for index in range(count):
        pixels = generator.integers(0, 256, (size, size, 3), dtype=np.uint8)
        pixels[..., 0] = 40 * label
        Image.fromarray(pixels).save(folder / f"{index:03d}.png")


def label_of(image: Image.Image) -> int:
    return int(np.asarray(image)[0, 0, 0]) // 40


def class_folders(root: Path, classes: tuple[str, ...] = PETS, count: int = 12) -> Path:
    for label, name in enumerate(sorted(classes)):
        write_images(root / name, count, label)
    return root


def entry(root: Path, **keys: Any) -> dict[str, Any]:
    return {"loader": "imagefolder", "root": str(root), "split": {"rule": "resplit", "val": 0.2, "test": 0.2}, **keys}


def test_class_folders_give_sorted_labels_and_their_names(tmp_path: Path) -> None:
    root = class_folders(tmp_path / "pets")
    spec = entry(root, classes={"cat": "tabby cat"})
    source = load_source("pets", spec)
    assert source.classes == ["tabby cat", "dog", "guinea pig"]
    assert class_templates(source, spec) == list(DEFAULT_TEMPLATES)
    assert list(source.parts) == ["all"] and source.labels("all").tolist() == [0] * 12 + [1] * 12 + [2] * 12
    images = source.parts["all"]
    for index in (0, 13, 35):
        image, label = images[index]
        assert image.mode == "RGB" and label == label_of(image)
    table = split_table(source, spec["split"], seed=42, dataset="pets")
    assert dict(table.group_by("split").len().iter_rows()) == {"train": 21, "val": 7, "test": 8}


def test_templates_come_from_the_config(tmp_path: Path) -> None:
    templates = ["a {} in a garden.", "a drawing of a {}."]
    spec = entry(class_folders(tmp_path / "pets"), templates=templates)
    assert class_templates(load_source("pets", spec), spec) == templates


def test_split_folders_are_the_official_parts(tmp_path: Path) -> None:
    root = tmp_path / "pets"
    class_folders(root / "train", count=10)
    class_folders(root / "test", count=4)
    source = load_source("pets", entry(root))
    assert list(source.parts) == ["train", "test"]
    assert source.labels("test").tolist() == [0] * 4 + [1] * 4 + [2] * 4
    table = split_table(source, {"rule": "holdout", "val": 0.2}, seed=42, dataset="pets")
    assert dict(table.group_by("split").len().iter_rows()) == {"train": 24, "val": 6, "test": 12}
    image, label = source.parts["test"][5]
    assert label == label_of(image) == 1


@pytest.mark.parametrize("suffix", ["csv", "parquet"])
def test_a_table_lists_files_labels_and_parts(tmp_path: Path, suffix: str) -> None:
    root = tmp_path / "scans"
    for label in range(2):
        write_images(root / "images" / str(label), 6, label)
    rows = pl.DataFrame(
        {
            "path": [f"images/{label}/{index:03d}.png" for index in range(6) for label in (1, 0)],
            "label": [label for _ in range(6) for label in (1, 0)],
            "part": ["train", "train", "val", "val", "test", "test"] * 2,
        }
    )
    getattr(rows, f"write_{suffix}")(root / f"labels.{suffix}")
    source = load_source("scans", entry(root, table=f"labels.{suffix}", classes={"0": "benign", "1": "malignant"}))
    assert source.classes == ["benign", "malignant"]
    assert list(source.parts) == ["train", "val", "test"]
    assert source.labels("train").tolist() == [1, 0, 1, 0]  # the table's row order
    for part in source.parts.values():
        for index in range(len(part)):
            image, label = part[index]
            assert label == label_of(image)


@pytest.mark.parametrize(
    ("make", "keys", "message"),
    [
        (lambda root: None, {}, "does not exist: put one folder of images per class there"),
        (lambda root: root.mkdir(), {}, "cannot be read as class folders"),
        (lambda root: (root / "cat").mkdir(parents=True), {}, "cannot be read as class folders"),
        (class_folders, {"classes": {"cta": "tabby cat"}}, r"`classes` names \['cta'\], which are no class of"),
        (class_folders, {"classes": {"cat": "dog"}}, r"share the names \['dog'\]"),
        (lambda root: (class_folders(root), class_folders(root / "train")), {}, r"split folders \['train'\] beside other folders"),
        (lambda root: (class_folders(root / "train"), class_folders(root / "test", PETS[:2])), {}, "test/ hold other class folders than train/"),
        (lambda root: class_folders(root), {"table": "labels.csv"}, "the table .*labels.csv does not exist"),
    ],
    ids=["no-folder", "empty", "no-images", "unknown-class", "same-names", "mixed-layout", "other-classes", "no-table"],
)
def test_unusable_folders_say_what_to_fix(tmp_path: Path, make: Any, keys: dict[str, Any], message: str) -> None:
    root = tmp_path / "pets"
    make(root)
    with pytest.raises(DatasetError, match=message) as error:
        load_source("pets", entry(root, **keys))
    assert str(root) in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ("path,kind\na.png,cat\n", r"lacks columns \['label'\]"),
        ("path,label\nmissing.png,cat\n", "lists 1 files that do not exist, first .*missing.png"),
        ("path,label\n0.png,\n", "empty cells"),
        ("path,label,part\n0.png,cat,training\n", r"column `part` holds \['training'\]"),
    ],
)
def test_unusable_tables_name_the_table_and_the_fix(tmp_path: Path, table: str, message: str) -> None:
    write_images(tmp_path, 1, 0)
    (tmp_path / "000.png").rename(tmp_path / "0.png")
    (tmp_path / "labels.csv").write_text(table)
    with pytest.raises(DatasetError, match=message) as error:
        load_source("scans", entry(tmp_path, table="labels.csv"))
    assert str(tmp_path) in str(error.value)


def config_with(dataset: dict[str, Any]) -> dict[str, Any]:
    return {"models": copy.deepcopy(TINY["models"]), "datasets": {"pets": dataset}}


def test_the_config_check_names_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"datasets.pets.templates.0.*does not match"):
        validate_config(config_with(entry(tmp_path, templates=["a photo of a cat."])))
    config = validate_config(config_with({**entry(tmp_path / "absent"), "root": None}))
    with pytest.raises(ConfigError, match="datasets.pets.root: loader 'imagefolder' reads files"):
        check_config(config)
    digits = {"loader": "digits", "templates": ["a {}."], "split": {"rule": "resplit", "val": 0.2, "test": 0.2}}
    with pytest.raises(ConfigError, match="datasets.pets.templates: only the 'imagefolder' loader"):
        check_config(validate_config(config_with(digits)))
    absent = validate_config(config_with(entry(tmp_path / "absent")))
    check_config(absent)  # a folder not there yet is a missing input: a dry run plans, a real run stops
    assert missing_inputs(absent, datasets={"pets"}, models=set()) == [
        f"datasets.pets: the folder {tmp_path / 'absent'} does not exist: put one folder of images per class there "
        "(see docs/datasets.md, 'Your own images')"
    ]


def test_names_and_templates_are_settings_of_the_classifier_only(tmp_path: Path) -> None:
    """Renaming a class or changing the prompts reruns the classifier (and what reads it), never
    the split; class means have no prompts, so a model without a text tower ignores templates."""
    plain = validate_config(config_with(entry(tmp_path)))
    named = validate_config(config_with(entry(tmp_path, classes={"cat": "tabby cat"}, templates=["a {}."])))
    assert split_params(plain["datasets"]["pets"]) == split_params(named["datasets"]["pets"])
    text, means = ClassifierSpec.from_config(named, "clip_tiny", "pets"), ClassifierSpec.from_config(named, "dino_tiny", "pets")
    assert text.source == {"loader": "imagefolder", "root": str(tmp_path), "classes": {"cat": "tabby cat"}, "templates": ["a {}."]}
    assert means.source == {"loader": "imagefolder", "root": str(tmp_path), "classes": {"cat": "tabby cat"}}
    assert ClassifierSpec.from_config(plain, "clip_tiny", "pets").source == {"loader": "imagefolder", "root": str(tmp_path)}


def docs_config() -> dict[str, Any]:
    """The config of docs/datasets.md's "Your own images", and a check that its tree is `PETS`."""
    section = DOCS.read_text().split("## Your own images")[1].split("\n## ")[0]
    assert all(f"{name}/" in section for name in PETS)
    blocks = [yaml.safe_load(block) for block in re.findall(r"```yaml\n(.*?)```", section, re.S)]
    return next(block for block in blocks if "imagefolder" in str(block))


@pytest.mark.slow
def test_a_folder_of_images_goes_to_the_report_by_the_docs(tmp_path: Path) -> None:
    """The docs' steps on 36 generated 32 px PNGs: their config, with the tiny test model for theirs,
    a local description list (the docs' offline choice), one variant, and the tiny run's CPU settings."""
    config = docs_config()
    root = tmp_path / config["datasets"]["pets"]["root"]
    class_folders(root)
    texts = ["a photo of a cat", "a photo of a dog", "a guinea pig", "a small furry animal", "a pet on a sofa", "a blurry photo",
             "a bright red image", "a dark image", "random noise", "a close-up of fur"]  # fmt: skip
    (tmp_path / "descriptions.txt").write_text("\n".join(texts) + "\n")
    config |= {key: TINY[key] for key in ("encode", "heads")}
    config |= {
        "models": {"clip_tiny": TINY["models"]["clip_tiny"]},
        "descriptions": {"dictionary": {"source": "descriptions.txt"}, "k": 3},
        "training": {**TINY["training"], "variants": ["base"]},
        "analysis": {key: value for key, value in TINY["analysis"].items() if key != "id_datasets"},  # the tiny run's datasets
    }
    (tmp_path / "pets.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    for args in (["-n"], ["--cores", "2", "report_files"], ["--report", "results/report.html", "report_files"]):  # the docs' steps 3 and 4
        run = snakemake(tmp_path, *args, configfiles=[Path("pets.yaml")], timeout=900)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert (tmp_path / "results/report.html").stat().st_size > 100_000
    with open_tensors(tmp_path / "results/classifiers/clip_tiny/pets.safetensors", "classifier", "classifier") as (_, header):
        assert header["classes"] == ["tabby cat", "dog", "guinea pig"]
    training = pl.read_parquet(tmp_path / "results/tables/training.parquet")
    assert training.filter(pl.col("dataset") == "pets").height == 1

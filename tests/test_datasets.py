"""Dataset loaders, class names, downloads and the paper's split rules, on fake datasets written in
each real dataset's on-disk format (tests/fake_datasets.py). The network is blocked throughout."""

from __future__ import annotations

import math
import pickle
import re
import socket
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import fake_datasets
import numpy as np
import polars as pl
import pytest
import yaml
from conftest import REPO
from fake_datasets import Fake
from PIL import Image

from residual.data import catalog
from residual.data.catalog import DATASETS
from residual.data.classnames import by_index, by_name, openai_classes, openai_templates
from residual.data.download import download
from residual.data.sequences import DatasetError
from residual.data.sources import LOADERS, load_source
from residual.data.splits import split_table

NAMES = list(fake_datasets.WRITERS)
USER_SUPPLIED = ["imagenet", "stanford_cars", "pacs", "imagenet_sketch"]
# METHOD section 3, as the `split:` entries of the config.
PAPER_RULES: dict[str, dict[str, Any]] = {
    "imagenet": {"rule": "holdout", "subset": 100000, "val": 0.2},
    "cifar10": {"rule": "holdout", "val": 0.1},
    "cifar100": {"rule": "holdout", "val": 0.1},
    "mnist": {"rule": "holdout", "val": 0.1},
    "gtsrb": {"rule": "holdout", "val": 0.1},
    "svhn": {"rule": "holdout", "val": 0.2},
    "dtd": {"rule": "holdout", "val": 0.2},
    "stanford_cars": {"rule": "holdout", "val": 0.2},
    "eurosat": {"rule": "resplit", "val": 0.1, "test": 0.1},
    "sun397": {"rule": "resplit", "val": 0.1, "test": 0.1},
    "resisc45": {"rule": "official"},
    "pacs": {"rule": "resplit", "val": 0.1, "test": 0.1},
    "imagenet_sketch": {"rule": "resplit", "val": 0.1, "test": 0.1},
}


class NetworkBlocked(OSError):
    pass


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every connection attempt (name lookups included) fails and is recorded."""
    attempts: list[Any] = []

    def refuse(*args: Any, **kwargs: Any) -> None:
        attempts.append(args)
        raise NetworkBlocked("network access in a test")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    return attempts


@pytest.fixture(scope="module")
def fake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[str], Fake]]:
    """Writes each fake once per module, and points torchvision's checksum tables at the fakes."""
    made: dict[str, Fake] = {}
    patch = pytest.MonkeyPatch()

    def get(name: str) -> Fake:
        if name not in made:
            made[name] = fake_datasets.WRITERS[name](tmp_path_factory.mktemp(name))
            for owner, attribute, value in made[name].patches:
                patch.setattr(owner, attribute, value)
        return made[name]

    yield get
    patch.undo()


def spec(name: str, root: Path) -> dict[str, Any]:
    return {"loader": name, "root": str(root), "split": PAPER_RULES[name]}


def test_registry_holds_exactly_the_paper_loaders_and_the_users_own() -> None:
    assert sorted(LOADERS) == sorted([*NAMES, "digits", "random", "world", "imagefolder"])


def test_the_paper_config_fetches_every_dataset_that_has_a_source() -> None:
    """The README says datasets with a public, checksummed source download themselves: config.yaml
    switches `download` off only where no source exists (the pipeline could not fetch them anyway)."""
    datasets = yaml.safe_load((REPO / "config.yaml").read_text())["datasets"]
    switched_off = [name for name, entry in datasets.items() if entry.get("download") is False and DATASETS[entry["loader"]].fetch]
    assert switched_off == []


@pytest.mark.parametrize("name", NAMES)
def test_loader_reads_the_real_layout(name: str, fake: Callable[[str], Fake]) -> None:
    data = fake(name)
    source = load_source(name, spec(name, data.root))
    assert source.classes == data.classes
    assert set(source.parts) == set(data.counts)
    for part, counts in data.counts.items():
        labels = source.labels(part)
        assert np.bincount(labels, minlength=len(counts)).tolist() == counts
        sequence = source.parts[part]
        assert len(pickle.loads(pickle.dumps(sequence))) == len(sequence)  # DataLoader workers under spawn
        for index in {0, len(sequence) // 2, len(sequence) - 1}:
            image, label = sequence[index]
            assert isinstance(image, Image.Image) and image.mode == "RGB"
            assert label == labels[index] == data.label_of(image)


def test_pacs_records_its_domains(fake: Callable[[str], Fake]) -> None:
    source = load_source("pacs", spec("pacs", fake("pacs").root))
    ranges = {"art_painting": [0, 28], "cartoon": [28, 56], "photo": [56, 84], "sketch": [84, 112]}
    assert source.metadata == {"domains": ranges}


def expected_sizes(counts: dict[str, list[int]], rule: dict[str, Any]) -> dict[str, int]:
    """Split sizes by sklearn's rounding: the held-out share is ceil(fraction * n)."""
    if rule["rule"] == "official":
        return {part: sum(counts[part]) for part in ("train", "val", "test")}
    if rule["rule"] == "holdout":
        pool = min(sum(counts["train"]), rule.get("subset", math.inf))
        val = math.ceil(rule["val"] * pool)
        return {"train": pool - val, "val": val, "test": sum(counts["test"])}
    pool = sum(counts["all"])
    held = math.ceil((rule["val"] + rule["test"]) * pool)  # val + test held out together, then halved
    test = math.ceil(rule["test"] / (rule["val"] + rule["test"]) * held)
    return {"train": pool - held, "val": held - test, "test": test}


def check_split(table: pl.DataFrame, counts: dict[str, list[int]], rule: dict[str, Any]) -> None:
    """Sizes as sklearn rounds them; every class keeps each split's share, to rounding (stratified)."""
    splits = ("train", "val", "test")
    sizes = {split: table.filter(pl.col("split") == split).height for split in splits}
    assert sizes == expected_sizes(counts, rule)
    assert table["sample_id"].n_unique() == table.height
    classes = len(next(iter(counts.values())))
    got = {
        split: np.bincount(table.filter(pl.col("split") == split)["label"].to_numpy(), minlength=classes)
        for split in splits
    }

    def balanced(split: str, pool: np.ndarray) -> bool:
        return bool(np.abs(got[split] - pool * sizes[split] / pool.sum()).max() <= 1)

    if rule["rule"] == "official":
        assert all(got[split].tolist() == counts[split] for split in splits)
    elif rule["rule"] == "holdout":
        pool = np.array(counts["train"])
        assert got["test"].tolist() == counts["test"] and balanced("val", pool) and balanced("train", pool)
    else:
        assert all(balanced(split, np.array(counts["all"])) for split in splits)


@pytest.mark.parametrize("name", NAMES)
def test_paper_split_rule(name: str, fake: Callable[[str], Fake]) -> None:
    data = fake(name)
    source = load_source(name, spec(name, data.root))
    table = split_table(source, PAPER_RULES[name], seed=42, dataset=name)
    check_split(table, data.counts, PAPER_RULES[name])
    assert table.equals(split_table(source, PAPER_RULES[name], seed=42, dataset=name))


def test_imagenet_subset_is_stratified(fake: Callable[[str], Fake]) -> None:
    """The 100k subset rule, scaled to the fake: 4 of 5 images per class, then 1 of 4 to val."""
    data = fake("imagenet")
    rule = {"rule": "holdout", "subset": 4000, "val": 0.25}
    table = split_table(load_source("imagenet", spec("imagenet", data.root)), rule, seed=42, dataset="imagenet")
    for split, per_class in (("train", 3), ("val", 1), ("test", 1)):
        labels = table.filter(pl.col("split") == split)["label"].to_numpy()
        assert np.bincount(labels, minlength=1000).tolist() == [per_class] * 1000


@pytest.mark.parametrize("name", [*NAMES, "digits", "random"])
def test_download_is_a_no_op_when_files_are_present(
    name: str, fake: Callable[[str], Fake], monkeypatch: pytest.MonkeyPatch, no_network: list[Any]
) -> None:
    root = fake(name).root if name in NAMES else None
    if name in DATASETS:
        refuse = replace(DATASETS[name], fetch=lambda root: pytest.fail("fetched although present"))
        monkeypatch.setitem(DATASETS, name, refuse)
    download(name, spec(name, root) if root else {"loader": name}, root)
    assert no_network == []


@pytest.mark.parametrize("name", NAMES)
def test_missing_files_name_the_folder(name: str, tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=re.escape(str(tmp_path))) as error:
        load_source(name, spec(name, tmp_path))
    assert DATASETS[name].files[0] in str(error.value)


@pytest.mark.parametrize("name", USER_SUPPLIED)
def test_user_supplied_datasets_say_what_to_place_where(name: str, tmp_path: Path, no_network: list[Any]) -> None:
    assert DATASETS[name].fetch is None
    with pytest.raises(DatasetError, match=re.escape(str(tmp_path))) as error:
        download(name, spec(name, tmp_path), tmp_path)
    assert all(file in str(error.value) for file in DATASETS[name].files)
    assert "docs/datasets.md" in str(error.value) and no_network == []


def test_download_retries_transient_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Path] = []

    def flaky(root: Path) -> None:
        calls.append(root)
        if len(calls) < 3:
            raise ConnectionResetError("peer went away")
        fake_datasets.cifar10(root)

    monkeypatch.setitem(DATASETS, "cifar10", replace(DATASETS["cifar10"], fetch=flaky))
    download("cifar10", spec("cifar10", tmp_path), tmp_path, attempts=3, backoff_s=0)
    assert calls == [tmp_path] * 3 and not DATASETS["cifar10"].missing(tmp_path)


@pytest.mark.parametrize("name", ["cifar10", "mnist", "resisc45"])
def test_download_gives_up_with_the_folder_named(name: str, tmp_path: Path, no_network: list[Any]) -> None:
    """torchvision's real download path, against the blocked network."""
    with pytest.raises(DatasetError, match="failed 2 times") as error:
        download(name, spec(name, tmp_path), tmp_path, attempts=2, backoff_s=0)
    assert str(tmp_path) in str(error.value) and no_network


def test_corrupted_files_raise_a_dataset_error(fake: Callable[[str], Fake], tmp_path: Path) -> None:
    """torchvision's MD5 check still runs on files present: a damaged batch is reported, with root."""
    root = fake_datasets.cifar10(tmp_path).root
    fake("cifar10")  # the checksum table now holds the intact fake's MD5s
    with open(root / "cifar-10-batches-py/test_batch", "ab") as file:
        file.write(b"\0")
    with pytest.raises(DatasetError, match="torchvision cannot read"):
        load_source("cifar10", spec("cifar10", root))


def test_unknown_loader_and_missing_root() -> None:
    with pytest.raises(DatasetError, match="unknown loader"):
        download("x", {"loader": "nope"}, "/tmp")
    with pytest.raises(DatasetError, match="needs `root`"):
        load_source("x", {"loader": "cifar10"})


# METHOD section 3: classes / templates per dataset.
COUNTS = {
    "imagenet": (1000, 80),
    "gtsrb": (43, 3),
    "mnist": (10, 1),
    "stanford_cars": (196, 8),
    "dtd": (47, 8),
    "eurosat": (10, 3),
    "resisc45": (45, 18),
    "sun397": (397, 2),
    "svhn": (10, 1),
    "cifar10": (10, 18),
    "cifar100": (100, 18),
}


@pytest.mark.parametrize("name", COUNTS)
def test_openai_lists_have_the_paper_counts(name: str) -> None:
    templates = openai_templates(name)
    assert (len(openai_classes(name)), len(templates)) == COUNTS[name]
    assert all(template.count("{}") == 1 for template in templates)


def test_class_alignment_rejects_what_it_cannot_match() -> None:
    with pytest.raises(DatasetError, match="by position"):
        by_index("gtsrb", 42)
    with pytest.raises(DatasetError, match="no OpenAI name"):
        by_name("resisc45", ["airplane", "spaceport"])
    with pytest.raises(DatasetError, match="no OpenAI class names"):
        openai_classes("pacs")
    assert by_name("sun397", ["jail/indoor", "jail_cell"]) == ["jail indoor", "jail cell"]


def test_labels_are_read_without_decoding_images(fake: Callable[[str], Fake], monkeypatch: pytest.MonkeyPatch) -> None:
    """Split tables need every label; reading them must not open a single image."""
    monkeypatch.setattr(Image, "open", lambda *args, **kwargs: pytest.fail("decoded an image to read labels"))
    for name in ("gtsrb", "dtd", "sun397", "stanford_cars", "resisc45", "pacs"):
        source = catalog.load(name, fake(name).root)
        for part in source.parts:
            source.labels(part)

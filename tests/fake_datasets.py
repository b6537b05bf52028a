"""Tiny datasets in the exact on-disk format of the real ones, for tests that must not download.

Every image is one flat colour that encodes its label (`colour`, `label_of`), so a test can check
that a loader pairs each image with the right label. Each writer returns a `Fake`: its root, the
images per class of each part the loader must report, the class names it must return, and the
checksum-table patches torchvision needs to accept the fake files (it verifies CIFAR and SVHN
files against the MD5s of the real ones).
"""

from __future__ import annotations

import hashlib
import io
import pickle
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import scipy.io
from PIL import Image
from torchvision import datasets as tv

from residual.data.classnames import openai_classes

# Native class -> the OpenAI name the loader must give it, for the datasets whose names differ.
EUROSAT = {
    "AnnualCrop": "annual crop land",
    "Forest": "forest",
    "HerbaceousVegetation": "brushland or shrubland",
    "Highway": "highway or road",
    "Industrial": "industrial buildings or commercial buildings",
    "Pasture": "pasture land",
    "PermanentCrop": "permanent crop land",
    "Residential": "residential buildings or homes or apartments",
    "River": "river",
    "SeaLake": "lake or sea",
}
# Real SUN397 ClassName.txt lines, chosen where OpenAI's sorted names reorder them ('jail/indoor'
# sorts before 'jail_cell', 'jail cell' before 'jail indoor') or where '/' and '_' both occur.
SUN397 = {
    "/a/abbey": "abbey",
    "/a/apartment_building/outdoor": "apartment building outdoor",
    "/b/bakery/shop": "bakery shop",
    "/c/car_interior/backseat": "car interior backseat",
    "/e/elevator/door": "elevator door",
    "/e/elevator_shaft": "elevator shaft",
    "/i/ice_skating_rink/outdoor": "ice skating rink outdoor",
    "/i/iceberg": "iceberg",
    "/j/jail/indoor": "jail indoor",
    "/j/jail_cell": "jail cell",
    "/t/theater/indoor_procenium": "theater indoor procenium",
    "/u/underwater/coral_reef": "underwater coral reef",
}
PACS = ("dog", "elephant", "giraffe", "guitar", "horse", "house", "person")
PACS_DOMAINS = ("art_painting", "cartoon", "photo", "sketch")


@dataclass
class Fake:
    root: Path
    counts: dict[str, list[int]]  # part -> images per label
    classes: list[str]
    label_of: Callable[[Image.Image], int]
    patches: list[tuple[object, str, Any]] = field(default_factory=list)


def colour(label: int) -> tuple[int, int, int]:
    """A colour per label (< 1000), far enough apart to survive JPEG."""
    return 20 + (label % 40) * 5, 20 + (label // 40) * 8, 128


def label_of(image: Image.Image) -> int:
    red, green, _ = image.getpixel((4, 4))
    return round((red - 20) / 5) + 40 * round((green - 20) / 8)


def grey_label_of(image: Image.Image) -> int:
    return round((image.getpixel((4, 4))[0] - 20) / 20)


@cache
def image_bytes(label: int, form: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), colour(label)).save(buffer, format=form, quality=95)
    return buffer.getvalue()


def write_image(path: Path, label: int, form: str = "JPEG") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(image_bytes(label, form))


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def cifar_batch(name: str, labels: list[int]) -> dict[str, Any]:
    """A CIFAR batch dict; `data` rows are [3072] uint8: 1024 red, then 1024 green, then 1024 blue."""
    rows = np.stack([np.repeat(np.array(colour(label), dtype=np.uint8), 1024) for label in labels])
    return {"batch_label": name, "labels": labels, "data": rows, "filenames": [f"{i}.png" for i in range(len(labels))]}


def dump(path: Path, content: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as file:
        pickle.dump(content, file)


def labels_for(counts: list[int]) -> list[int]:
    """Labels interleaved across classes (0, 1, 2, ..., 0, 1, ...), as shuffled real files are."""
    remaining, labels = list(counts), []
    while any(remaining):
        for label, left in enumerate(remaining):
            if left:
                labels.append(label)
                remaining[label] -= 1
    return labels


def cifar10(root: Path) -> Fake:
    names = openai_classes("cifar10")
    folder = root / "cifar-10-batches-py"
    train_labels = labels_for([10] * 10)
    for batch in range(5):
        dump(folder / f"data_batch_{batch + 1}", cifar_batch(f"training batch {batch + 1} of 5", train_labels[batch::5]))
    dump(folder / "test_batch", cifar_batch("testing batch 1 of 1", labels_for([2] * 10)))
    dump(folder / "batches.meta", {"num_cases_per_batch": 20, "label_names": names, "num_vis": 3072})
    patches = [
        (tv.CIFAR10, "train_list", [[f"data_batch_{b}", md5(folder / f"data_batch_{b}")] for b in range(1, 6)]),
        (tv.CIFAR10, "test_list", [["test_batch", md5(folder / "test_batch")]]),
        (tv.CIFAR10, "meta", {**tv.CIFAR10.meta, "md5": md5(folder / "batches.meta")}),
    ]
    return Fake(root, {"train": [10] * 10, "test": [2] * 10}, names, label_of, patches)


def cifar100(root: Path) -> Fake:
    names = openai_classes("cifar100")
    folder = root / "cifar-100-python"
    for split, per_class in (("train", 10), ("test", 1)):
        batch = cifar_batch(f"{split} batch 1 of 1", labels_for([per_class] * 100))
        batch["fine_labels"] = batch.pop("labels")
        batch["coarse_labels"] = [label // 5 for label in batch["fine_labels"]]
        dump(folder / split, batch)
    dump(folder / "meta", {"fine_label_names": [name.replace(" ", "_") for name in names],
                           "coarse_label_names": [f"superclass_{i}" for i in range(20)]})
    patches = [
        (tv.CIFAR100, "train_list", [["train", md5(folder / "train")]]),
        (tv.CIFAR100, "test_list", [["test", md5(folder / "test")]]),
        (tv.CIFAR100, "meta", {**tv.CIFAR100.meta, "md5": md5(folder / "meta")}),
    ]
    return Fake(root, {"train": [10] * 100, "test": [1] * 100}, names, label_of, patches)


def idx(path: Path, array: np.ndarray) -> None:
    """LeCun's idx format, uncompressed as torchvision keeps it in MNIST/raw."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", size) for size in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def mnist(root: Path) -> Fake:
    counts = {"train": [10] * 10, "test": [2] * 10}
    for prefix, part in (("train", "train"), ("t10k", "test")):
        labels = np.array(labels_for(counts[part]), dtype=np.uint8)
        images = np.repeat(20 + 20 * labels, 28 * 28).reshape(-1, 28, 28)
        idx(root / "MNIST/raw" / f"{prefix}-images-idx3-ubyte", images)
        idx(root / "MNIST/raw" / f"{prefix}-labels-idx1-ubyte", labels)
    return Fake(root, counts, [str(digit) for digit in range(10)], grey_label_of)


def svhn(root: Path) -> Fake:
    counts = {"train": [5] * 10, "test": [2] * 10}
    split_list = dict(tv.SVHN.split_list)
    for part in counts:
        labels = np.array(labels_for(counts[part]))
        pixels = [np.broadcast_to(np.array(colour(label), dtype=np.uint8), (32, 32, 3)) for label in labels]
        images = np.stack(pixels, axis=-1)  # [32, 32, 3, n], as in the real files
        path = root / f"{part}_32x32.mat"
        root.mkdir(parents=True, exist_ok=True)
        scipy.io.savemat(path, {"X": images, "y": np.where(labels == 0, 10, labels).astype(np.uint8)[:, None]})
        url, filename, _ = split_list[part]
        split_list[part] = [url, filename, md5(path)]
    return Fake(root, counts, [str(digit) for digit in range(10)], label_of, [(tv.SVHN, "split_list", split_list)])


def gtsrb(root: Path) -> Fake:
    base = root / "gtsrb"
    for label in range(43):
        for index in range(10):
            write_image(base / "GTSRB/Training" / f"{label:05d}" / f"{index:05d}_00000.ppm", label, "PPM")
    rows = ["Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId"]
    for number, label in enumerate(labels_for([2] * 43)):
        write_image(base / "GTSRB/Final_Test/Images" / f"{number:05d}.ppm", label, "PPM")
        rows.append(f"{number:05d}.ppm;8;8;0;0;7;7;{label}")
    (base / "GT-final_test.csv").write_text("\n".join(rows) + "\n")
    return Fake(root, {"train": [10] * 43, "test": [2] * 43}, openai_classes("gtsrb"), label_of)


def dtd(root: Path) -> Fake:
    names = openai_classes("dtd")
    data = root / "dtd/dtd"
    lists: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for label, name in enumerate(names):
        for index, split in enumerate(("train", "train", "train", "val", "val", "test")):
            write_image(data / "images" / name / f"{name}_{index:04d}.jpg", label)
            lists[split].append(f"{name}/{name}_{index:04d}.jpg")
    for split, lines in lists.items():
        (data / "labels").mkdir(parents=True, exist_ok=True)
        (data / "labels" / f"{split}1.txt").write_text("\n".join(lines) + "\n")
    return Fake(root, {"train": [5] * 47, "test": [1] * 47}, names, label_of)


def folder_tree(
    folder: Path, names: list[str], per_class: int, file_name: Callable[[str, int], str] = lambda name, i: f"{name}_{i}.jpg"
) -> None:
    for label, name in enumerate(names):
        for index in range(per_class):
            write_image(folder / name / file_name(name, index), label)


def eurosat(root: Path) -> Fake:
    folder_tree(root / "eurosat/2750", sorted(EUROSAT), 10)
    return Fake(root, {"all": [10] * 10}, [EUROSAT[name] for name in sorted(EUROSAT)], label_of)


def sun397(root: Path) -> Fake:
    data = root / "SUN397"
    paths = sorted(SUN397)
    for label, path in enumerate(paths):
        for index in range(10):
            # hashed names, so that sorted order is not the order they were written in
            name = f"sun_{hashlib.md5(f'{path}{index}'.encode()).hexdigest()[:16]}.jpg"
            write_image(data / path.lstrip("/") / name, label)
    (data / "ClassName.txt").write_text("\n".join(paths) + "\n")
    return Fake(root, {"all": [10] * len(paths)}, [SUN397[path] for path in paths], label_of)


def annotations(path: Path, labels: list[int], files: list[str]) -> None:
    """A MATLAB struct array like the Stanford Cars devkit's `annotations`."""
    fields = ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname")
    records = np.zeros((1, len(labels)), dtype=[(name, object) for name in fields])
    for index, (label, name) in enumerate(zip(labels, files)):
        records[0, index] = (np.uint8(0), np.uint8(0), np.uint8(7), np.uint8(7), np.uint8(label + 1), name)
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(path, {"annotations": records})


def stanford_cars(root: Path) -> Fake:
    names = openai_classes("stanford_cars")[:20]
    base = root / "stanford_cars"
    counts = {"train": [5] * 20, "test": [2] * 20}
    layout = (("train", "cars_train", "devkit/cars_train_annos.mat"), ("test", "cars_test", "cars_test_annos_withlabels.mat"))
    for part, images, annos in layout:
        labels = labels_for(counts[part])
        files = [f"{number + 1:05d}.jpg" for number in range(len(labels))]
        for label, name in zip(labels, files):
            write_image(base / images / name, label)
        annotations(base / annos, labels, files)
    scipy.io.savemat(base / "devkit/cars_meta.mat", {"class_names": np.array([names], dtype=object)})
    return Fake(root, counts, names, label_of)


def resisc45(root: Path) -> Fake:
    names = openai_classes("resisc45")
    folders = [name.replace(" ", "_") for name in names]
    folder_tree(root / "NWPU-RESISC45", folders, 5, lambda name, i: f"{name}_{i + 1:03d}.jpg")
    splits = {"train": (1, 2, 3), "val": (4,), "test": (5,)}
    for split, numbers in splits.items():
        lines = [f"{name}_{number:03d}.jpg\n" for name in folders for number in numbers]
        (root / f"resisc45-{split}.txt").write_text("".join(lines))
    return Fake(root, {split: [len(numbers)] * 45 for split, numbers in splits.items()}, names, label_of)


def pacs(root: Path) -> Fake:
    for domain in PACS_DOMAINS:
        folder_tree(root / domain, list(PACS), 4, lambda name, i: f"pic_{i:03d}.jpg")
    return Fake(root, {"all": [16] * 7}, list(PACS), label_of)


def wnids() -> list[str]:
    return [f"n{index:08d}" for index in range(1000)]


def imagenet(root: Path) -> Fake:
    folder_tree(root / "train", wnids(), 5, lambda wnid, i: f"{wnid}_{i}.JPEG")
    folder_tree(root / "val", wnids(), 1, lambda wnid, i: f"ILSVRC2012_val_{int(wnid[1:]) + 1:08d}.JPEG")
    return Fake(root, {"train": [5] * 1000, "test": [1] * 1000}, openai_classes("imagenet"), label_of)


def imagenet_sketch(root: Path) -> Fake:
    folder_tree(root / "sketch", wnids(), 10, lambda wnid, i: f"sketch_{i}.JPEG")
    return Fake(root, {"all": [10] * 1000}, openai_classes("imagenet"), label_of)


WRITERS: dict[str, Callable[[Path], Fake]] = {
    "imagenet": imagenet,
    "cifar10": cifar10,
    "cifar100": cifar100,
    "mnist": mnist,
    "svhn": svhn,
    "gtsrb": gtsrb,
    "dtd": dtd,
    "eurosat": eurosat,
    "sun397": sun397,
    "stanford_cars": stanford_cars,
    "resisc45": resisc45,
    "pacs": pacs,
    "imagenet_sketch": imagenet_sketch,
}

"""Your own images (`loader: imagefolder`): one folder per class under `root`, or a table of image
files and their labels. docs/datasets.md ("Your own images") is the user's version.

Layouts under `root`:
- class folders, `<class>/<image>`: one part, 'all' (split rule `resplit`); or the same class
  folders under `train/` and `test/` (`holdout`), and `val/` (`official`);
- a table (the entry's `table`, a .csv or .parquet file under root): a row per image with columns
  `path` (the image file, relative to root), `label` (its class) and optionally `part` (train,
  val or test; without it every row is in 'all').

Labels follow the sorted class folder names (table labels, read as text); a class's name in the
prompts is its entry in the config's `classes`, else its folder name with '_' read as a space. The
prompt templates are the entry's `templates`, else `DEFAULT_TEMPLATES`. Sample order is the sorted
file paths (folders) or the table's row order, never the file system's.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from residual.data.sequences import SPLITS, DatasetError, LabelledImages, Source

if TYPE_CHECKING:  # torchvision is imported where images are read: the workflow imports LOADER and `missing` when it parses
    from torchvision.datasets import ImageFolder

LOADER = "imagefolder"
# CLIP's single-prompt template, the zero-shot default where a dataset has no list of its own.
DEFAULT_TEMPLATES = ("a photo of a {}.",)
DOCS = "see docs/datasets.md, 'Your own images'"


class ListedImages:
    """The images a table lists: `samples` is [(file path, label)] (the attribute name
    ImageFolder uses, which error messages read to name a file)."""

    def __init__(self, samples: list[tuple[str, int]]) -> None:
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        from torchvision.datasets.folder import default_loader

        path, label = self.samples[index]
        return default_loader(path), label


def missing(spec: Mapping[str, Any], root: Path) -> str | None:
    """What a run of this entry lacks on this machine (the root folder or its table), else None.
    Only looks for them: reading the images is the loader's."""
    if not root.is_dir():
        return f"the folder {root} does not exist: put one folder of images per class there ({DOCS})"
    if spec.get("table") and not (root / spec["table"]).is_file():
        return f"the table {root / spec['table']} does not exist: write it (columns path, label), or remove `table` to read class folders"
    return None


def load_imagefolder_source(spec: Mapping[str, Any], root: Path | None, seed: int) -> Source:
    """The `Source` of an imagefolder entry: its images and labels, class names and templates."""
    if root is None:
        raise DatasetError(f"loader {LOADER!r} needs `root`, the folder that holds the class folders (or the table)")
    problem = missing(spec, root)
    if problem is not None:
        raise DatasetError(problem)
    parts, classes = _read_table(root, spec["table"]) if spec.get("table") else _read_folders(root)
    names = _class_names(classes, spec.get("classes") or {}, root)
    return Source(parts, names, templates=list(spec.get("templates") or DEFAULT_TEMPLATES))


def _read_folders(root: Path) -> tuple[dict[str, LabelledImages], list[str]]:
    """Class folders under root, or under its split folders (train/, val/, test/)."""
    folders = sorted(entry.name for entry in root.iterdir() if entry.is_dir())
    splits = [name for name in SPLITS if name in folders]
    if not splits:
        images = _image_folder(root)
        return {"all": LabelledImages(images, images.targets)}, images.classes
    others = [name for name in folders if name not in SPLITS]
    if others:
        raise DatasetError(
            f"{root} holds split folders {splits} beside other folders {others[:5]}: put every class folder inside "
            f"the split folders ({', '.join(SPLITS)}), or rename the class folders named like a split ({DOCS})"
        )
    parts = {split: _image_folder(root / split) for split in splits}
    classes = parts[splits[0]].classes
    differ = [split for split in splits if parts[split].classes != classes]
    if differ:
        raise DatasetError(
            f"{root}: {', '.join(f'{split}/' for split in differ)} hold other class folders than {splits[0]}/ "
            f"({parts[differ[0]].classes[:5]} against {classes[:5]}): every split folder needs the same class folders"
        )
    return {split: LabelledImages(images, images.targets) for split, images in parts.items()}, classes


def _image_folder(folder: Path) -> ImageFolder:
    from torchvision.datasets import ImageFolder
    from torchvision.datasets.folder import IMG_EXTENSIONS

    try:
        return ImageFolder(str(folder))
    except FileNotFoundError as error:  # no class folder, or a class folder without an image file
        raise DatasetError(
            f"{folder} cannot be read as class folders ({error}): put one folder per class there, each holding "
            f"image files ({' '.join(IMG_EXTENSIONS)}); {DOCS}"
        ) from error


def _read_table(root: Path, name: str) -> tuple[dict[str, LabelledImages], list[str]]:
    """The table's rows as parts: files relative to root, labels as text (a .parquet file, else CSV:
    the config's schema allows no other)."""
    path = root / name
    try:
        table = pl.read_parquet(path) if path.suffix == ".parquet" else pl.read_csv(path, infer_schema=False)
    except (pl.exceptions.PolarsError, OSError) as error:
        raise DatasetError(f"table {path} is unreadable ({' '.join(str(error).split())}): write it as {path.suffix[1:]}") from error
    absent = [column for column in ("path", "label") if column not in table.columns]
    if absent:
        raise DatasetError(f"table {path} lacks columns {absent} (it has {table.columns}): give each image's `path` and `label`")
    if table.height == 0:
        raise DatasetError(f"table {path} has no rows: list one image per row")
    columns = ["path", "label", *(["part"] if "part" in table.columns else [])]
    table = table.select(pl.col(columns).cast(pl.String))
    if table.null_count().sum_horizontal().item():
        raise DatasetError(f"table {path} has empty cells in columns {columns}: give every row a value in each")
    files = [root / file for file in table["path"]]
    gone = [str(file) for file in files if not file.is_file()]
    if gone:
        raise DatasetError(f"table {path} lists {len(gone)} files that do not exist, first {gone[0]}: fix the paths (relative to {root})")
    classes = sorted(set(table["label"]))
    index = {label: position for position, label in enumerate(classes)}
    samples = [(str(file), index[label]) for file, label in zip(files, table["label"])]
    if "part" not in table.columns:
        return {"all": _listed(samples)}, classes
    unknown = sorted(set(table["part"]) - set(SPLITS))
    if unknown:
        raise DatasetError(f"table {path}: column `part` holds {unknown[:5]}; its values are {', '.join(SPLITS)}")
    parts = {split: [sample for sample, part in zip(samples, table["part"]) if part == split] for split in SPLITS}
    return {split: _listed(rows) for split, rows in parts.items() if rows}, classes


def _listed(samples: list[tuple[str, int]]) -> LabelledImages:
    return LabelledImages(ListedImages(samples), [label for _, label in samples])


def _class_names(classes: Sequence[str], names: Mapping[str, str], root: Path) -> list[str]:
    """Each class's name in the prompts: its `classes` entry, else its own name with '_' as a space."""
    unknown = sorted(set(map(str, names)) - set(classes))
    if unknown:
        raise DatasetError(f"`classes` names {unknown[:5]}, which are no class of {root} (its classes: {list(classes)[:10]}); fix the keys")
    named = {str(key): value for key, value in names.items()}
    result = [named.get(name, name.replace("_", " ")) for name in classes]
    twins = sorted(name for name, count in Counter(result).items() if count > 1)
    if twins:
        raise DatasetError(f"classes of {root} share the names {twins[:5]}: their prompts would be the same; name them apart in `classes`")
    return result

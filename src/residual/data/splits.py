"""Stratified, seeded train/val/test splits written as a table (METHOD section 3).

Rules (the `split:` entry of a dataset):
- official: the dataset's own train/val/test parts, unchanged.
- holdout:  official train -> train + val (`val` fraction, stratified); official test kept.
- resplit:  every official part pooled -> train/val/test (`val`, `test` fractions, stratified;
            val + test are held out together, then split, as the authors did).
`subset: n` first draws a stratified subset of n samples from the train pool (ImageNet: 100k).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from residual.data.sequences import SPLITS
from residual.data.sources import DatasetError, Source

log = logging.getLogger(__name__)

COLUMNS = ("sample_id", "part", "index", "label", "split")
VERSION = "split/1"  # bump when a change to this module changes the split tables it writes


def read_split(path: str | Path, split: str) -> pl.DataFrame:
    """The rows of `split` in a split table file; DatasetError naming the file if it is unreadable,
    is not a split table or has no rows for `split`."""
    try:
        table = pl.read_parquet(path)
    except (pl.exceptions.PolarsError, OSError) as error:
        raise DatasetError(f"split table {path} is unreadable ({error}): delete it and rerun the split rule") from error
    missing = [column for column in COLUMNS if column not in table.columns]
    if missing:
        raise DatasetError(f"split table {path} lacks columns {missing}: delete it and rerun the split rule")
    rows = table.filter(pl.col("split") == split)
    if rows.height == 0:
        raise DatasetError(
            f"split table {path} has no rows for split {split!r}: delete it and rerun the split rule "
            "(it refuses to write empty splits; a dataset too small for its split rule fails there)"
        )
    return rows


def split_table(source: Source, rule: Mapping[str, Any], seed: int, dataset: str = "") -> pl.DataFrame:
    """One row per sample kept: sample_id (stable across rules), part, index (within the part),
    label, split. Sorted by split then sample_id."""
    kind = rule.get("rule", "resplit")
    parts = list(source.parts)
    offsets = np.cumsum([0] + [len(source.parts[p]) for p in parts])
    frames = []
    for part, offset in zip(parts, offsets):
        labels = source.labels(part)
        frames.append(
            pl.DataFrame(
                {
                    "sample_id": np.arange(offset, offset + len(labels), dtype=np.int64),
                    "part": [part] * len(labels),
                    "index": np.arange(len(labels), dtype=np.int64),
                    "label": labels.astype(np.int64),
                }
            )
        )
    pool = pl.concat(frames)
    if kind == "official":
        missing = [s for s in SPLITS if s not in parts]
        if missing:
            raise DatasetError(f"dataset {dataset!r}: rule 'official' needs parts {SPLITS}, the source has {parts}")
        assigned = pool.with_columns(pl.col("part").alias("split"))
    elif kind == "holdout":
        if "train" not in parts or "test" not in parts:
            raise DatasetError(f"dataset {dataset!r}: rule 'holdout' needs official 'train' and 'test' parts, got {parts}")
        train = stratified_subset(pool.filter(pl.col("part") == "train"), rule.get("subset"), seed, dataset)
        train, val = _stratified(train, float(rule["val"]), seed, dataset)
        test = pool.filter(pl.col("part") == "test")
        assigned = _label(train=train, val=val, test=test)
    elif kind == "resplit":
        pool = stratified_subset(pool, rule.get("subset"), seed, dataset)
        # As the authors: hold out val + test together, then halve the held-out part by its own
        # fraction. Shares of the remainder (val / (1 - test)) would round 80/10/10 to 7999/1001/1000.
        val_fraction, test_fraction = float(rule["val"]), float(rule["test"])
        train, held = _stratified(pool, val_fraction + test_fraction, seed, dataset)
        val, test = _stratified(held, test_fraction / (val_fraction + test_fraction), seed, dataset)
        assigned = _label(train=train, val=val, test=test)
    else:
        raise DatasetError(f"dataset {dataset!r}: unknown split rule {kind!r}; use official, holdout or resplit")
    check_sizes(assigned, len(source.classes), int(rule.get("min_samples", 1)), dataset, rule)
    return assigned.sort("split", "sample_id")


def check_sizes(table: pl.DataFrame, classes: int, minimum: int, dataset: str, rule: Mapping[str, Any]) -> None:
    """DatasetError naming the dataset and the counts when a split of `table` holds fewer than
    `minimum` samples, or val or test fewer samples than the dataset has classes (then some class
    cannot be scored at all: an accuracy on it means little)."""
    counts = dict(table.group_by("split").len().iter_rows())
    for split in SPLITS:
        count = counts.get(split, 0)
        floor = max(minimum, classes if split != "train" else 1)
        if count < floor:
            why = f"fewer than its {classes} classes" if floor == classes and classes > minimum else f"fewer than {floor}"
            raise DatasetError(
                f"dataset {dataset!r}: split {split!r} holds {count} samples, {why} (split sizes {counts}, rule "
                f"{dict(rule)}); use more samples (`subset`, `size`) or a larger `val`/`test`"
            )


def _label(**splits: pl.DataFrame) -> pl.DataFrame:
    return pl.concat([frame.with_columns(pl.lit(name).alias("split")) for name, frame in splits.items()])


def _stratify_on(frame: pl.DataFrame) -> np.ndarray | None:
    """The labels to stratify on; None (a plain random split, with a warning) when a class has a
    single sample, since scikit-learn cannot stratify it."""
    labels = frame["label"].to_numpy()
    classes, counts = np.unique(labels, return_counts=True)
    if counts.min() >= 2:
        return labels
    log.warning("classes %s have one sample each: this split is random, not stratified", classes[counts < 2].tolist()[:10])
    return None


def _stratified(frame: pl.DataFrame, fraction: float, seed: int, dataset: str) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Split rows into (1 - fraction, fraction), stratified by label."""
    if not 0.0 < fraction < 1.0:
        raise DatasetError(f"dataset {dataset!r}: split fraction {fraction} must lie strictly between 0 and 1")
    keep, held = _split(frame, dataset, test_size=fraction, random_state=seed, stratify=_stratify_on(frame))
    return frame[np.sort(keep)], frame[np.sort(held)]


def stratified_subset(frame: pl.DataFrame, size: int | None, seed: int, dataset: str) -> pl.DataFrame:
    """`size` rows of `frame` drawn with `seed`, stratified by label, in their original order
    (all of them when `size` is None or not smaller)."""
    if size is None or size >= frame.height:
        return frame
    keep, _ = _split(frame, dataset, train_size=int(size), random_state=seed, stratify=_stratify_on(frame))
    return frame[np.sort(keep)]


def _split(frame: pl.DataFrame, dataset: str, **options: Any) -> list[np.ndarray]:
    """scikit-learn's train_test_split of the row numbers, its complaints about sizes as DatasetError."""
    from sklearn.model_selection import train_test_split  # here: the workflow imports VERSION when it parses

    try:
        return train_test_split(np.arange(frame.height), **options)
    except ValueError as error:  # an empty side, or fewer held-out samples than classes
        raise DatasetError(
            f"dataset {dataset!r}: {frame.height} samples of {frame['label'].n_unique()} classes cannot be split so "
            f"({error}); too few samples for the split rule: use more (`subset`, `size`) or change `val`/`test`"
        ) from error

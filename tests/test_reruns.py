"""Reruns follow every setting, and only the settings an output depends on.

Each row changes one config key of a completed tiny run and asserts exactly which jobs
`snakemake -n` plans: the rules whose output depends on the key (and what depends on them), and
no other. Keys that change where or how fast a job runs, or only float rounding, plan nothing.
"""

from __future__ import annotations

import copy
import shutil
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO
from snakemake_runs import copy_run, planned, tiny_config

from residual.config.params import canonical, model_params, source_params, split_params
from residual.report import outputs

TINY = tiny_config()

# The tiny run: 2 models (clip_tiny with a text tower, dino_tiny without), a task dataset (digits,
# the reference) and an analysis dataset (random), 3 splits, 6 variants trained on units and one
# fine-tuned, the head stage and the descriptions (of clip_tiny's units on digits).
ENCODE_ALL = {"encode": 12, "pca": 4, "intrinsic_dimension": 4, "similarity": 2, "classifier": 1, "train": 12}
# Per model: val and test zero-shot, scores, selections, the maps of the selected heads and their picture.
HEADS = {"zeroshot": 4, "head_scores": 2, "head_selection": 2, "head_maps": 2, "chart_head_maps": 2}
HEAD_TABLES = tuple(outputs.HEAD_TABLES)
ONE_MODEL = {"unit_map": 1, "encode": 6, "pca": 2, "intrinsic_dimension": 2, "similarity": 1, "classifier": 1, "train": 6,
             "finetune": 1, "zeroshot": 2, "head_scores": 1, "head_selection": 1, "head_maps": 1, "chart_head_maps": 1}  # fmt: skip
NOTHING: dict[str, int] = {}


def tables(*kinds: str) -> dict[str, int]:
    """The jobs of the tables `kinds`: theirs and those of the charts and LaTeX tables drawn from them
    (residual.report.outputs), which rerun with them."""
    jobs = outputs.output_jobs(kinds)
    if "descriptions" in kinds:  # the head maps' pictures show the heads' TextSpan texts: one per model x task dataset
        jobs["chart_head_maps"] += 2
    return {**jobs, "all": 1}


# What a training run's result feeds: the training table and the main table (which reads the runs).
TRAINED = ("training", "main")
# What a change of every unit of a model feeds.
DOWNSTREAM = ("decomposition", "intrinsic_dimension", "similarity", *TRAINED, *HEAD_TABLES)
ALL_TABLES = tables(*DOWNSTREAM, "descriptions")
DESCRIBED = {"describe_units": 1}
EVERYTHING = {"split": 2, "unit_map": 2, **ENCODE_ALL, "classifier": 2, "finetune": 2, **HEADS, "encode_descriptions": 1, **DESCRIBED, **ALL_TABLES}


def set_key(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """A change of the config: the dotted `key` set to `value`."""

    def change(config: dict[str, Any]) -> None:
        *parents, last = key.split(".")
        for part in parents:
            config = config.setdefault(part, {})
        config[last] = value

    change.__name__ = f"{key}={value}"
    return change


def every(*changes: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], None]:
    """All `changes` at once."""

    def change(config: dict[str, Any]) -> None:
        for one in changes:
            one(config)

    change.__name__ = " & ".join(one.__name__ for one in changes)
    return change


def sorted_keys(config: dict[str, Any]) -> None:
    """The same settings with every mapping's keys in sorted order (the file lists them otherwise)."""
    config.update(canonical(copy.deepcopy(config)))  # type: ignore[arg-type]


CASES: list[tuple[Callable[[dict[str, Any]], None], dict[str, int]]] = [
    # training: each key reruns the variants it applies to, then the training table.
    (set_key("training.lr_residual", 0.5), {"train": 6, **tables(*TRAINED)}),
    (set_key("training.lr_adapter", 0.01), {"train": 4, **tables(*TRAINED)}),
    (set_key("training.lambda_init", "ones"), {"train": 10, **tables(*TRAINED)}),
    (set_key("training.lr_range_test", True), {"train": 10, **tables(*TRAINED)}),
    (set_key("training.batch_size", 32), {"train": 10, **tables(*TRAINED)}),
    (set_key("training.epochs", 4), {"train": 10, **tables(*TRAINED)}),
    (set_key("training.patience", 2), {"train": 10, **tables(*TRAINED)}),
    (set_key("training.logits", "normalized"), {"train": 12, "finetune": 2, **HEADS, **tables(*TRAINED, *HEAD_TABLES)}),
    (
        set_key("training.class_means", "normalized"),  # dino_tiny's classifier, and all that uses it
        {"classifier": 1, "train": 6, "finetune": 1, "zeroshot": 2, "head_scores": 1, "head_selection": 1, "head_maps": 1,
         "chart_head_maps": 1, **tables(*TRAINED, *HEAD_TABLES)},  # fmt: skip
    ),
    (set_key("training.variants", ["base", "residual_fine"]), tables(*TRAINED)),
    (set_key("training.published_code", True), {"train": 4, **tables(*TRAINED)}),  # residual_full, spectral_adapter
    (set_key("training.head_rank", "d_head"), {"train": 2, **tables(*TRAINED)}),  # residual_full
    # analysis
    (set_key("analysis.id_samples", 50), {"intrinsic_dimension": 4, **tables("intrinsic_dimension")}),
    (set_key("analysis.twonn_fraction", 0.8), {"intrinsic_dimension": 4, **tables("intrinsic_dimension")}),
    (set_key("analysis.linear_id_threshold", 0.95), {"intrinsic_dimension": 4, **tables("intrinsic_dimension")}),
    (set_key("analysis.similarity_threshold", 0.8), {"similarity": 2, **tables("similarity")}),
    (set_key("analysis.id_datasets", ["digits"]), tables("intrinsic_dimension")),
    (set_key("analysis.linear_id_on", "id_sample"), {"intrinsic_dimension": 4, **tables("intrinsic_dimension")}),
    # maps: what the maps show reruns them and their pictures (the table fraction also the tables it summarises).
    (set_key("maps.components", 1), {"head_maps": 2, "chart_head_maps": 2, "all": 1}),
    (set_key("heads.table_fraction", 0.1), {"head_maps": 2, "chart_head_maps": 2, **tables("head_selection", "head_overlap")}),
    # encode: the storage precision changes every unit; batching and placement change nothing stored.
    (set_key("encode.dtype", "float32"), {**ENCODE_ALL, "finetune": 1, **HEADS, **DESCRIBED, **ALL_TABLES}),
    (set_key("encode.ln_constants", "per_layer"), {"unit_map": 2, **ENCODE_ALL, "finetune": 1, **HEADS, **DESCRIBED, **ALL_TABLES}),
    # the run
    (set_key("seed", 7), EVERYTHING),
    (
        set_key("reference_dataset", "random"),
        {"similarity": 2, "train": 12, **DESCRIBED, **tables("similarity", *TRAINED, "descriptions")},
    ),
    (set_key("run_name", "renamed"), ALL_TABLES),
    (set_key("demo", False), ALL_TABLES),
    (set_key("training.min_eval_samples", 10), tables("training")),
    # models: what decides the weights reruns that model, from its unit map on.
    (set_key("models.clip_tiny.kwargs.vision_cfg.layers", 1), {**ONE_MODEL, "encode_descriptions": 1, **DESCRIBED, **ALL_TABLES}),
    (set_key("models.dino_tiny.arch", "vit_small_patch14_dinov2"), {**ONE_MODEL, **tables(*DOWNSTREAM)}),
    (set_key("models.dino_tiny.pretrained", "lvd142m"), {**ONE_MODEL, **tables(*DOWNSTREAM)}),
    (set_key("models.dino_tiny.seed", 3), {**ONE_MODEL, **tables(*DOWNSTREAM)}),
    # datasets: what decides the samples reruns that dataset, from its split on. The text
    # classifier depends on the class names only; the class-mean one on the train units.
    (
        set_key("datasets.digits.split.val", 0.2),
        {"split": 1, "encode": 6, "pca": 2, "intrinsic_dimension": 2, "similarity": 2, "classifier": 1, "train": 12,
         "finetune": 2, **HEADS, **DESCRIBED} | ALL_TABLES,  # fmt: skip
    ),
    (
        set_key("datasets.digits.split.subset", 120),
        {"split": 1, "encode": 6, "pca": 2, "intrinsic_dimension": 2, "similarity": 2, "classifier": 1, "train": 12,
         "finetune": 2, **HEADS, **DESCRIBED} | ALL_TABLES,  # fmt: skip
    ),
    (
        set_key("datasets.random.size", 30),
        {"split": 1, "encode": 6, "pca": 2, "intrinsic_dimension": 2, "similarity": 2, **tables("decomposition", "intrinsic_dimension", "similarity")},
    ),
    # Where and how fast jobs run, float rounding, `download`, key order: no output depends on
    # them, so all of them at once plan nothing (one dry run: each costs seconds of imports).
    (
        every(
            set_key("training.feature_batch_size", 64),
            set_key("training.device", "auto"),
            set_key("training.threads", 2),
            set_key("training.mem_mb", 2000),
            set_key("analysis.batch_size", 32),
            set_key("analysis.group_size", 3),
            set_key("analysis.device", "auto"),
            set_key("analysis.threads", 2),
            set_key("encode.batch_size", 4),
            set_key("encode.rows_per_group", 16),
            set_key("encode.workers", 1),
            set_key("encode.device", "auto"),
            set_key("encode.threads", 2),
            set_key("encode.gpus", 1),
            set_key("maps.batch_size", 2),
            sorted_keys,
            set_key("datasets.random.download", False),
        ),
        NOTHING,
    ),
    (set_key("datasets.digits.role", "analysis"), NOTHING),  # no task left: the training table is no longer a target
]


def test_reruns_follow_exactly_the_settings_each_output_depends_on(tiny_run: tuple[Path, str], tmp_path: Path) -> None:
    workdir, _ = tiny_run

    def plan(index: int) -> dict[str, int]:
        change, _ = CASES[index]
        config = copy.deepcopy(TINY)
        change(config)
        scratch = tmp_path / str(index)
        scratch.mkdir()
        return planned(workdir, config, scratch)

    with ThreadPoolExecutor(max_workers=2) as pool:  # each dry run is a process that imports torch
        found = list(pool.map(plan, range(len(CASES))))
    wrong = {change.__name__: (plan, expected) for (change, expected), plan in zip(CASES, found) if plan != expected}
    assert not wrong, "\n".join(f"{name}: planned {plan}, expected {expected}" for name, (plan, expected) in wrong.items())


# What the workflow reads from its checkout (the Snakefile imports the package from its own src/).
WORKFLOW_PARTS = ("Snakefile", "rules", "workflow_scripts", "src", "report", "envs")


def test_a_moved_checkout_with_its_completed_run_plans_nothing(tiny_run: tuple[Path, str], tmp_path: Path) -> None:
    """Copying a checkout and its completed run elsewhere changes every absolute path of both: no
    param or input of a rule may hold one (the builtin dictionary's path did), or the copy reruns."""
    workdir, _ = tiny_run
    moved = tmp_path / "moved"
    moved.mkdir()
    for part in WORKFLOW_PARTS:
        source = REPO / part
        if source.is_dir():
            shutil.copytree(source, moved / part, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(source, moved / part)
    copy_run(workdir, moved)
    assert planned(moved, TINY, tmp_path, checkout=moved) == NOTHING


@pytest.mark.parametrize(
    "build",
    [model_params, source_params, split_params],
    ids=["model", "source", "split"],
)
def test_params_are_canonical_and_leave_out_what_changes_no_output(build: Callable[[dict], dict]) -> None:
    """The same settings in another key order give the same params (so the same repr, which is what
    Snakemake compares); `download`, `role` and `appendix` are never part of them."""
    spec = {
        "library": "open_clip", "arch": "ViT-B-32", "pretrained": None, "kwargs": {"b": 1, "a": {"y": 2, "x": 3}},
        "seed": 3, "appendix": True, "loader": "digits", "root": "data/digits", "download": True, "role": "task",
        "split": {"val": 0.1, "test": 0.1, "rule": "resplit"},
    }  # fmt: skip
    reordered = dict(reversed(list(spec.items())))
    reordered["kwargs"] = {"a": {"x": 3, "y": 2}, "b": 1}
    reordered["split"] = {"rule": "resplit", "test": 0.1, "val": 0.1}
    assert repr(build(spec)) == repr(build(reordered))
    assert not {"download", "role", "appendix"} & set(build(spec))
    with pytest.raises(TypeError, match="not a plain config value"):
        canonical({"options": object()})

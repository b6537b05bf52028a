"""The main results table: every variant, ratios to fine-tuning against a plain recomputation, and
Markdown and LaTeX laid out like the paper's table."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from residual.io.tables import latex_escape, markdown_escape, write_table
from residual.report.main_table import MEAN, RATIO, caption, main_table, paper_layout

VARIANTS = ["base", "residual_fine", "residual_full", "residual_coarse", "spectral_adapter", "linear_adapter", "finetune"]
LABELS = dict(zip(VARIANTS, ["zero-shot", "ResiDual*", "ResiDual", "Optimized", "spectral adapter", "linear adapter", "fine-tune"]))
PARAMETERS = dict(zip(VARIANTS, [0, 9_876, 418_000, 384, 768, 590_592, 303_000_000]))
MODELS, DATASETS = ["clip_l", "dinov2_l"], ["cifar10", "gtsrb", "mnist"]


@pytest.fixture(scope="module")
def runs() -> pl.DataFrame:
    """One row per model x dataset x variant, as the training runs write them (seeded accuracies)."""
    generator = np.random.default_rng(0)
    rows = [
        {
            "model": model,
            "dataset": dataset,
            "variant": variant,
            "label": LABELS[variant],
            "logits": "raw",
            "lambda_init": None if variant in ("base", "finetune") else "randn",
            "lr": {"base": None, "finetune": 1e-5}.get(variant, 0.8 if variant.startswith("residual") else 1e-3),
            "trainable_parameters": PARAMETERS[variant],
            "test_accuracy": float(generator.uniform(0.2, 1.0)),
        }
        for model in MODELS
        for dataset in DATASETS
        for variant in VARIANTS
    ]
    return pl.DataFrame(rows).with_columns(pl.lit("paper").alias("run"))


def test_every_variant_has_its_accuracy_parameters_and_ratio(runs: pl.DataFrame) -> None:
    table = main_table(runs, VARIANTS)
    for variant in VARIANTS:
        assert {variant, f"{variant}_params", f"{variant}_of_finetune"} <= set(table.columns)
    per_model = len(DATASETS) + 2
    assert table.height == len(MODELS) * per_model
    assert table["row"].to_list()[:per_model] == ["dataset"] * len(DATASETS) + ["mean", "mean / finetune"]
    assert table.filter(pl.col("row") == "dataset").select("model", "dataset").rows() == [(m, d) for m in MODELS for d in DATASETS]


def test_ratios_and_means_equal_a_plain_recomputation(runs: pl.DataFrame) -> None:
    table = main_table(runs, VARIANTS)
    accuracy = {(r["model"], r["dataset"], r["variant"]): r["test_accuracy"] for r in runs.iter_rows(named=True)}
    for model in MODELS:
        rows = {r["dataset"]: r for r in table.filter(pl.col("model") == model).iter_rows(named=True)}
        for variant in VARIANTS:
            ratios = [accuracy[model, d, variant] / accuracy[model, d, "finetune"] for d in DATASETS]
            means = [sum(accuracy[model, d, v] for d in DATASETS) / len(DATASETS) for v in (variant, "finetune")]
            for dataset, ratio in zip(DATASETS, ratios):
                assert rows[dataset][f"{variant}_of_finetune"] == pytest.approx(ratio, rel=1e-12)
            assert rows[MEAN][variant] == pytest.approx(means[0], rel=1e-12)
            assert rows[MEAN][f"{variant}_of_finetune"] == pytest.approx(sum(ratios) / len(ratios), rel=1e-12)
            assert rows[RATIO][variant] == pytest.approx(means[0] / means[1], rel=1e-12)
            assert rows[RATIO][f"{variant}_params"] == pytest.approx(PARAMETERS[variant] / PARAMETERS["finetune"], rel=1e-12)
        assert rows[RATIO]["finetune"] == 1.0 and rows[MEAN]["finetune_of_finetune"] == 1.0


def test_a_missing_variant_is_named(runs: pl.DataFrame) -> None:
    partial = runs.filter(~((pl.col("model") == "clip_l") & (pl.col("dataset") == "gtsrb") & (pl.col("variant") == "finetune")))
    with pytest.raises(ValueError, match=r"clip_l/gtsrb lacks \['finetune'\]"):
        main_table(partial, VARIANTS)


def test_without_finetune_there_are_no_ratios(runs: pl.DataFrame) -> None:
    table = main_table(runs.filter(pl.col("variant") != "finetune"), VARIANTS[:-1])
    assert not [column for column in table.columns if column.endswith("_of_finetune")]
    assert set(table["row"]) == {"dataset", "mean"}


def test_markdown_and_latex_are_laid_out_like_the_paper(tmp_path: Path, runs: pl.DataFrame) -> None:
    table = main_table(runs, VARIANTS)
    title = caption(runs, VARIANTS, lr_range_test=False, reference="imagenet")
    assert "Logits: raw" in title and "lambda init: randn" in title and "finetune 1e-05" in title and "(the config)" in title
    outputs = [tmp_path / f"main.{ext}" for ext in ("parquet", "csv", "md", "tex")]
    write_table(table, outputs, title, demo=True, markdown=paper_layout(table, LABELS), group="model")
    assert pl.read_parquet(outputs[0]).equals(table)

    markdown = outputs[2].read_text()
    assert "not the paper's" in markdown and all(f"| {markdown_escape(label)} " in markdown for label in LABELS.values())  # ResiDual\*
    assert re.search(r"^\| clip_l +\| trainable parameters +\| 0 +\| 9.9k .*\| 303.0M +\|$", markdown, re.M)

    latex = outputs[3].read_text()
    assert latex.count("{") == latex.count("}")
    assert re.findall(r"\\begin\{(\w+)\}", latex) == ["document", "tabular"]
    assert re.findall(r"\\end\{(\w+)\}", latex) == ["tabular", "document"]
    assert [r"\toprule" in latex, r"\midrule" in latex, r"\bottomrule" in latex] == [True] * 3
    body = [line for line in latex.splitlines() if line.endswith(r"\\")][1:]  # after the header
    pairs, model = [], None
    for line in body:  # a model's name on its block's first row only, blocks parted by a midrule
        named, dataset = line.split(" & ")[:2]
        model = named or model
        pairs.append((model, dataset))
    assert latex.count(r"\midrule") == len(MODELS) and sum(1 for line in body if line.split(" & ")[0]) == len(MODELS)
    assert [pair for pair in pairs if pair[1] in DATASETS] == [(latex_escape(m), d) for m in MODELS for d in DATASETS]
    assert all(line.count("&") == len(VARIANTS) + 1 for line in body)
    if shutil.which("pdflatex"):
        run = subprocess.run(["pdflatex", "-halt-on-error", "-interaction=nonstopmode", outputs[3].name],
                             cwd=tmp_path, capture_output=True, text=True, timeout=120)  # fmt: skip
        assert run.returncode == 0, run.stdout[-2000:]


def test_a_ratio_to_zero_accuracy_is_null(runs: pl.DataFrame) -> None:
    """A toy run's fine-tuning can score 0: its ratios are undefined, and the mean skips them."""
    zero = (pl.col("model") == "clip_l") & (pl.col("dataset") == "gtsrb") & (pl.col("variant") == "finetune")
    table = main_table(runs.with_columns(pl.when(zero).then(0.0).otherwise(pl.col("test_accuracy")).alias("test_accuracy")), VARIANTS)
    rows = {r["dataset"]: r for r in table.filter(pl.col("model") == "clip_l").iter_rows(named=True)}
    assert rows["gtsrb"]["base_of_finetune"] is None
    expected = [rows[d]["base"] / rows[d]["finetune"] for d in ("cifar10", "mnist")]
    assert rows[MEAN]["base_of_finetune"] == pytest.approx(sum(expected) / 2, rel=1e-12)
    assert "(--)" in paper_layout(table, LABELS)["zero-shot"][1]

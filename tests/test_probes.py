"""Ground truth per unit (residual.heads.probes): whole-unit LDA probes and per-component probes,
train -> val balanced accuracy, on synthetic unit files whose unit map is the identity (every
stored value is its own output), checked against direct formulas and scikit-learn."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from chart_tables import probes_table
from sklearn.metrics import balanced_accuracy_score
from sklearn.neighbors import NearestCentroid
from test_charts import data_marks, scenegraph, texts
from test_heads import LAYOUT, identity_map

from residual.heads.options import ProbeOptions
from residual.heads.probes import balanced_accuracy, probe_units
from residual.heads.tables import best_attributes, probes_summary
from residual.io.tables import DEMO_NOTE
from residual.report.figures import render
from residual.report.outputs import CHARTS
from residual.report.probe_charts import NONE
from residual.spectral.pca import fit_unit_file
from residual.units.decompose import RawUnits
from residual.units.layout import OUTPUT
from residual.units.store import UnitWriter, read_units

CLASSES = 4
LINEAR = "head_1_2"  # the label is linear in its output: class c adds 2 along a direction of its own
NOISE = "head_0_3"  # no label in it
PLANTED = "head_1_0"  # the label along its second principal direction, a larger label-free one first


def write_units(folder: Path, split: str, samples: int, seed: int, label_in_layernorm: bool = False) -> Path:
    """A float32 unit file of LAYOUT with labels in [0, CLASSES); every unit is noise but LINEAR
    (2 * onehot(label) in its first CLASSES coordinates, plus noise of sd 0.5) and PLANTED (sd 5
    along coordinate 0, no label; the label as 1.5 * label along coordinate 1). With
    `label_in_layernorm`, the final LayerNorm's scale is 1 + label and NOISE has mean 3: its output,
    stored value / scale, then carries the label that its stored value does not."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(samples) % CLASSES  # every class in every split
    heads = torch.randn(samples, LAYOUT.layers, LAYOUT.heads, LAYOUT.head_dim, generator=generator)
    heads[:, 1, 2] *= 0.5
    heads[:, 1, 2, :CLASSES] += 2.0 * torch.nn.functional.one_hot(labels, CLASSES)
    heads[:, 1, 0] *= 0.1
    heads[:, 1, 0, 0] *= 50.0
    heads[:, 1, 0, 1] += 1.5 * labels
    emb = torch.randn(samples, LAYOUT.out_dim, generator=generator)
    mlp = torch.randn(samples, LAYOUT.layers, LAYOUT.out_dim, generator=generator)
    scale, zeros = 1.0 + labels * label_in_layernorm, torch.zeros(samples)
    heads[:, 0, 3] += 3.0 * label_in_layernorm
    unit_map = identity_map()
    digest = unit_map.save(folder / "unit_map.safetensors")
    raw = RawUnits(emb, mlp, heads, zeros, scale, torch.zeros(samples, LAYOUT.out_dim))
    path = folder / f"{split}.parquet"
    metadata = {"model": "synthetic", "dataset": "toy", "split": split, "unit_map": {"path": "unit_map.safetensors", "digest": digest}}
    writer = UnitWriter(path, LAYOUT, "float32", metadata, rows_per_group=64)
    writer.write(RawUnits(emb, mlp, heads, zeros, scale, raw.values(unit_map).sum(dim=1)), labels, torch.arange(samples))
    writer.close(decomposition_error=0.0, readback_error=0.0)
    return path


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("probe_units")
    paths = {"train": write_units(folder, "train", 400, seed=1), "val": write_units(folder, "val", 200, seed=2)}
    fit_unit_file(paths["train"]).save(folder / "pca.safetensors")
    return {**paths, "pca": folder / "pca.safetensors"}


def probed(toy: dict[str, Path], options: ProbeOptions = ProbeOptions(), batch_size: int = 64, group_size: int = 5) -> pl.DataFrame:
    return probe_units(toy["train"], toy["val"], toy["pca"], CLASSES, options, batch_size, group_size, "cpu")


def whole(table: pl.DataFrame, unit: str) -> float:
    return table.filter((pl.col("unit") == unit) & pl.col("component").is_null())["balanced_accuracy"].item()


def test_a_unit_that_carries_the_label_reads_it_and_noise_reads_chance(toy: dict[str, Path]) -> None:
    table = probed(toy)
    assert whole(table, LINEAR) > 0.95
    assert abs(whole(table, NOISE) - 0.25) < 0.1
    assert table["chance"].unique().to_list() == [0.25] and table["classes"].unique().to_list() == [CLASSES]
    assert (table["n_train"].unique().to_list(), table["n_val"].unique().to_list()) == ([400], [200])
    units = table.filter(pl.col("component").is_null())
    assert units["unit"].to_list() == [*LAYOUT.names, OUTPUT], "every unit and the embedding, in layout order"
    head = units.filter(pl.col("unit") == LINEAR)
    assert (head["kind"].item(), head["layer"].item(), head["head"].item()) == ("head", 1, 2)
    assert units.filter(pl.col("unit") == "emb")["head"].is_null().all()


def test_the_probe_is_the_shrunk_lda_formula_and_balanced_accuracy_is_sklearns(toy: dict[str, Path]) -> None:
    """Direct formula in numpy: pooled within-class covariance (denominator n - C), shrunk toward
    its mean eigenvalue times the identity, equal priors; scored by scikit-learn."""
    shrinkage = 0.3
    table = probed(toy, ProbeOptions(shrinkage=shrinkage, components=0))
    train, val = read_units(toy["train"]), read_units(toy["val"])  # the final LayerNorm is the identity: stored values
    for position, name in enumerate(train.names):
        x, y = train.values[:, position].double().numpy(), train.labels.numpy()
        means = np.stack([x[y == c].mean(axis=0) for c in range(CLASSES)])
        within = sum((x[y == c] - means[c]).T @ (x[y == c] - means[c]) for c in range(CLASSES)) / (len(x) - CLASSES)
        covariance = (1 - shrinkage) * within + shrinkage * np.trace(within) / len(within) * np.eye(len(within))
        inverse = np.linalg.inv(covariance)
        z = val.values[:, position].double().numpy()
        scores = z @ inverse @ means.T - 0.5 * np.einsum("cd,de,ce->c", means, inverse, means)
        expected = balanced_accuracy_score(val.labels.numpy(), scores.argmax(axis=1))
        assert whole(table, name) == pytest.approx(expected, abs=1e-12), name


def test_full_shrinkage_is_the_nearest_centroid(toy: dict[str, Path]) -> None:
    table = probed(toy, ProbeOptions(shrinkage=1.0, components=0))
    train, val = read_units(toy["train"], [LINEAR, NOISE]), read_units(toy["val"], [LINEAR, NOISE])
    for position, name in enumerate(train.names):
        centroid = NearestCentroid().fit(train.values[:, position].numpy(), train.labels.numpy())
        expected = balanced_accuracy_score(val.labels.numpy(), centroid.predict(val.values[:, position].numpy()))
        assert whole(table, name) == pytest.approx(expected, abs=1e-12), name


def test_the_whole_unit_is_probed_on_its_stored_values_and_components_in_output_space(tmp_path: Path) -> None:
    """Every unit's output-space value carries the final LayerNorm's per-sample statistics; a head
    must not seem to read what only they carry."""
    paths = {split: write_units(tmp_path, split, samples, seed, label_in_layernorm=True) for split, samples, seed in
             (("train", 400, 1), ("val", 200, 2))}  # fmt: skip
    fit_unit_file(paths["train"]).save(tmp_path / "pca.safetensors")
    table = probed({**paths, "pca": tmp_path / "pca.safetensors"}, ProbeOptions(components=1))
    assert abs(whole(table, NOISE) - 0.25) < 0.1
    first = table.filter((pl.col("unit") == NOISE) & (pl.col("component") == 0))["balanced_accuracy"].item()
    assert first > 0.8, "its output, 3 / (1 + label) along its mean, reads the label"


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_balanced_accuracy_matches_sklearn_with_a_class_missing_from_val() -> None:
    generator = np.random.default_rng(0)
    truth, predicted = generator.integers(0, 5, 300), generator.integers(0, 6, 300)
    truth[truth == 3] = 4  # class 3 absent: it does not count, as in scikit-learn
    correct = torch.zeros(6, dtype=torch.float64)
    counts = torch.zeros(6, dtype=torch.float64)
    for true, guess in zip(truth, predicted):
        counts[true] += 1
        correct[true] += float(true == guess)
    assert float(balanced_accuracy(correct, counts)) == pytest.approx(balanced_accuracy_score(truth, predicted), abs=1e-12)


def test_probes_are_deterministic_and_do_not_depend_on_batching(toy: dict[str, Path]) -> None:
    first = probed(toy)
    assert first.equals(probed(toy))
    other = probed(toy, batch_size=37, group_size=100)
    assert np.allclose(first["balanced_accuracy"].to_numpy(), other["balanced_accuracy"].to_numpy(), atol=1e-12)
    assert first.drop("balanced_accuracy").equals(other.drop("balanced_accuracy"))


def test_a_component_probe_finds_the_label_along_its_principal_direction(toy: dict[str, Path]) -> None:
    table = probed(toy, ProbeOptions(components=3))
    components = table.filter((pl.col("unit") == PLANTED) & pl.col("component").is_not_null()).sort("component")
    assert components["component"].to_list() == [0, 1, 2]
    accuracy = components["balanced_accuracy"].to_list()
    assert abs(accuracy[0] - 0.25) < 0.1, "the largest direction carries no label"
    assert accuracy[1] > 0.8, "the second carries it"
    ratios = components["explained_variance_ratio"].to_list()
    assert ratios[0] > 0.9 and ratios == sorted(ratios, reverse=True)
    assert whole(table, PLANTED) > 0.8
    # Direct formula: the nearest train class mean along component 1 of the unit's train PCA.
    pca = fit_unit_file(toy["train"], units=[PLANTED], include_output=False)
    direction = pca.components[0][1].double()
    train, val = read_units(toy["train"], [PLANTED]), read_units(toy["val"], [PLANTED])
    along = train.values[:, 0].double() @ direction
    means = torch.stack([along[train.labels == c].mean() for c in range(CLASSES)])
    nearest = ((val.values[:, 0].double() @ direction)[:, None] - means).abs().argmin(dim=1)
    assert accuracy[1] == pytest.approx(balanced_accuracy_score(val.labels.numpy(), nearest.numpy()), abs=1e-12)


def test_a_unit_with_fewer_components_has_fewer_rows(toy: dict[str, Path]) -> None:
    table = probed(toy, ProbeOptions(components=LAYOUT.out_dim + 3))
    rows = table.filter(pl.col("component").is_not_null()).group_by("unit").len()
    assert rows["len"].max() == LAYOUT.out_dim  # a unit of width d has at most d components
    assert probed(toy, ProbeOptions(components=0))["component"].is_null().all()


def test_a_train_split_without_a_class_is_refused_with_its_file(toy: dict[str, Path]) -> None:
    with pytest.raises(ValueError, match="train.parquet.*every class"):
        probe_units(toy["train"], toy["val"], toy["pca"], CLASSES + 1, ProbeOptions(), 64, 8, "cpu")


def test_a_pca_of_another_split_is_refused(toy: dict[str, Path], tmp_path: Path) -> None:
    fit_unit_file(toy["val"]).save(tmp_path / "val_pca.safetensors")
    with pytest.raises(ValueError, match="split 'val'.*rerun the pca rule"):
        probe_units(toy["train"], toy["val"], tmp_path / "val_pca.safetensors", CLASSES, ProbeOptions(), 64, 8, "cpu")


@pytest.mark.parametrize("options", [{"shrinkage": 0.0}, {"shrinkage": 1.5}, {"components": -1}])
def test_options_out_of_range_are_refused(options: dict) -> None:
    with pytest.raises(ValueError, match="probes"):
        ProbeOptions(**options)
    assert ProbeOptions(**ProbeOptions(0.2, 4).params()) == ProbeOptions(0.2, 4)


def test_each_unit_gets_the_task_it_reads_best_by_margin_over_chance() -> None:
    table = probes_table()
    best = best_attributes(table)
    assert best.height == 7 + 7
    head = best.filter((pl.col("model") == "model_a") & (pl.col("unit") == "head_0_0"))  # position 1: colour
    assert (head["best_attribute"].item(), head["balanced_accuracy"].item()) == ("colour", 0.9)
    assert head["margin"].item() == pytest.approx((0.9 - 1 / 6) / (1 - 1 / 6))
    assert head["world_shape"].item() == pytest.approx(1 / 6)
    # At chance everywhere (a constant unit, say), no task is read best.
    flat = best_attributes(table.with_columns(balanced_accuracy=pl.col("chance")))
    assert flat["best_attribute"].is_null().all() and flat["best_dataset"].is_null().all() and (flat["margin"] == 0).all()
    tie = best_attributes(table.with_columns(balanced_accuracy=0.5 * (1 + pl.col("chance"))))  # margin 0.5 on every task
    assert set(tie["best_attribute"]) == {"shape"}, "ties go to the first task"
    summary = probes_summary(table)
    assert summary.columns[:2] == ["model", "unit"] and "world_position" in summary.columns and "margin" in summary.columns


def test_the_head_attributes_chart_draws_every_head() -> None:
    at_chance = (pl.col("model") == "model_b") & (pl.col("unit") == "head_1_2")
    table = probes_table().with_columns(balanced_accuracy=pl.when(at_chance).then(pl.col("chance")).otherwise(pl.col("balanced_accuracy")))
    figure = CHARTS["head_attributes"]
    assert figure.table == "probes"
    marks = scenegraph(render("head_attributes", table, demo=True))
    assert data_marks(marks, "rect") == table.filter(pl.col("kind") == "head").select("model", "unit").n_unique()
    assert {figure.title, DEMO_NOTE} <= texts(marks, "title-text") | texts(marks, "title-subtitle")
    assert {"head", "layer"} <= texts(marks, "axis-title")
    assert {"best attribute", "margin over chance"} <= texts(marks, "legend-title")
    assert {"shape", "colour", "position", NONE} <= texts(marks, "legend-label")

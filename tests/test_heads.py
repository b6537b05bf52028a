"""The head stage (METHOD section 8): zero-shot from units, head scores, top-k selections, overlap.

Synthetic unit files (a unit map that is the identity, so every stored value is its own output)
hold one head that carries the class signal along the classifier's class directions; the tiny
open_clip model's float32 digit units check the exactness claims on a real decomposition.
"""

from __future__ import annotations

import copy
from pathlib import Path

import polars as pl
import pytest
import torch
import yaml
from conftest import REPO

from residual.alignment.classifier import ClassWeights, class_means_from_units
from residual.config.errors import ConfigError
from residual.config.validate import validate_config
from residual.heads.options import ScoreOptions, SelectionOptions, table_fraction
from residual.heads.scores import StreamingCorrelation, class_basis, ranks, save_means, score_heads, scores_table
from residual.heads.selection import ALL_HEADS, ALL_UNITS, evaluate_selections, plan_selections, selection_size
from residual.heads.tables import jaccard, overlap_table, selection_summary
from residual.heads.zeroshot import zero_shot
from residual.units.decompose import RawUnits
from residual.units.guards import NonFiniteError
from residual.units.layout import UnitLayout
from residual.units.store import UnitFile, UnitWriter
from residual.units.unit_map import UnitMap, constant_shares

LAYOUT = UnitLayout(layers=2, heads=4, head_dim=8, out_dim=8)
SIGNAL = "head_1_2"  # the head that carries the class
LOUD = "head_0_1"  # a head that dominates the output outside the class directions
CLASSES = 3
ALL_SCORES = ScoreOptions(["task_conditioned", "unsupervised", "supervised", "random"], [0, 1, 2], "raw")


def identity_map(nan_head: int | None = None) -> UnitMap:
    """A unit map under which every stored head value is its output (ln_std = 1, ln_mean = 0);
    `nan_head` (a flat head index) gets NaN weights, as a damaged map would."""
    weight = torch.eye(LAYOUT.head_dim).repeat(LAYOUT.layers * LAYOUT.heads, 1, 1)
    if nan_head is not None:
        weight[nan_head] = float("nan")
    heads, width = LAYOUT.layers * LAYOUT.heads, LAYOUT.out_dim
    shares = constant_shares(LAYOUT, "per_unit")
    return UnitMap(LAYOUT, weight, torch.zeros(heads, width), torch.zeros(width), torch.zeros(width), shares)


def synthetic_units(folder: Path, split: str, samples: int, seed: int, nan_head: int | None = None, shift: int = 0) -> Path:
    """A float32 unit file: labels in [0, 3); head SIGNAL = 3 * onehot(label) in the first 3 output
    coordinates plus noise; every other unit is noise, larger (sd 2) outside the class coordinates,
    and head LOUD's there is larger still (sd 10). shift: the stored labels are (label + shift) mod 3."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, CLASSES, (samples,), generator=generator)
    noise_scale = torch.tensor([0.3] * CLASSES + [2.0] * (LAYOUT.out_dim - CLASSES))
    heads = torch.randn(samples, LAYOUT.layers, LAYOUT.heads, LAYOUT.head_dim, generator=generator) * noise_scale
    heads[:, 1, 2, :CLASSES] += 3.0 * torch.nn.functional.one_hot(labels, CLASSES)
    heads[:, 0, 1, CLASSES:] *= 5.0
    emb = torch.randn(samples, LAYOUT.out_dim, generator=generator) * noise_scale
    mlp = torch.randn(samples, LAYOUT.layers, LAYOUT.out_dim, generator=generator) * noise_scale
    ones, zeros = torch.ones(samples), torch.zeros(samples)
    unit_map = identity_map(nan_head)
    map_path = folder / "unit_map.safetensors"
    digest = unit_map.save(map_path)
    raw = RawUnits(emb, mlp, heads, zeros, ones, torch.zeros(samples, LAYOUT.out_dim))
    embedding = raw.values(identity_map()).sum(dim=1)
    path = folder / f"{split}{'_shifted' if shift else ''}.parquet"
    metadata = {"model": "synthetic", "dataset": "toy", "split": split, "unit_map": {"path": map_path.name, "digest": digest}}
    writer = UnitWriter(path, LAYOUT, "float32", metadata, rows_per_group=64)
    writer.write(RawUnits(emb, mlp, heads, zeros, ones, embedding), (labels + shift) % CLASSES, torch.arange(samples))
    writer.close(decomposition_error=0.0, readback_error=0.0)
    return path


def class_directions(path: Path, classes: int = CLASSES, width: int = LAYOUT.out_dim) -> Path:
    """A classifier whose class c is output coordinate c."""
    ClassWeights(torch.eye(width)[:classes], [str(c) for c in range(classes)], "class_means", 100.0).save(path)
    return path


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("toy_units")
    return {
        "val": synthetic_units(folder, "val", 300, seed=1),
        "test": synthetic_units(folder, "test", 300, seed=2),
        "classifier": class_directions(folder / "classifier.safetensors"),
        "folder": folder,
    }


def scored(toy: dict[str, Path], options: ScoreOptions = ALL_SCORES, batch_size: int = 64) -> pl.DataFrame:
    return scores_table(score_heads(toy["val"], toy["classifier"], options, batch_size, "cpu"))


def best(table: pl.DataFrame, score: str) -> str:
    return table.filter((pl.col("score") == score) & (pl.col("rank") == 1))["unit"].item()


def test_the_signal_head_ranks_first_by_the_task_and_supervised_scores(toy: dict[str, Path]) -> None:
    table = scored(toy)
    assert best(table, "task_conditioned") == SIGNAL and best(table, "supervised") == SIGNAL
    supervised = table.filter(pl.col("score") == "supervised")
    assert supervised.filter(pl.col("unit") == SIGNAL)["value"].item() > 0.95  # its argmax is the class
    assert supervised.filter(pl.col("unit") != SIGNAL)["value"].max() < 0.6  # noise: about 1/3
    # The unsupervised score looks at every output coordinate, most of which LOUD dominates.
    assert best(table, "unsupervised") == LOUD
    assert table.columns == ["score", "label", "seed", "unit", "layer", "head", "value", "rank"]
    assert table.height == (3 + 3) * 8  # 3 scores and 3 random seeds, 8 heads each


def test_the_unsupervised_score_needs_no_labels_or_classifier(toy: dict[str, Path], tmp_path: Path) -> None:
    """Other labels on the same units and another classifier leave U unchanged; S and U|T change."""
    options = ScoreOptions(["unsupervised", "task_conditioned", "supervised"], [], "raw")
    first = score_heads(toy["val"], toy["classifier"], options, 64, "cpu")
    shifted = synthetic_units(toy["folder"], "val", 300, seed=1, shift=1)
    rotated = tmp_path / "rotated.safetensors"
    weights = torch.linalg.qr(torch.randn(8, 8, generator=torch.Generator().manual_seed(0))).Q[:3]
    ClassWeights(weights, ["0", "1", "2"], "class_means", 100.0).save(rotated)
    second = score_heads(shifted, rotated, options, 64, "cpu")
    torch.testing.assert_close(first.scores["unsupervised", None], second.scores["unsupervised", None], rtol=0, atol=0)
    for name in ("task_conditioned", "supervised"):
        assert not torch.allclose(first.scores[name, None], second.scores[name, None])


def test_streamed_correlation_equals_the_one_pass_oracle() -> None:
    """Batches of 7 merged by Chan's update vs torch.corrcoef of the whole sample (float64 both;
    the tolerance covers summation order only)."""
    generator = torch.Generator().manual_seed(3)
    a = torch.randn(50, 4, 6, generator=generator, dtype=torch.float64) + 100.0  # a large mean: no cancellation allowed
    s = a[:, 0] * 0.5 + torch.randn(50, 6, generator=generator, dtype=torch.float64)
    stream = StreamingCorrelation(4, 6, "cpu")
    for start in range(0, 50, 7):
        stream.update(a[start : start + 7], s[start : start + 7])
    oracle = torch.tensor([[float(torch.corrcoef(torch.stack([a[:, h, k], s[:, k]]))[0, 1]) for k in range(6)] for h in range(4)], dtype=torch.float64)
    torch.testing.assert_close(stream.value(), oracle, rtol=1e-10, atol=1e-12)


def test_a_constant_series_correlates_zero() -> None:
    stream = StreamingCorrelation(2, 1, "cpu")
    a = torch.stack([torch.full((10, 1), 0.7), torch.arange(10.0)[:, None]], dim=1)  # head 0 constant
    stream.update(a, torch.arange(10.0)[:, None])
    torch.testing.assert_close(stream.value(), torch.tensor([[0.0], [1.0]], dtype=torch.float64))


def test_class_basis_is_orthonormal_and_spans_the_classes() -> None:
    weights = torch.randn(3, 8, generator=torch.Generator().manual_seed(4))
    basis = class_basis(weights)
    torch.testing.assert_close(basis @ basis.T, torch.eye(3, dtype=torch.float64))
    torch.testing.assert_close(weights.double() @ basis.T @ basis, weights.double())  # the span is the classes'
    assert class_basis(torch.randn(20, 8)).shape == (8, 8)  # more classes than dimensions: the whole space


def test_batching_changes_scores_only_within_rounding(toy: dict[str, Path]) -> None:
    """Float sums in other batch shapes differ by rounding; ranks of these well-separated scores do not."""
    first, second = scored(toy, batch_size=64), scored(toy, batch_size=300)
    torch.testing.assert_close(first["value"].to_torch(), second["value"].to_torch(), rtol=1e-9, atol=1e-12)


def test_random_scores_repeat_for_a_seed_and_differ_across_seeds(toy: dict[str, Path]) -> None:
    first, again = scored(toy), scored(toy)
    random = first.filter(pl.col("score") == "random")
    assert random.equals(again.filter(pl.col("score") == "random"))
    orders = [tuple(random.filter(pl.col("seed") == seed).sort("rank")["unit"]) for seed in (0, 1, 2)]
    assert len(set(orders)) == 3 and all(sorted(order) == sorted(orders[0]) for order in orders)


def test_ranks_put_the_best_first_and_break_ties_by_head_order() -> None:
    assert ranks(torch.tensor([0.5, 0.9, 0.5, 0.1])).tolist() == [2, 1, 3, 4]


@pytest.mark.parametrize(
    ("fraction", "heads", "k"),
    [(None, 384, 1), (0.01, 384, 3), (0.01, 144, 2), (0.05, 384, 19), (0.29, 100, 29), (0.75, 8, 6), (1.0, 8, 8), (0.01, 8, 2)],
)
def test_selection_sizes(fraction: float | None, heads: int, k: int) -> None:
    assert selection_size(fraction, heads) == k


def selected(toy: dict[str, Path], fractions: list[float], ablations: list[str] = ["zero", "mean"]) -> pl.DataFrame:
    scores = score_heads(toy["val"], toy["classifier"], ALL_SCORES, 64, "cpu")
    means = toy["folder"] / "val_means.safetensors"
    save_means(means, scores)
    plan = plan_selections(scores_table(scores), UnitFile(toy["test"]).names, fractions)
    options = SelectionOptions(fractions, ablations, "raw")
    return evaluate_selections(toy["test"], toy["classifier"], means, plan, options, 64, "cpu")


def test_selections_of_the_signal_head_and_the_reference_rows(toy: dict[str, Path]) -> None:
    table = selected(toy, [0.25, 1.0])
    one = table.filter((pl.col("score") == "task_conditioned") & pl.col("fraction").is_null())
    assert one["heads"].to_list() == [SIGNAL, SIGNAL] and one["k"].to_list() == [1, 1]
    assert one.filter(pl.col("ablation") == "zero")["accuracy"].item() > 0.95
    # Keeping every head through a score reproduces the all-heads row, for each ablation.
    for ablation in ("zero", "mean"):
        everything = table.filter((pl.col("fraction") == 1.0) & (pl.col("ablation") == ablation))
        assert everything["accuracy"].n_unique() == 1 and set(everything["score"]) >= {ALL_HEADS, "supervised", "random"}
    units = table.filter(pl.col("score") == ALL_UNITS)
    assert units["ablation"].to_list() == ["none"] and units["k"].item() == 8
    row = zero_shot(toy["test"], toy["classifier"], "raw", 64, "cpu")
    assert units["accuracy"].item() == row["accuracy_units"] == row["accuracy_embedding"]
    assert row["same_predictions"] and row["agreement"] == 1.0 and row["samples"] == 300
    # 3 scores and 3 random seeds x (1 head, 25%, 100%) x 2 ablations, H x 2, B x 1.
    assert table.height == 6 * 3 * 2 + 2 + 1


def test_a_real_model_sums_to_its_zero_shot_exactly(digit_units: dict[str, Path], tmp_path: Path) -> None:
    """Float32 units of the tiny open_clip model: the unit sum predicts what the embedding predicts,
    on every sample, and the all-units selection is the zero-shot accuracy exactly."""
    classifier = tmp_path / "classifier.safetensors"
    weights = class_means_from_units(digit_units["train"], 10, normalize=True)
    ClassWeights(weights, [str(c) for c in range(10)], "class_means", 100.0).save(classifier)
    inputs = {"val": digit_units["val"], "test": digit_units["test"], "classifier": classifier, "folder": tmp_path}
    for logits in ("raw", "normalized"):
        row = zero_shot(digit_units["test"], classifier, logits, 16, "cpu")
        assert row["same_predictions"] and row["accuracy_units"] == row["accuracy_embedding"]
        assert row["sum_rel_error"] <= 1e-4 and row["dtype"] == "float32"
    table = selected(inputs, [0.5])
    row = zero_shot(digit_units["test"], classifier, "raw", 64, "cpu")
    assert table.filter(pl.col("score") == ALL_UNITS)["accuracy"].item() == row["accuracy_units"]


def test_jaccard_and_overlap() -> None:
    assert jaccard({"a", "b"}, {"a", "b"}) == 1.0 and jaccard({"a"}, {"b"}) == 0.0 and jaccard({"a", "b"}, {"b", "c"}) == 1 / 3
    rows = [
        {"model": "m", "dataset": d, "score": "supervised", "label": "S", "fraction": 0.5, "selection": "50%", "k": 2,
         "ablation": a, "heads": h}
        for d, h in (("x", "head_0_0 head_0_1"), ("y", "head_0_0 head_0_1"), ("z", "head_1_0 head_1_1"))
        for a in ("zero", "mean")
    ]  # fmt: skip
    random = [{**rows[0], "score": "random", "label": "random"}]
    overlap = overlap_table(pl.DataFrame(rows + random))
    assert overlap.height == 9 and set(overlap["score"]) == {"supervised"}
    pairs = {(a, b): j for a, b, j in overlap.select("dataset_a", "dataset_b", "jaccard").iter_rows()}
    assert pairs["x", "x"] == pairs["x", "y"] == 1.0 and pairs["x", "z"] == 0.0


def test_selection_summary_is_the_papers_table(toy: dict[str, Path]) -> None:
    table = selected(toy, [0.25]).with_columns(model=pl.lit("m"), dataset=pl.lit("toy"))
    summary = selection_summary(table, 0.25)
    assert summary.columns == ["model", "dataset", "ablation", "U|T", "U", "S", "random", "H", "B"]
    assert summary.height == 2 and summary["random"][0].count("+-") == 1


def test_non_finite_units_are_named_with_the_file(tmp_path: Path) -> None:
    path = synthetic_units(tmp_path, "val", 20, seed=5, nan_head=6)  # head_1_2
    classifier = class_directions(tmp_path / "classifier.safetensors")
    with pytest.raises(NonFiniteError, match=rf"unit file {path}, step head scores: unit 'head_1_2' holds NaN"):
        score_heads(path, classifier, ALL_SCORES, 8, "cpu")
    with pytest.raises(NonFiniteError, match="step zero-shot: unit 'head_1_2'"):
        zero_shot(path, classifier, "raw", 8, "cpu")


def test_single_class_and_wrong_width_classifiers_are_named(toy: dict[str, Path], tmp_path: Path) -> None:
    single = class_directions(tmp_path / "single.safetensors", classes=1)
    with pytest.raises(ValueError, match=rf"classifier {single} has a single class \['0'\]"):
        score_heads(toy["val"], single, ALL_SCORES, 64, "cpu")
    wide = class_directions(tmp_path / "wide.safetensors", width=16)
    with pytest.raises(ValueError, match=rf"classifier {wide} has width 16, the units of .*val.parquet have width 8"):
        zero_shot(toy["val"], wide, "raw", 64, "cpu")


def demo_config() -> dict:
    return yaml.safe_load((REPO / "configs/demo.yaml").read_text())


@pytest.mark.parametrize(
    ("heads", "message"),
    [
        ({"fractions": [0.05, 1.5]}, r"at `heads.fractions.1`: 1.5 is greater than the maximum of 1"),
        ({"fractions": [0]}, r"at `heads.fractions.0`: 0 is less than or equal to the minimum of 0"),
        ({"scores": ["task_conditioned", "entropy"]}, r"at `heads.scores.1`: 'entropy' is not one of"),
        ({"ablations": ["sum"]}, r"at `heads.ablations.0`: 'sum' is not one of"),
    ],
)
def test_config_mistakes_name_the_key(heads: dict, message: str) -> None:
    config = demo_config()
    config["heads"].update(heads)
    with pytest.raises(ConfigError, match=message):
        validate_config(config)


def test_table_fraction_must_be_a_selected_fraction() -> None:
    config = validate_config(demo_config())
    assert table_fraction(config) == 0.05 and ScoreOptions.from_config(config).random_seeds == list(range(10))
    broken = copy.deepcopy(config)
    broken["heads"]["table_fraction"] = 0.3
    with pytest.raises(ConfigError, match=r"at `heads.table_fraction`: 0.3 is not one of `heads.fractions`"):
        table_fraction(broken)
    with pytest.raises(ValueError, match=r"`heads.fractions`: 1.5 is outside \(0, 1\]"):
        SelectionOptions([1.5], ["zero"])

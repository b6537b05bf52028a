"""The findings table (residual.report.findings) on small synthetic input tables, each claim set up
to hold for one task and fail for the other; and the split-half head selections
(residual.heads.halves) on a synthetic unit file whose signal head is known."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
import torch
from test_heads import SIGNAL, class_directions, synthetic_units

from residual.heads.halves import head_halves, split_halves
from residual.heads.options import ScoreOptions
from residual.heads.scores import class_basis, score_heads
from residual.heads.tables import jaccard
from residual.io.tables import DEMO_NOTE, write_table
from residual.report.findings import MIN_SPEARMAN, findings_summary, findings_table
from residual.units.store import read_units

MODEL = "m"
TASKS = {"world_shape": "shape", "world_colour": "colour"}
HEADS = [f"head_{layer}_{head}" for layer in range(2) for head in range(4)]
# Normalised probe margins per head (HEADS order): heads 0 and 1 encode colour, 5 and 7 shape; head 6
# is good at both, so it encodes neither (its lead, 0.1, is below ENCODING_LEAD).
MARGINS = {
    "shape": [0.0, 0.1, 0.2, 0.3, 0.4, 0.55, 0.6, 0.95],
    "colour": [0.9, 0.6, 0.05, 0.05, 0.05, 0.05, 0.5, 0.05],
}
CHANCE = 1 / 6
FRACTION = 0.25  # k = 2 of the 8 heads
D_HEAD = 8


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("halves_units")
    return {"val": synthetic_units(folder, "val", 300, seed=1), "classifier": class_directions(folder / "classifier.safetensors")}


def test_split_halves_are_disjoint_seeded_and_cover_the_rows() -> None:
    first, second = split_halves(301, seed=5)
    assert not bool((first & second).any()) and bool((first | second).all())
    assert (int(first.sum()), int(second.sum())) == (150, 151)
    assert torch.equal(split_halves(301, seed=5)[0], first)
    assert not torch.equal(split_halves(301, seed=6)[0], first)


def test_scoring_a_subset_scores_exactly_those_rows(toy: dict[str, Path]) -> None:
    options = ScoreOptions(["task_conditioned", "supervised"], [], "raw")
    every = score_heads(toy["val"], toy["classifier"], options, 64, "cpu")
    kept_all = score_heads(toy["val"], toy["classifier"], options, 64, "cpu", keep=torch.ones(300, dtype=torch.bool))
    assert all(torch.equal(every.scores[key], kept_all.scores[key]) for key in every.scores)

    half, _ = split_halves(300, seed=3)
    result = score_heads(toy["val"], toy["classifier"], options, 64, "cpu", keep=half)  # 64 does not divide 300
    stored = read_units(toy["val"])
    values = stored.values[half].double()  # [150, U, d]
    assert result.samples == 150
    torch.testing.assert_close(result.means, values.mean(dim=0).float())
    # Direct formula: mean over the class directions of the Pearson correlation, across the half's samples.
    weights = torch.eye(values.shape[-1])[:3]
    heads = values[:, [stored.names.index(name) for name in result.heads]]
    projected, total = heads @ class_basis(weights).T, heads.sum(dim=1) @ class_basis(weights).T  # [150, n, K], [150, K]
    a, s = projected - projected.mean(dim=0), total - total.mean(dim=0)
    correlation = (a * s[:, None]).sum(dim=0) / (a.square().sum(dim=0) * s.square().sum(dim=0)).sqrt()
    torch.testing.assert_close(result.scores["task_conditioned", None], correlation.mean(dim=1))
    predicted = (heads.float() @ weights.T).argmax(-1)  # [150, n]
    expected = (predicted == stored.labels[half][:, None]).double().mean(dim=0)
    torch.testing.assert_close(result.scores["supervised", None], expected)

    with pytest.raises(ValueError, match="bool mask"):
        score_heads(toy["val"], toy["classifier"], options, 64, "cpu", keep=torch.ones(299, dtype=torch.bool))
    with pytest.raises(ValueError, match="no samples among the rows kept"):
        score_heads(toy["val"], toy["classifier"], options, 64, "cpu", keep=torch.zeros(300, dtype=torch.bool))


def test_head_halves_keeps_the_signal_head_in_both_halves(toy: dict[str, Path]) -> None:
    table = head_halves(toy["val"], toy["classifier"], "raw", FRACTION, seed=7, batch_size=64, device="cpu")
    row = table.row(0, named=True)
    first, second = set(row["heads_a"].split()), set(row["heads_b"].split())
    assert row["k"] == 2 and len(first) == len(second) == 2
    assert SIGNAL in first and SIGNAL in second
    assert row["jaccard"] == jaccard(first, second)
    assert (row["samples_a"], row["samples_b"], row["score"], row["label"]) == (150, 150, "task_conditioned", "U|T")
    assert head_halves(toy["val"], toy["classifier"], "raw", FRACTION, seed=7, batch_size=32, device="cpu").equals(table)


def _frame(rows: list[dict[str, object]]) -> pl.DataFrame:
    return pl.DataFrame(rows, infer_schema_length=None)


def inputs() -> dict[str, object]:
    """Input tables in which every claim holds for world_shape (or the first variant, method, ID)
    and fails for world_colour (or the second)."""
    zeroshot = _frame(
        [
            {"model": MODEL, "dataset": "world_shape", "split": "test", "samples": 400, "classes": 6, "accuracy_embedding": 0.9},
            # chance 1/6 + 2 standard errors = 0.204: 0.18 is above chance, not clearly.
            {"model": MODEL, "dataset": "world_colour", "split": "test", "samples": 400, "classes": 6, "accuracy_embedding": 0.18},
            {"model": MODEL, "dataset": "world_colour", "split": "val", "samples": 400, "classes": 6, "accuracy_embedding": 0.99},
        ]
    )
    probes = []
    for dataset, attribute in TASKS.items():
        for head, margin in zip(HEADS, MARGINS[attribute]):
            accuracy = CHANCE + margin * (1 - CHANCE)
            layer, index = int(head.split("_")[1]), int(head.split("_")[2])
            for component in (None, 0):  # a component probe must not count as the head's
                probes.append(
                    {"model": MODEL, "dataset": dataset, "attribute": attribute, "unit": head, "layer": layer, "head": index,
                     "component": component, "balanced_accuracy": accuracy if component is None else 1.0, "chance": CHANCE,
                     "classes": 6, "n_train": 800, "n_val": 200}
                )  # fmt: skip
        probes.append(
            {"model": MODEL, "dataset": dataset, "attribute": attribute, "unit": "mlp_0", "layer": 0, "head": None, "component": None,
             "balanced_accuracy": 1.0, "chance": CHANCE, "classes": 6, "n_train": 800, "n_val": 200}
        )  # fmt: skip
    scores = []
    for dataset, attribute in TASKS.items():
        # U|T follows the shape probes (rho 1) and opposes the colour probes (rho -1).
        sign = 1.0 if attribute == "shape" else -1.0
        for head, margin in zip(HEADS, MARGINS[attribute]):
            scores.append(
                {"model": MODEL, "dataset": dataset, "score": "task_conditioned", "seed": None, "unit": head, "value": sign * margin}
            )
            scores.append({"model": MODEL, "dataset": dataset, "score": "random", "seed": 0, "unit": head, "value": margin})
    selection = []
    chosen = {"world_shape": "head_1_2 head_1_3", "world_colour": "head_0_0 head_0_1"}
    accuracies = {
        "world_shape": {"task_conditioned": 0.8, "supervised": 0.85},
        "world_colour": {"task_conditioned": 0.35, "supervised": 0.5},
    }
    for dataset in TASKS:
        common = {"model": MODEL, "dataset": dataset, "fraction": FRACTION, "selection": "25%", "k": 2, "ablation": "zero"}
        for score, accuracy in accuracies[dataset].items():
            selection.append({**common, "score": score, "label": score, "seed": None, "accuracy": accuracy, "heads": chosen[dataset]})
        for seed, accuracy in enumerate([0.3, 0.4, 0.5]):
            selection.append(
                {**common, "score": "random", "label": "random", "seed": seed, "accuracy": accuracy, "heads": "head_0_2 head_1_0"}
            )
        # Another fraction, which the claims at FRACTION must not read.
        selection.append(
            {**common, "fraction": 0.5, "score": "task_conditioned", "label": "U|T", "seed": None, "accuracy": 0.0, "heads": ""}
        )
    halves = _frame(
        [
            # Within world_shape the halves share 1 of 3 heads (1/3 > 0 between tasks); within world_colour none.
            {"model": MODEL, "dataset": "world_shape", "score": "task_conditioned", "fraction": FRACTION, "k": 2, "samples_a": 100,
             "samples_b": 100, "heads_a": "head_1_2 head_1_3", "heads_b": "head_1_3 head_0_3", "jaccard": 1 / 3},
            {"model": MODEL, "dataset": "world_colour", "score": "task_conditioned", "fraction": FRACTION, "k": 2, "samples_a": 100,
             "samples_b": 100, "heads_a": "head_0_0 head_0_1", "heads_b": "head_0_2 head_0_3", "jaccard": 0.0},
        ]
    )  # fmt: skip
    # Dictionary: 2 of 10 texts name a shape, 3 a colour.
    dictionary = ["a circle", "a square", "something red", "the colour blue", "a green object", *["a picture"] * 5]
    texts = {
        # TextSpan names the encoded attribute in 2 of the top 3 texts of each head (rank 4 is not read) ...
        ("textspan", "head_1_3"): ["a circle", "a red object", "a square shape", "a circle"],
        ("textspan", "head_0_0"): ["something red", "the colour blue", "a pattern of dots", "a red object"],
        # ... SOMP never does.
        ("somp", "head_1_3"): ["a picture", "something red", "the colour blue"],
        ("somp", "head_0_0"): ["a circle", "a picture", "an icon"],
        # head_1_2 encodes nothing by its probes: its texts are not read.
        ("textspan", "head_1_2"): ["a picture"] * 3,
    }
    descriptions = _frame(
        [
            {"model": MODEL, "dataset": "world", "split": "val", "unit": unit, "method": method, "rank": rank, "text": text}
            for (method, unit), picks in texts.items()
            for rank, text in enumerate(picks, start=1)
        ]
        + [{"model": MODEL, "dataset": "world", "split": "val", "unit": "head_1_3", "method": "component", "rank": 1, "text": "a circle"}]
    )
    runs = {
        "world_shape": {"base": 0.5, "residual_fine": 0.6, "residual_full": 0.7, "linear_adapter": 0.65, "finetune": 0.8},
        "world_colour": {"base": 0.4, "residual_fine": 0.2, "residual_full": 0.75, "linear_adapter": 0.6, "finetune": 0.8},
        "digits": {"base": 0.0, "residual_fine": 0.0, "residual_full": 0.0, "linear_adapter": 0.0, "finetune": 0.0},  # not a world task
    }
    parameters = {"base": 0, "residual_fine": 100, "residual_full": 1000, "linear_adapter": 4160, "finetune": 1_000_000}
    labels = {
        "base": "zero-shot",
        "residual_fine": "ResiDual*",
        "residual_full": "ResiDual",
        "linear_adapter": "linear adapter",
        "finetune": "fine-tune",
    }
    training = _frame(
        [
            {"model": MODEL, "dataset": dataset, "variant": variant, "label": labels[variant], "test_accuracy": accuracy,
             "trainable_parameters": parameters[variant]}
            for dataset, variants in runs.items()
            for variant, accuracy in variants.items()
        ]
    )  # fmt: skip
    intrinsic_dimension = _frame(
        [
            *({"model": MODEL, "dataset": "world", "unit": head, "kind": "head", "twonn_id": twonn, "linear_id": linear}
              for head, twonn, linear in zip(HEADS, [2.0, 3.0, 5.0, 6.0, None, 3.5, 4.5, 2.5], [8, 9, 9, 10, 9, 9, 8, 10])),
            {"model": MODEL, "dataset": "world", "unit": "mlp_0", "kind": "mlp", "twonn_id": 50.0, "linear_id": 60},
        ]
    )  # fmt: skip
    return {
        "zeroshot": zeroshot,
        "head_scores": _frame(scores),
        "head_selection": _frame(selection),
        "halves": halves,
        "probes": _frame(probes),
        "descriptions": descriptions,
        "dictionary": dictionary,
        "training": training,
        "intrinsic_dimension": intrinsic_dimension,
        "head_dims": {MODEL: D_HEAD},
        "tasks": TASKS,
        "fraction": FRACTION,
    }


def row(table: pl.DataFrame, section: str, claim: str, dataset: str | None = None) -> dict[str, object]:
    """The one row of `section` whose claim contains `claim` (and of `dataset`, when given)."""
    rows = table.filter((pl.col("section") == section) & pl.col("claim").str.contains(claim, literal=True))
    if dataset is not None:
        rows = rows.filter(pl.col("dataset") == dataset)
    assert rows.height == 1, (section, claim, dataset, rows)
    return rows.row(0, named=True)


def test_each_claim_is_measured_and_judged() -> None:
    table = findings_table(**inputs())
    assert table.height == 2 + 2 + 4 + 2 + 2 + 6 + 2
    assert set(table["model"]) == {MODEL}

    shape, colour = (row(table, "zero-shot", "above chance", dataset) for dataset in TASKS)
    assert (shape["value"], shape["comparison_value"], shape["holds"]) == (0.9, pytest.approx(CHANCE), True)
    assert colour["threshold"] == pytest.approx(CHANCE + 2 * (CHANCE * (1 - CHANCE) / 400) ** 0.5)
    assert colour["value"] > colour["comparison_value"] and colour["holds"] is False  # above chance, but not clearly

    shape, colour = (row(table, "head scores", "U|T ranks", dataset) for dataset in TASKS)
    assert (shape["value"], shape["threshold"], shape["holds"]) == (pytest.approx(1.0), MIN_SPEARMAN, True)
    assert (colour["value"], colour["holds"]) == (pytest.approx(-1.0), False)

    shape, colour = (row(table, "head selection", "better than random", dataset) for dataset in TASKS)
    assert (shape["value"], shape["comparison_value"], shape["comparison_std"], shape["holds"]) == (
        0.8,
        pytest.approx(0.4),
        pytest.approx(0.1),
        True,
    )
    assert (colour["value"], colour["holds"]) == (0.35, False)
    against_s = row(table, "head selection", "against S", "world_shape")
    assert (against_s["value"], against_s["comparison_value"], against_s["holds"], against_s["threshold"]) == (0.8, 0.85, None, None)

    shape, colour = (row(table, "head overlap", "specific", dataset) for dataset in TASKS)
    assert (shape["value"], shape["comparison_value"], shape["holds"]) == (0.0, pytest.approx(1 / 3), True)
    assert (colour["value"], colour["comparison_value"], colour["holds"]) == (0.0, 0.0, False)  # equal is not below

    textspan, somp = row(table, "descriptions", "TextSpan"), row(table, "descriptions", "SOMP")
    # Encoding heads described: head_1_3 (shape, 2 of 10 texts) and head_0_0 (colour, 3 of 10).
    assert (textspan["value"], textspan["comparison_value"], textspan["holds"]) == (pytest.approx(4 / 6), pytest.approx(0.25), True)
    assert (somp["value"], somp["holds"]) == (0.0, False)
    assert "2 encoding heads (colour 1, shape 1)" in textspan["measure"] and textspan["dataset"] == "world"

    fine_base, full_base = row(table, "ResiDual", "ResiDual* is at least"), row(table, "ResiDual", "ResiDual is at least")
    assert (fine_base["value"], fine_base["comparison_value"], fine_base["holds"]) == (pytest.approx(0.4), pytest.approx(0.45), False)
    assert (full_base["value"], full_base["holds"], full_base["parameters"], full_base["comparison_parameters"]) == (
        pytest.approx(0.725),
        True,
        1000,
        0,
    )
    full_finetune = row(table, "ResiDual", "ResiDual comes close")
    assert (full_finetune["value"], full_finetune["holds"]) == (pytest.approx((0.7 / 0.8 + 0.75 / 0.8) / 2), True)
    assert row(table, "ResiDual", "ResiDual* comes close")["holds"] is False
    adapter = row(table, "ResiDual", "ResiDual against the linear adapter")
    assert (adapter["comparison_value"], adapter["comparison_parameters"], adapter["holds"]) == (pytest.approx(0.625), 4160, None)

    twonn, linear = row(table, "intrinsic dimension", "TwoNN"), row(table, "intrinsic dimension", "linear")
    assert (twonn["value"], twonn["comparison_value"], twonn["holds"]) == (3.5, D_HEAD, True)  # the null TwoNN is left out
    assert (linear["value"], linear["holds"]) == (9.0, False)
    assert "7 heads" in twonn["measure"] and "8 heads" in linear["measure"]


def test_a_nan_value_does_not_hold() -> None:
    """U|T scores that are all equal give no rank correlation (NaN): the claim is reported as failed."""
    tables = inputs()
    tables["head_scores"] = tables["head_scores"].with_columns(value=pl.lit(0.5))
    shape = row(findings_table(**tables), "head scores", "U|T ranks", "world_shape")
    assert shape["holds"] is False


def test_missing_inputs_are_named() -> None:
    tables = inputs()
    tables["halves"] = tables["halves"].filter(pl.col("dataset") == "world_shape")
    with pytest.raises(ValueError, match="split-half table has no rows for model x dataset \\[\\('m', 'world_colour'\\)\\]"):
        findings_table(**tables)
    tables = inputs()
    tables["probes"] = tables["probes"].filter(pl.col("unit") != "head_0_2")
    with pytest.raises(ValueError, match="head_0_2"):
        findings_table(**tables)


def test_without_training_or_an_encoding_head() -> None:
    tables = inputs()
    tables["training"] = None
    tables["probes"] = tables["probes"].with_columns(balanced_accuracy=pl.lit(0.2))
    table = findings_table(**tables)
    assert "ResiDual" not in set(table["section"])
    textspan = row(table, "descriptions", "TextSpan")
    assert textspan["value"] is None and textspan["holds"] is None and "no head meets" in textspan["measure"]


def test_the_markdown_shows_every_row(tmp_path: Path) -> None:
    table = findings_table(**inputs())
    summary = findings_summary(table)
    assert summary.columns == ["section", "model", "dataset", "claim", "measured", "compared with", "holds"]
    path = tmp_path / "findings.md"
    write_table(table, [path], "Findings", demo=True, markdown=summary)
    text = path.read_text()
    assert DEMO_NOTE in text
    lines = [line for line in text.splitlines() if line.startswith("| ")][1:]  # the header row left out
    assert len(lines) == table.height
    held = table["holds"].to_list()
    assert sum(line.rstrip(" |").endswith("✔") for line in lines) == held.count(True)
    assert sum(line.rstrip(" |").endswith("✘") for line in lines) == held.count(False)
    assert sum(line.rstrip(" |").endswith("–") for line in lines) == held.count(None)
    assert "random heads, mean over 3 seeds: 0.4 ± 0.1" in text
    assert "(1,000 parameters)" in text and "threshold 0.204" in text

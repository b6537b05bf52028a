"""The paper-vs-published-code conventions (docs/conventions.md), each against a direct formula."""

from __future__ import annotations

import os
import subprocess
from dataclasses import replace
from pathlib import Path

import polars as pl
import pytest
import torch
from conftest import REPO, TINY_OPEN_CLIP, perturb
from test_adapters import HEAD_RANK, HEADS, WIDTH, reference_of, toy_units

from residual import load_model
from residual.alignment.options import Conventions, TrainingOptions
from residual.alignment.variants import build_variant, trainable_parameters
from residual.report.compare import compare_runs, summarise
from residual.spectral.pca import OUTPUT, UnitPCA, fit_unit_file
from residual.spectral.tables import intrinsic_dimension_table, sample_positions
from residual.units.decompose import trace
from residual.units.layout import is_head
from residual.units.store import StoredUnits, read_units
from residual.units.unit_map import UnitMap, constant_shares, layout_of


def test_both_ln_constant_splits_sum_to_the_embedding(images) -> None:
    model = load_model(TINY_OPEN_CLIP, name="clip_tiny", device="cpu")
    perturb(model.module)
    raw = trace(model, images)
    per_unit = raw.values(UnitMap.from_tower(model.tower, "per_unit")).double()
    per_layer = raw.values(UnitMap.from_tower(model.tower, "per_layer")).double()
    scale = raw.embedding.abs().amax()
    # Both are float32 sums of the same 11 units; only the constant terms' split differs.
    assert float((per_layer.sum(dim=1) - per_unit.sum(dim=1)).abs().amax() / scale) <= 1e-6
    assert float((per_layer.sum(dim=1) - raw.embedding.double()).abs().amax() / scale) <= 1e-4

    # Direct formula: y_u(per_layer) - y_u(per_unit) = (a_u - 1/N) (beta @ P - (mu / s) gamma @ P),
    # with a_u = 1/(2L+1) for emb and MLPs and 1/((2L+1)H) for heads.
    layout, tower = layout_of(model.tower), model.tower
    gamma, beta = tower.final_norm.weight.detach().double(), tower.final_norm.bias.detach().double()
    proj = tower.proj.detach().double()
    constant = beta @ proj - (raw.ln_mean.double() / raw.ln_std.double())[:, None] * (gamma @ proj)  # [B, d_out]
    slots = 2 * layout.layers + 1
    shares = torch.tensor([1 / (slots * layout.heads) if is_head(name) else 1 / slots for name in layout.names], dtype=torch.float64)
    expected = (shares - 1 / layout.count)[None, :, None] * constant[:, None]
    torch.testing.assert_close(per_layer - per_unit, expected, rtol=0, atol=1e-5 * float(scale))  # float32 maps
    torch.testing.assert_close(constant_shares(layout, "per_layer"), shares)
    assert abs(float(shares.sum()) - 1) < 1e-12


def test_ln_constants_are_saved_with_the_map(tmp_path) -> None:
    model = load_model(TINY_OPEN_CLIP, name="clip_tiny", device="cpu")
    per_layer = UnitMap.from_tower(model.tower, "per_layer")
    per_layer.save(tmp_path / "map.safetensors")
    loaded = UnitMap.load(tmp_path / "map.safetensors", heads=[1])
    assert loaded.ln_constants == "per_layer"
    torch.testing.assert_close(loaded.shares, per_layer.shares)
    assert per_layer.digest() != UnitMap.from_tower(model.tower, "per_unit").digest()


def _published_reference() -> tuple[StoredUnits, UnitPCA]:
    units = toy_units(200, seed=0)
    reference = reference_of(units)
    return units, replace(reference, metadata={**reference.metadata, "head_dim": 3})


def test_published_residual_full_is_the_transposed_formula() -> None:
    units, reference = _published_reference()
    plan, module = build_variant("residual_full", reference, "randn", 3, conventions=Conventions(published_code=True))
    value = dict(zip(units.names, units.values.unbind(dim=1)))
    # The authors' formula on square padded bases: sum_u (x_u - mu_u) B_u^T diag(lambda_u) B_u^T.
    expected = value["emb"].clone()  # ablation 'sum': the only unit not adapted is added raw
    for name, scale in zip(plan.adapted, module.lambdas.split([len(c) for c in plan.components])):
        unit = reference.index(name)
        kept = reference.components[unit]
        basis, padded = torch.zeros(WIDTH, WIDTH), torch.zeros(WIDTH)
        basis[: len(kept)], padded[: len(kept)] = kept, scale
        expected = expected + (value[name] - reference.means[unit]) @ basis.T @ torch.diag(padded) @ basis.T
    features = plan.features(units, "cpu")
    # Same float32 products summed in another order.
    torch.testing.assert_close(module(features), expected, rtol=1e-5, atol=1e-4)
    paper = build_variant("residual_full", reference, "randn", 3)[1]
    assert float(((paper(features) - expected).norm() / expected.norm()).detach()) > 0.1  # the two conventions differ


def test_published_spectral_adapter_scales_standard_coordinates() -> None:
    units, reference = _published_reference()
    plan, module = build_variant("spectral_adapter", reference, "randn", 5, conventions=Conventions(published_code=True))
    expected = (units.embedding - reference.means[reference.index(OUTPUT)]) * module.lambdas
    torch.testing.assert_close(module(plan.features(units, "cpu")), expected, rtol=1e-5, atol=1e-5)
    assert trainable_parameters(module) == WIDTH


def test_head_rank_d_head_keeps_the_first_d_head_components() -> None:
    units, reference = _published_reference()
    plan, _ = build_variant("residual_full", reference, "ones", 0, conventions=Conventions(head_rank="d_head"))
    widths = dict(zip(plan.adapted, (len(c) for c in plan.components)))
    assert all(widths[name] == 3 for name in HEADS)  # the toy heads span HEAD_RANK = 5 directions
    assert all(widths[name] == len(reference.components[reference.index(name)]) for name in ("mlp_0", "mlp_1"))
    nonzero, _ = build_variant("residual_full", reference, "ones", 0)
    assert all(len(c) == HEAD_RANK for name, c in zip(nonzero.adapted, nonzero.components) if name in HEADS)
    for name, components in zip(plan.adapted, plan.components):
        torch.testing.assert_close(components, reference.components[reference.index(name)][: len(components)])
    with pytest.raises(ValueError, match="head_dim"):
        build_variant("residual_full", reference_of(units), "ones", 0, conventions=Conventions(head_rank="d_head"))


def test_conventions_are_params_of_the_variants_they_change() -> None:
    config = {"seed": 1, "training": {"logits": "raw", "lambda_init": "ones", "lr_residual": 0.8, "lr_adapter": 0.001,
              "lr_range_test": False, "batch_size": 8, "epochs": 2, "patience": 1, "published_code": True, "head_rank": "d_head"}}
    full = TrainingOptions.for_variant(config, "residual_full")
    assert full.conventions == Conventions(True, "d_head")
    assert TrainingOptions(**full.params()) == full
    assert TrainingOptions.for_variant(config, "spectral_adapter").params()["head_rank"] is None
    assert TrainingOptions.for_variant(config, "residual_fine").conventions == Conventions()


def test_linear_id_on_the_id_sample(digit_units) -> None:
    pca = fit_unit_file(digit_units["train"], units=["mlp_1", "head_1_0"])
    sampled = intrinsic_dimension_table(digit_units["train"], pca, samples=40, seed=3, linear_id_on="id_sample")
    split = intrinsic_dimension_table(digit_units["train"], pca, samples=40, seed=3)
    stored = read_units(digit_units["train"], units=["mlp_1", "head_1_0"])
    rows = sample_positions(len(stored.labels), 40, 3)
    for name, values in zip(["mlp_1", "head_1_0", OUTPUT], [*stored.values[rows].unbind(dim=1), stored.embedding[rows]]):
        # Direct formula: k(0.99) of the SVD of the sampled rows, centred, in float64.
        singular = torch.linalg.svdvals(values.double() - values.double().mean(dim=0))
        ratio = (singular.square().cumsum(0) / singular.square().sum()).tolist()
        expected = next(index for index, value in enumerate(ratio) if value > 0.99) + 1
        assert sampled.filter(pl.col("unit") == name)["linear_id"].item() == expected, name
    assert set(sampled["linear_id_on"]) == {"id_sample"} and set(split["linear_id_on"]) == {"split"}
    assert sampled["twonn_id"].to_list() == split["twonn_id"].to_list()  # TwoNN does not depend on it
    assert sampled["ln_constants"].to_list() == ["per_unit"] * 3


def _run_folder(root: Path, accuracy: float, linear: list[int], ln_constants: str) -> Path:
    tables = root / "results" / "tables"
    tables.mkdir(parents=True)
    pl.DataFrame(
        {"model": ["m", "m"], "dataset": ["d", "d"], "variant": ["base", "residual_full"], "ln_constants": [ln_constants] * 2,
         "val_accuracy": [0.5, accuracy], "test_accuracy": [0.4, accuracy], "trainable_parameters": [0, 10]}
    ).write_parquet(tables / "training.parquet")  # fmt: skip
    pl.DataFrame(
        {"model": ["m"] * 3, "dataset": ["d"] * 3, "unit": ["emb", "head_0_0", "head_0_1"], "kind": ["emb", "head", "head"],
         "layer": [None, 0, 0], "ln_constants": [ln_constants] * 3, "linear_id": linear, "twonn_id": [1.0, 2.0, 3.0],
         "first_evr": [0.5, 0.5, 0.5]}
    ).write_parquet(tables / "intrinsic_dimension.parquet")  # fmt: skip
    return root


def test_compare_runs_tabulates_each_result(tmp_path) -> None:
    first = _run_folder(tmp_path / "a", 0.6, [1, 2, 4], "per_unit")
    second = _run_folder(tmp_path / "b", 0.7, [1, 4, 6], "per_layer")
    differences = compare_runs(first, second)
    test = differences.filter((pl.col("metric") == "test_accuracy") & (pl.col("result") == "residual_full"))
    assert test["difference"].item() == pytest.approx(0.1)
    heads = differences.filter((pl.col("metric") == "linear_id") & (pl.col("result") == "head 0"))
    assert (heads["first"].item(), heads["second"].item()) == (3.0, 5.0)  # heads averaged per layer
    emb = differences.filter((pl.col("metric") == "linear_id") & (pl.col("result") == "emb"))
    assert emb["difference"].item() == 0  # a null layer joins with a null layer
    summary = summarise(differences).filter(pl.col("metric") == "linear_id")
    assert (summary["results"].item(), summary["changed"].item(), summary["max_abs_difference"].item()) == (2, 1, 2.0)


def test_make_compare_without_its_run_folders_says_how_to_call_it() -> None:
    """Not argparse's usage of the script behind it: one line with the make command, before any setup."""
    # Under `make test` the parent make's variables would turn this into a sub-make that prints
    # "Entering directory": call it as a user's shell would.
    env = {key: value for key, value in os.environ.items() if key not in {"MAKEFLAGS", "MAKELEVEL", "MFLAGS"}}
    run = subprocess.run(
        ["make", "-n", "compare", "FIRST=run_a"], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )
    assert run.returncode != 0 and run.stdout == ""
    assert run.stderr.count("\n") == 1 and "make compare FIRST=run_a SECOND=run_b" in run.stderr


def test_float32_rounding_is_not_a_change() -> None:
    """Result tables hold float32: two paths to the same value differ by ~1e-8 relative, which
    must not count as an effect of a convention, while a real difference of 1e-5 does."""
    differences = pl.DataFrame(
        {
            "table": ["intrinsic_dimension"] * 3,
            "metric": ["first_evr"] * 3,
            "first": [0.267893, 0.999863, 0.0],
            "second": [0.267893 + 7.45e-9, 0.999873, 0.0],
        }
    ).with_columns((pl.col("second") - pl.col("first")).alias("difference"))
    summary = summarise(differences)
    assert (summary["results"].item(), summary["changed"].item()) == (3, 1)

"""PCA of heads in their stored coordinates equals scikit-learn's PCA of their output-space values."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA

from residual import read_units
from residual.spectral.pca import OUTPUT, fit_unit_file
from residual.units.store import UnitFile
from residual.units.unit_map import UnitMap, constant_shares


@pytest.mark.parametrize("split", ["train", "test"])
def test_every_unit_equals_scikit_learn_in_output_space(digit_units: dict[str, Path], split: str) -> None:
    """The oracle sees only what `read_units` returns (float32 output space), so agreement is limited
    by that rounding: eigenvalues 1e-5 relative to the unit's largest, components 1e-4 up to sign
    where their eigenvalue stands apart from its neighbours."""
    pca = fit_unit_file(digit_units[split], batch_size=17, group_size=5)
    units = read_units(digit_units[split])
    values = torch.cat([units.values, units.embedding[:, None]], dim=1).double().numpy()
    assert pca.names == [*units.names, OUTPUT]
    for position, name in enumerate(pca.names):
        oracle = PCA(svd_solver="full").fit(values[:, position])
        rank = len(pca.eigenvalues[position])
        theirs = oracle.explained_variance_
        ours = pca.eigenvalues[position].double().numpy()
        np.testing.assert_allclose(ours, theirs[:rank], rtol=1e-5, atol=1e-5 * theirs[0], err_msg=name)
        assert theirs[rank:].sum() <= 1e-6 * theirs.sum(), name  # nothing of substance was dropped
        np.testing.assert_allclose(float(pca.total_variance[position]), theirs.sum(), rtol=1e-5, err_msg=name)
        np.testing.assert_allclose(pca.means[position].numpy(), oracle.mean_, rtol=1e-5, atol=1e-6 * np.abs(oracle.mean_).max())
        gaps = np.abs(np.diff(theirs[: rank + 1])) if rank < len(theirs) else np.abs(np.diff(np.append(theirs, 0)))
        separated = [i for i in range(rank) if min(gaps[i], gaps[i - 1] if i else np.inf) > 1e-3 * theirs[0]]
        signs = np.sign(np.sum(pca.components[position].numpy()[separated] * oracle.components_[separated], axis=1))
        np.testing.assert_allclose(
            pca.components[position].numpy()[separated], oracle.components_[separated] * signs[:, None], atol=1e-4, err_msg=name
        )
        cevr = np.cumsum(oracle.explained_variance_ratio_)
        for threshold in (0.5, 0.9, 0.99):
            assert int(pca.k(threshold)[position]) == int(np.argmax(cevr > threshold)) + 1, (name, threshold)


def test_heads_keep_at_most_their_stored_width_plus_two(digit_units: dict[str, Path]) -> None:
    layout = UnitFile(digit_units["train"]).layout
    pca = fit_unit_file(digit_units["train"], include_output=False)
    heads = [len(c) for name, c in zip(pca.names, pca.components) if name.startswith("head_")]
    assert max(heads) <= layout.head_dim + 2 and min(heads) > 0


def test_any_grouping_gives_the_same_bases(digit_units: dict[str, Path]) -> None:
    """Group and batch sizes only change float rounding (the covariance is summed in another order)."""
    names = ["head_1_1", "mlp_0", "head_0_0", "emb"]
    one = fit_unit_file(digit_units["val"], units=names, batch_size=7, group_size=1)
    all_ = fit_unit_file(digit_units["val"], units=names, batch_size=4096, group_size=32)
    assert one.names == all_.names == [*names, OUTPUT]
    for ours, theirs in zip(one.components, all_.components):
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.cat(one.eigenvalues), torch.cat(all_.eigenvalues), rtol=1e-5, atol=0)


def test_heads_take_their_share_of_the_norm_constants(digit_units: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """Under `ln_constants: per_layer` a head takes 1/((2L+1)H) of the final LayerNorm's constant
    terms instead of 1/N: the stored-coordinate fit must follow the map's shares (the oracle reads
    the same map through `read_units`)."""
    read_map = UnitFile.unit_map

    def per_layer(self: UnitFile, heads: list[int] | None = None) -> UnitMap:
        unit_map = read_map(self, heads)
        return dataclasses.replace(unit_map, shares=constant_shares(unit_map.layout, "per_layer"), ln_constants="per_layer")

    monkeypatch.setattr(UnitFile, "unit_map", per_layer)
    names = ["head_0_0", "head_1_1"]
    pca = fit_unit_file(digit_units["train"], units=names, include_output=False)
    values = read_units(digit_units["train"], names).values.double().numpy()
    for position, name in enumerate(names):
        oracle = PCA(svd_solver="full").fit(values[:, position])
        rank = len(pca.eigenvalues[position])
        np.testing.assert_allclose(pca.means[position].numpy(), oracle.mean_, rtol=1e-5, atol=1e-6 * np.abs(oracle.mean_).max(), err_msg=name)
        theirs = oracle.explained_variance_
        np.testing.assert_allclose(pca.eigenvalues[position].double().numpy(), theirs[:rank], rtol=1e-5, atol=1e-5 * theirs[0], err_msg=name)

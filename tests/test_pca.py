"""Per-unit PCA: scikit-learn as the oracle, streaming equals in-memory, degenerate units, guards."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from sklearn.decomposition import PCA

from residual import read_units
from residual.spectral.pca import OUTPUT, PCAFileError, UnitPCA, fit_pca, fit_unit_file
from residual.units.guards import NonFiniteError
from residual.units.layout import UnitLayout
from residual.units.unit_map import UnitMap, constant_shares


def _values(n: int = 400, units: int = 3, d: int = 12, seed: int = 0) -> torch.Tensor:
    """[n, units, d] correlated data with an offset far from zero (as unit outputs have)."""
    generator = torch.Generator().manual_seed(seed)
    mixing = torch.randn(units, d, d, generator=generator)
    return torch.einsum("nui,uij->nuj", torch.randn(n, units, d, generator=generator), mixing) + 30.0


def _assert_same_basis(ours: torch.Tensor, theirs: np.ndarray, atol: float) -> None:
    """Rows equal up to sign (PCA components are defined up to sign)."""
    theirs = torch.from_numpy(theirs).float()
    signs = torch.sign((ours * theirs).sum(dim=1))
    torch.testing.assert_close(ours, theirs * signs[:, None], atol=atol, rtol=0)


def test_matches_scikit_learn() -> None:
    values = _values()
    pca = fit_pca(values, ["a", "b", "c"])
    for unit in range(3):
        oracle = PCA().fit(values[:, unit].double().numpy())
        eigenvalues = pca.eigenvalues[unit].double().numpy()
        np.testing.assert_allclose(eigenvalues, oracle.explained_variance_, rtol=1e-5)
        np.testing.assert_allclose(pca.explained_variance_ratio(unit).numpy(), oracle.explained_variance_ratio_, rtol=1e-5)
        np.testing.assert_allclose(pca.means[unit].numpy(), oracle.mean_, rtol=1e-6)
        _assert_same_basis(pca.components[unit], oracle.components_, atol=1e-4)
        cevr = np.cumsum(oracle.explained_variance_ratio_)
        for threshold in (0.5, 0.9, 0.99):
            assert int(pca.k(threshold)[unit]) == int(np.argmax(cevr > threshold)) + 1


def test_low_rank_units_keep_only_their_directions_and_k_counts_them() -> None:
    values = _values(units=2)
    values[:, 1, 5:] = 7.0  # rank 5: the other 7 directions carry no variance
    pca = fit_pca(values, ["full", "rank5"])
    assert [len(c) for c in pca.components] == [12, 5]
    assert int(pca.k(0.999999)[1]) == 5
    gram = pca.components[1] @ pca.components[1].T
    torch.testing.assert_close(gram, torch.eye(5), atol=1e-5, rtol=0)


def test_constant_units_have_no_components_and_k_zero() -> None:
    values = _values(units=2)
    values[:, 1] = torch.linspace(-3, 3, 12)  # the same point for every sample
    pca = fit_pca(values, ["varies", "constant"])
    assert pca.components[1].shape == (0, 12) and pca.eigenvalues[1].shape == (0,)
    assert float(pca.total_variance[1]) == 0.0
    assert pca.k(0.9).tolist()[1] == 0
    torch.testing.assert_close(pca.means[1], torch.linspace(-3, 3, 12))


def test_float_rounding_alone_is_not_variance() -> None:
    """A unit that is constant up to float32 rounding (as an affine map of a constant can be)."""
    values = _values(units=1)
    base = torch.full((len(values), 12), 1000.0)
    values[:, 0] = base + torch.randint(-1, 2, base.shape).float() * torch.finfo(torch.float32).eps * 250
    pca = fit_pca(values, ["rounding"])
    assert len(pca.components[0]) == 0 and pca.k(0.9).tolist() == [0]


def test_duplicate_points_do_not_change_the_basis() -> None:
    values = _values(units=1)
    doubled = fit_pca(torch.cat([values, values]), ["u"])
    single = fit_pca(values, ["u"])
    _assert_same_basis(doubled.components[0], single.components[0].numpy(), atol=1e-4)
    torch.testing.assert_close(doubled.explained_variance_ratio(0), single.explained_variance_ratio(0), atol=1e-6, rtol=1e-4)


def test_signs_are_deterministic() -> None:
    values = _values()
    first, second = fit_pca(values, ["a", "b", "c"]), fit_pca(values.flip(0), ["a", "b", "c"])
    for a, b in zip(first.components, second.components):
        assert torch.equal(a.abs().argmax(dim=1), b.abs().argmax(dim=1))
        assert bool((torch.gather(a, 1, a.abs().argmax(dim=1, keepdim=True)) > 0).all())
        torch.testing.assert_close(a, b, atol=1e-4, rtol=0)


def test_nan_names_the_unit_the_samples_and_the_step() -> None:
    values = _values()
    values[7, 1, 3] = float("nan")
    values[9, 1, 0] = float("inf")
    with pytest.raises(NonFiniteError, match=r"step pca: unit .b. holds NaN or Inf for samples 7, 9;"):
        fit_pca(values, ["a", "b", "c"])


def test_one_sample_is_not_a_pca() -> None:
    with pytest.raises(ValueError, match="at least 2 samples"):
        fit_pca(_values(n=1), ["a", "b", "c"])


def test_unit_file_streaming_equals_in_memory(digit_units: dict[str, Path]) -> None:
    path = digit_units["train"]
    stored = read_units(path)
    whole = fit_pca(torch.cat([stored.values, stored.embedding[:, None]], dim=1), [*stored.names, OUTPUT])
    streamed = fit_unit_file(path, batch_size=13, group_size=4)
    assert streamed.names == whole.names and streamed.samples == len(stored.sample_ids)
    assert streamed.metadata["dataset"] == "digits" and streamed.metadata["split"] == "train"
    torch.testing.assert_close(streamed.means, whole.means, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(streamed.total_variance, whole.total_variance, atol=1e-6, rtol=1e-4)
    for unit, name in enumerate(whole.names):
        ours, theirs = streamed.eigenvalues[unit], whole.eigenvalues[unit]
        assert len(ours) == len(theirs), name
        torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-4)
        leading = int(streamed.k(0.9)[unit])  # well-separated leading components are stable
        _assert_same_basis(streamed.components[unit][:leading], whole.components[unit][:leading].numpy(), atol=2e-3)


def test_heads_keep_about_d_head_plus_two_directions(digit_units: dict[str, Path]) -> None:
    """A head writes W_O z (d_head dims) through the final LayerNorm's per-sample shift and scale."""
    pca = fit_unit_file(digit_units["train"], units=["head_1_0", "mlp_1"])
    head_dim = 16
    assert len(pca.components[0]) <= head_dim + 2
    assert len(pca.components[1]) > head_dim + 2


def test_save_and_load_selected_units(tmp_path: Path) -> None:
    pca = fit_pca(_values(), ["a", "b", "c"])
    path = tmp_path / "pca.safetensors"
    pca.save(path)
    loaded = UnitPCA.load(path, units=["c", "a"])
    assert loaded.names == ["c", "a"] and loaded.samples == pca.samples
    for ours, theirs in zip(loaded.components, [pca.components[2], pca.components[0]]):
        assert torch.equal(ours, theirs)
    assert torch.equal(loaded.means, pca.means[[2, 0]])
    with pytest.raises(PCAFileError, match="has no unit 'z'"):
        UnitPCA.load(path, units=["z"])


@pytest.mark.parametrize("damage", ["missing", "truncated", "not safetensors", "other format"])
def test_bad_pca_files_are_named(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "pca.safetensors"
    fit_pca(_values(), ["a", "b", "c"]).save(path)
    if damage == "missing":
        path.unlink()
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:200])
    elif damage == "not safetensors":
        pq.write_table(pa.table({"x": [1]}), path)
    else:
        path.unlink()
        layout = UnitLayout(layers=1, heads=1, head_dim=2, out_dim=3)  # a real safetensors file of another kind
        shares = constant_shares(layout, "per_unit")
        UnitMap(layout, torch.zeros(1, 2, 3), torch.zeros(1, 3), torch.zeros(3), torch.zeros(3), shares).save(path)
    with pytest.raises(PCAFileError, match=str(path)):
        UnitPCA.load(path)


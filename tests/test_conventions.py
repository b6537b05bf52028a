"""The paper-vs-published-code conventions (docs/conventions.md), each against a direct formula."""

from __future__ import annotations

import torch

from residual import load_model
from residual.units.decompose import trace
from residual.units.layout import is_head
from residual.units.unit_map import UnitMap, constant_shares
from tests.conftest import TINY_OPEN_CLIP, perturb


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
    layout, tower = model.layout, model.tower
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

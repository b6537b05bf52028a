"""Feature plans and variants (METHOD section 9): the spectral form equals the direct formula,
parameter counts match METHOD's table, streamed features equal in-memory ones."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from residual.alignment.classifier import ZeroShotClassifier, class_mean_classifier
from residual.alignment.features import (
    ABLATIONS,
    Features,
    make_plan,
    spectral_features,
)
from residual.alignment.variants import VARIANTS, build_variant, trainable_parameters
from residual.spectral.pca import OUTPUT, UnitPCA, fit_pca, fit_unit_file
from residual.units.store import StoredUnits, UnitFile

NAMES = ["emb", "mlp_0", "mlp_1", "head_0_0", "head_0_1", "head_1_0", "head_1_1"]
HEADS = [name for name in NAMES if name.startswith("head_")]
WIDTH, HEAD_RANK = 16, 5


def toy_units(samples: int, seed: int, classes: int = 3, signal: float = 0.0) -> StoredUnits:
    """Units [samples, 7, 16] shaped like a ViT's: every head in a fixed 5-dim affine subspace (the
    same for every seed, as a head's output space is fixed by the model), emb nearly constant,
    MLPs full rank; embedding = their sum. `signal` moves head_1_1 along a class direction."""
    fixed = torch.Generator().manual_seed(100)
    head_bases = torch.randn(len(HEADS), HEAD_RANK, WIDTH, generator=fixed)
    head_offsets = torch.randn(len(HEADS), WIDTH, generator=fixed)
    emb_offset, emb_direction = torch.randn(WIDTH, generator=fixed), torch.randn(WIDTH, generator=fixed)
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(samples) % classes
    coefficients = torch.randn(samples, len(HEADS), HEAD_RANK, generator=generator)
    coefficients[:, -1, :classes] += signal * torch.nn.functional.one_hot(labels, classes)
    heads = head_offsets + torch.einsum("nhr,hrd->nhd", coefficients, head_bases)
    emb = emb_offset + 0.1 * torch.randn(samples, 1, generator=generator) * emb_direction
    mlps = 2.0 * torch.randn(samples, 2, WIDTH, generator=generator)
    values = torch.cat([emb[:, None], mlps, heads], dim=1)
    return StoredUnits(list(NAMES), values, values.sum(dim=1), labels, torch.arange(samples))


def reference_of(units: StoredUnits) -> UnitPCA:
    """Per-unit PCA plus the PCA of the embedding as unit OUTPUT, as `fit_unit_file` writes it."""
    return fit_pca(torch.cat([units.values, units.embedding[:, None]], dim=1), [*units.names, OUTPUT])


def direct(variant: str, module: torch.nn.Module, reference: UnitPCA, units: StoredUnits, ablation: str) -> Tensor:
    """[n, d] the representation written out from the raw units, without the plan's coordinates."""
    value = dict(zip(units.names, units.values.unbind(dim=1)))
    if variant == "base":
        return units.embedding
    if variant == "linear_adapter":
        return units.embedding @ module.linear.weight.T + module.linear.bias
    if variant == "spectral_adapter":
        phi = reference.components[reference.index(OUTPUT)]
        return (units.embedding - reference.means[reference.index(OUTPUT)]) @ phi.T @ torch.diag(module.lambdas) @ phi
    adapted = HEADS if variant != "residual_full" else [name for name in NAMES if name != "emb"]
    others = [name for name in NAMES if name not in adapted]
    if ablation == "sum":
        total = sum(value[name] for name in others)
    elif ablation == "mean":
        total = sum(reference.means[reference.index(name)] for name in others).expand_as(units.embedding)
    else:
        total = torch.zeros_like(units.embedding)
    if variant == "residual_coarse":  # the authors' CoarseAdapter: raw units, one scalar each
        return total + sum(scale * value[name] for scale, name in zip(module.lambdas, adapted))
    kept = reference.k(0.90) if variant == "residual_fine" else torch.tensor([len(c) for c in reference.components])
    lambdas = module.lambdas.split([int(kept[reference.index(name)]) for name in adapted])
    for name, scale in zip(adapted, lambdas):
        unit = reference.index(name)
        phi = reference.components[unit][: len(scale)]
        total = total + (value[name] - reference.means[unit]) @ phi.T @ torch.diag(scale) @ phi
    return total


@pytest.mark.parametrize("ablation", ABLATIONS)
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_plan_equals_the_direct_formula(variant: str, ablation: str) -> None:
    reference = reference_of(toy_units(200, seed=0))
    other = toy_units(120, seed=1)  # another dataset: the plan only ever sees the reference's bases
    plan, module = build_variant(variant, reference, init="randn", seed=3, ablation=ablation)
    with torch.no_grad():
        got = module(plan.features(other, "cpu"))
        want = direct(variant, module, reference, other, ablation)
    assert got.shape == (120, WIDTH)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * float(want.abs().max()))


def test_identity_lambdas_reproduce_the_units_exactly() -> None:
    """With lambda = 1 and every kept component, the spectral form is the identity on the span of
    the reference data (x - mu = Phi^T Phi (x - mu) for x in that span, heads included though their
    PCA keeps only 5 of 16 directions): residual_full gives emb + sum of centred heads and MLPs,
    residual_coarse the raw sum of heads (the authors' coarse formula), spectral_adapter the centred
    embedding. residual_fine (k(0.9) < 5 components) loses the rest, and its `outside` says so."""
    units = toy_units(200, seed=0)
    reference = reference_of(units)
    value = dict(zip(units.names, units.values.unbind(dim=1)))
    centred = {name: value[name] - reference.means[reference.index(name)] for name in NAMES}
    expected = {
        "residual_full": value["emb"] + sum(centred[name] for name in NAMES[1:]),
        "residual_coarse": sum(value[name] for name in HEADS),
        "spectral_adapter": units.embedding - reference.means[reference.index(OUTPUT)],
    }
    for variant, want in expected.items():
        plan, module = build_variant(variant, reference, init="ones", seed=0)
        features = plan.features(units, "cpu")
        with torch.no_grad():
            torch.testing.assert_close(module(features), want, rtol=1e-5, atol=1e-5 * float(want.abs().max()))
        assert features.outside < 1e-6
        torch.testing.assert_close(features.coords.mean(dim=0), torch.zeros(features.coords.shape[1]), atol=1e-4, rtol=0)
    fine = build_variant("residual_fine", reference, init="ones", seed=0)[0].features(units, "cpu")
    assert 0.0 < fine.outside < 0.1 + 1e-6  # k(0.9) keeps more than 90% of each head's variance


def test_parameter_counts_follow_method_table() -> None:
    reference = reference_of(toy_units(200, seed=0))
    heads = [reference.index(name) for name in HEADS]
    kept = [len(components) for components in reference.components]
    assert all(kept[unit] == HEAD_RANK for unit in heads)
    expected = {
        "base": 0,
        "residual_fine": int(reference.k(0.90)[heads].sum()),
        "residual_full": len(HEADS) * HEAD_RANK + 2 * WIDTH,  # (L*H + L) units x their kept components
        "residual_coarse": len(HEADS),
        "spectral_adapter": WIDTH,
        "linear_adapter": WIDTH * WIDTH + WIDTH,
    }
    assert set(expected) == set(VARIANTS)
    for variant, count in expected.items():
        assert trainable_parameters(build_variant(variant, reference, init="ones", seed=0)[1]) == count, variant


def test_lambda_init_is_seeded() -> None:
    reference = reference_of(toy_units(200, seed=0))
    first = build_variant("residual_full", reference, init="randn", seed=7)[1].lambdas
    again = build_variant("residual_full", reference, init="randn", seed=7)[1].lambdas
    other = build_variant("residual_full", reference, init="randn", seed=8)[1].lambdas
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert abs(float(first.detach().mean()) - 1.0) < 0.3  # randn + 1
    linear = build_variant("linear_adapter", reference, init="ones", seed=0)[1].linear
    assert torch.equal(linear.weight, torch.eye(WIDTH)) and not linear.bias.any()


def test_classifier_conventions() -> None:
    weights = torch.nn.functional.normalize(torch.randn(3, WIDTH), dim=-1)
    features = torch.randn(5, WIDTH)
    torch.testing.assert_close(ZeroShotClassifier(weights, "raw")(features), features @ weights.T)
    normalized = ZeroShotClassifier(weights, "normalized", scale=100.0)(features)
    torch.testing.assert_close(normalized, 100.0 * (features / features.norm(dim=-1, keepdim=True)) @ weights.T)
    embeddings, labels = torch.randn(30, WIDTH), torch.arange(30) % 3
    means = class_mean_classifier(embeddings, labels, 3, normalize=False)
    torch.testing.assert_close(means[1], embeddings[labels == 1].mean(dim=0))
    torch.testing.assert_close(class_mean_classifier(embeddings, labels, 3).norm(dim=-1), torch.ones(3))
    with pytest.raises(ValueError, match="every class"):
        class_mean_classifier(embeddings, labels, 4)


def test_streamed_features_equal_in_memory_features(digit_units) -> None:
    """On a real unit file of the tiny open_clip model: streaming in batches of 7 equals one pass
    over all samples read at once; with lambda = 1, residual_full returns the model's embedding minus
    the adapted units' means; heads of another split lie in the span of the train split's heads."""
    reference = fit_unit_file(digit_units["train"])
    train, val = UnitFile(digit_units["train"]), UnitFile(digit_units["val"])
    for variant in sorted(VARIANTS):
        plan, module = build_variant(variant, reference, init="ones", seed=0, ablation="sum")
        streamed = spectral_features(train, plan, batch_size=7, device="cpu")
        whole = plan.features(train.read(plan.reads), "cpu")
        for name in ("coords", "rest", "embedding", "labels"):
            torch.testing.assert_close(getattr(streamed, name), getattr(whole, name), rtol=1e-5, atol=1e-6)
        assert streamed.coords.dtype == torch.float32 and len(streamed) == len(train)
        if variant == "residual_full":
            adapted_means = reference.means[[reference.index(name) for name in plan.adapted]].sum(dim=0)
            with torch.no_grad():
                rebuilt = module(streamed) + adapted_means
            scale = float(streamed.embedding.abs().max())
            assert float((rebuilt - streamed.embedding).abs().max()) <= 1e-4 * scale
            assert streamed.outside < 1e-6
        if variant == "residual_coarse":
            assert spectral_features(val, plan, batch_size=16, device="cpu").outside < 1e-5


def test_plan_refuses_another_model(digit_units) -> None:
    reference = fit_unit_file(digit_units["train"])
    reference = UnitPCA(**{**reference.__dict__, "metadata": {**reference.metadata, "model": "other"}})
    plan, _ = build_variant("residual_coarse", reference, init="ones", seed=0)
    with pytest.raises(ValueError, match="holds model 'clip_tiny'"):
        spectral_features(UnitFile(digit_units["train"]), plan, batch_size=16, device="cpu")


def test_plan_checks_widths() -> None:
    reference = reference_of(toy_units(50, seed=0))
    with pytest.raises(ValueError, match="keeps 5 components"):
        make_plan(reference, ["head_0_0"], [6], "zero")
    with pytest.raises(ValueError, match="ablation"):
        make_plan(reference, ["head_0_0"], [2], "drop")  # type: ignore[arg-type]
    assert isinstance(make_plan(reference, [], [], "zero").features(toy_units(4, seed=2), "cpu"), Features)

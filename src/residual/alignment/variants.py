"""ResiDual and its baselines (METHOD section 9) on precomputed spectral features.

    RD_u(x) = Phi_u^T diag(lambda_u) Phi_u (x - mu_u)      (the mean is not added back)

Each variant is a feature plan (`residual.alignment.features`: which units, which components, what happens
to the others) plus a small module mapping a batch of `Features` to the image representation
[b, d], which a fixed `residual.alignment.classifier.ZeroShotClassifier` turns into logits. `finetune` (the whole vision tower)
needs the images, not stored units: it lives in `residual.alignment.finetune`.

Facts from the authors' code (Flegyas/ResiDual, `src/residual/nn/adapter.py`, `conf/train/*.gin`):
- residual_fine: heads only, the first k(0.90) components of each head (EVRPruning 0.9), the
  others padded with lambda 0 (component_padding 0), non-head units dropped (ablation 'zero').
- residual_full: heads and MLPs (not emb), every component (no pruning), emb added raw
  (ablation 'sum'). Here "every component" means every component the reference PCA keeps (the
  authors kept all d, including directions of zero variance, which carry nothing).
- residual_coarse (CoarseAdapter): one scalar per head on the RAW head outputs, sum_h lambda_h x_h,
  not centred; others dropped. Here x_h = mu_h + Phi_h^T Phi_h (x_h - mu_h) over every kept
  component (exact while the head's centred outputs lie in the reference's span: a head's output
  space has dimension about d_head + 2), so lambda_h x_h = lambda_h (mu_h + Phi_h^T coords_h).
- spectral_adapter (SpectralAdapter): the embedding centred on the reference's output mean,
  reweighted on the reference's PCA of outputs, mean not added back.
- linear_adapter: nn.Linear(d, d) with bias, PyTorch's default initialisation (not identity).
- lambda init: 'randn' = randn + 1 (unseeded there, seeded here) or 'ones'.
- ablation 'mean' there is the mean of the other units over the current batch (even at test
  time); here it is their mean on the reference split (`UnitPCA.means`), a constant.

Where the published code computes something other than the paper's formula, `Conventions` chooses
(docs/conventions.md); the defaults are the paper's:
- published_code, residual_full: sum_u (x_u - mu_u) B_u^T diag(lambda_u) B_u^T, B_u [d, d] the
  unit's kept components padded with zero rows (the transposed basis where the inverse belongs).
  With coords c_u = (x_u - mu_u) B_u^T this is (c_u * lambda_u) @ R_u, R_u [k_u, d] holding
  Phi_u[:k_u, :k_u]^T in its first k_u columns. Where the authors kept more rows than the
  pipeline's PCA (directions of zero variance, arbitrary up to rotation) the padding is zeros.
- published_code, spectral_adapter: (x - mu) * lambda, one lambda per standard output coordinate.
- head_rank, residual_full: every head component of non-zero variance (about d_head + 2, the two
  extra being the final LayerNorm's per-sample 1/s and mu/s directions) or the first d_head (the
  authors).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

from residual.alignment.features import Ablation, FeaturePlan, Features, make_plan
from residual.alignment.options import Conventions, Init
from residual.spectral.pca import OUTPUT, UnitPCA
from residual.units.layout import parse_unit

FINE_THRESHOLD = 0.90


def initial_lambdas(size: int, init: Init, seed: int) -> Tensor:
    """[size] float32: ones, or randn + 1 from a generator seeded with `seed`."""
    if init == "ones":
        return torch.ones(size)
    if init == "randn":
        return torch.randn(size, generator=torch.Generator().manual_seed(seed)) + 1
    raise ValueError(f"lambda init {init!r} is not 'ones' or 'randn'")


class ZeroShot(nn.Module):
    """`base`: the model's embedding, nothing trained."""

    def forward(self, batch: Features) -> Tensor:
        return batch.embedding


class SpectralReweighting(nn.Module):
    """One lambda per coordinate: (coords * lambda) @ R + rest (residual_fine, residual_full,
    spectral_adapter). Buffers: readout R [K, d] (the plan's basis unless given); parameter: lambdas [K]."""

    def __init__(self, plan: FeaturePlan, init: Init, seed: int, readout: Tensor | None = None) -> None:
        super().__init__()
        self.register_buffer("basis", plan.basis if readout is None else readout)
        self.lambdas = nn.Parameter(initial_lambdas(len(plan.basis), init, seed))

    def forward(self, batch: Features) -> Tensor:
        return (batch.coords * self.lambdas) @ self.basis + batch.rest


class UnitScaling(nn.Module):
    """One lambda per adapted unit on its raw output (residual_coarse):
    sum_u lambda_u (mu_u + Phi_u^T coords_u) + rest. Buffers: basis [K, d], means [A, d],
    unit_of [K]; parameter: lambdas [A]."""

    def __init__(self, plan: FeaturePlan, init: Init, seed: int) -> None:
        super().__init__()
        self.register_buffer("basis", plan.basis)
        self.register_buffer("means", plan.means)
        self.register_buffer("unit_of", plan.unit_of)
        self.lambdas = nn.Parameter(initial_lambdas(len(plan.adapted), init, seed))

    def forward(self, batch: Features) -> Tensor:
        return (batch.coords * self.lambdas[self.unit_of]) @ self.basis + self.lambdas @ self.means + batch.rest


class LinearAdapter(nn.Module):
    """Linear(d, d) on the embedding. init 'randn': PyTorch's default initialisation drawn from
    `seed` (the authors' adapter); 'ones': the identity (starts at the zero-shot representation)."""

    def __init__(self, width: int, init: Init, seed: int) -> None:
        super().__init__()
        if init not in ("ones", "randn"):
            raise ValueError(f"init {init!r} is not 'ones' or 'randn'")
        with torch.random.fork_rng(devices=[]):  # seed the default init without touching the caller's stream
            torch.manual_seed(seed)
            self.linear = nn.Linear(width, width)
        if init == "ones":
            with torch.no_grad():
                self.linear.weight.copy_(torch.eye(width))
                self.linear.bias.zero_()

    def forward(self, batch: Features) -> Tensor:
        return self.linear(batch.embedding)


def _units(reference: UnitPCA, *kinds: str) -> list[str]:
    """The reference's units of the given kinds ('emb', 'mlp', 'head', 'output'), in its order."""
    return [name for name in reference.names if parse_unit(name).kind in kinds]


def _fine_plan(reference: UnitPCA, ablation: Ablation, conventions: Conventions) -> FeaturePlan:
    heads = _units(reference, "head")
    widths = reference.subset(heads).k(FINE_THRESHOLD).tolist()
    return make_plan(reference, heads, widths, ablation)


def _every_component(*kinds: str) -> Callable[[UnitPCA, Ablation, Conventions], FeaturePlan]:
    """Plan builder adapting the units of `kinds` with every component the reference keeps."""

    def plan(reference: UnitPCA, ablation: Ablation, conventions: Conventions) -> FeaturePlan:
        units = _units(reference, *kinds)
        widths = [len(reference.components[reference.index(name)]) for name in units]
        return make_plan(reference, units, widths, ablation)

    return plan


def head_dim(reference: UnitPCA) -> int:
    """d_head of the reference's model, recorded by `fit_unit_file`."""
    if "head_dim" not in reference.metadata:
        raise ValueError(
            f"PCA of {reference.metadata.get('source', 'in-memory values')} does not record the model's head_dim, "
            "which `training.head_rank: d_head` needs: rerun the pca rule"
        )
    return int(reference.metadata["head_dim"])


def _full_plan(reference: UnitPCA, ablation: Ablation, conventions: Conventions) -> FeaturePlan:
    """Heads and MLPs; heads keep every component of non-zero variance or the first d_head (`head_rank`)."""
    units = _units(reference, "head", "mlp")
    widths = [len(reference.components[reference.index(name)]) for name in units]
    if conventions.head_rank == "d_head":
        limit = head_dim(reference)
        widths = [min(width, limit) if parse_unit(name).kind == "head" else width for name, width in zip(units, widths)]
    elif conventions.head_rank != "nonzero":
        raise ValueError(f"head_rank {conventions.head_rank!r} is not 'nonzero' or 'd_head'")
    return make_plan(reference, units, widths, ablation)


def _output_plan(reference: UnitPCA, ablation: Ablation, conventions: Conventions) -> FeaturePlan:
    """The embedding on the reference's PCA of outputs, or (published_code) on the standard
    coordinates: components = the identity, so that coords = x - mu and the readout is the identity."""
    plan = make_plan(reference, [OUTPUT], [len(reference.components[reference.index(OUTPUT)])], "zero")
    if not conventions.published_code:
        return plan
    return replace(plan, components=[torch.eye(plan.width)])


def transposed_readout(components: list[Tensor], width: int) -> Tensor:
    """[K, d] the published code's readout: per unit, R_u [k_u, d] = [Phi_u[:k_u, :k_u]^T, 0]
    (module docstring), stacked in the plan's order. components: A x [k_u, d]."""
    blocks = []
    for rows in components:
        block = rows.new_zeros(len(rows), width)
        block[:, : len(rows)] = rows[:, : len(rows)].T
        blocks.append(block)
    return torch.cat([*blocks, torch.zeros(0, width)])


def _full_module(plan: FeaturePlan, init: Init, seed: int, conventions: Conventions) -> nn.Module:
    readout = transposed_readout(plan.components, plan.width) if conventions.published_code else None
    return SpectralReweighting(plan, init, seed, readout)


def _embedding_plan(reference: UnitPCA, ablation: Ablation, conventions: Conventions) -> FeaturePlan:
    """No coordinates and no unit columns read: the module uses the embedding."""
    return make_plan(reference.subset([OUTPUT]), [], [], "zero")


@dataclass(frozen=True)
class Variant:
    """A row of METHOD's table: `plan(reference, ablation, conventions)` builds the feature plan,
    `module(plan, init, seed, conventions)` the trainable module; `ablation` is the authors' default.
    The config keys it depends on are its `residual.alignment.options.VARIANT_KEYS` entry."""

    label: str
    ablation: Ablation
    plan: Callable[[UnitPCA, Ablation, Conventions], FeaturePlan]
    module: Callable[[FeaturePlan, Init, int, Conventions], nn.Module]


def _plain(module: Callable[[FeaturePlan, Init, int], nn.Module]) -> Callable[[FeaturePlan, Init, int, Conventions], nn.Module]:
    """A module builder that no convention changes."""
    return lambda plan, init, seed, conventions: module(plan, init, seed)


VARIANTS: dict[str, Variant] = {
    "base": Variant("zero-shot", "zero", _embedding_plan, _plain(lambda plan, init, seed: ZeroShot())),
    "residual_fine": Variant("ResiDual*", "zero", _fine_plan, _plain(SpectralReweighting)),
    "residual_full": Variant("ResiDual", "sum", _full_plan, _full_module),
    "residual_coarse": Variant("Optimized", "zero", _every_component("head"), _plain(UnitScaling)),
    "spectral_adapter": Variant("spectral adapter", "zero", _output_plan, _plain(SpectralReweighting)),
    "linear_adapter": Variant("linear adapter", "zero", _embedding_plan, _plain(lambda plan, init, seed: LinearAdapter(plan.width, init, seed))),
}


def build_variant(
    name: str,
    reference: UnitPCA,
    init: Init,
    seed: int,
    ablation: Ablation | None = None,
    conventions: Conventions = Conventions(),
) -> tuple[FeaturePlan, nn.Module]:
    """The plan and a freshly initialised module of variant `name` (a key of VARIANTS); the
    reference must hold every unit and OUTPUT. ablation: None takes the variant's default; it
    has no effect on base and the output adapters, which have no other units."""
    if name not in VARIANTS:
        raise KeyError(f"unknown variant {name!r}: expected one of {sorted(VARIANTS)} (finetune needs the images)")
    variant = VARIANTS[name]
    plan = variant.plan(reference, variant.ablation if ablation is None else ablation, conventions)
    return plan, variant.module(plan, init, seed, conventions)


def trainable_parameters(module: nn.Module) -> int:
    return sum(parameter.numel() for parameter in module.parameters() if parameter.requires_grad)

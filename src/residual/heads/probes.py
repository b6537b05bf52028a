"""Ground truth per unit: how well a planted attribute can be read from one unit's output alone.

For one model x world task dataset (residual.data.world), every unit (emb, MLPs, heads, and the
model's embedding as `output`, as the PCA has it) is probed: fitted on the train split, scored on
val by balanced accuracy, the mean recall over the classes val holds, so that chance (any constant
prediction) is 1 / that many classes.

- Whole unit, on its stored values (residual.units.store): a head's raw attention output [d_head],
  emb and MLPs before the final LayerNorm's scale [d_out]; `output` is the embedding itself. Not on
  output space: there every unit also carries its share of the final LayerNorm's per-sample shift
  and scale (1 / s and mu / s times fixed vectors), statistics of the whole residual stream that
  read some attributes on their own (in the demo, background at 0.7 and colour at 0.5 balanced
  accuracy), so that every head would seem to read them. A linear probe of the raw attention
  output is one of the head's own contribution (its output projection is linear).
  The probe: linear discriminant analysis with equal class priors and the within-class covariance
  shrunk toward a multiple of the identity of the same trace, (1 - a) S_w + a tr(S_w) / w I. It is
  closed form (class means and one linear solve): deterministic, nothing seeded, nothing to
  converge; shrinkage keeps it invertible where S_w is singular. Unlike least squares on one-hot
  targets, LDA does not mask a class whose mean lies between the others' (position's corners).
- Each of the unit's first `components` principal components (its PCA on the same train split,
  the pca rule's file, in output space: the directions ResiDual reweights): the output-space values
  projected on it, classified by the nearest train class mean along it (1-D LDA, equal priors).

Units are probed `group_size` at a time (heads apart from the others: their stored widths differ),
each group in one pass over train (per-class sums and the scatter, float64, shifted by the first
batch's mean as the PCA does) and one over val (correct predictions per class), reading only its
columns: memory group_size x d_out^2 float64 plus one batch, whatever the number of samples.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import repeat
from pathlib import Path
from typing import Any

import polars as pl
import torch
from torch import Tensor
from torch.nn.functional import one_hot

from residual.heads.inputs import device_batches
from residual.heads.options import ProbeOptions
from residual.spectral.pca import UnitPCA
from residual.units.layout import OUTPUT, is_head, unit_coordinates
from residual.units.store import UnitFile

# Its version, PROBES_VERSION, is in residual.heads.options: bump it with a change that changes the probe tables it writes.
# The columns of `probe_units` (the workflow script puts model, dataset and attribute in front):
# component and explained_variance_ratio are null for the whole unit.
SCHEMA = {
    "unit": pl.String,
    "kind": pl.String,
    "layer": pl.Int64,
    "head": pl.Int64,
    "component": pl.Int64,
    "explained_variance_ratio": pl.Float64,
    "balanced_accuracy": pl.Float64,
    "chance": pl.Float64,
    "classes": pl.Int64,
    "n_train": pl.Int64,
    "n_val": pl.Int64,
}


class ClassMoments:
    """Per-class sums and the scatter of G units over batches, in float64, shifted by the first
    batch's mean so that an offset far larger than the spread costs no precision."""

    def __init__(self, classes: int) -> None:
        self.classes = classes
        self.shift: Tensor | None = None  # [G, d]
        self.sums: Tensor | None = None  # [G, C, d] per-class sums of shifted values
        self.scatter: Tensor | None = None  # [G, d, d] sum of shifted outer products
        self.counts: Tensor | None = None  # [C]

    def update(self, values: Tensor, labels: Tensor) -> None:
        """values [b, G, d], labels [b] in [0, classes)."""
        values = values.double()
        if self.shift is None:
            self.shift = values.mean(dim=0)
            groups, width = self.shift.shape
            self.sums = torch.zeros(groups, self.classes, width, dtype=torch.float64, device=values.device)
            self.scatter = torch.zeros(groups, width, width, dtype=torch.float64, device=values.device)
            self.counts = torch.zeros(self.classes, dtype=torch.float64, device=values.device)
        shifted = values - self.shift
        members = one_hot(labels, self.classes).double()  # [b, C]
        self.sums += torch.einsum("bc,bgd->gcd", members, shifted)
        self.scatter += torch.einsum("bgi,bgj->gij", shifted, shifted)
        self.counts += members.sum(dim=0)

    def finish(self) -> tuple[Tensor, Tensor]:
        """Class means [G, C, d] and the pooled within-class covariance [G, d, d] (denominator
        n - C); every class must have a sample and n must exceed C (ValueError otherwise)."""
        if self.counts is None or bool((self.counts == 0).any()):
            found = [] if self.counts is None else self.counts.long().tolist()
            raise ValueError(f"a probe needs samples of each of the {self.classes} classes; samples per class: {found}")
        samples = float(self.counts.sum())
        if samples <= self.classes:
            raise ValueError(f"a probe of {self.classes} classes needs more than {self.classes} samples, got {samples:.0f}")
        offsets = self.sums / self.counts[:, None]  # [G, C, d] class means, shifted
        between = torch.einsum("c,gci,gcj->gij", self.counts, offsets, offsets)
        return self.shift[:, None] + offsets, (self.scatter - between) / (samples - self.classes)


def discriminants(means: Tensor, within: Tensor, shrinkage: float) -> tuple[Tensor, Tensor]:
    """LDA with equal priors: class means [G, C, d] and within-class covariance [G, d, d] ->
    weights [G, d, C] and offsets [G, C]; the class scores of values x [b, G, d] centred on the
    mean of the class means are x @ weights + offsets."""
    width = within.shape[-1]
    scale = torch.diagonal(within, dim1=-2, dim2=-1).sum(dim=-1) / width  # [G], the mean eigenvalue
    # A unit constant within each class has no spread to shrink toward: nearest class mean.
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    identity = torch.eye(width, dtype=within.dtype, device=within.device)
    covariance = (1 - shrinkage) * within + shrinkage * scale[:, None, None] * identity
    centred = means - means.mean(dim=1, keepdim=True)
    weights = torch.linalg.solve(covariance, centred.transpose(1, 2))
    return weights, -0.5 * torch.einsum("gcd,gdc->gc", centred, weights)


def balanced_accuracy(correct: Tensor, counts: Tensor) -> Tensor:
    """correct [..., C] right predictions per true class, counts [C] samples per class -> [...]
    the mean recall over the classes that have samples (scikit-learn's balanced_accuracy_score)."""
    present = counts > 0
    return (correct[..., present] / counts[present]).mean(dim=-1)


def group_batches(
    unit_file: UnitFile, group: Sequence[str], batch_size: int, device: torch.device | str, classes: int
) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """Batches of the units of `group` (all of one stored width w), in its order, on `device`:
    stored values [b, G, w], output-space values [b, G, d] and labels [b]; `OUTPUT` is the model's
    embedding in both."""
    units = [name for name in group if name != OUTPUT]
    # Both read the file's batches in order, `batch_size` rows at a time: the same samples.
    stored = unit_file.iter_stored_batches(batch_size, units) if units else repeat(None)
    for batch, raw in zip(device_batches(unit_file, batch_size, device, "probes", classes, units), stored):
        outputs = {**dict(zip(batch.names, batch.values.unbind(dim=1))), OUTPUT: batch.embedding}
        own = {OUTPUT: batch.embedding}
        if raw is not None:
            own.update(zip(raw.names, raw.values.to(device).unbind(dim=1)))
        yield (
            torch.stack([own[name] for name in group], dim=1),
            torch.stack([outputs[name] for name in group], dim=1),
            batch.labels,
        )


def component_bases(pca: UnitPCA, components: int, width: int) -> tuple[Tensor, Tensor, Tensor]:
    """The first `components` principal directions of each of G units, zero-padded where a unit
    has fewer: bases [G, K, d], kept [G, K] bool, explained variance ratios [G, K]."""
    bases = torch.zeros(len(pca.names), components, width, dtype=torch.float64)
    kept = torch.zeros(len(pca.names), components, dtype=torch.bool)
    ratios = torch.zeros(len(pca.names), components, dtype=torch.float64)
    for unit in range(len(pca.names)):
        rank = min(components, len(pca.components[unit]))
        bases[unit, :rank] = pca.components[unit][:rank].double()
        kept[unit, :rank] = True
        ratios[unit, :rank] = pca.explained_variance_ratio(unit)[:rank].double()
    return bases, kept, ratios


@dataclass(frozen=True)
class GroupProbes:
    """Val balanced accuracies of G units: whole [G]; components [G, K] (K = `components`), valid
    where kept [G, K]; ratios [G, K] the components' explained variance ratios."""

    whole: Tensor
    components: Tensor
    kept: Tensor
    ratios: Tensor


@torch.no_grad()
def probe_group(
    train: UnitFile,
    val: UnitFile,
    pca: UnitPCA,
    classes: int,
    options: ProbeOptions,
    batch_size: int,
    device: torch.device | str,
) -> tuple[GroupProbes, Tensor, Tensor]:
    """The probes of the units `pca.names` (train -> val), and the train and val samples per class [C]."""
    names = pca.names
    bases, kept, ratios = component_bases(pca, options.components, train.layout.out_dim)
    bases, centre = bases.to(device), pca.means.to(device, torch.float64)  # [G, K, d], [G, d]
    moments = ClassMoments(classes)
    projected_sums = torch.zeros(len(names), options.components, classes, dtype=torch.float64, device=device)
    for stored, outputs, labels in group_batches(train, names, batch_size, device, classes):
        moments.update(stored, labels)
        projected = torch.einsum("bgd,gkd->bgk", outputs.double() - centre, bases)
        projected_sums += torch.einsum("bgk,bc->gkc", projected, one_hot(labels, classes).double())
    try:
        means, within = moments.finish()
    except ValueError as error:
        raise ValueError(f"unit file {train.path}: {error}; the probes need a train split that holds every class") from error
    weights, offsets = discriminants(means, within, options.shrinkage)
    middle = means.mean(dim=1)  # [G, w], where the discriminants are centred
    projected_means = projected_sums / moments.counts  # [G, K, C]
    whole = torch.zeros(len(names), classes, dtype=torch.float64, device=device)
    per_component = torch.zeros(len(names), options.components, classes, dtype=torch.float64, device=device)
    counts = torch.zeros(classes, dtype=torch.float64, device=device)
    for stored, outputs, labels in group_batches(val, names, batch_size, device, classes):
        members = one_hot(labels, classes).double()  # [b, C]
        scores = torch.einsum("bgw,gwc->bgc", stored.double() - middle, weights) + offsets
        whole += torch.einsum("bg,bc->gc", (scores.argmax(dim=-1) == labels[:, None]).double(), members)
        projected = torch.einsum("bgd,gkd->bgk", outputs.double() - centre, bases)
        nearest = (projected[..., None] - projected_means).abs().argmin(dim=-1)  # [b, G, K]
        per_component += torch.einsum("bgk,bc->gkc", (nearest == labels[:, None, None]).double(), members)
        counts += members.sum(dim=0)
    if not bool(counts.any()):
        raise ValueError(f"unit file {val.path} holds no samples: the probes cannot be scored")
    probes = GroupProbes(balanced_accuracy(whole, counts).cpu(), balanced_accuracy(per_component, counts).cpu(), kept, ratios)
    return probes, moments.counts.cpu(), counts.cpu()


def check_pca(pca_path: str | Path, pca: UnitPCA, train: UnitFile) -> None:
    """The PCA must be the one of `train` (its model, dataset and split), else ValueError."""
    for key in ("model", "dataset", "split"):
        fitted, expected = pca.metadata.get(key), train.metadata.get(key)
        if fitted is not None and expected is not None and fitted != expected:
            raise ValueError(
                f"PCA file {pca_path} was fitted on {key} {fitted!r}, the probes train on {train.path} ({key} {expected!r}): "
                "delete the PCA file and rerun the pca rule"
            )


def probe_units(
    train_path: str | Path,
    val_path: str | Path,
    pca_path: str | Path,
    classes: int,
    options: ProbeOptions,
    batch_size: int,
    group_size: int,
    device: torch.device | str,
) -> pl.DataFrame:
    """Probes of every unit of a model x task dataset, one row per unit and probe: unit, kind,
    layer, head, component (null: the whole unit; else the 0-based principal component),
    explained_variance_ratio (of that component), balanced_accuracy, chance, classes, n_train, n_val."""
    train, val = UnitFile(train_path), UnitFile(val_path)
    heads = [name for name in train.names if is_head(name)]
    others = [name for name in train.names if not is_head(name)] + [OUTPUT]  # of one stored width, d_out
    groups = [group[start : start + group_size] for group in (heads, others) for start in range(0, len(group), group_size)]
    rows: list[dict[str, Any]] = []
    for group in groups:
        pca = UnitPCA.load(pca_path, group)
        check_pca(pca_path, pca, train)
        probes, train_counts, val_counts = probe_group(train, val, pca, classes, options, batch_size, device)
        common = {
            "chance": 1 / int((val_counts > 0).sum()),
            "classes": classes,
            "n_train": int(train_counts.sum()),
            "n_val": int(val_counts.sum()),
        }
        for unit, name in enumerate(pca.names):
            where = {"unit": name, **unit_coordinates(name)}
            rows.append({**where, "component": None, "explained_variance_ratio": None,
                         "balanced_accuracy": float(probes.whole[unit]), **common})  # fmt: skip
            rows += [
                {**where, "component": component, "explained_variance_ratio": float(probes.ratios[unit, component]),
                 "balanced_accuracy": float(probes.components[unit, component]), **common}
                for component in range(options.components) if probes.kept[unit, component]
            ]  # fmt: skip
    order = {name: position for position, name in enumerate([*train.names, OUTPUT])}
    return pl.DataFrame(rows, schema=SCHEMA).sort(pl.col("unit").replace_strict(order), maintain_order=True)  # layout order

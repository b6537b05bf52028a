"""Top-k head selection (METHOD section 8): keep the best heads by a score, ablate every other unit,
classify the sum on the test split.

For each score (and seed) the kept sets are the top 1 head and the top k(f) = max(2, floor(f * n))
heads for each fraction f of `heads.fractions` (the authors' max(2, 1%) rule; at n = 384 or 144
heads it binds at 1% only). Every other unit, emb and MLPs included, is dropped (`zero`) or replaced
by its val mean (`mean`). Reference rows: every head kept (`all_heads`, "H"; the others ablated) and
every unit kept (`all_units`, "B": the zero-shot accuracy of the unit sum, exactly). The kept sets
are fixed by the scores file, so one job evaluates all of them in one streamed pass over test.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import torch

from residual.heads.inputs import device_batches, task_classifier
from residual.heads.options import ALL_HEADS, ALL_UNITS, LABELS, SelectionOptions, fraction_label
from residual.heads.scores import load_means, ranking, score_keys
from residual.heads.zeroshot import unit_sum
from residual.units.layout import is_head
from residual.units.store import UnitFile

# Its version, SELECTION_VERSION, is in residual.heads.options: bump it with a change that changes the rows it writes.


def selection_size(fraction: float | None, heads: int) -> int:
    """Heads kept: 1 for None (the single best head), else max(2, floor(fraction * heads)), at most
    `heads`. (The 1e-9 keeps 0.29 * 100 from flooring to 28.)"""
    if fraction is None:
        return 1
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction {fraction} is outside (0, 1]")
    return min(heads, max(2, math.floor(fraction * heads + 1e-9)))


@dataclass(frozen=True)
class Selection:
    """One kept set: the score (and seed) that chose it, the fraction (None: the single best head),
    the kept units in layout order, and how many of them are heads (k)."""

    score: str
    seed: int | None
    fraction: float | None
    units: tuple[str, ...]
    k: int


def plan_selections(scores: pl.DataFrame, names: Sequence[str], fractions: Sequence[float]) -> list[Selection]:
    """The reference sets (every unit, every head) and, for every (score, seed) of a scores table,
    the top head and the top k(f) heads for each fraction; `names` are the model's units in layout order."""
    heads = [name for name in names if is_head(name)]
    position = {name: i for i, name in enumerate(names)}
    selections = [Selection(ALL_UNITS, None, 1.0, tuple(names), len(heads)), Selection(ALL_HEADS, None, 1.0, tuple(heads), len(heads))]
    for score, seed in score_keys(scores):
        order = ranking(scores, score, seed)
        if sorted(order) != sorted(heads):
            raise ValueError(f"score {score!r} ranks heads {order[:3]}..., not the {len(heads)} heads of these units")
        for fraction in [None, *fractions]:
            k = selection_size(fraction, len(heads))
            selections.append(Selection(score, seed, fraction, tuple(sorted(order[:k], key=position.__getitem__)), k))
    return selections


@torch.no_grad()
def evaluate_selections(
    unit_path: str | Path,
    classifier_path: str | Path,
    means_path: str | Path,
    selections: Sequence[Selection],
    options: SelectionOptions,
    batch_size: int,
    device: torch.device | str,
) -> pl.DataFrame:
    """Test accuracy of every selection under every ablation (`none` for the all-units set, which
    ablates nothing), streamed: one row per selection x ablation with score, label, seed, fraction,
    selection, k, ablation, accuracy, samples, logits and the kept heads (space-separated names)."""
    unit_file = UnitFile(unit_path)
    classifier = task_classifier(classifier_path, options.logits, unit_file).to(device)
    names = unit_file.names
    mean_names, means = load_means(means_path)
    if mean_names != names:
        raise ValueError(f"val means {means_path} are of units {mean_names[:3]}..., the unit file {unit_path} of {names[:3]}...")
    position = {name: i for i, name in enumerate(names)}
    kept_sets = list(dict.fromkeys(selection.units for selection in selections))  # H and 100% share one sum
    index = [torch.tensor([position[name] for name in units], device=device) for units in kept_sets]
    ablations = {units: ("none",) if len(units) == len(names) else tuple(options.ablations) for units in kept_sets}
    constants = {}
    for units in kept_sets:
        dropped = torch.ones(len(names), dtype=torch.bool)
        dropped[[position[name] for name in units]] = False
        constants[units] = means[dropped].double().sum(dim=0).float().to(device)  # the `mean` ablation's stand-in
    correct = {(units, ablation): 0 for units in kept_sets for ablation in ablations[units]}
    samples = 0
    for batch in device_batches(unit_file, batch_size, device, "head selection", classifier.weights.shape[0]):
        for units, rows in zip(kept_sets, index):
            kept = unit_sum(batch.values if len(units) == len(names) else batch.values[:, rows])
            for ablation in ablations[units]:
                representation = kept + constants[units] if ablation == "mean" else kept
                correct[units, ablation] += int((classifier(representation).argmax(-1) == batch.labels).sum())
        samples += len(batch.labels)
    if samples == 0:
        raise ValueError(f"unit file {unit_path} holds no samples: selection accuracies are undefined")
    rows = []
    for selection in selections:
        heads = " ".join(name for name in selection.units if is_head(name))
        for ablation in ablations[selection.units]:
            rows.append(
                {
                    "score": selection.score,
                    "label": LABELS[selection.score],
                    "seed": selection.seed,
                    "fraction": selection.fraction,
                    "selection": fraction_label(selection.fraction),
                    "k": selection.k,
                    "ablation": ablation,
                    "accuracy": correct[selection.units, ablation] / samples,
                    "samples": samples,
                    "logits": options.logits,
                    "heads": heads,
                }
            )
    return pl.DataFrame(rows, schema_overrides={"seed": pl.Int64, "fraction": pl.Float64})

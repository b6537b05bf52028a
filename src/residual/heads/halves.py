"""Split-half agreement of the heads a score selects: how much of the top-k is the task, how much
is the sample.

The val split is cut into two disjoint halves by a seeded permutation; each half is scored on its
own (`score_heads` with a row mask), its top k(f) heads kept (k(f) as the selections:
`selection_size`), and the two sets compared by their Jaccard index. It is the within-task
reference of the overlap claim: the heads chosen for two different tasks should agree less than the
heads chosen on two halves of one task. Each half has half the samples of the full split, so its
ranking is noisier than the full split's: the reference errs low, against the claim.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl
import torch
from torch import Tensor

from residual.alignment.options import Logits
from residual.heads.options import HALVES_SCORE, SCORES, ScoreOptions, fraction_label
from residual.heads.scores import ranks, score_heads
from residual.heads.selection import selection_size
from residual.heads.tables import jaccard
from residual.spectral.tables import sample_positions
from residual.units.store import UnitFile

# Its version, HALVES_VERSION, is in residual.heads.options: bump it with a change that changes the rows it writes.


def split_halves(count: int, seed: int) -> tuple[Tensor, Tensor]:
    """Two disjoint [count] bool masks that cover every row: floor(count / 2) rows drawn without
    replacement from `seed`, and the others."""
    first = torch.zeros(count, dtype=torch.bool)
    first[sample_positions(count, count // 2, seed)] = True
    return first, ~first


def top_heads(heads: list[str], values: Tensor, k: int) -> list[str]:
    """The k best of `heads` [n] by `values` [n], in layout order (ties to the earlier head)."""
    best = ranks(values) <= k
    return [name for name, kept in zip(heads, best.tolist()) if kept]


def head_halves(
    unit_path: str | Path,
    classifier_path: str | Path,
    logits: Logits,
    fraction: float,
    seed: int,
    batch_size: int,
    device: torch.device | str,
) -> pl.DataFrame:
    """One row: score, label, seed, fraction, selection, k, samples_a, samples_b, heads_a, heads_b
    (space-separated head names, layout order) and their jaccard, for the val unit file at
    `unit_path` (two streamed passes, one per half)."""
    options = ScoreOptions([HALVES_SCORE], [], logits)
    halves = split_halves(len(UnitFile(unit_path)), seed)
    scored = [score_heads(unit_path, classifier_path, options, batch_size, device, keep=half) for half in halves]
    k = selection_size(fraction, len(scored[0].heads))
    chosen = [top_heads(result.heads, result.scores[HALVES_SCORE, None], k) for result in scored]
    row = {
        "score": HALVES_SCORE,
        "label": SCORES[HALVES_SCORE],
        "seed": seed,
        "fraction": fraction,
        "selection": fraction_label(fraction),
        "k": k,
        "samples_a": scored[0].samples,
        "samples_b": scored[1].samples,
        "heads_a": " ".join(chosen[0]),
        "heads_b": " ".join(chosen[1]),
        "jaccard": jaccard(set(chosen[0]), set(chosen[1])),
    }
    return pl.DataFrame([row], schema_overrides={"seed": pl.Int64, "fraction": pl.Float64, "k": pl.Int64})

"""What the head stage's results depend on, as rule params: the options of the scores, the
selections, the probes and the maps, with the VERSION of the code that writes each.

Plain values only (no torch): the workflow builds these when it parses, and so does every job.
Bump a VERSION in the same commit as a change to its code (named beside it) that changes what it writes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from residual.alignment.options import Logits
from residual.config.errors import ConfigError
from residual.config.params import RuleParams
from residual.data.sequences import SPLITS

ZEROSHOT_VERSION = "zeroshot/1"  # heads/zeroshot.py: the rows it writes
SCORES_VERSION = "head-scores/1"  # heads/scores.py: the scores and means it writes
SELECTION_VERSION = "head-selection/1"  # heads/selection.py: the rows it writes
HALVES_VERSION = "head-halves/1"  # heads/halves.py: the rows it writes
PROBES_VERSION = "probes/1"  # heads/probes.py: the probe tables it writes
MAPS_VERSION = "head-maps/1"  # heads/maps.py: the maps it writes

ZERO_SHOT_SPLITS = SPLITS[1:]  # val (heads are scored on it) and test (selections are evaluated on it)
SCORES = {"task_conditioned": "U|T", "unsupervised": "U", "supervised": "S", "random": "random"}  # name -> paper label
ALL_HEADS, ALL_UNITS = "all_heads", "all_units"
LABELS = {**SCORES, ALL_HEADS: "H", ALL_UNITS: "B"}  # score name -> the paper's column label
HALVES_SCORE = "task_conditioned"  # the score whose selections on two halves the overlap claim is about (U|T)
ABLATIONS = ("zero", "mean")
# The scores a map's selection can be drawn from: the deterministic ones (`random` has a seed per order).
MAP_SCORES = ("task_conditioned", "unsupervised", "supervised")


@dataclass(frozen=True)
class ScoreOptions(RuleParams):
    """What the scores depend on: the score names (keys of SCORES), the seeds of the random
    scores, and the classifier's logit convention (`training.logits`)."""

    scores: list[str]
    random_seeds: list[int]
    logits: Logits = "raw"

    def __post_init__(self) -> None:
        unknown = [name for name in self.scores if name not in SCORES]
        if unknown:
            raise ValueError(f"`heads.scores`: {unknown} are not scores; choose from {list(SCORES)}")

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> ScoreOptions:
        heads = config["heads"]
        return cls(list(heads["scores"]), list(heads["random_seeds"]), config["training"]["logits"])


@dataclass(frozen=True)
class SelectionOptions(RuleParams):
    """What the selections' accuracies depend on besides the scores file: the fractions of heads
    kept, the ablations of the other units, and the classifier's logit convention."""

    fractions: list[float]
    ablations: list[str]
    logits: Logits = "raw"

    def __post_init__(self) -> None:
        for fraction in self.fractions:
            if not 0 < fraction <= 1:
                raise ValueError(f"`heads.fractions`: {fraction} is outside (0, 1]; give fractions of the heads kept")
        unknown = [name for name in self.ablations if name not in ABLATIONS]
        if unknown:
            raise ValueError(f"`heads.ablations`: {unknown} are not ablations; choose from {list(ABLATIONS)}")

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> SelectionOptions:
        heads = config["heads"]
        return cls([float(f) for f in heads["fractions"]], list(heads["ablations"]), config["training"]["logits"])


def fraction_label(fraction: float | None) -> str:
    """How a selection's size reads in titles and tables: a percentage of the heads, or the single best head."""
    return "1 head" if fraction is None else f"{100 * fraction:g}%"


def table_fraction(config: Mapping[str, Any]) -> float:
    """`heads.table_fraction` of a validated config, which must be one of `heads.fractions`."""
    heads = config["heads"]
    fraction = float(heads["table_fraction"])
    if not any(abs(fraction - f) < 1e-9 for f in heads["fractions"]):
        raise ConfigError(f"config: at `heads.table_fraction`: {fraction} is not one of `heads.fractions` {heads['fractions']}; add it there")
    return fraction


@dataclass(frozen=True)
class ProbeOptions(RuleParams):
    """What the probes depend on: the LDA's covariance shrinkage in (0, 1] and how many principal
    components of each unit are probed one by one (`probes:` in the config)."""

    shrinkage: float = 0.01
    components: int = 8

    def __post_init__(self) -> None:
        if not 0 < self.shrinkage <= 1:
            raise ValueError(f"`probes.shrinkage` is {self.shrinkage}; it must be in (0, 1] (unshrunk, a unit's covariance may be singular)")
        if self.components < 0:
            raise ValueError(f"`probes.components` is {self.components}; it must be 0 or more")

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> ProbeOptions:
        probes = config["probes"]
        return cls(float(probes["shrinkage"]), int(probes["components"]))


@dataclass(frozen=True)
class MapOptions(RuleParams):
    """What the maps depend on (`maps:` in the config, `heads.table_fraction` and the run's `seed`):
    images_per_class test images of each of at most `classes` classes (None: every class), drawn with
    `seed`; the first `heads` heads of the `score` selection at `fraction`; `components` principal
    components of each."""

    images_per_class: int = 2
    classes: int | None = 8
    heads: int = 4
    components: int = 2
    score: str = "task_conditioned"
    fraction: float = 0.05
    seed: int = 42

    def __post_init__(self) -> None:
        for key in ("images_per_class", "heads"):
            if getattr(self, key) < 1:
                raise ValueError(f"`maps.{key}` is {getattr(self, key)}; it must be 1 or more")
        if self.classes is not None and self.classes < 1:
            raise ValueError(f"`maps.classes` is {self.classes}; it must be 1 or more, or null for every class")
        if self.components < 0:
            raise ValueError(f"`maps.components` is {self.components}; it must be 0 or more")
        if self.score not in MAP_SCORES:
            raise ValueError(f"`maps.score` is {self.score!r}; choose one of {list(MAP_SCORES)}")

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> MapOptions:
        maps = config["maps"]
        if maps["score"] not in config["heads"]["scores"]:
            raise ConfigError(f"config: at `maps.score`: {maps['score']!r} is not one of `heads.scores` {config['heads']['scores']}; add it there")
        classes = maps["classes"]
        return cls(
            images_per_class=int(maps["images_per_class"]),
            classes=None if classes is None else int(classes),
            heads=int(maps["heads"]),
            components=int(maps["components"]),
            score=maps["score"],
            fraction=table_fraction(config),
            seed=int(config["seed"]),
        )

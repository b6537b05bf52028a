"""What a unit's descriptions depend on, as rule params, with the version of the code that writes
them and the format of the encoded dictionaries. Plain values only (no torch): the workflow builds
these when it parses.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from residual.config.params import RuleParams

DESCRIPTIONS_VERSION = "descriptions/2"  # descriptions/*: bump with a change that changes the descriptions it writes
DICTIONARY_FORMAT = "residual-dictionary/2"  # descriptions/dictionary.py: bump when the file layout, the texts kept or the encoding change


@dataclass(frozen=True)
class DescriptionSettings(RuleParams):
    """What a unit's descriptions depend on, as a rule's params. split: the split described; units:
    N (the heads of the last N layers) or 'all' (every unit); rank: TextSpan's span; k: texts per
    method; components: principal components per unit; per_end: texts at each end of a component."""

    split: str
    units: int | str
    rank: int
    k: int
    components: int
    per_end: int

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> DescriptionSettings:
        entry = config["descriptions"]
        return cls(**{name: entry[name] for name in ("split", "units", "rank", "k", "components", "per_end")})


def description_datasets(config: Mapping[str, Any]) -> list[str]:
    """Datasets whose units are described (the reference dataset unless the config lists them)."""
    return config["descriptions"]["datasets"] or [config["reference_dataset"]]

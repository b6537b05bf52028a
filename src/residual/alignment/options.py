"""What the alignment stage's results depend on, as rule params: the options of the classifiers,
the variants' training and the fine-tuning, each with the VERSION of the code that writes it.

Plain values only (no torch): the workflow builds these when it parses, and so does every job.
Bump a VERSION in the same commit as a change to its code (named beside it) that changes what it writes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from residual.config.params import RuleParams, classifier_source_params, model_params
from residual.libraries import has_text_tower

CLASSIFIER_VERSION = "classifier/1"  # alignment/classifier.py: the classifiers it writes
TRAINING_VERSION = "train/2"  # alignment/run.py, training.py, variants.py, features.py, epochs.py: the variants' results
FINETUNE_VERSION = "finetune/1"  # alignment/finetune.py: the fine-tuning results

Logits = Literal["raw", "normalized"]
Init = Literal["ones", "randn"]
HeadRank = Literal["nonzero", "d_head"]


@dataclass(frozen=True)
class Conventions:
    """Where the paper and the authors' published code differ (`residual.alignment.variants`); defaults: the paper."""

    published_code: bool = False
    head_rank: HeadRank = "nonzero"


@dataclass(frozen=True)
class VariantKeys:
    """The config keys a variant's result depends on: `lr_key` the `training` key of its learning
    rate (None: nothing is trained); `conventions` the `Conventions` fields it depends on (the
    others do not change it)."""

    lr_key: str | None
    conventions: tuple[str, ...] = ()


# The variants of `residual.alignment.variants.VARIANTS` (same names, a test checks it).
VARIANT_KEYS = {
    "base": VariantKeys(None),
    "residual_fine": VariantKeys("lr_residual"),
    "residual_full": VariantKeys("lr_residual", ("published_code", "head_rank")),
    "residual_coarse": VariantKeys("lr_residual"),
    "spectral_adapter": VariantKeys("lr_adapter", ("published_code",)),
    "linear_adapter": VariantKeys("lr_adapter"),
}


@dataclass(frozen=True)
class ClassifierSpec(RuleParams):
    """What a dataset's classifier for one model depends on, as a rule's params.

    source: the dataset's `classifier_source_params` (its class names and templates); model: the
    model's `model_params` where it has a text tower (the text weights), else None; class_means:
    'plain' or 'normalized' where it has none (the classifier is then the class means of the
    train embeddings, an input file), else None.
    """

    source: dict[str, Any]
    model: dict[str, Any] | None
    class_means: Literal["plain", "normalized"] | None

    @classmethod
    def from_config(cls, config: Mapping[str, Any], model: str, dataset: str) -> ClassifierSpec:
        spec = config["models"][model]
        text_tower = has_text_tower(spec)
        source = classifier_source_params(config["datasets"][dataset], text_tower)
        if text_tower:
            return cls(source, model_params(spec), None)
        return cls(source, None, config["training"]["class_means"])


@dataclass(frozen=True)
class TrainingOptions(RuleParams):
    """The settings one variant's result depends on (see the schema for each `training` key).

    lr: the variant's own learning rate (`lr_residual` or `lr_adapter`, by `VariantKeys.lr_key`).
    A variant that trains nothing (`base`) depends on `logits` alone: its other fields are None,
    so that changing them reruns only the variants they apply to. Likewise `published_code` and
    `head_rank` (`Conventions`) are None for the variants they do not change.
    """

    logits: Logits = "raw"
    lambda_init: Init | None = "randn"
    lr: float | None = 0.8
    lr_range_test: bool | None = False
    batch_size: int | None = 64
    epochs: int | None = 30
    patience: int | None = 5
    seed: int | None = 42
    published_code: bool | None = None
    head_rank: HeadRank | None = None

    @property
    def conventions(self) -> Conventions:
        """The `Conventions` to build the variant with (a None field: the paper's default, unused)."""
        chosen = {key: value for key, value in (("published_code", self.published_code), ("head_rank", self.head_rank)) if value is not None}
        return Conventions(**chosen)

    @classmethod
    def for_variant(cls, config: Mapping[str, Any], variant: str) -> TrainingOptions:
        """The options of `variant` in a validated config."""
        training, lr_key = config["training"], VARIANT_KEYS[variant].lr_key
        if lr_key is None:
            return cls(training["logits"], None, None, None, None, None, None, None)
        conventions = {key: training[key] for key in VARIANT_KEYS[variant].conventions}
        return cls(
            **conventions,
            logits=training["logits"],
            lambda_init=training["lambda_init"],
            lr=training[lr_key],
            lr_range_test=training["lr_range_test"],
            batch_size=training["batch_size"],
            epochs=training["epochs"],
            patience=training["patience"],
            seed=config["seed"],
        )


@dataclass(frozen=True)
class FinetuneOptions(RuleParams):
    """The settings a fine-tuning result depends on (see the schema's `finetune` keys); `logits`
    is `training.logits` (the classifier's convention is shared with the variants), `seed` the
    run's. max_train_images: a stratified subset of the train split (None: all of it)."""

    logits: Logits = "raw"
    lr: float = 1e-5
    clip_norm: float = 1.0
    batch_size: int = 128
    epochs: int = 30
    patience: int = 5
    max_train_images: int | None = None
    seed: int = 42

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> FinetuneOptions:
        """The options in a validated config."""
        finetune = config["finetune"]
        return cls(
            logits=config["training"]["logits"],
            lr=finetune["lr"],
            clip_norm=finetune["clip_norm"],
            batch_size=finetune["batch_size"],
            epochs=finetune["epochs"],
            patience=finetune["patience"],
            max_train_images=finetune["max_train_images"],
            seed=config["seed"],
        )

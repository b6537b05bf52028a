"""Small synthetic results tables with the pipeline's columns, for the chart and LaTeX tests: two
models of different depth and width, seeded values, so that every chart has something to draw."""

from __future__ import annotations

import numpy as np
import polars as pl
import torch

from residual.heads.maps import HeadMaps
from residual.heads.options import ALL_HEADS, ALL_UNITS, LABELS
from residual.io.tables import with_keys
from residual.report.map_cells import map_cells

SHAPES = {"model_a": (6, 4), "model_b": (4, 3)}  # layers, heads
DATASETS = ["digits", "random"]
VARIANTS = {"base": 0, "residual_coarse": 96, "residual_fine": 2400, "residual_full": 150000, "linear_adapter": 263000}


def units(layers: int, heads: int) -> list[dict]:
    rows = [{"unit": "emb", "kind": "emb", "layer": None, "head": None}]
    rows += [{"unit": f"mlp_{layer}", "kind": "mlp", "layer": layer, "head": None} for layer in range(layers)]
    rows += [{"unit": f"head_{layer}_{head}", "kind": "head", "layer": layer, "head": head}
             for layer in range(layers) for head in range(heads)]  # fmt: skip
    return rows + [{"unit": "output", "kind": "output", "layer": None, "head": None}]


def intrinsic_dimension() -> pl.DataFrame:
    generator = np.random.default_rng(0)
    rows = []
    for model, (layers, heads) in SHAPES.items():
        for dataset in DATASETS:
            for unit in units(layers, heads):
                depth = (unit["layer"] or 0) / layers
                twonn = 4 + 10 * depth * (1 - depth) + generator.uniform(0, 1)  # the hunchback
                linear = twonn * (1 + depth) + generator.uniform(0, 1)
                rows.append({"run": "test", "model": model, "dataset": dataset, "split": "train", **unit,
                             "linear_id": int(linear), "twonn_id": twonn, "linear_over_twonn": int(linear) / twonn,
                             "first_evr": generator.uniform(0.1, 0.6)})  # fmt: skip
    return pl.DataFrame(rows)


def similarity() -> pl.DataFrame:
    generator = np.random.default_rng(1)
    rows = []
    for model, (layers, heads) in SHAPES.items():
        for unit in units(layers, heads):
            weighted = generator.uniform(0.4, 0.95)
            rows.append({"run": "test", "model": model, "reference": "digits", "dataset": "random", **unit,
                         "similarity": weighted, "similarity_unweighted": weighted * 0.7})  # fmt: skip
    return pl.DataFrame(rows)


def training() -> pl.DataFrame:
    generator = np.random.default_rng(2)
    rows = [
        {"run": "test", "model": model, "dataset": dataset, "variant": variant, "label": variant,
         "trainable_parameters": parameters, "test_accuracy": generator.uniform(0.3, 0.9)}
        for model in SHAPES for dataset in DATASETS for variant, parameters in VARIANTS.items()
    ]  # fmt: skip
    return pl.DataFrame(rows)


FRACTIONS = [0.01, 0.05, 0.1, 0.25, 0.5, 0.75]


def head_selection() -> pl.DataFrame:
    """Scores U|T, U, S (seed 0) and random (3 seeds) at every fraction, plus the H and B rows, with
    the head stage's score names and paper labels."""
    generator = np.random.default_rng(3)
    rows = []
    for model, (layers, heads) in SHAPES.items():
        for dataset in DATASETS:
            for score, seeds in (("task_conditioned", [0]), ("unsupervised", [0]), ("supervised", [0]), ("random", [0, 1, 2])):
                for fraction in FRACTIONS:
                    for seed in seeds:
                        rows.append({"model": model, "dataset": dataset, "score": score, "label": LABELS[score],
                                     "fraction": fraction, "k": max(1, round(fraction * layers * heads)), "ablation": "zero",
                                     "seed": seed, "accuracy": min(1.0, 0.2 + fraction + generator.uniform(0, 0.1))})  # fmt: skip
            for reference, accuracy in ((ALL_HEADS, 0.7), (ALL_UNITS, 0.8)):
                rows.append({"model": model, "dataset": dataset, "score": reference, "label": LABELS[reference], "fraction": 1.0,
                             "k": layers * heads, "ablation": "zero", "seed": 0, "accuracy": accuracy})  # fmt: skip
    return pl.DataFrame(rows)


def head_overlap() -> pl.DataFrame:
    generator = np.random.default_rng(4)
    names = [*DATASETS, "cifar10"]
    rows = [
        {"model": model, "score": score, "label": LABELS[score], "fraction": fraction, "dataset_a": a, "dataset_b": b,
         "jaccard": 1.0 if a == b else generator.uniform(0, 0.6)}
        for model in SHAPES for score in ("task_conditioned", "supervised") for fraction in (0.05, 0.1) for a in names for b in names
    ]  # fmt: skip
    return pl.DataFrame(rows)


def runtime() -> pl.DataFrame:
    generator = np.random.default_rng(5)
    rows = [
        {"rule": rule, "model": model, "dataset": "digits", "split": None, "variant": None, "wildcards": "",
         "repeat": 0, "wall_s": generator.uniform(1, 30), "cpu_s": 1.0, "max_rss_mb": generator.uniform(200, 2000)}
        for rule in ("encode", "pca", "train") for model in SHAPES
    ]  # fmt: skip
    rows.append({"rule": "split", "model": None, "dataset": "digits", "split": None, "variant": None, "wildcards": "",
                 "repeat": 0, "wall_s": 2.0, "cpu_s": 1.0, "max_rss_mb": 300.0})  # fmt: skip
    return pl.DataFrame(rows)


ATTRIBUTES = {"world_shape": ("shape", 6), "world_colour": ("colour", 6), "world_position": ("position", 4)}




def probes_table() -> pl.DataFrame:
    """A probes table of two models (3 x 2 and 2 x 3 heads) on three world tasks: each head reads
    one task well (the task cycles over the heads), the others at chance."""
    parts = []
    for model, (layers, heads) in {"model_a": (3, 2), "model_b": (2, 3)}.items():
        names = ["emb", *(f"head_{layer}_{head}" for layer in range(layers) for head in range(heads))]
        for index, (dataset, (attribute, classes)) in enumerate(ATTRIBUTES.items()):
            accuracy = [0.9 if position % len(ATTRIBUTES) == index else 1 / classes for position in range(len(names))]
            rows = pl.DataFrame(
                {"unit": names, "kind": ["emb"] + ["head"] * (len(names) - 1),
                 "layer": [None] + [layer for layer in range(layers) for _ in range(heads)],
                 "head": [None] + [head for _ in range(layers) for head in range(heads)],
                 "component": [None] * len(names), "balanced_accuracy": accuracy, "chance": [1 / classes] * len(names)}
            )  # fmt: skip
            parts.append(with_keys(rows, model=model, dataset=dataset, attribute=attribute))
    return pl.concat(parts, how="diagonal_relaxed")


def synthetic_maps(model: str = "model_a", dataset: str = "digits") -> HeadMaps:
    """Maps of 2 heads (the class map and 2 components; head_1_0 has a single component) on 3 images
    of 2 classes, a CLS token and a register before a 2 x 3 patch grid, seeded values."""
    generator = torch.Generator().manual_seed(3)
    return HeadMaps(
        heads=["head_2_1", "head_1_0"],
        maps=["class", "pc1", "pc2"],
        classes=["zero", "one"],
        values=torch.randn(3, 2, 3, 2 + 6, generator=generator),
        offsets=torch.randn(3, 2, 3, generator=generator),
        drawn=torch.tensor([[True, True, True], [True, True, False]]),
        ratios=torch.tensor([[float("nan"), 0.5, 0.2], [float("nan"), 0.9, 0.0]]),
        images=torch.randint(0, 256, (3, 12, 18, 3), generator=generator, dtype=torch.uint8),
        labels=torch.tensor([0, 1, 1]),
        predictions=torch.tensor([0, 0, 1]),
        sample_ids=torch.tensor([4, 7, 9]),
        prefix=("cls", "register_0"),
        grid=(2, 3),
        metadata={"model": model, "dataset": dataset},
    )


def head_maps() -> pl.DataFrame:
    """The cells of two maps files (two models): TextSpan texts for one head of each."""
    texts = {"head_2_1": ["TextSpan on digits:", "a photo of a zero", "a blurry digit"]}
    return pl.concat([map_cells(synthetic_maps(model), texts) for model in ("model_a", "model_b")])


TABLES = {
    "intrinsic_dimension": intrinsic_dimension,
    "similarity": similarity,
    "training": training,
    "head_selection": head_selection,
    "head_overlap": head_overlap,
    "runtime": runtime,
    "probes": probes_table,
    "head_maps": head_maps,
}

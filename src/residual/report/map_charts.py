"""Pictures of the head maps (rules/maps.smk): each selected head's maps drawn over the test images.

Input: `map_cells` of one maps file (`residual.heads.maps`), one row per head x map x image. A
row of the picture is one head's map (its class map, then its principal components), a column one
image, labelled with its true class and the model's prediction. Each patch is coloured by its value
over the image, red where it adds to the map's direction and blue where it takes away, more opaque
the larger its magnitude; the scale is shared along a row (its largest |patch value| is full
colour), so the images of a row compare. The CLS token, the registers and the offset that no token
carries are not on the image: the tooltip gives their part beside the patches'. The head's TextSpan
texts (the descriptions table, where the model has a text tower) stand to the right of its class map.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping

import altair as alt
import numpy as np
import polars as pl
import torch
from PIL import Image
from torch import Tensor

from residual.descriptions.table import METHODS
from residual.heads.maps import CLASS_MAP, HeadMaps

DISPLAY = 96  # pixels on the longer side of each drawn image
GAP = 6  # pixels between drawn images
ALPHA = 0.85  # the opacity of a patch of the row's largest magnitude
TEXTS = 5  # TextSpan texts shown per head
TEXT_WIDTH = 260
# The diverging scale of the overlays, interpolated in RGB both in the overlays and in the legend.
COLOURS = {-1.0: (33, 102, 172), 0.0: (247, 247, 247), 1.0: (178, 24, 43)}
LEGEND_SCALE = alt.Scale(domain=list(COLOURS), range=["#%02x%02x%02x" % colour for colour in COLOURS.values()], interpolate="rgb")
TEXTSPAN = "textspan"
LUMINANCE = np.array([0.299, 0.587, 0.114])  # ITU-R BT.601 weights of R, G, B


def textspan_texts(descriptions: pl.DataFrame, model: str, dataset: str, heads: list[str]) -> dict[str, list[str]]:
    """head -> the lines drawn beside it: which dataset's TextSpan (the task's own where it was
    described, else the first described), then its first `TEXTS` texts. Heads without TextSpan rows
    (models without a text tower, heads not described) are left out."""
    if "method" not in descriptions.columns:
        return {}
    rows = descriptions.filter((pl.col("method") == TEXTSPAN) & (pl.col("model") == model) & pl.col("unit").is_in(heads))
    lines = {}
    for head in heads:
        own = rows.filter(pl.col("unit") == head)
        if own.is_empty():
            continue
        described = own["dataset"].unique(maintain_order=True).to_list()
        source = dataset if dataset in described else described[0]
        texts = own.filter(pl.col("dataset") == source).sort("rank")["text"].head(TEXTS).to_list()
        lines[head] = [f"{METHODS[TEXTSPAN]} on {source}:", *texts]
    return lines


def overlay(pixels: Tensor, patches: Tensor, scale: float) -> str:
    """The image [H, W, 3] uint8 in grey with patch values [rows, columns] drawn over it in colour
    (value / scale in [-1, 1]: colour by `COLOURS`, opacity ALPHA * |value / scale|), as a PNG data
    URL DISPLAY pixels on its longer side. Grey, so that every colour on it is the map's."""
    height, width = pixels.shape[:2]
    values = (patches.double() / scale).clamp(-1, 1)
    values = torch.nn.functional.interpolate(values[None, None], size=(height, width), mode="nearest")[0, 0].numpy()
    stops = np.array(list(COLOURS))
    colours = np.array(list(COLOURS.values()), dtype=np.float64)
    tint = np.stack([np.interp(values, stops, colours[:, channel]) for channel in range(3)], axis=-1)
    alpha = ALPHA * np.abs(values)[..., None]
    grey = pixels.numpy().astype(np.float64) @ LUMINANCE
    blended = (1 - alpha) * grey[..., None] + alpha * tint
    image = Image.fromarray(np.round(blended).astype(np.uint8))
    factor = DISPLAY / max(height, width)
    size = (max(1, round(width * factor)), max(1, round(height * factor)))
    image = image.resize(size, Image.Resampling.NEAREST if factor >= 1 else Image.Resampling.BOX)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def map_label(maps: HeadMaps, head: int, kind: int) -> str:
    name = maps.maps[kind]
    if name == CLASS_MAP:
        return "true class"
    return f"{name.upper()} ({float(maps.ratios[head, kind]):.0%} of its variance)"


def map_cells(maps: HeadMaps, texts: Mapping[str, list[str]]) -> pl.DataFrame:
    """One row per head x drawn map x image, in that order: model, dataset, unit, map, row (the
    picture's row label), image (its column label), true, predicted, overlay (a PNG data URL), peak
    (the signed value of its largest patch over the row's scale), scale (the row's largest |patch
    value|), patches, prefix (CLS and registers), offset and total (their sum: the head's value
    along the map's direction), texts (lines beside the row: `texts[unit]` on the class map)."""
    prefix = len(maps.prefix)
    patches = maps.patches  # [I, K, M, rows, columns]
    columns = [
        f"{index + 1}. {maps.classes[label]} / {maps.classes[predicted]}"
        for index, (label, predicted) in enumerate(zip(maps.labels.tolist(), maps.predictions.tolist()))
    ]
    records = []
    for head, unit in enumerate(maps.heads):
        for kind, name in enumerate(maps.maps):
            if not bool(maps.drawn[head, kind]):
                continue
            row = patches[:, head, kind]  # [I, rows, columns]
            largest = float(row.abs().max())
            scale = largest if largest > 0 else 1.0
            for image, column in enumerate(columns):
                cell = row[image].flatten()
                part = maps.values[image, head, kind]
                records.append(
                    {
                        "model": maps.metadata["model"],
                        "dataset": maps.metadata["dataset"],
                        "unit": unit,
                        "map": name,
                        "row": f"{unit}: {map_label(maps, head, kind)}",
                        "image": column,
                        "true": maps.classes[int(maps.labels[image])],
                        "predicted": maps.classes[int(maps.predictions[image])],
                        "overlay": overlay(maps.images[image], row[image], scale),
                        "peak": float(cell[cell.abs().argmax()]) / scale,
                        "scale": largest,
                        "patches": float(part[prefix:].sum()),
                        "prefix": float(part[:prefix].sum()),
                        "offset": float(maps.offsets[image, head, kind]),
                        "total": float(part.sum() + maps.offsets[image, head, kind]),
                        "texts": list(texts.get(unit, [])) if name == CLASS_MAP else [],
                    }
                )
    return pl.DataFrame(records, schema_overrides={"texts": pl.List(pl.String)})


def head_maps(table: pl.DataFrame) -> alt.TopLevelMixin:
    """The picture of `map_cells` tables: for each model x dataset, heads' maps (rows) over the test
    images (columns), with the heads' TextSpan texts to the right."""
    panels = []
    for (model, dataset), cells in table.group_by("model", "dataset", maintain_order=True):
        rows = alt.Y("row:N", sort=cells["row"].unique(maintain_order=True).to_list(), title=None)
        images = (
            alt.Chart(cells)
            .mark_image(width=DISPLAY, height=DISPLAY)
            .encode(
                x=alt.X("image:N", sort=cells["image"].unique(maintain_order=True).to_list(),
                        title="test image: true class / the model's prediction", axis=alt.Axis(orient="top", labelAngle=-35, grid=False)),
                y=rows.axis(grid=False, labelLimit=320).title("head: map"),
                url="overlay:N",
                # The overlays are drawn with this scale: each image's legend entry is its peak patch.
                color=alt.Color("peak:Q", title=["patch value over", "the row's largest"], scale=LEGEND_SCALE),
                tooltip=[
                    "unit:N", "map:N", "true:N", "predicted:N",
                    alt.Tooltip("scale:Q", title="row's largest |patch|", format=".3g"),
                    alt.Tooltip("patches:Q", title="all patches", format=".3g"),
                    alt.Tooltip("prefix:Q", title="CLS and registers", format=".3g"),
                    alt.Tooltip("offset:Q", title="no token (bias, norm)", format=".3g"),
                    alt.Tooltip("total:Q", title="the head's value", format=".3g"),
                ],
            )  # fmt: skip
            .properties(width=alt.Step(DISPLAY + GAP), height=alt.Step(DISPLAY + GAP), title=f"{model} on {dataset}")
        )
        texts = (
            alt.Chart(cells.filter(pl.col("texts").list.len() > 0).unique("row", maintain_order=True))
            .mark_text(align="left", baseline="middle", lineHeight=14, fontSize=11, limit=TEXT_WIDTH)
            .encode(x=alt.value(0), y=rows.axis(None), text="texts:N")
            .properties(width=TEXT_WIDTH, height=alt.Step(DISPLAY + GAP), view=alt.ViewBackground(stroke=None))
        )
        panels.append(alt.hconcat(images, texts, spacing=8).resolve_scale(y="shared"))
    return alt.vconcat(*panels, spacing=24)

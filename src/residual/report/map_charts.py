"""Pictures of the head maps (rules/maps.smk): each selected head's maps drawn over the test images.

Input: `map_cells` of one maps file (`residual.report.map_cells`), one row per head x map x image. A
row of the picture is one head's map (its class map, then its principal components), a column one
image, labelled with its true class and the model's prediction. Each patch is coloured by its value
over the image, red where it adds to the map's direction and blue where it takes away, more opaque
the larger its magnitude; the scale is shared along a row (its largest |patch value| is full
colour), so the images of a row compare. The CLS token, the registers and the offset that no token
carries are not on the image: the tooltip gives their part beside the patches'. The head's TextSpan
texts (the descriptions table, where the model has a text tower) stand to the right of its class map.
"""

from __future__ import annotations

import altair as alt
import polars as pl

from residual.descriptions.table import METHODS

DISPLAY = 96  # pixels on the longer side of each drawn image
GAP = 6  # pixels between drawn images
ALPHA = 0.85  # the opacity of a patch of the row's largest magnitude
TEXTS = 5  # TextSpan texts shown per head
TEXT_WIDTH = 260
# The diverging scale of the overlays, interpolated in RGB both in the overlays and in the legend.
COLOURS = {-1.0: (33, 102, 172), 0.0: (247, 247, 247), 1.0: (178, 24, 43)}
LEGEND_SCALE = alt.Scale(domain=list(COLOURS), range=["#%02x%02x%02x" % colour for colour in COLOURS.values()], interpolate="rgb")
TEXTSPAN = "textspan"


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

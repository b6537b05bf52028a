"""Charts of the results tables: one look for all of them, and saving as HTML, PNG and SVG.

Every chart is an Altair chart built from a polars table. Saved HTML inlines the Vega libraries (it
opens offline) and renders to SVG in the browser, so that a test can count the drawn marks in the
page; PNG and SVG are rendered without a browser (vl-convert).

The inlined libraries are one script that vl-convert bundles anew in each process (about 3 s, most
of a chart job); `vega_script` keeps it in the machine's cache, named by vl-convert's and Vega-Lite's
versions, and the page is Altair's own inline template around it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import altair as alt
import polars as pl
import vl_convert
from altair.utils.html import INLINE_HTML_TEMPLATE

from residual.io.atomic import atomic_path
from residual.io.machine_cache import cache_folder, remembered_text

# Its version, CHARTS_VERSION, is in residual.report.outputs (the rules read it without altair).

PNG_SCALE = 2  # pixels per Vega pixel: sharp on high-density screens and in slides
FONT = "DejaVu Sans, Liberation Sans, Arial, sans-serif"
SEQUENTIAL = "viridis"
CELL = 14  # pixels per layer x head cell of a heatmap


def styled(chart: alt.TopLevelMixin, title: str, subtitle: Sequence[str] = ()) -> alt.TopLevelMixin:
    """`chart` with its title (and subtitle lines) and the report's fonts and sizes: axis titles 13 px,
    labels 11 px, titles 16 px, so that a PNG at its default size reads without zooming."""
    return (
        chart.properties(title=alt.Title(title, subtitle=list(subtitle), anchor="start", fontSize=16, subtitleFontSize=12))
        .configure(font=FONT, background="white")
        .configure_axis(titleFontSize=13, labelFontSize=11, titleFontWeight="normal", grid=True, gridOpacity=0.5)
        .configure_header(titleFontSize=13, labelFontSize=12, titleFontWeight="normal")
        .configure_legend(titleFontSize=12, labelFontSize=11, labelLimit=260)
        .configure_view(stroke="#bbbbbb")
    )


def ordered(table: pl.DataFrame, column: str) -> list:
    """The values of `column` in their first-appearance order (the config's order of models,
    datasets, variants), for sort= and scale domains."""
    return table.get_column(column).unique(maintain_order=True).drop_nulls().to_list()


def data_scale(scheme: str = SEQUENTIAL, **kwargs: object) -> alt.Scale:
    """A colour scale from the smallest to the largest value in the data (not from 0)."""
    return alt.Scale(scheme=scheme, zero=False, nice=False, **kwargs)


def layer_head_heatmap(value: str, title: str, legend: str, scale: alt.Scale) -> alt.Chart:
    """A layer (rows, first layer on top) x head (columns) heatmap of `value`; the data and the
    facets are added by the caller."""
    return (
        alt.Chart()
        .mark_rect()
        .encode(
            x=alt.X("head:O", title="head", axis=alt.Axis(labelAngle=0, grid=False)),
            y=alt.Y("layer:O", title="layer", axis=alt.Axis(grid=False)),
            color=alt.Color(f"{value}:Q", title=legend, scale=scale),
            tooltip=["unit:N", alt.Tooltip(f"{value}:Q", title=title, format=".3g")],
        )
        .properties(width=alt.Step(CELL), height=alt.Step(CELL))
    )


# '<', '>' and '&' as JSON \\u escapes: the same strings to JavaScript, and no markup to the HTML parser.
SCRIPT_ESCAPES = str.maketrans({"<": "\\u003c", ">": "\\u003e", "&": "\\u0026"})


class ScriptSafeJSON(json.JSONEncoder):
    """JSON that can sit inside an HTML <script> element whatever its strings hold: no text in the
    data or a title, such as '</script>' or '<!--', can end the element or start markup."""

    def encode(self, o: object) -> str:
        return super().encode(o).translate(SCRIPT_ESCAPES)


# How the saved page embeds the chart: as SVG (marks a test can count), without the action menu.
EMBED_OPTIONS = {"renderer": "svg", "actions": False, "mode": "vega-lite"}


def vega_script() -> str:
    """vega-embed with Vega and Vega-Lite (Altair's version) as one script, for a page that opens
    offline: what `chart.save(..., inline=True)` inlines, from the machine's cache when it holds it."""
    vega_lite = "_".join(alt.SCHEMA_VERSION.split(".")[:2])  # 'v6.1.0' -> 'v6_1', vl-convert's name
    path = cache_folder("vega") / f"vl-convert-{vl_convert.__version__}-vega-lite-{vega_lite}.js"
    return remembered_text(path, lambda: vl_convert.javascript_bundle(vl_version=vega_lite))


def chart_page(chart: alt.TopLevelMixin) -> str:
    """`chart` as a standalone HTML page with the Vega libraries inlined (Altair's inline template)."""
    return INLINE_HTML_TEMPLATE.render(
        spec=json.dumps(chart.to_dict(), cls=ScriptSafeJSON),
        embed_options=json.dumps(EMBED_OPTIONS),
        vegalite_version=alt.VEGALITE_VERSION,
        vegaembed_script=vega_script(),
        output_div="vis",
    )


def save_chart(chart: alt.TopLevelMixin, outputs: Sequence[str | Path]) -> None:
    """Write `chart` to each output by its suffix (.html, .png, .svg), atomically."""
    for output in outputs:
        suffix = Path(output).suffix
        with atomic_path(output) as tmp:
            if suffix == ".html":
                tmp.write_text(chart_page(chart), encoding="utf-8")
            elif suffix == ".png":
                chart.save(tmp, format="png", scale_factor=PNG_SCALE)
            elif suffix == ".svg":
                chart.save(tmp, format="svg")
            else:
                raise ValueError(f"no writer for chart format {suffix!r} ({output})")

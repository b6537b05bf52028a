"""Charts, the paper's LaTeX tables and the runtime table, on small synthetic tables with the
pipeline's columns (tests/chart_tables.py). Charts are checked on Vega's own scenegraph (what a
browser would draw, rendered without one): their data marks, titles, axis titles and legends."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import altair as alt
import polars as pl
import pytest
import vl_convert
from chart_tables import TABLES
from conftest import REPO
from PIL import Image

from residual.io.tables import DEMO_NOTE, to_latex
from residual.report import charts
from residual.report.charts import chart_page, save_chart
from residual.report.figures import render
from residual.report.outputs import CHARTS
from residual.report.paper_tables import PAPER_TABLES, main_summary
from residual.report.runtime import pattern_regex, runtime_summary, runtime_table


def items(node: Any) -> Iterator[dict]:
    """Every mark of a Vega scenegraph, depth first: {'marktype', 'role', 'items': [...]}."""
    if isinstance(node, dict):
        if "marktype" in node:
            yield node
        for key in ("scenegraph", "items"):
            if key in node:
                yield from items(node[key])
    elif isinstance(node, list):
        for child in node:
            yield from items(child)


def scenegraph(chart) -> list[dict]:
    return list(items(vl_convert.vegalite_to_scenegraph(chart.to_dict())))


def data_marks(marks: list[dict], marktype: str) -> int:
    """How many items of `marktype` the chart draws from its data (not axes, legends or titles)."""
    return sum(len(mark["items"]) for mark in marks if mark["role"] == "mark" and mark["marktype"] == marktype)


def texts(marks: list[dict], role: str) -> set[str]:
    found = set()
    for mark in marks:
        if mark["marktype"] == "text" and mark["role"] == role:
            for item in mark["items"]:
                text = item.get("text")
                found.update(text if isinstance(text, list) else [str(text)])
    return found


def heads(table: pl.DataFrame) -> pl.DataFrame:
    return table.filter(pl.col("kind") == "head")


# what each chart must draw: (mark type, how many items, from its synthetic table); a line's
# items are its vertices
EXPECTED_MARKS = {
    "head_attributes": ("rect", lambda t: t.filter((pl.col("kind") == "head") & pl.col("component").is_null()).select("model", "unit").n_unique()),
    "intrinsic_dimension_by_layer": ("line", lambda t: 2 * heads(t).select("model", "dataset", "layer").n_unique()),
    "intrinsic_dimension_ratio": ("line", lambda t: heads(t).select("model", "dataset", "layer").n_unique()),
    "intrinsic_dimension_heads": ("rect", lambda t: 4 * heads(t).height),
    "similarity_heads": ("rect", lambda t: 2 * heads(t).height),
    "head_selection": ("line", lambda t: t.filter(~pl.col("label").is_in(["H", "B"])).select("model", "dataset", "score", "fraction").n_unique()),
    "head_overlap": ("rect", lambda t: t.filter(pl.col("fraction") == 0.05).height),
    "accuracy_by_variant": ("rect", lambda t: t.height),
    "accuracy_vs_parameters": ("symbol", lambda t: t.filter(pl.col("trainable_parameters") > 0).height),
    "runtime": ("rect", lambda t: 2 * t.with_columns(pl.col("model").fill_null("")).select("rule", "model").n_unique()),
    "head_maps": ("image", lambda t: t.height),
}


@pytest.mark.parametrize("name", list(CHARTS))
def test_every_chart_draws_its_data_with_title_axes_and_legend(name: str) -> None:
    figure = CHARTS[name]
    table = TABLES[figure.table]()
    marks = scenegraph(render(name, table, demo=True))
    marktype, expected = EXPECTED_MARKS[name]
    assert data_marks(marks, marktype) == expected(table)
    assert {figure.title, DEMO_NOTE} <= texts(marks, "title-text") | texts(marks, "title-subtitle")
    axis_titles = texts(marks, "axis-title")
    assert axis_titles and all(title.strip() for title in axis_titles)
    assert texts(marks, "legend-title"), "every chart has a legend"
    assert DEMO_NOTE not in texts(scenegraph(render(name, table, demo=False)), "title-subtitle")


def quantitative_colour_scales(spec: Any) -> Iterator[dict]:
    if isinstance(spec, dict):
        colour = spec.get("color")
        if isinstance(colour, dict) and colour.get("type") == "quantitative":
            yield colour.get("scale", {})
        for value in spec.values():
            yield from quantitative_colour_scales(value)
    elif isinstance(spec, list):
        for value in spec:
            yield from quantitative_colour_scales(value)


@pytest.mark.parametrize("name", [name for name in CHARTS if "heads" in name or name == "head_overlap"])
def test_heatmap_colour_scales_start_where_the_data_start(name: str) -> None:
    figure = CHARTS[name]
    table = TABLES[figure.table]()
    scales = list(quantitative_colour_scales(render(name, table, demo=False).to_dict()))
    assert scales and all(scale.get("zero") is False for scale in scales)
    if name == "similarity_heads":  # one scale for weighted and unweighted: from their joint minimum
        values = heads(table).select(pl.concat_list("similarity", "similarity_unweighted").explode())
        assert all(scale["domain"] == [values.min().item(), values.max().item()] for scale in scales)


SAVE = """
import sys
from chart_tables import TABLES
from conftest import REPO
from residual.report.charts import save_chart
from residual.report.figures import render
save_chart(render("similarity_heads", TABLES["similarity"](), demo=False), sys.argv[1:])
"""


def test_charts_are_saved_offline_html_png_and_svg_identically_by_two_processes(tmp_path: Path) -> None:
    """Each chart job is its own process; the SVG's gradient ids count up within a process."""
    chart = render("similarity_heads", TABLES["similarity"](), demo=False)
    first = [tmp_path / f"chart.{ext}" for ext in ("html", "png", "svg")]
    save_chart(chart, first)
    html = first[0].read_text()
    assert "<script src=" not in html.replace("<script src=\"data:", ""), "no library is loaded from the network"
    assert "vegaEmbed" in html and '"renderer": "svg"' in html
    image = Image.open(io.BytesIO(first[1].read_bytes())).convert("L")
    assert image.width > 600 and image.getextrema()[0] < 100, "a PNG with dark marks and text on white"
    assert first[2].read_text().startswith("<svg")
    second = [tmp_path / f"again.{ext}" for ext in ("html", "png", "svg")]
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO / "tests")])}
    subprocess.run([sys.executable, "-c", SAVE, *map(str, second)], check=True, env=environment, timeout=120)
    assert [path.read_bytes() for path in first] == [path.read_bytes() for path in second]
    with pytest.raises(ValueError, match="chart format '.pdf'"):
        save_chart(chart, [tmp_path / "chart.pdf"])


def test_the_page_is_altairs_inline_page_with_the_libraries_from_the_machine_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Altair's own `save(inline=True)` is the oracle, byte for byte; once the bundle is kept, a
    process needs no bundler (vl-convert builds it in ~3 s per process)."""
    monkeypatch.setenv("RESIDUAL_CACHE", str(tmp_path / "cache"))
    chart = render("similarity_heads", TABLES["similarity"](), demo=False)
    chart.save(tmp_path / "altair.html", format="html", inline=True, embed_options=charts.EMBED_OPTIONS, json_kwds={"cls": charts.ScriptSafeJSON})
    assert chart_page(chart) == (tmp_path / "altair.html").read_text(encoding="utf-8")
    (kept,) = (tmp_path / "cache/vega").iterdir()
    assert kept.name == f"vl-convert-{vl_convert.__version__}-vega-lite-v{'_'.join(alt.VEGALITE_VERSION.split('.')[:2])}.js"

    def no_bundler(**_: object) -> str:
        raise AssertionError("the bundle was built again")

    monkeypatch.setattr(charts.vl_convert, "javascript_bundle", no_bundler)
    assert chart_page(chart) == (tmp_path / "altair.html").read_text(encoding="utf-8")


def test_an_empty_table_is_refused_with_its_name() -> None:
    with pytest.raises(ValueError, match="'similarity' has no rows"):
        render("similarity_heads", TABLES["similarity"]().clear(), demo=False)


def write_benchmark(path: Path, seconds: str, rss: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    header = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time"
    path.write_text(f"{header}\n{seconds}\t0:00:01\t{rss}\t1\t1\t1\t0.1\t0.2\t50.0\t1.5\n")


def test_runtime_table_reads_every_rules_benchmarks_of_this_run(tmp_path: Path) -> None:
    patterns = {
        "encode": "benchmarks/encode/{model}/{dataset}/{split}.tsv",
        "pca": "benchmarks/pca/{model,[^/]+}/{dataset}.tsv",
        "similarity_table": "benchmarks/tables/similarity.tsv",
    }
    write_benchmark(tmp_path / "benchmarks/encode/clip/digits/train.tsv", "10.5", "1000")
    write_benchmark(tmp_path / "benchmarks/encode/clip/digits/val.tsv", "2.5", "900")
    write_benchmark(tmp_path / "benchmarks/encode/old_model/digits/val.tsv", "99", "9")  # an earlier config's model
    write_benchmark(tmp_path / "benchmarks/pca/clip/digits.tsv", "1", "NA")  # too short for psutil to sample
    write_benchmark(tmp_path / "benchmarks/tables/similarity.tsv", "0.5", "300")
    write_benchmark(tmp_path / "benchmarks/tables/other.tsv", "7", "1")  # no rule writes it

    table = runtime_table(patterns, {"model": ["clip"], "dataset": ["digits"]}, root=tmp_path)
    assert table.height == 4
    assert table.select("rule", "model", "dataset", "split").rows() == [
        ("encode", "clip", "digits", "train"),
        ("encode", "clip", "digits", "val"),
        ("pca", "clip", "digits", None),
        ("similarity_table", None, None, None),
    ]
    assert table["wall_s"].to_list() == [10.5, 2.5, 1.0, 0.5] and table["max_rss_mb"].null_count() == 1
    summary = {row["rule"]: row for row in runtime_summary(table).iter_rows(named=True)}
    assert summary["encode"]["jobs"] == 2 and summary["encode"]["total_wall_s"] == 13.0 and summary["encode"]["peak_rss_mb"] == 1000
    assert summary["similarity_table"]["model"] == "(no model)"
    assert pattern_regex(patterns["pca"]).match("benchmarks/pca/a/b.tsv").groupdict() == {"model": "a", "dataset": "b"}
    with pytest.raises(FileNotFoundError, match="no benchmark file"):
        runtime_table(patterns, {}, root=tmp_path / "elsewhere")


def test_main_table_pivots_accuracy_in_percent_per_dataset_with_parameters() -> None:
    training = TABLES["training"]()
    summary = main_summary(training)
    assert summary.columns == ["model", "variant", "parameters", "digits", "random", "mean"]
    row = summary.filter((pl.col("model") == "model_a") & (pl.col("variant") == "residual_fine")).row(0, named=True)
    source = training.filter((pl.col("model") == "model_a") & (pl.col("variant") == "residual_fine"))
    expected = {dataset: 100 * accuracy for dataset, accuracy in source.select("dataset", "test_accuracy").rows()}
    assert row["digits"] == pytest.approx(expected["digits"]) and row["random"] == pytest.approx(expected["random"])
    assert row["mean"] == pytest.approx(sum(expected.values()) / 2) and row["parameters"] == 2400


@pytest.mark.parametrize("name", list(PAPER_TABLES))
def test_paper_tables_are_standalone_booktabs(name: str) -> None:
    paper_table = PAPER_TABLES[name]
    latex = to_latex(paper_table.summarise(TABLES[paper_table.table]()), paper_table.caption, demo=True)
    assert latex.startswith(r"\documentclass[varwidth=\maxdimen]{standalone}") and latex.rstrip().endswith(r"\end{document}")
    assert all(rule in latex for rule in (r"\toprule", r"\midrule", r"\bottomrule")) and "model\\_a" in latex

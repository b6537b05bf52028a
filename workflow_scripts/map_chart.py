"""The picture of one maps file, as HTML (offline), PNG and SVG."""
import polars as pl

from residual.heads.maps import HeadMaps
from residual.report.charts import save_chart
from residual.report.figures import render
from residual.report.map_cells import map_cells
from residual.report.map_charts import textspan_texts
from residual.runtime.workflow import rule_context

with rule_context(snakemake) as log:
    wildcards, inputs = snakemake.wildcards, snakemake.input
    maps = HeadMaps.load(inputs.maps)
    texts = textspan_texts(pl.read_parquet(inputs.descriptions), wildcards.model, wildcards.dataset, maps.heads)
    cells = map_cells(maps, texts)
    save_chart(render(snakemake.params.chart, cells, demo=snakemake.params.demo), snakemake.output)
    log.info("%d cells of %d heads; TextSpan texts for %d of them", cells.height, len(maps.heads), len(texts))

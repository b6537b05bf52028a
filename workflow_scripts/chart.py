"""One chart of one results table, as HTML (offline), PNG and SVG."""
import polars as pl

from residual.report.charts import save_chart
from residual.report.figures import render
from residual.runtime.workflow import rule_context

with rule_context(snakemake) as log:
    params = snakemake.params
    table = pl.read_parquet(snakemake.input[0])
    save_chart(render(params.chart, table, demo=params.demo), snakemake.output)
    log.info("chart %s of %d rows", params.chart, table.height)

"""One of the paper's tables as standalone booktabs LaTeX."""
import polars as pl

from residual.io.tables import write_table
from residual.report.paper_tables import PAPER_TABLES
from residual.runtime.workflow import rule_context

with rule_context(snakemake) as log:
    params = snakemake.params
    paper_table = PAPER_TABLES[params.table]
    summary = paper_table.summarise(pl.read_parquet(snakemake.input[0]))
    write_table(summary, snakemake.output, paper_table.caption, demo=params.demo)
    log.info("table %s: %d rows", params.table, summary.height)

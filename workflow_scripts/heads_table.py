from residual.heads.tables import HEAD_TABLES
from residual.io.tables import write_table
from residual.report.tables import concat_tables
from residual.runtime.workflow import rule_context

with rule_context(snakemake) as log:
    params = snakemake.params
    stacked = concat_tables(snakemake.input, params.run_name)
    table, summary = HEAD_TABLES[params.kind](stacked, params.fraction, params.run_name)
    write_table(table, snakemake.output, params.title, demo=params.demo, markdown=summary)
    log.info("%s: %d rows from %d files", params.kind, table.height, len(snakemake.input))

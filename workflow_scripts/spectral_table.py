from residual.io.tables import write_table
from residual.report.tables import concat_tables, layer_summary
from residual.runtime.workflow import rule_context

with rule_context(snakemake) as log:
    params = snakemake.params
    table = concat_tables(snakemake.input, params.run_name)
    write_table(table, snakemake.output, params.title, demo=params.demo, markdown=layer_summary(table, params.summarise))
    log.info("%d rows from %d files", table.height, len(snakemake.input))

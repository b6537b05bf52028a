from residual.report.tables import accuracy_summary, concat_tables, write_table
from residual.runtime.workflow import rule_context

with rule_context(snakemake) as log:
    params = snakemake.params
    table = concat_tables(snakemake.input, params.run_name)
    write_table(table, snakemake.output, params.title, demo=params.demo, markdown=accuracy_summary(table))
    log.info("%d runs", table.height)

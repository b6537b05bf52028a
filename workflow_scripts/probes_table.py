from residual.heads.tables import probes_summary
from residual.io.tables import write_table
from residual.report.tables import concat_tables
from residual.runtime.workflow import rule_context

with rule_context(snakemake) as log:
    params = snakemake.params
    table = concat_tables(snakemake.input, params.run_name)
    write_table(table, snakemake.output, params.title, demo=params.demo, markdown=probes_summary(table))
    log.info("probes: %d rows from %d files", table.height, len(snakemake.input))

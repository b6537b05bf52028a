from residual.io.tables import write_table
from residual.report.tables import decomposition_table
from residual.runtime.workflow import rule_context

with rule_context(snakemake) as log:
    table = decomposition_table(snakemake.input, snakemake.params.run_name)
    write_table(table, snakemake.output, "Residual decomposition: exactness and storage", demo=snakemake.params.demo)
    log.info("%d rows", table.height)

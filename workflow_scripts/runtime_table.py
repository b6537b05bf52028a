"""Wall time and memory of every job of the run, from the rules' benchmark files."""
from residual.io.tables import with_keys, write_table
from residual.report.runtime import runtime_summary, runtime_table
from residual.runtime.workflow import rule_context

with rule_context(snakemake) as log:
    params = snakemake.params
    table = with_keys(runtime_table(params.patterns, params.run), run=params.run_name)
    title = "Wall time and memory of every job (from the rules' benchmark files)"
    write_table(table, snakemake.output, title, demo=params.demo, markdown=runtime_summary(table))
    log.info("%d jobs of %d rules", table.height, table["rule"].n_unique())

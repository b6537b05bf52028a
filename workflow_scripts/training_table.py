from residual.io.tables import write_table
from residual.report.tables import accuracy_summary, concat_tables, flag_few_samples
from residual.runtime.workflow import rule_context

with rule_context(snakemake) as log:
    params = snakemake.params
    table = flag_few_samples(concat_tables(snakemake.input, params.run_name), params.min_eval_samples)
    write_table(table, snakemake.output, params.title, demo=params.demo, markdown=accuracy_summary(table))
    log.info("%d runs, %d on fewer than %d val or test samples", table.height, table["few_samples"].sum(), params.min_eval_samples)

from residual.io.tables import write_table
from residual.report.main_table import caption, main_table, paper_layout
from residual.report.tables import concat_tables
from residual.runtime.workflow import rule_context

with rule_context(snakemake) as log:
    params = snakemake.params
    runs = concat_tables(snakemake.input, params.run_name)
    table = main_table(runs, params.variants)
    labels = dict(runs.select("variant", "label").unique(maintain_order=True).iter_rows())
    title = caption(runs, params.variants, params.lr_range_test, params.reference)
    layout = paper_layout(table, {variant: labels[variant] for variant in params.variants})
    write_table(table, snakemake.output, title, demo=params.demo, markdown=layout, group="model")
    log.info("%d rows", table.height)

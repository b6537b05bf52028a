from residual.heads.tables import overlap_summary, overlap_table, scores_summary, selection_summary, zeroshot_summary
from residual.io.tables import with_keys, write_table
from residual.report.tables import concat_tables
from residual.runtime.workflow import rule_context

with rule_context(snakemake) as log:
    params = snakemake.params
    table = concat_tables(snakemake.input, params.run_name)
    if params.kind == "zeroshot":
        summary = zeroshot_summary(table)
    elif params.kind == "head_scores":
        summary = scores_summary(table)
    elif params.kind == "head_selection":
        summary = selection_summary(table, params.fraction)
    else:
        table = with_keys(overlap_table(table), run=params.run_name)
        summary = overlap_summary(table, params.fraction)
    write_table(table, snakemake.output, params.title, demo=params.demo, markdown=summary)
    log.info("%s: %d rows from %d files", params.kind, table.height, len(snakemake.input))

from residual.descriptions.table import descriptions_table, write_descriptions
from residual.runtime.workflow import rule_context

with rule_context(snakemake) as log:
    params = snakemake.params
    table = descriptions_table(snakemake.input, params.run_name, params.no_text_tower)
    write_descriptions(table, snakemake.output, params.title, demo=params.demo)
    log.info("%d rows from %d files; models without a text tower: %s", table.height, len(snakemake.input), params.no_text_tower)

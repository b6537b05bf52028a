from residual.io.atomic import atomic_path
from residual.data.sources import load_source
from residual.data.splits import split_table
from residual.runtime.workflow import rule_context

with rule_context(snakemake) as log:
    source = load_source(snakemake.params.name, snakemake.params.spec, snakemake.params.seed)
    table = split_table(source, snakemake.params.spec["split"], snakemake.params.seed, snakemake.params.name)
    log.info("split sizes: %s", dict(table.group_by("split").len().iter_rows()))
    with atomic_path(snakemake.output[0]) as tmp:
        table.write_parquet(tmp)

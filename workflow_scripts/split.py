from residual.data.sources import load_source
from residual.data.splits import split_table
from residual.io.atomic import atomic_path
from residual.runtime.workflow import rule_context

with rule_context(snakemake) as log:
    dataset, params = snakemake.wildcards.dataset, snakemake.params
    source = load_source(dataset, params.dataset, params.seed)
    table = split_table(source, params.dataset["split"], params.seed, dataset)
    log.info("split sizes: %s", dict(table.group_by("split").len().iter_rows()))
    with atomic_path(snakemake.output[0]) as tmp:
        table.write_parquet(tmp)

import polars as pl

from residual.descriptions.sources import read_texts
from residual.io.tables import with_keys, write_table
from residual.report.findings import findings_summary, findings_table
from residual.runtime.workflow import rule_context
from residual.units.unit_map import UnitMap

with rule_context(snakemake) as log:
    inputs, params = snakemake.input, snakemake.params
    tables = {
        name: pl.read_parquet(inputs[name])
        for name in ("zeroshot", "head_scores", "head_selection", "probes", "descriptions", "intrinsic_dimension")
    }
    # The unit maps come in the order of params.models; only their layout is read, no head weights.
    head_dims = {model: UnitMap.load(path, heads=[]).layout.head_dim for model, path in zip(params.models, inputs.unit_maps)}
    table = findings_table(
        **tables,
        halves=pl.concat([pl.read_parquet(path) for path in inputs.halves], how="diagonal_relaxed"),
        dictionary=read_texts(inputs.dictionary),
        training=pl.read_parquet(inputs.training[0]) if inputs.training else None,
        head_dims=head_dims,
        tasks=params.tasks,
        fraction=params.fraction,
    )
    table = with_keys(table, run=params.run_name)
    write_table(table, snakemake.output, params.title, demo=params.demo, markdown=findings_summary(table))
    held = table["holds"]
    log.info("%d findings: %d hold, %d do not, %d without a verdict", table.height, held.sum(), (~held).sum(), held.null_count())

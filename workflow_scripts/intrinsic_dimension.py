from residual.io.tables import with_keys, write_table
from residual.runtime.device import pick_device
from residual.runtime.workflow import rule_context
from residual.spectral.pca import UnitPCA
from residual.spectral.tables import intrinsic_dimension_table

with rule_context(snakemake) as log:
    params, wildcards, analysis = snakemake.params, snakemake.wildcards, snakemake.config["analysis"]
    table = intrinsic_dimension_table(
        snakemake.input.units,
        UnitPCA.load(snakemake.input.pca),
        samples=params.samples,
        seed=params.seed,
        fraction=params.fraction,
        threshold=params.threshold,
        linear_id_on=params.linear_id_on,
        group_size=analysis["group_size"],  # batching, device: float rounding only, not params
        batch_size=analysis["batch_size"],
        device=pick_device(analysis["device"]),
    )
    write_table(with_keys(table, model=wildcards.model, dataset=wildcards.dataset, split="train"), snakemake.output)
    log.info("%d units; %d without a TwoNN estimate", table.height, table["twonn_id"].null_count())

from residual.io.tables import with_keys, write_table
from residual.runtime.workflow import rule_context
from residual.spectral.pca import UnitPCA
from residual.spectral.tables import similarity_table

with rule_context(snakemake) as log:
    params, wildcards = snakemake.params, snakemake.wildcards
    table = similarity_table(UnitPCA.load(snakemake.input.reference), UnitPCA.load(snakemake.input.other), params.threshold)
    keys = {"model": wildcards.model, "reference": params.reference, "dataset": wildcards.dataset}
    write_table(with_keys(table, **keys), snakemake.output)
    log.info("%d units; %d without a similarity (zero variance)", table.height, table["similarity"].null_count())

from residual.heads.halves import head_halves
from residual.io.tables import with_keys, write_table
from residual.runtime.device import pick_device
from residual.runtime.workflow import rule_context

with rule_context(snakemake) as log:
    wildcards, heads, params = snakemake.wildcards, snakemake.config["heads"], snakemake.params
    device = pick_device(heads["device"])  # float rounding only: not a param
    log.info("split-half head selections of %s on %s (val, %s), seed %d", wildcards.model, wildcards.dataset, device, params.seed)
    table = head_halves(
        snakemake.input.units, snakemake.input.classifier, params.logits, params.fraction, params.seed, heads["batch_size"], device
    )
    write_table(with_keys(table, model=wildcards.model, dataset=wildcards.dataset, split="val"), snakemake.output)
    row = table.row(0, named=True)
    log.info("k = %d of each half (%d and %d samples): Jaccard %.3f", row["k"], row["samples_a"], row["samples_b"], row["jaccard"])

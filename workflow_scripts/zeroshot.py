import polars as pl

from residual.heads.zeroshot import zero_shot
from residual.io.tables import write_table
from residual.runtime.device import pick_device
from residual.runtime.workflow import rule_context

with rule_context(snakemake) as log:
    wildcards, heads = snakemake.wildcards, snakemake.config["heads"]
    device = pick_device(heads["device"])  # float rounding only: not a param
    row = zero_shot(snakemake.input.units, snakemake.input.classifier, snakemake.params.logits, heads["batch_size"], device)
    row = {"model": wildcards.model, "dataset": wildcards.dataset, **row}
    write_table(pl.DataFrame([row]), snakemake.output)
    log.info("%s", row)

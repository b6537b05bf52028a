from pathlib import Path

import polars as pl
from safetensors.torch import save_file

from residual.atomic import atomic_path
from residual.device import pick_device
from residual.experiment import SPLITS, run_variant
from residual.tables import with_keys, write_table
from residual.workflow import rule_context

with rule_context(snakemake) as log:
    params, wildcards, inputs = snakemake.params, snakemake.wildcards, snakemake.input
    device = pick_device(snakemake.config["training"]["device"])  # changes no output: not a param
    log.info("training %s of %s on %s (%s)", wildcards.variant, wildcards.model, wildcards.dataset, device)
    row, best = run_variant(
        wildcards.variant,
        dict(zip(SPLITS, inputs.units)),
        inputs.reference,
        inputs.classifier,
        params.options,
        device=device,
        checkpoint=params.checkpoint,
    )
    with atomic_path(snakemake.output.parameters) as tmp:
        save_file({name: tensor.contiguous() for name, tensor in best.items()}, str(tmp))
    write_table(with_keys(pl.DataFrame([row]), model=wildcards.model, dataset=wildcards.dataset), [snakemake.output.metrics])
    Path(params.checkpoint).unlink(missing_ok=True)
    log.info("%s", row)

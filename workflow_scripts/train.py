from pathlib import Path

from residual.runtime.device import pick_device
from residual.alignment.run import SPLITS, run_variant, save_run
from residual.runtime.workflow import rule_context

with rule_context(snakemake) as log:
    params, wildcards, inputs = snakemake.params, snakemake.wildcards, snakemake.input
    device = pick_device(snakemake.config["training"]["device"])  # float rounding only: not a param
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
    row = {"model": wildcards.model, "dataset": wildcards.dataset, **row}
    save_run(row, best, snakemake.output.metrics, snakemake.output.parameters)
    Path(params.checkpoint).unlink(missing_ok=True)
    log.info("%s", row)

from pathlib import Path

from residual.alignment.options import TrainingOptions
from residual.alignment.run import run_variant, save_run
from residual.data.sequences import SPLITS
from residual.runtime.device import pick_device
from residual.runtime.workflow import rule_context

with rule_context(snakemake) as log:
    params, wildcards, inputs, training = snakemake.params, snakemake.wildcards, snakemake.input, snakemake.config["training"]
    device = pick_device(training["device"])  # float rounding only: not a param
    log.info("training %s of %s on %s (%s)", wildcards.variant, wildcards.model, wildcards.dataset, device)
    row, best = run_variant(
        wildcards.variant,
        dict(zip(SPLITS, inputs.units)),
        inputs.reference,
        inputs.classifier,
        TrainingOptions(**params.options),
        device=device,
        checkpoint=params.checkpoint,
        feature_batch_size=training["feature_batch_size"],  # memory and float rounding only: not a param
    )
    row = {"model": wildcards.model, "dataset": wildcards.dataset, **row}
    save_run(row, best, snakemake.output.metrics, snakemake.output.parameters)
    Path(params.checkpoint).unlink(missing_ok=True)
    log.info("%s", row)

from pathlib import Path

from residual import load_model
from residual.alignment.finetune import FinetuneData, FinetuneRuntime, run_finetune
from residual.alignment.options import FinetuneOptions
from residual.alignment.run import save_run
from residual.data.sources import load_source
from residual.runtime.workflow import rule_context

with rule_context(snakemake) as log:
    params, wildcards, inputs = snakemake.params, snakemake.wildcards, snakemake.input
    options = FinetuneOptions(**params.options)
    runtime = FinetuneRuntime.from_config(snakemake.config)  # float rounding and speed only: not params
    model = load_model(params.model, name=wildcards.model, device=snakemake.config["finetune"]["device"])
    source = load_source(wildcards.dataset, params.source, params.seed)
    key = {"dataset": wildcards.dataset, "source": params.source, "seed": params.seed}
    data = FinetuneData.from_split(model, source, inputs.split, options.max_train_images, options.seed, key)
    log.info("fine-tuning %s on %d train images of %s (%s)", model.name, len(data.train), wildcards.dataset, model.device)
    row, best = run_finetune(model, data, inputs.classifier, options, runtime, params.checkpoint)
    row = {"model": wildcards.model, "dataset": wildcards.dataset, **row}
    save_run(row, best, snakemake.output.metrics, snakemake.output.parameters)
    Path(params.checkpoint).unlink(missing_ok=True)
    log.info("%s", row)

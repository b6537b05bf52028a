from residual.models.pretrain import PretrainOptions, pretrain, save_pretrained
from residual.runtime.workflow import rule_context

with rule_context(snakemake) as log:
    spec, name = snakemake.params.model, snakemake.wildcards.model
    model, result = pretrain(spec, name, device=snakemake.config["pretraining"]["device"])
    save_pretrained(model, result, PretrainOptions.from_spec(spec), snakemake.output[0])
    log.info("pretrained %s: %.0f samples/s over the run, final loss %.4f", name, result.samples_per_second, result.history[-1]["loss"])

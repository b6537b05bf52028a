from residual.alignment.classifier import build_classifier, save_classifier
from residual.runtime.device import pick_device
from residual.runtime.workflow import rule_context

with rule_context(snakemake) as log:
    params, wildcards = snakemake.params, snakemake.wildcards
    units = snakemake.input.get("units")
    device = pick_device(snakemake.config["encode"]["device"])  # float rounding only: not a param
    weights, classes, source, scale = build_classifier(
        wildcards.model, params.model, wildcards.dataset, params.dataset, params.seed, units, params.class_means, device
    )
    save_classifier(snakemake.output[0], weights, classes, source, scale)
    log.info("%s classifier of %s for %s: %d classes, logit scale %.4g", source, wildcards.model, wildcards.dataset, len(classes), scale)

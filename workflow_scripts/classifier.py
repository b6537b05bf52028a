from residual.alignment.classifier import build_classifier
from residual.alignment.options import ClassifierSpec
from residual.runtime.device import pick_device
from residual.runtime.workflow import rule_context

with rule_context(snakemake) as log:
    wildcards = snakemake.wildcards
    device = pick_device(snakemake.config["encode"]["device"])  # float rounding only: not a param
    spec = ClassifierSpec(**snakemake.params.spec)
    built = build_classifier(wildcards.model, wildcards.dataset, spec, snakemake.input.get("units"), device)
    built.save(snakemake.output[0])
    log.info("%s classifier of %s for %s: %d classes, logit scale %.4g", built.source, wildcards.model, wildcards.dataset, len(built.classes), built.logit_scale)

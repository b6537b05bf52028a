from residual import load_model
from residual.runtime.workflow import rule_context

with rule_context(snakemake) as log:
    model = load_model(snakemake.params.model, name=snakemake.wildcards.model, device="cpu")
    digest = model.unit_map.save(snakemake.output[0])
    log.info("unit map of %s: layout %s, digest %s", model.name, model.layout, digest)

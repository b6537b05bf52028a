from residual import load_model
from residual.runtime.workflow import rule_context
from residual.units.unit_map import UnitMap

with rule_context(snakemake) as log:
    model = load_model(snakemake.params.model, name=snakemake.wildcards.model, device="cpu")
    unit_map = UnitMap.from_tower(model.tower, snakemake.params.ln_constants)
    digest = unit_map.save(snakemake.output[0])
    log.info("unit map of %s: layout %s, ln constants %s, digest %s", model.name, unit_map.layout, unit_map.ln_constants, digest)

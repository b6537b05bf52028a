from residual.runtime.device import pick_device
from residual.runtime.workflow import rule_context
from residual.spectral.pca import fit_unit_file

with rule_context(snakemake) as log:
    analysis = snakemake.config["analysis"]  # batching, device: float rounding only, not params
    device = pick_device(analysis["device"])
    log.info("PCA of every unit of %s on %s", snakemake.input.units, device)
    pca = fit_unit_file(snakemake.input.units, batch_size=analysis["batch_size"], group_size=analysis["group_size"], device=device)
    pca.save(snakemake.output[0])
    ranks = [len(components) for components in pca.components]
    log.info("%d units of %d samples; kept components per unit: min %d, max %d", len(pca.names), pca.samples, min(ranks), max(ranks))

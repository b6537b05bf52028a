from residual import load_model
from residual.data.sources import load_source
from residual.heads.maps import MapFiles, head_maps
from residual.heads.options import MapOptions
from residual.runtime.workflow import rule_context

with rule_context(snakemake) as log:
    params, wildcards, inputs = snakemake.params, snakemake.wildcards, snakemake.input
    # Where and in what batches it runs changes no output, so these are read from the config, not params.
    encode, batch_size = snakemake.config["encode"], snakemake.config["maps"]["batch_size"]
    options = MapOptions(**params.options)
    model = load_model(params.model, name=wildcards.model, device=encode["device"])
    source = load_source(wildcards.dataset, params.source, options.seed)
    files = MapFiles(inputs.split, inputs.scores, inputs.classifier, inputs.pca, inputs.unit_map)
    log.info("maps of %s on %s (test, %s): %s", wildcards.model, wildcards.dataset, model.device, options)
    maps = head_maps(model, wildcards.dataset, source, files, options, batch_size)
    maps.save(snakemake.output[0])
    log.info("%d images x %d heads x %d maps x %d tokens: %s", *maps.values.shape, ", ".join(maps.heads))

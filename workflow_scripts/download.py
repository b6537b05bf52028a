from residual.data.download import download
from residual.runtime.workflow import rule_context

with rule_context(snakemake) as log:
    dataset, source = snakemake.wildcards.dataset, snakemake.params.source
    # Whether files may be fetched is read from the config: it changes no file already there.
    download(dataset, {**source, "download": snakemake.config["datasets"][dataset]["download"]}, source.get("root"))
    log.info("dataset %s is present under %s", dataset, source.get("root"))

from residual.data.download import download
from residual.runtime.workflow import rule_context

with rule_context(snakemake) as log:
    spec = snakemake.params.spec
    download(snakemake.params.name, spec, spec["root"])
    log.info("dataset %s is present under %s", snakemake.params.name, spec["root"])

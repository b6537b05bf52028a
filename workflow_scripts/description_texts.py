from residual.descriptions.sources import DictionarySource, fetch_texts
from residual.runtime.workflow import rule_context

with rule_context(snakemake) as log:
    source = DictionarySource(**snakemake.params.source)
    texts = fetch_texts(source, snakemake.output[0])
    log.info("%d descriptions from %s (sha256 %s)", len(texts), source.source, "checked" if source.sha256 else "not given")

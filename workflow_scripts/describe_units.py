import polars as pl

from residual.descriptions.describe import Streaming, describe_unit_file
from residual.descriptions.dictionary import Dictionary
from residual.descriptions.options import DescriptionSettings
from residual.io.tables import with_keys, write_table
from residual.runtime.device import pick_device
from residual.runtime.workflow import rule_context

with rule_context(snakemake) as log:
    inputs, wildcards, analysis = snakemake.input, snakemake.wildcards, snakemake.config["analysis"]
    settings = DescriptionSettings(**snakemake.params.settings)
    # batching, device: float rounding only, not params
    streaming = Streaming(analysis["batch_size"], analysis["group_size"], pick_device(analysis["device"]))
    rows = describe_unit_file(inputs.units, inputs.pca, Dictionary.load(inputs.dictionary), settings, streaming)
    write_table(with_keys(rows, model=wildcards.model, dataset=wildcards.dataset, split=settings.split), snakemake.output)
    log.info(
        "%d units of %s on %s (%s): %d rows",
        rows["unit"].n_unique(),
        wildcards.model,
        wildcards.dataset,
        settings.split,
        rows.height,
    )
    for method in ("textspan", "somp"):
        totals = (
            rows.filter(pl.col("method") == method).group_by("unit").agg(pl.col("explained_total").first())["explained_total"]
        )
        log.info("%s: mean fraction of a unit's variance explained by its texts %.3f", method, totals.mean() or 0.0)

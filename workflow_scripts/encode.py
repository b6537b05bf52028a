from residual import load_model
from residual.data.sources import load_source
from residual.data.splits import read_split
from residual.runtime.workflow import rule_context
from residual.units.encode import EncodeSettings, encode_split

with rule_context(snakemake) as log:
    params, wildcards, encode = snakemake.params, snakemake.wildcards, snakemake.config["encode"]
    # Where and how fast it runs changes no output, so these are read from the config, not params.
    model = load_model(params.model, name=wildcards.model, device=encode["device"])
    source = load_source(wildcards.dataset, params.source, params.seed)
    rows = read_split(snakemake.input.split, wildcards.split)
    log.info("encoding %d samples of %s/%s with %s on %s", rows.height, wildcards.dataset, wildcards.split, model.name, model.device)
    settings = EncodeSettings(params.dtype, encode["batch_size"], encode["workers"], encode["rows_per_group"])
    metadata = {"dataset": wildcards.dataset, "split": wildcards.split, "dataset_spec": params.source}
    result = encode_split(model, source, rows, snakemake.output[0], snakemake.input.unit_map, settings, metadata)
    log.info("done: %s", result)

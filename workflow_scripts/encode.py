from residual import load_model
from residual.data.sources import load_source
from residual.data.splits import read_split
from residual.units.encode import encode_split
from residual.runtime.workflow import rule_context

with rule_context(snakemake) as log:
    params, wildcards = snakemake.params, snakemake.wildcards
    # Where and how fast it runs changes no output, so these are not params (which trigger reruns).
    device, workers = snakemake.config["encode"]["device"], snakemake.config["encode"]["workers"]
    model = load_model(params.model, name=wildcards.model, device=device)
    source = load_source(wildcards.dataset, params.dataset, params.seed)
    rows = read_split(snakemake.input.split, wildcards.split)
    log.info("encoding %d samples of %s/%s with %s on %s", rows.height, wildcards.dataset, wildcards.split, model.name, model.device)
    result = encode_split(
        model,
        source,
        rows,
        snakemake.output[0],
        snakemake.input.unit_map,
        dtype=params.dtype,
        batch_size=params.batch_size,
        workers=workers,
        rows_per_group=params.rows_per_group,
        metadata={"dataset": wildcards.dataset, "split": wildcards.split, "dataset_spec": params.dataset},
    )
    log.info("done: %s", result)

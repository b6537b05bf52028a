from residual.data.world import ATTRIBUTES
from residual.heads.options import ProbeOptions
from residual.heads.probes import probe_units
from residual.io.tables import with_keys, write_table
from residual.runtime.device import pick_device
from residual.runtime.workflow import rule_context

with rule_context(snakemake) as log:
    wildcards, params, config = snakemake.wildcards, snakemake.params, snakemake.config
    heads = config["heads"]  # where and in what batches: float rounding only, not params
    device = pick_device(heads["device"])
    options = ProbeOptions(**params.options)
    classes = len(ATTRIBUTES[params.attribute])
    log.info("probing every unit of %s on %s (%s, %d classes; %s): %s", wildcards.model, wildcards.dataset, params.attribute, classes, device, options)
    inputs = snakemake.input
    table = probe_units(inputs.train, inputs.val, inputs.pca, classes, options, heads["batch_size"], config["probes"]["group_size"], device)
    write_table(with_keys(table, model=wildcards.model, dataset=wildcards.dataset, attribute=params.attribute), snakemake.output)
    log.info("%d rows; %d train and %d val samples", table.height, table["n_train"][0], table["n_val"][0])

import polars as pl

from residual.heads.options import SelectionOptions
from residual.heads.selection import evaluate_selections, plan_selections
from residual.io.tables import with_keys, write_table
from residual.runtime.device import pick_device
from residual.runtime.workflow import rule_context
from residual.units.store import UnitFile

with rule_context(snakemake) as log:
    wildcards, heads, inputs = snakemake.wildcards, snakemake.config["heads"], snakemake.input
    device = pick_device(heads["device"])  # float rounding only: not a param
    options = SelectionOptions(**snakemake.params.options)
    selections = plan_selections(pl.read_parquet(inputs.scores), UnitFile(inputs.units).names, options.fractions)
    log.info("%d selections of %s on %s (test, %s)", len(selections), wildcards.model, wildcards.dataset, device)
    table = evaluate_selections(inputs.units, inputs.classifier, inputs.means, selections, options, heads["batch_size"], device)
    write_table(with_keys(table, model=wildcards.model, dataset=wildcards.dataset, split="test"), snakemake.output)
    log.info("%d rows", table.height)

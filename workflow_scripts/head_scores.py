from residual.heads.options import ScoreOptions
from residual.heads.scores import save_means, score_heads, scores_table
from residual.io.tables import with_keys, write_table
from residual.runtime.device import pick_device
from residual.runtime.workflow import rule_context

with rule_context(snakemake) as log:
    wildcards, heads, output = snakemake.wildcards, snakemake.config["heads"], snakemake.output
    device = pick_device(heads["device"])  # float rounding only: not a param
    options = ScoreOptions(**snakemake.params.options)
    log.info("scoring the heads of %s on %s (val, %s): %s", wildcards.model, wildcards.dataset, device, options.scores)
    result = score_heads(snakemake.input.units, snakemake.input.classifier, options, heads["batch_size"], device)
    table = with_keys(scores_table(result), model=wildcards.model, dataset=wildcards.dataset, split="val")
    write_table(table, [output.scores])
    save_means(output.means, result)
    log.info("%d heads, %d val samples, %d scores", len(result.heads), result.samples, len(result.scores))

# ResiDual: from raw datasets to the paper's tables and charts.
#   snakemake --cores all                                  (the paper's run, config.yaml)
#   snakemake --cores 2 --configfile configs/demo.yaml     (offline demo)
#   snakemake --profile profiles/slurm                     (cluster)
import os
import sys
from pathlib import Path

from snakemake.utils import min_version

# 9.17 fixed the scheduler's accounting of a job that was the only one ready (snakemake#3913): before
# it, such a job's threads and resources were never taken from what was free, so `--resources gpu=1`
# could start a second GPU job beside it, and `--cores` could be exceeded.
min_version("9.17")

# This process and every job import the `residual` package from this checkout, whether or not
# (and whichever version) it is installed in the environment: one source for both.
SOURCE = str(Path(workflow.basedir) / "src")
sys.path.insert(0, SOURCE)
os.environ.update(PYTHONPATH=os.pathsep.join(filter(None, [SOURCE, os.environ.get("PYTHONPATH")])))


# config.yaml is the default; a --configfile replaces it (instead of being merged into the paper's
# model and dataset lists), while --config key=value still edits whichever config is in use.
if not workflow.overwrite_configfiles:

    configfile: str(Path(workflow.basedir) / "config.yaml")


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/pretrain.smk"
include: "rules/units.smk"
include: "rules/spectral.smk"
include: "rules/descriptions.smk"
include: "rules/alignment.smk"
include: "rules/heads.smk"
include: "rules/finetune.smk"
include: "rules/world.smk"
include: "rules/findings.smk"
include: "rules/report.smk"
include: "rules/charts.smk"
include: "rules/maps.smk"


report: "report/workflow.rst"


rule all:
    default_target: True
    input:
        TABLES,
        CHART_FILES,
        LATEX_FILES,


onsuccess:
    print(tables_message())
    print(charts_message())

# ResiDual: from raw datasets to the paper's tables and charts.
#   snakemake --cores all                                  (the paper's run, config.yaml)
#   snakemake --cores 2 --configfile configs/demo.yaml     (offline demo)
#   snakemake --profile profiles/slurm                     (cluster)
import os
from pathlib import Path

from snakemake.utils import min_version

min_version("9.0")

# Jobs import the `residual` package from this checkout, whether or not it is installed in the
# job's environment (e.g. the conda env of envs/residual.yaml holds only the dependencies).
os.environ.update(PYTHONPATH=os.pathsep.join(filter(None, [str(Path(workflow.basedir) / "src"), os.environ.get("PYTHONPATH")])))


# config.yaml is the default; a --configfile replaces it (instead of being merged into the paper's
# model and dataset lists), while --config key=value still edits whichever config is in use.
if not workflow.overwrite_configfiles:

    configfile: str(Path(workflow.basedir) / "config.yaml")


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/units.smk"
include: "rules/spectral.smk"
include: "rules/alignment.smk"
include: "rules/report.smk"
include: "rules/charts.smk"


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

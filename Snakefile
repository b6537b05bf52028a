# ResiDual: from raw datasets to the paper's tables and charts.
#   snakemake --cores all                                  (the paper's run, config.yaml)
#   snakemake --cores 2 --configfile configs/demo.yaml     (offline demo)
#   snakemake --profile profiles/slurm                     (cluster)
from snakemake.utils import min_version

min_version("9.0")


if not config:

    configfile: "config.yaml"


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/units.smk"
include: "rules/tables.smk"


rule all:
    default_target: True
    input:
        TABLES,


onsuccess:
    print(tables_message())

# The one generated rule of every results table (rules/report.smk) runs its table's script
# (residual.report.outputs), chosen by the job's rule: a script path in the loop that generates
# the rules would be read when the job runs, after the loop, with the last table's.
import runpy
from pathlib import Path

from residual.report.outputs import table_script

runpy.run_path(str(Path(__file__).parent / f"{table_script(snakemake.rule)}.py"), init_globals={"snakemake": snakemake})

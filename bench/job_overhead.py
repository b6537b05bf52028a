"""Seconds of overhead per job: a no-op `snakemake -n`, and what a table or a chart job costs.

Each figure is printed with its ratio to its target (issue 23, item 1): <= 1 meets it.
- `dry_run`: median wall time of `snakemake -n` in --run-dir (a completed demo: "Nothing to be
  done"; an empty folder plans the whole demo, which costs the same Snakefile parse).
- `table_job`, `chart_job`: with --run-dir holding a completed run, the median `s` of its
  benchmark files (benchmarks/tables/*.tsv, benchmarks/charts/*.tsv); otherwise the median time
  a fresh interpreter takes to import what each table / chart script imports, the part of a job
  that does not depend on the data (tables are a few kB).

    PYTHONPATH=$PWD/src python bench/job_overhead.py --run-dir /path/to/completed/demo --name demo
Deliberately imports nothing from `residual`: it measures what importing it costs.
"""

from __future__ import annotations

import argparse
import ast
import csv
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
TARGETS_S = {"dry_run": 3.0, "table_job": 2.0, "chart_job": 5.0}
# The scripts of the table and chart jobs (rules/*.smk): every script that writes a table or a chart.
TABLE_SCRIPTS = sorted(path for path in (ROOT / "workflow_scripts").glob("*table*.py"))
CHART_SCRIPTS = [ROOT / "workflow_scripts" / "chart.py", ROOT / "workflow_scripts" / "map_chart.py"]
HEAVY = ("torch", "torchvision", "open_clip", "timm", "transformers", "altair", "sklearn", "scipy")


def dry_run_seconds(run_dir: Path, configfile: Path, repeats: int) -> list[float]:
    """Wall seconds of each of `repeats` `snakemake -n` runs in run_dir."""
    command = [sys.executable, "-m", "snakemake", "-n", "--quiet", "all", "-s", str(ROOT / "Snakefile")]
    command += ["--configfile", str(configfile), "--directory", str(run_dir)]
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True, env=_env())
        times.append(time.perf_counter() - start)
    return times


def import_seconds(script: Path) -> tuple[float, list[str]]:
    """Seconds a fresh interpreter takes to import the modules `script` imports, and which heavy libraries it loads."""
    modules = sorted(
        {node.module for node in ast.parse(script.read_text()).body if isinstance(node, ast.ImportFrom) and node.module}
        | {alias.name for node in ast.parse(script.read_text()).body if isinstance(node, ast.Import) for alias in node.names}
    )
    probe = (
        "import importlib, sys, time\n"
        "start = time.perf_counter()\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        "print(time.perf_counter() - start)\n"
        f"print(' '.join(name for name in {HEAVY!r} if name in sys.modules))\n"
    )
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True, env=_env()).stdout
    elapsed = time.perf_counter() - start  # interpreter start included: a job pays it too
    return elapsed, out.splitlines()[1].split() if len(out.splitlines()) > 1 else []


def benchmark_seconds(folder: Path) -> list[float]:
    """The `s` column of every benchmark file in folder (Snakemake's `benchmark:` TSV)."""
    seconds = []
    for path in sorted(folder.glob("*.tsv")):
        with path.open() as handle:
            seconds += [float(row["s"]) for row in csv.DictReader(handle, delimiter="\t")]
    return seconds


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", type=Path, default=None, help="a completed run; default an empty folder")
    parser.add_argument("--configfile", type=Path, default=ROOT / "configs" / "demo.yaml")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--name", default="job_overhead", help="writes bench/results/<name>.txt")
    args = parser.parse_args()

    lines = [f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; python {platform.python_version()}"]
    with tempfile.TemporaryDirectory() as empty:
        run_dir = args.run_dir or Path(empty)
        dry = dry_run_seconds(run_dir, args.configfile.resolve(), args.repeats)
    lines.append(
        f"dry_run: snakemake -n in {'the run' if args.run_dir else 'an empty folder'}, {args.repeats} runs: {[round(t, 1) for t in dry]}"
    )
    medians = {"dry_run": statistics.median(dry)}
    completed = args.run_dir is not None and (args.run_dir / "benchmarks" / "tables").is_dir()
    for kind, scripts, folder in (("table_job", TABLE_SCRIPTS, "tables"), ("chart_job", CHART_SCRIPTS, "charts")):
        if completed:
            seconds = benchmark_seconds(args.run_dir / "benchmarks" / folder)
            lines.append(f"{kind}: {len(seconds)} benchmark files of the run")
        else:
            seconds = []
            for script in scripts:
                elapsed, heavy = import_seconds(script)
                seconds.append(elapsed)
                lines.append(f"{kind}: {script.name} imports in {elapsed:.1f} s, loading {' '.join(heavy) or 'no heavy library'}")
        medians[kind] = statistics.median(seconds)
    lines.append("")
    lines += [
        f"{kind:10s} median {medians[kind]:6.2f} s  target {target:.0f} s  ratio {medians[kind] / target:5.2f}"
        for kind, target in TARGETS_S.items()
    ]
    report = "\n".join(lines)
    print(report)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.name}.txt").write_text(report + "\n")


if __name__ == "__main__":
    main()

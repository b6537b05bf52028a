"""Run a config under the paper's and the published code's convention, and tabulate what moves.

    python bench/conventions.py                                   # every convention, tiny config
    python bench/conventions.py --convention ln_constants         # one of residual.report.compare.CONVENTIONS
    python bench/conventions.py --config configs/demo.yaml --cores 2
    python bench/conventions.py --runs RUN_A RUN_B --out diff.csv # two completed run folders

The baseline runs once in a temporary folder with every convention at the paper's value; each
convention then runs in a copy of it with only its key changed, so Snakemake reruns just the jobs
that depend on it. Per convention it writes `<out-dir>/<convention>.{parquet,csv,md}` (every result
and metric: both values and the difference) and, with every convention, the Markdown table of
docs/conventions.md (`--docs`).
"""

from __future__ import annotations

import argparse
import copy
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import polars as pl
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from residual.io.tables import write_table
from residual.report.compare import CONVENTIONS, compare_runs, summarise

# One row per difference between the paper and the authors' code (docs/conventions.md): what each
# side computes, the convention that chooses, and which results it can move.
DIFFERENCES = [
    (
        "Final LayerNorm's constant terms",
        "1/N of beta P - (mu/s) gamma P per unit, N = 1 + L + L H",
        "emb and each MLP 1/(2L+1), each head 1/((2L+1) H)",
        "ln_constants",
        None,
    ),
    (
        "`residual_full` readout",
        "Phi^T diag(lambda) Phi (x - mu)",
        "(x - mu) B^T diag(lambda) B^T (transposed basis, square zero-padded)",
        "published_code",
        "residual_full",
    ),
    (
        "`spectral_adapter`",
        "reweights the PCA basis of the outputs",
        "(x - mu) * lambda in the standard coordinates",
        "published_code",
        "spectral_adapter",
    ),
    (
        "Linear intrinsic dimension",
        "k(0.99) of the unit's PCA on the train split",
        "k(0.99) of the PCA of the TwoNN sample",
        "linear_id_on",
        None,
    ),
    (
        "Head rank in `residual_full`",
        "every component of non-zero variance (d_head + 2)",
        "the first d_head components",
        "head_rank",
        "residual_full",
    ),
]


def with_key(config: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    """A copy of `config` with the dotted `key` set to `value`."""
    changed = copy.deepcopy(config)
    *parents, last = key.split(".")
    section = changed
    for part in parents:
        section = section.setdefault(part, {})
    section[last] = value
    return changed


def run(config: dict[str, Any], folder: Path, cores: int) -> None:
    """The whole config in `folder` (jobs already up to date there are kept)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "conventions_config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    command = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(folder)]
    done = subprocess.run([*command, "--configfile", str(path), "--cores", str(cores), "--quiet"], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"snakemake failed in {folder}:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")


def effect(differences: pl.DataFrame, variant: str | None) -> str:
    """The measured effect in words: per table and metric that changed, how many results and by how much."""
    if variant is not None:
        differences = differences.filter((pl.col("table") != "training") | (pl.col("result") == variant))
    parts = []
    for row in summarise(differences).iter_rows(named=True):
        if row["changed"]:
            parts.append(f"{row['table']}.{row['metric']}: {row['changed']}/{row['results']} changed, largest abs. difference {row['max_abs_difference']:.3g}")
    return "; ".join(parts) or "no result changed"


def docs_table(measured: dict[str, pl.DataFrame], config_name: str) -> str:
    header = "| difference | paper | published code | pipeline default | config key | measured effect (" + config_name + ") |"
    lines = [header, "|---|---|---|---|---|---|"]
    for title, paper, published, name, variant in DIFFERENCES:
        convention = CONVENTIONS[name]
        paper_value, published_value = (yaml.safe_dump(value).split("\n")[0] for value in (convention.paper, convention.published))
        scope = f" ({variant} rows)" if variant else ""
        lines.append(
            f"| {title} | {paper} | {published} | `{paper_value}` | `{convention.key}: {paper_value} \\| {published_value}` "
            f"| {effect(measured[name], variant)}{scope} |"
        )
    return "\n".join(lines) + "\n"


MARKERS = ("<!-- measured: start -->", "<!-- measured: end -->")


def replace_between_markers(path: Path, table: str) -> None:
    """Put `table` between the two MARKERS lines of `path` (the rest of the page is written by hand)."""
    text = path.read_text()
    start, end = text.index(MARKERS[0]) + len(MARKERS[0]), text.index(MARKERS[1])
    path.write_text(text[:start] + "\n" + table + text[end:])


def save(name: str, differences: pl.DataFrame, args: argparse.Namespace, config: dict[str, Any]) -> None:
    """<out-dir>/<name>.{parquet,csv,md}: every result's two values and difference, the summary in the .md."""
    convention = CONVENTIONS[name]
    title = f"{convention.key}: {convention.published} minus {convention.paper} ({args.config.name})"
    outputs = [args.out_dir / f"{name}.{ext}" for ext in ("parquet", "csv", "md")]
    write_table(differences, outputs, title, demo=bool(config.get("demo")), markdown=summarise(differences))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=REPO / "tests/configs/tiny.yaml")
    parser.add_argument("--convention", action="append", choices=sorted(CONVENTIONS), help="default: every one")
    parser.add_argument("--runs", nargs=2, type=Path, metavar=("FIRST", "SECOND"), help="compare two completed run folders instead")
    parser.add_argument("--out", type=Path, help="with --runs: the differences table (.parquet/.csv/.md)")
    parser.add_argument("--out-dir", type=Path, default=REPO / "bench/results/conventions")
    parser.add_argument("--docs", type=Path, help="write the Markdown table of every convention here")
    parser.add_argument("--work-dir", type=Path, help="keep the runs here (default: a temporary folder)")
    parser.add_argument("--cores", type=int, default=1)
    parser.add_argument("--rerender", action="store_true", help="with --docs: rebuild the table from the tables in --out-dir, running nothing")
    args = parser.parse_args()

    config = yaml.safe_load(args.config.read_text())
    if args.rerender:
        measured = {name: pl.read_parquet(args.out_dir / f"{name}.parquet") for name in CONVENTIONS}
        for name, differences in measured.items():
            save(name, differences, args, config)
        replace_between_markers(args.docs, docs_table(measured, args.config.name))
        return

    if args.runs:
        differences = compare_runs(*args.runs)
        write_table(differences, [args.out or args.out_dir / "differences.csv"], f"{args.runs[1]} minus {args.runs[0]}", markdown=summarise(differences))
        print(summarise(differences))
        return

    names = args.convention or list(CONVENTIONS)
    if args.docs and set(names) != set(CONVENTIONS):
        parser.error("--docs needs every convention (leave out --convention)")
    baseline = config
    for convention in CONVENTIONS.values():
        baseline = with_key(baseline, convention.key, convention.paper)
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="conventions-"))
    run(baseline, work / "paper", args.cores)
    measured = {}
    for name in names:
        convention = CONVENTIONS[name]
        folder = work / name
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(work / "paper", folder, symlinks=True)  # copy2 keeps mtimes: only dependent jobs rerun
        run(with_key(baseline, convention.key, convention.published), folder, args.cores)
        measured[name] = compare_runs(work / "paper", folder)
        save(name, measured[name], args, config)
        print(f"{name}: {effect(measured[name], None)}")
    if args.docs:
        replace_between_markers(args.docs, docs_table(measured, args.config.name))
    if not args.work_dir:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()

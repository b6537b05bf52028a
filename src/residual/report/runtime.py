"""What the run cost: wall time and memory of every job, from the benchmark files Snakemake writes
(one TSV per job: s, h:m:s, max_rss, max_vms, max_uss, max_pss, io_in, io_out, mean_load,
cpu_time; seconds and MB), as a table per rule and model (its chart: `residual.report.runtime_charts`)."""

from __future__ import annotations

import glob
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import polars as pl

WILDCARD = re.compile(r"\{(\w+)(?:,[^}]*)?\}")
KEYS = ("model", "dataset", "split", "variant")
NO_MODEL = "(no model)"
MEASURES = {
    "s": "wall_s",
    "cpu_time": "cpu_s",
    "max_rss": "max_rss_mb",
    "max_uss": "max_uss_mb",
    "io_in": "io_in_mb",
    "io_out": "io_out_mb",
    "mean_load": "mean_load_percent",
}


def pattern_regex(pattern: str) -> re.Pattern[str]:
    """A benchmark path pattern ('benchmarks/pca/{model}/{dataset}.tsv') as a regex with a named
    group per wildcard (one path component each)."""
    parts, last = [], 0
    for match in WILDCARD.finditer(pattern):
        parts += [re.escape(pattern[last : match.start()]), f"(?P<{match.group(1)}>[^/]+)"]
        last = match.end()
    return re.compile("".join([*parts, re.escape(pattern[last:])]) + "$")


def benchmark_jobs(patterns: Mapping[str, str], root: str | Path = ".") -> list[tuple[str, dict[str, str], Path]]:
    """(rule, wildcards, path) of every benchmark file under `root` that one of the rules'
    `patterns` (rule -> benchmark path pattern, relative to `root`) writes, sorted by path."""
    root = Path(root)
    jobs = []
    for rule, pattern in patterns.items():
        regex = pattern_regex(pattern)
        for path in sorted(glob.glob(WILDCARD.sub("*", pattern), root_dir=root)):
            if (match := regex.match(path)) is not None:
                jobs.append((rule, match.groupdict(), root / path))
    return sorted(jobs, key=lambda job: str(job[2]))


def runtime_table(
    patterns: Mapping[str, str], run: Mapping[str, Sequence[str]], root: str | Path = "."
) -> pl.DataFrame:
    """One row per job (and repeat) of the rules' benchmark files under `root`: rule, model,
    dataset, split, variant (null where the rule has no such wildcard), the job's wildcards, and
    wall time, CPU time (s), peak resident and unique memory, I/O (MB) and mean CPU load (%).
    Jobs whose model, dataset or variant is not in `run` (left by an earlier config) are left out."""
    frames = []
    for rule, wildcards, path in benchmark_jobs(patterns, root):
        if any(key in run and value not in run[key] for key, value in wildcards.items()):
            continue
        measures = pl.read_csv(path, separator="\t", null_values=["NA", "-"], infer_schema_length=None)
        frames.append(
            measures.select(
                pl.lit(rule).alias("rule"),
                *(pl.lit(wildcards.get(key), dtype=pl.String).alias(key) for key in KEYS),
                pl.lit(", ".join(f"{key}={value}" for key, value in wildcards.items())).alias("wildcards"),
                pl.int_range(pl.len(), dtype=pl.Int32).alias("repeat"),
                *(pl.col(column).cast(pl.Float64).alias(name) for column, name in MEASURES.items() if column in measures.columns),
            )
        )
    if not frames:
        raise FileNotFoundError(f"no benchmark file of any rule under {Path(root).resolve()}: has the workflow run?")
    return pl.concat(frames, how="diagonal_relaxed")


def runtime_summary(table: pl.DataFrame) -> pl.DataFrame:
    """Per rule and model: jobs, total and longest wall time, total CPU time (s), peak memory (MB)."""
    return (
        table.with_columns(pl.col("model").fill_null(NO_MODEL))
        .group_by("rule", "model", maintain_order=True)
        .agg(
            pl.len().alias("jobs"),
            pl.col("wall_s").sum().alias("total_wall_s"),
            pl.col("wall_s").max().alias("longest_wall_s"),
            pl.col("cpu_s").sum().alias("total_cpu_s"),
            pl.col("max_rss_mb").max().alias("peak_rss_mb"),
        )
        .sort("total_wall_s", descending=True)
    )

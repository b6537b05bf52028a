"""How the tests run the workflow: the Snakemake command, its job-count table, the tiny config,
and copies of a completed run (so that a case needing one changed setting starts from it)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "tests/configs/tiny.yaml"


def tiny_config() -> dict[str, Any]:
    """A fresh copy of the tiny config (callers change it)."""
    return yaml.safe_load(TINY.read_text())


def command(workdir: Path, *args: str, configfiles: Sequence[Path] = (), checkout: Path = REPO) -> list[str]:
    """The Snakemake command line with the Snakefile of `checkout`, run in `workdir`. `--configfile`
    takes every word after it, so it comes last."""
    files = ["--configfile", *map(str, configfiles)] if configfiles else []
    return [sys.executable, "-m", "snakemake", "-s", str(checkout / "Snakefile"), "--directory", str(workdir), *args, *files]


def write_config(workdir: Path, config: Mapping[str, Any]) -> Path:
    """`config` as workdir/config.yaml."""
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(dict(config), sort_keys=False))
    return path


def snakemake(
    workdir: Path,
    *args: str,
    config: Mapping[str, Any] | None = None,
    configfiles: Sequence[Path] = (),
    checkout: Path = REPO,
    env: Mapping[str, str] | None = None,
    timeout: float = 1200,
) -> subprocess.CompletedProcess:
    """Run `command` to its end (text stdout and stderr). `config` is written to workdir/config.yaml and
    read after `configfiles`; with neither, Snakemake reads the checkout's config.yaml."""
    files = [*configfiles, *([write_config(workdir, config)] if config is not None else [])]
    return subprocess.run(command(workdir, *args, configfiles=files, checkout=checkout), capture_output=True, text=True, timeout=timeout, cwd=workdir, env=env)


def job_counts(output: str) -> dict[str, int]:
    """Jobs per rule from the table Snakemake prints before it runs or plans ("job  count" ... "total")."""
    header = re.search(r"^job\s+count\s*$", output, re.M)
    assert header is not None, output[-3000:]
    table = output[header.start() :].split("\n\n")[0]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M) if m.group(1) != "total"}


def planned(workdir: Path, config: Mapping[str, Any], scratch: Path, targets: Sequence[str] = (), checkout: Path = REPO) -> dict[str, int]:
    """Jobs per rule that `snakemake -n` plans for `targets` (default: `all`) in `workdir` under `config`
    (written to `scratch`), with the Snakefile of `checkout`; {} when nothing is to be done."""
    configfile = write_config(scratch, config)
    # Targets first: `--quiet` takes every word after it that is one of its choices, and rejects the rest.
    run = snakemake(workdir, *targets, "--nolock", "-n", "--quiet", "rules", configfiles=[configfile], checkout=checkout, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    if "Nothing to be done" in run.stdout + run.stderr:
        return {}
    return job_counts(run.stdout)


def copy_run(completed: Path, destination: Path) -> Path:
    """A copy of a completed run folder (results, logs, Snakemake's records) with its files' times,
    which Snakemake compares: the copy plans exactly what the original would."""
    shutil.copytree(completed, destination, symlinks=True, dirs_exist_ok=True)
    return destination

"""The paper's claims on the planted-attribute world, end to end: the pipeline trains its own small
CLIP (tests/configs/world.yaml), runs every stage, and its findings are checked against the truth.

Only the claims that held on three seeds of the world (42, 43, 44; values in the README's demo
section) are asserted, with the margins fixed before the runs: zero-shot above chance on every
attribute task; on the colour task the top U|T head reads colour best; top-5% U|T beats the mean of
the random selections on at least 3 of the 4 tasks; ResiDual at or above zero-shot. Position is
not learned within the pretraining budget (zero-shot 0.257 against chance 0.25 on seed 42): the
two claims that need it are asserted on the other tasks, and the findings table reports it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
from conftest import REPO

pytestmark = pytest.mark.slow

CONFIG = REPO / "tests/configs/world.yaml"
UNLEARNED = "world_position"  # at chance after pretraining within the budget (see the module docstring)
TASKS = {"world_shape": "shape", "world_colour": "colour", "world_background": "background", "world_position": "position"}


@pytest.fixture(scope="module")
def world_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    workdir = tmp_path_factory.mktemp("world_run")
    command = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(workdir)]
    run = subprocess.run(
        [*command, "--configfile", str(CONFIG), "--cores", "2", "results/tables/findings.md", "results/charts/head_attributes.png"],
        capture_output=True,
        text=True,
        timeout=1800,
        cwd=workdir,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return workdir


def table(workdir: Path, kind: str) -> pl.DataFrame:
    return pl.read_parquet(workdir / f"results/tables/{kind}.parquet")


def test_the_pretrain_rule_logs_progress_and_its_checkpoint_is_the_model(world_run: Path) -> None:
    log = (world_run / "logs/pretrain/world_clip.log").read_text()
    assert "epoch 3/3" in log and "samples/s" in log
    assert (world_run / "results/pretrain/world_clip.safetensors").is_file()


def test_zero_shot_is_above_chance_on_every_attribute_task(world_run: Path) -> None:
    zeroshot = table(world_run, "zeroshot").filter(pl.col("split") == "test")
    assert set(zeroshot["dataset"]) == set(TASKS)
    for row in zeroshot.filter(pl.col("dataset") != UNLEARNED).iter_rows(named=True):
        assert row["accuracy_embedding"] > 1.2 / row["classes"], row


def test_the_top_task_conditioned_head_reads_its_task_attribute(world_run: Path) -> None:
    probes = table(world_run, "probes").filter(pl.col("component").is_null() & pl.col("head").is_not_null())
    margins = probes.with_columns(((pl.col("balanced_accuracy") - pl.col("chance")) / (1 - pl.col("chance"))).alias("margin"))
    best = margins.sort("margin", descending=True).group_by("unit", maintain_order=True).first()
    best_attribute = dict(zip(best["unit"], best["attribute"]))
    scores = table(world_run, "head_scores").filter((pl.col("score") == "task_conditioned") & (pl.col("rank") == 1))
    top = dict(zip(scores["dataset"], scores["unit"]))
    assert best_attribute[top["world_colour"]] == "colour"


def test_task_conditioned_selection_beats_random_on_most_tasks(world_run: Path) -> None:
    selection = table(world_run, "head_selection").filter((pl.col("selection") == "5%") & (pl.col("ablation") == "zero"))
    wins = 0
    for dataset in TASKS:
        rows = selection.filter(pl.col("dataset") == dataset)
        chosen = rows.filter(pl.col("score") == "task_conditioned")["accuracy"].item()
        random = rows.filter(pl.col("score") == "random")["accuracy"].mean()
        wins += chosen > random
    assert wins >= 3


def test_residual_is_at_least_zero_shot(world_run: Path) -> None:
    training = table(world_run, "training")
    for dataset in set(TASKS) - {UNLEARNED}:
        rows = training.filter(pl.col("dataset") == dataset)
        base = rows.filter(pl.col("variant") == "base")["test_accuracy"].item()
        assert rows.filter(pl.col("variant") == "residual_fine")["test_accuracy"].item() >= base - 0.01, dataset


def test_the_findings_table_states_every_claim(world_run: Path) -> None:
    findings = table(world_run, "findings")
    assert findings.height >= 10
    markdown = (world_run / "results/tables/findings.md").read_text()
    assert "not the paper's" in markdown
    assert (world_run / "results/charts/head_attributes.png").stat().st_size > 1000

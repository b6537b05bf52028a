"""The paper's claims on the planted-attribute world, end to end: the pipeline trains its own small
CLIP (tests/configs/world.yaml), runs every stage, and its findings are checked against the truth.

Only the claims that held on all three seeds of the world we ran (42, 43, 44), with margins fixed
before the runs, are asserted: zero-shot above chance on the colour task (test accuracy 0.943, 1.0,
0.993 against 1.2 / 6 = 0.2); the colour task's top U|T head reads colour best; top-5% U|T beats the
mean of the random selections on colour (0.687, 0.92, 0.783 against 0.369, 0.715, 0.395); ResiDual*
at or above zero-shot (within 0.01) on every task the model learned. What the pretraining budget does
not teach reliably is reported by the findings table, not asserted: position stays at chance (0.257,
0.267, 0.26 against 0.25); shape (0.30, 0.263, 0.167) and background (0.69, 0.25, 0.52) are learned
on some seeds only, and so top-5% U|T beats random on 4, 1 and 4 of the 4 tasks.
"""

from __future__ import annotations

import copy
from pathlib import Path

import polars as pl
import pytest
import yaml
from conftest import REPO
from snakemake_runs import planned, snakemake

pytestmark = pytest.mark.slow

CONFIG = REPO / "tests/configs/world.yaml"
TARGETS = ("results/tables/findings.md", "results/charts/head_attributes.png")
UNLEARNED = "world_position"  # at chance after pretraining within the budget (see the module docstring)
LEARNED = "world_colour"  # above chance on every seed
TASKS = {"world_shape": "shape", "world_colour": "colour", "world_background": "background", "world_position": "position"}


@pytest.fixture(scope="module")
def world_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    workdir = tmp_path_factory.mktemp("world_run")
    run = snakemake(workdir, "--cores", "2", *TARGETS, configfiles=[CONFIG], timeout=1800)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return workdir


def table(workdir: Path, kind: str) -> pl.DataFrame:
    return pl.read_parquet(workdir / f"results/tables/{kind}.parquet")


def test_the_pretrain_rule_logs_progress_and_its_checkpoint_is_the_model(world_run: Path) -> None:
    log = (world_run / "logs/pretrain/world_clip.log").read_text()
    assert "epoch 3/3" in log and "samples/s" in log
    assert (world_run / "results/pretrain/world_clip.safetensors").is_file()


def test_zero_shot_is_above_chance_on_the_colour_task(world_run: Path) -> None:
    zeroshot = table(world_run, "zeroshot").filter(pl.col("split") == "test")
    assert set(zeroshot["dataset"]) == set(TASKS)
    colour = zeroshot.filter(pl.col("dataset") == LEARNED).row(0, named=True)
    assert colour["accuracy_embedding"] > 1.2 / colour["classes"], colour


def test_the_top_task_conditioned_head_reads_its_task_attribute(world_run: Path) -> None:
    probes = table(world_run, "probes").filter(pl.col("component").is_null() & pl.col("head").is_not_null())
    margins = probes.with_columns(((pl.col("balanced_accuracy") - pl.col("chance")) / (1 - pl.col("chance"))).alias("margin"))
    best = margins.sort("margin", descending=True).group_by("unit", maintain_order=True).first()
    best_attribute = dict(zip(best["unit"], best["attribute"]))
    scores = table(world_run, "head_scores").filter((pl.col("score") == "task_conditioned") & (pl.col("rank") == 1))
    top = dict(zip(scores["dataset"], scores["unit"]))
    assert best_attribute[top[LEARNED]] == "colour"


def test_task_conditioned_selection_beats_random_on_the_colour_task(world_run: Path) -> None:
    selection = table(world_run, "head_selection").filter((pl.col("selection") == "5%") & (pl.col("ablation") == "zero"))
    rows = selection.filter(pl.col("dataset") == LEARNED)
    chosen = rows.filter(pl.col("score") == "task_conditioned")["accuracy"].item()
    assert chosen > rows.filter(pl.col("score") == "random")["accuracy"].mean()


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


def test_probe_and_pretraining_settings_rerun_exactly_what_depends_on_them(world_run: Path, tmp_path: Path) -> None:
    world = yaml.safe_load(CONFIG.read_text())
    probes = copy.deepcopy(world) | {"probes": {"shrinkage": 0.1}}
    placement = copy.deepcopy(world) | {"pretraining": {"device": "auto", "threads": 1, "gpus": 1, "mem_mb": 3000}, "probes": {"group_size": 3}}
    retrain = copy.deepcopy(world)
    retrain["models"]["world_clip"]["pretrain"]["lr"] = 0.001
    plans = {}
    for name, config in {"probes": probes, "placement": placement, "retrain": retrain}.items():
        (tmp_path / name).mkdir()
        plans[name] = planned(world_run, config, tmp_path / name, TARGETS)
    assert plans["probes"] == {"probes": 4, "probes_table": 1, "chart_head_attributes": 1, "findings_table": 1}
    assert plans["placement"] == {}
    # New weights: every job from the checkpoint on, none of the data's.
    assert plans["retrain"]["pretrain"] == 1 and plans["retrain"]["probes"] == 4 and plans["retrain"]["findings_table"] == 1
    assert "split" not in plans["retrain"]

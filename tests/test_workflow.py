"""The Snakemake workflow: the paper's and the demo's DAGs, and one end-to-end run (`make lint`, which CI
runs, lints the workflow on every shipped config)."""

from __future__ import annotations

import re
from pathlib import Path

import polars as pl
import torch
from conftest import REPO
from snakemake_runs import TINY, job_counts, snakemake

from residual import read_units
from residual.report.outputs import RunShape, output_jobs, table_kinds


def test_paper_dag_plans_without_network(paper_plan: str) -> None:
    """config.yaml: 5 ViT-L models x 14 datasets x 3 splits, 13 datasets with files to fetch or check,
    11 task datasets x 6 variants trained on units and fine-tuned, 13 datasets compared with ImageNet,
    TwoNN on ImageNet, 11 task datasets with zero-shot rows (val, test), head scores and head selections."""
    assert job_counts(paper_plan) == {
        "download": 13,
        "split": 14,
        "unit_map": 5,
        "encode": 5 * 14 * 3,
        "pca": 5 * 14,
        "intrinsic_dimension": 5,
        "similarity": 5 * 13,
        "classifier": 5 * 11,
        "train": 5 * 11 * 6,
        "description_texts": 1,
        "encode_descriptions": 3,  # CLIP, OpenCLIP, BLIP: the models with a text tower
        "describe_units": 3,
        "finetune": 5 * 11,
        "zeroshot": 5 * 11 * 2,
        "head_scores": 5 * 11,
        "head_selection": 5 * 11,
        "head_maps": 5 * 11,  # and their pictures, one per model x task dataset
        "chart_head_maps": 5 * 11,
        # One job per table, chart and LaTeX table the run has (residual.report.outputs).
        **output_jobs(table_kinds(RunShape(datasets=14, tasks=11, variants=7, world_tasks=0))),
        "all": 1,
    }


def test_paper_dag_with_appendix_models(tmp_path) -> None:
    """The README's command: no --configfile (config.yaml is the default), one key changed with --config."""
    run = snakemake(tmp_path, "--config", "appendix_models=True", "-n", "--quiet", "rules")
    assert run.returncode == 0, run.stderr
    assert job_counts(run.stdout)["encode"] == 8 * 14 * 3  # and the authors' Hugging Face CLIP L/14-336


def test_demo_dag(tmp_path) -> None:
    """The demo: one CLIP pretrained by the pipeline, the world (reference) with 4 attribute tasks, and random."""
    run = snakemake(tmp_path, "-n", "--quiet", "rules", configfiles=[REPO / "configs/demo.yaml"])
    assert run.returncode == 0, run.stderr
    tasks, datasets = 4, 6
    outputs = output_jobs(table_kinds(RunShape(datasets=datasets, tasks=tasks, variants=7, world_tasks=tasks)))
    assert job_counts(run.stdout) == {
        "pretrain": 1, "split": datasets, "unit_map": 1, "encode": 3 * datasets, "pca": datasets, "intrinsic_dimension": 1,
        "similarity": datasets - 1, "classifier": tasks, "train": 6 * tasks, "finetune": tasks, "zeroshot": 2 * tasks,
        "head_scores": tasks, "head_selection": tasks, "probes": tasks, "head_halves": tasks, "head_maps": tasks, "chart_head_maps": tasks,
        "description_texts": 1, "encode_descriptions": 1, "describe_units": 1,
        **outputs, "all": 1,
    }  # fmt: skip


def test_tiny_config_end_to_end(tiny_run: tuple[Path, str]) -> None:
    tmp_path, output = tiny_run
    assert "results/tables/decomposition.md" in output

    table = pl.read_parquet(tmp_path / "results/tables/decomposition.parquet")
    assert table.height == 2 * 2 * 3
    assert set(table["model"]) == {"clip_tiny", "dino_tiny"}
    assert table["max_rel_error"].max() <= 1e-4
    assert table["readback_rel_error"].max() <= 1e-3
    assert table.filter(pl.col("dataset") == "digits")["samples"].sum() == 300
    markdown = (tmp_path / "results/tables/decomposition.md").read_text()
    assert "not the paper's" in markdown

    units = read_units(tmp_path / "results/units/dino_tiny/random/train.parquet")
    assert units.values.shape[1] == 1 + 2 + 2 * 3
    error = (units.values.sum(dim=1) - units.embedding).abs().max() / units.embedding.abs().max()
    assert float(error) <= 2e-3
    splits = pl.read_parquet(tmp_path / "results/splits/random.parquet")
    assert torch.equal(units.sample_ids, torch.tensor(splits.filter(pl.col("split") == "train")["sample_id"].to_list()))

    identity = ["run", "model", "dataset", "split", "unit", "kind", "layer", "head"]
    dimensions = pl.read_parquet(tmp_path / "results/tables/intrinsic_dimension.parquet")
    assert dimensions.columns[: len(identity)] == identity
    assert dimensions.height == 2 * (1 + 2 + 2 * 4 + 1) + 2 * (1 + 2 + 2 * 3 + 1)  # units and output, 2 datasets
    assert dimensions["twonn_id"].null_count() == 0 and (dimensions["linear_id"] >= 1).all()
    similarity = pl.read_parquet(tmp_path / "results/tables/similarity.parquet")
    assert set(similarity["reference"]) == {"digits"} and set(similarity["dataset"]) == {"random"}
    assert similarity["similarity"].is_between(0, 1 + 1e-6).all()

    training = pl.read_parquet(tmp_path / "results/tables/training.parquet")
    assert training.height == 2 * 7 and set(training["classifier"]) == {"text", "class_means"}
    assert training.filter(pl.col("variant") == "base")["trainable_parameters"].to_list() == [0, 0]
    assert training["test_accuracy"].is_between(0, 1).all() and (training["epochs_run"] <= 3).all()
    assert not list((tmp_path / "results/train").rglob(".*.resume.safetensors")), "finished runs leave no checkpoint"
    summary = (tmp_path / "results/tables/training.md").read_text()
    assert "not the paper's" in summary and "residual_fine" in summary
    main = pl.read_parquet(tmp_path / "results/tables/main.parquet")
    assert main.filter(pl.col("row") == "dataset").height == 2 and {"finetune", "finetune_params", "base_of_finetune"} <= set(main.columns)
    assert (tmp_path / "results/tables/main.tex").read_text().startswith(r"\documentclass")

    zeroshot = pl.read_parquet(tmp_path / "results/tables/zeroshot.parquet")
    assert zeroshot.height == 2 * 2 and set(zeroshot["split"]) == {"val", "test"}
    assert zeroshot["agreement"].is_between(0, 1).all() and (tmp_path / "results/tables/zeroshot.tex").exists()
    selection = pl.read_parquet(tmp_path / "results/tables/head_selection.parquet")
    units = selection.filter(pl.col("score") == "all_units").join(zeroshot.filter(pl.col("split") == "test"), on=["model", "dataset"])
    assert units.height == 2 and (units["accuracy"] == units["accuracy_units"]).all()
    assert pl.read_parquet(tmp_path / "results/tables/head_overlap.parquet")["jaccard"].eq(1.0).all()  # one task dataset
    assert r"U\|T" in (tmp_path / "results/tables/head_selection.md").read_text()  # a Markdown cell escapes its |
    descriptions = pl.read_parquet(tmp_path / "results/tables/descriptions.parquet")
    described = descriptions.filter(pl.col("note").is_null())
    assert set(described["model"]) == {"clip_tiny"} and described["unit"].n_unique() == 2 * 4  # both layers' heads
    assert descriptions.filter(pl.col("model") == "dino_tiny")["note"].str.contains("no text tower").all()

    again = snakemake(tmp_path, "--cores", "2", "-n", configfiles=[TINY])
    assert "Nothing to be done" in again.stdout + again.stderr


def test_conda_env_lists_the_package_dependencies() -> None:
    """envs/residual.yaml (for `--software-deployment-method conda`) must not drift from pyproject.toml:
    the runtime dependencies and the cluster extra (so that the env can also run Snakemake on a cluster)."""
    import tomllib
    import yaml

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    # The env has Python 3.11, so the cluster extra's marker holds there.
    cluster = [requirement.split(";")[0].strip() for requirement in project["optional-dependencies"]["cluster"]]
    declared = project["dependencies"] + cluster
    environment = yaml.safe_load((REPO / "envs/residual.yaml").read_text())
    pip = next(entry["pip"] for entry in environment["dependencies"] if isinstance(entry, dict))
    assert sorted(pip) == sorted(declared)


def test_slurm_profile_sends_every_gpu_rule_to_the_gpu_partition() -> None:
    """A rule asking for the `gpu` resource on the cpu partition would wait forever or fail."""
    import yaml

    rules = {}
    for path in (REPO / "rules").glob("*.smk"):
        for block in re.split(r"^rule ", path.read_text(), flags=re.M)[1:]:
            rules[block.split(":", 1)[0]] = re.search(r"^\s+gpu=", block, re.M) is not None
    profile = yaml.safe_load((REPO / "profiles/slurm/config.yaml").read_text())
    on_gpu = {rule for rule, resources in profile["set-resources"].items() if resources.get("slurm_partition") == "gpu"}
    assert on_gpu == {rule for rule, uses_gpu in rules.items() if uses_gpu}


def test_gpu_jobs_run_one_at_a_time_under_resources_gpu_1(tmp_path: Path) -> None:
    """The README's `--resources gpu=1`, as the installed Snakemake schedules it. Before Snakemake 9.17
    (snakemake#3913), a job that was the only one ready was started without taking its threads and
    resources from what was free, so a second job could start beside it: here `on_gpu` for 1 starts
    alone, and `on_gpu` for 2 becomes ready while it runs."""
    (tmp_path / "Snakefile").write_text(
        "rule all:\n"
        "    input: 'done1', 'done2'\n"
        "rule ready:\n"
        "    output: 'ready{n}'\n"
        "    shell: 'sleep {wildcards.n}; touch {output}'\n"
        "rule on_gpu:\n"
        "    input: 'ready{n}'\n"
        "    output: 'done{n}'\n"
        "    resources: gpu=1\n"
        "    shell: 'date +%s.%N > {output}; sleep 2; date +%s.%N >> {output}'\n"
    )
    run = snakemake(tmp_path, "--cores", "2", "--resources", "gpu=1", checkout=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    (start_1, end_1), (start_2, end_2) = ([float(line) for line in (tmp_path / f"done{n}").read_text().split()] for n in (1, 2))
    assert end_1 <= start_2 or end_2 <= start_1, f"on_gpu ran from {start_1} to {end_1} and from {start_2} to {end_2}"

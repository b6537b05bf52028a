"""Nothing silent, nothing unsafe: the failures a new user found, each replayed.

Every trial ends in an error naming the key or file (one line where the issue asks for one), or in
the documented behaviour; none runs code from a checkpoint.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import subprocess
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import polars as pl
import pytest
import torch
from conftest import TINY_DINOV2, TINY_OPEN_CLIP
from snakemake_runs import TINY, snakemake, tiny_config

from residual.config.errors import ConfigError
from residual.config.preflight import PreflightError, check_config
from residual.config.validate import read_yaml, validate_config
from residual.data.sequences import DatasetError
from residual.data.sources import load_source
from residual.data.splits import split_table
from residual.io.atomic import WriteError, atomic_path
from residual.io.tables import to_markdown
from residual.models.loaded import ModelSpecError, load_model
from residual.report.tables import flag_few_samples
from residual.runtime.workflow import rule_context


@pytest.fixture(scope="module")
def tiny_plan(tmp_path_factory: pytest.TempPathFactory) -> subprocess.CompletedProcess:
    """`snakemake -n` of the tiny config from scratch (every job with its inputs), with a `residual`
    package earlier on the path (another installed version) that fails when imported."""
    workdir = tmp_path_factory.mktemp("tiny_plan")
    impostor = workdir / "site/residual"
    impostor.mkdir(parents=True)
    (impostor / "__init__.py").write_text("raise ImportError('the installed residual was imported, not the checkout')\n")
    return snakemake(workdir, "-n", configfiles=[TINY], env={**os.environ, "PYTHONPATH": str(workdir / "site")}, timeout=600)


class _Planted:
    """Unpickling this runs code: it creates the file `path`."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.path,))


# 1. No config value may weaken safe loading ------------------------------------------------------


@pytest.mark.parametrize("kwargs", [{"weights_only": False}, {"jit": True}, {"pretrained_cfg_overlay": {"file": "x.pth"}}])
def test_kwargs_that_change_how_weights_load_are_refused(tmp_path: Path, kwargs: dict[str, Any]) -> None:
    planted = tmp_path / "planted"
    checkpoint = tmp_path / "evil.pt"
    torch.save({"weights": _Planted(planted)}, checkpoint)
    spec = {**TINY_OPEN_CLIP, "pretrained": str(checkpoint), "kwargs": {**TINY_OPEN_CLIP["kwargs"], **kwargs}}
    key = next(iter(kwargs))
    with pytest.raises(ModelSpecError, match=rf"`kwargs` may not change how weights are loaded \({key}"):
        load_model(spec, name="clip_tiny", device="cpu")
    config = tiny_config()
    config["models"] = {"clip_tiny": spec}
    with pytest.raises(PreflightError, match=rf"models\.clip_tiny\.kwargs\.{key}"):
        check_config(validate_config(config))
    assert not planted.exists()


@pytest.mark.parametrize("spec", [TINY_OPEN_CLIP, TINY_DINOV2], ids=["open_clip", "timm"])
def test_a_pickled_checkpoint_is_refused_without_running_it(tmp_path: Path, spec: dict[str, Any]) -> None:
    planted = tmp_path / "planted"
    checkpoint = tmp_path / "evil.pt"
    torch.save({"weights": _Planted(planted)}, checkpoint)
    with pytest.raises(ModelSpecError, match=re.escape(str(checkpoint))):
        load_model({**spec, "pretrained": str(checkpoint)}, name="tiny", device="cpu")
    assert not planted.exists()


# 2. Duplicate keys ------------------------------------------------------------------------------


def test_duplicate_config_keys_are_refused_with_their_lines(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(TINY.read_text() + "encode:\n  threads: 3\n")
    first = 1 + TINY.read_text().splitlines().index("encode:")
    last = len(path.read_text().splitlines()) - 1
    with pytest.raises(ConfigError, match=rf"{path}: key 'encode' is given twice \(lines {first} and {last}\); keep one"):
        read_yaml(path)
    run = snakemake(tmp_path, "-n", configfiles=[path], timeout=600)
    assert run.returncode != 0
    assert f"key 'encode' is given twice (lines {first} and {last})" in run.stdout + run.stderr


def test_binary_and_malformed_config_files_name_the_file(tmp_path: Path) -> None:
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(bytes(range(128, 256)))
    with pytest.raises(ConfigError, match=rf"config file {binary} is not a UTF-8 text file"):
        read_yaml(binary)
    malformed = tmp_path / "malformed.yaml"
    malformed.write_text("models: [unclosed\n")
    with pytest.raises(ConfigError, match=rf"config file {malformed} is not valid YAML: .*line"):
        read_yaml(malformed)


# 3. Every file a job reads is an input -------------------------------------------------------------


def test_every_job_that_reads_a_unit_file_declares_its_unit_map(tiny_plan: subprocess.CompletedProcess) -> None:
    """Planned from scratch, every job's inputs are printed: a job reading units of a model also
    reads (and so declares) that model's unit map, which turns them into output space. The
    decomposition table reads the files' metadata only."""
    run = tiny_plan
    assert run.returncode == 0, run.stderr[-2000:]
    checked = set()
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", run.stdout):
        rule = re.match(r"(?:local)?rule (\w+):", block)
        inputs = re.search(r"^\s+input: (.*)$", block, re.M)
        if rule is None or inputs is None or rule.group(1) == "decomposition_table":
            continue
        files = [name.strip() for name in inputs.group(1).split(",")]
        for model in {match.group(1) for name in files if (match := re.match(r"results/units/([^/]+)/[^/]+/\w+\.parquet$", name))}:
            assert f"results/units/{model}/unit_map.safetensors" in files, block
            checked.add(rule.group(1))
    assert {"pca", "intrinsic_dimension", "classifier", "train"} <= checked


# 4. Degenerate data give errors or flags, not numbers ----------------------------------------------


def test_splits_too_small_to_mean_anything_stop_at_the_split(tmp_path: Path) -> None:
    source = load_source("digits", {"loader": "digits"})
    with pytest.raises(DatasetError, match=r"dataset 'digits': split 'val' holds \d samples, fewer than its 10 classes"):
        split_table(source, {"rule": "resplit", "val": 0.1, "test": 0.1, "subset": 60}, seed=42, dataset="digits")
    with pytest.raises(DatasetError, match=r"dataset 'digits': split 'val' holds 15 samples, fewer than 20 \(split sizes"):
        split_table(source, {"rule": "resplit", "val": 0.1, "test": 0.1, "subset": 150, "min_samples": 20}, seed=42, dataset="digits")
    table = split_table(source, {"rule": "resplit", "val": 0.1, "test": 0.1, "subset": 150}, seed=42, dataset="digits")
    assert dict(table.group_by("split").len().iter_rows()) == {"train": 120, "val": 15, "test": 15}


def test_a_task_with_one_class_is_refused() -> None:
    from residual.alignment.classifier import build_classifier
    from residual.alignment.options import ClassifierSpec

    spec = ClassifierSpec({"loader": "random", "size": 30}, None, "plain")
    with pytest.raises(DatasetError, match=r"dataset 'random' is a task with 1 class .*set its `role: analysis`"):
        build_classifier("dino_tiny", "random", spec, train_units="unused.parquet")


def test_rows_on_few_samples_are_flagged() -> None:
    table = pl.DataFrame({"val_samples": [15, 2000], "test_samples": [15, 99]})
    assert flag_few_samples(table, 100)["few_samples"].to_list() == [True, True]
    assert flag_few_samples(table, 15)["few_samples"].to_list() == [False, False]


# 5. Errors that name their key ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: c["encode"].update(batch_size=16.0), r"at `encode\.batch_size`: 16\.0 is not of type 'integer'"),
        (lambda c: c["training"].update(device="cdua"), r"at `training\.device`: 'cdua' does not match"),
        (lambda c: c["models"]["dino_tiny"]["kwargs"].update(depth=0), r"models\.dino_tiny\.kwargs: 0 blocks"),
        (lambda c: c["models"]["clip_tiny"]["kwargs"]["vision_cfg"].update(layers=0), r"models\.clip_tiny\.kwargs: 0 blocks"),
        (lambda c: c["datasets"]["digits"].update(root="data/digits"), r"datasets\.digits\.root: loader 'digits' reads no files"),
    ],
    ids=["float batch size", "misspelt device", "timm depth 0", "open_clip layers 0", "root of a generated dataset"],
)
def test_config_mistakes_name_the_key_and_value(change: Any, message: str) -> None:
    config = tiny_config()
    change(config)
    with pytest.raises(ConfigError, match=message):
        check_config(validate_config(config))


def test_a_model_without_blocks_is_refused_when_built() -> None:
    with pytest.raises(ModelSpecError, match="model 'dino_tiny': its vision tower has no blocks"):
        load_model({**TINY_DINOV2, "kwargs": {**TINY_DINOV2["kwargs"], "depth": 0}}, name="dino_tiny", device="cpu")


# 6. A full disk or a read-only folder: one line naming the path, the cause and what to do ------------


@pytest.mark.parametrize(
    ("error", "cause"),
    [
        (OSError(errno.ENOSPC, "No space left on device"), "the disk is full"),
        (OSError("Error writing bytes to file. Detail: [errno 28] No space left on device"), "the disk is full"),  # pyarrow's
        (OSError(errno.EROFS, "Read-only file system"), "the file system is read-only"),
    ],
)
def test_write_failures_are_one_line_naming_the_path(tmp_path: Path, error: OSError, cause: str) -> None:
    target = tmp_path / "results/table.parquet"
    target.parent.mkdir()
    target.write_text("earlier result")
    with pytest.raises(WriteError) as raised:
        with atomic_path(target) as tmp:
            tmp.write_text("partial")
            raise error
    message = str(raised.value)
    assert "\n" not in message and message.startswith(f"cannot write {target}: {cause}") and message.endswith("then rerun")
    assert target.read_text() == "earlier result" and list(target.parent.iterdir()) == [target]


def test_rule_context_reports_a_write_failure_in_one_line(tmp_path: Path) -> None:
    job = SimpleNamespace(threads=1, log=[str(tmp_path / "job.log")], rule="pca")
    with pytest.raises(SystemExit) as exited:
        with rule_context(job):
            raise WriteError(f"cannot write {tmp_path}/x: the disk is full; free space, then rerun")
    assert str(exited.value) == f"cannot write {tmp_path}/x: the disk is full; free space, then rerun"
    assert "rule pca failed: cannot write" in (tmp_path / "job.log").read_text()
    logging.getLogger().handlers.clear()  # rule_context configured logging into the job's log


# 7. One source of the package ---------------------------------------------------------------------


def test_the_workflow_imports_this_checkout_whatever_is_installed(tiny_plan: subprocess.CompletedProcess) -> None:
    """A `residual` package earlier on the path (another installed version) is not the one used."""
    assert tiny_plan.returncode == 0, tiny_plan.stdout[-2000:] + tiny_plan.stderr[-2000:]


# 8. Markdown tables ------------------------------------------------------------------------------


def test_markdown_cells_with_pipes_and_newlines_stay_in_their_cell() -> None:
    markdown = to_markdown(pl.DataFrame({"run": ["a|b\nc"], "accuracy": [0.5]}), "Run a|b", demo=False)
    lines = markdown.splitlines()
    assert lines[0] == r"# Run a\|b"
    table = [line for line in lines if line.startswith("|")]
    assert len(table) == 3 and table[2].count("|") - table[2].count(r"\|") == 3

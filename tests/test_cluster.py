"""profiles/slurm end to end on a real SLURM cluster: the single-node one of scripts/slurm-cluster.sh.

Each job goes through the executor plugin as a SLURM job (sbatch, then srun of Snakemake's job step)
and must write the same bytes as the local run of the same config. The cluster's rules are the
tiny config's clip_tiny jobs that reach every remote rule (split, encode, pca, intrinsic_dimension,
similarity, classifier, train): each SLURM job costs a fresh Snakemake and Python start, and all
45 jobs of the tiny config take several minutes on two cores.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from conftest import REPO, results
from snakemake_runs import TINY, snakemake

CLUSTER = REPO / "scripts/slurm-cluster.sh"
# The README's cluster command; squeue because this cluster has no accounting database (sacct).
NO_ACCOUNTING = ["--slurm-status-command", "squeue"]
# Test only: poll every 2 s instead of the plugin's 40 s first wait (jobs here take seconds).
FAST_POLLING = ["--slurm-init-seconds-before-status-checks", "2", "--seconds-between-status-checks", "2"]
TARGETS = [
    "results/train/clip_tiny/digits/base.parquet",
    "results/similarity/clip_tiny/random.parquet",
    "results/intrinsic_dimension/clip_tiny/random.parquet",
]
# What those targets need, one SLURM job each, except the two splits, which the profile groups.
REMOTE_JOBS = {"splits": 1, "encode": 4, "pca": 2, "intrinsic_dimension": 1, "similarities": 1, "classifier": 1, "train": 1}


@pytest.fixture(scope="module")
def cluster() -> Iterator[None]:
    """A running cluster; stopped afterwards only if this fixture started it."""
    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        pytest.skip("snakemake-executor-plugin-slurm is not installed (pip install -e '.[cluster]')")
    was_running = subprocess.run(["bash", str(CLUSTER), "status"], capture_output=True).returncode == 0
    started = subprocess.run(["bash", str(CLUSTER), "start"], capture_output=True, text=True, timeout=900)
    if started.returncode == 3:  # the script's "cannot set up a cluster here", with the reason
        pytest.skip(started.stderr.strip().splitlines()[-1])
    assert started.returncode == 0, started.stderr
    yield
    if not was_running:
        subprocess.run(["bash", str(CLUSTER), "stop"], capture_output=True, timeout=120)


def job_state(job_id: str) -> str:
    """The job's state as the controller reports it (the test cluster keeps finished jobs an hour: MinJobAge)."""
    shown = subprocess.run(["scontrol", "-o", "show", "job", job_id], capture_output=True, text=True, check=True).stdout
    return re.search(r"JobState=(\w+)", shown).group(1)


@pytest.mark.slow
def test_slurm_profile_runs_every_remote_rule_as_a_slurm_job(cluster: None, tiny_run: tuple[Path, str], tmp_path: Path) -> None:
    local, _ = tiny_run
    run = snakemake(tmp_path, "--profile", str(REPO / "profiles/slurm"), *TARGETS, *NO_ACCOUNTING, *FAST_POLLING, configfiles=[TINY], timeout=900)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-5000:]

    # "Job 12 has been submitted with SLURM jobid 7 (log: .../slurm_logs/rule_encode/clip_tiny_digits_val/7.log)";
    # a group job's log folder is group_<group>_<rules>.
    submitted = re.findall(r"submitted with SLURM jobid (\d+) \(log: \S*/slurm_logs/(?:rule_(\w+?)|group_([a-z]+)_\w+)/", output)
    kinds: dict[str, int] = {}
    for _, rule, group in submitted:
        kinds[rule or group] = kinds.get(rule or group, 0) + 1
    assert kinds == REMOTE_JOBS, output[-5000:]
    assert {job_state(job_id) for job_id, _, _ in submitted} == {"COMPLETED"}

    ours, theirs = results(tmp_path), results(local)
    assert set(ours) <= set(theirs)
    assert ours == {name: theirs[name] for name in ours}  # byte for byte
    stages = {"splits", "units", "pca", "intrinsic_dimension", "similarity", "classifiers", "train"}
    assert {name.split("/")[1] for name in ours} == stages


def test_slurm_profile_asks_for_gpus_as_the_plugin_documents() -> None:
    """GPUs through the `gpu` resource only (the plugin's --gpus; a --gres beside it is refused),
    no --ntasks-per-gpu (a multi-GPU job would run once per GPU), runtimes that grow per retry."""
    profile = yaml.safe_load((REPO / "profiles/slurm/config.yaml").read_text())
    assert profile["executor"] == "slurm" and profile["retries"] >= 1
    resources = [profile["default-resources"], *profile["set-resources"].values()]
    assert all("gres" not in values and "--gres" not in values.get("slurm_extra", "") for values in resources)
    assert all("attempt" in values["runtime"] for values in resources)
    gpu_rules = [values for values in profile["set-resources"].values() if values["slurm_partition"] != profile["default-resources"]["slurm_partition"]]
    assert gpu_rules and all(values["tasks_per_gpu"] == 0 for values in gpu_rules)
    workstation = yaml.safe_load((REPO / "profiles/workstation/config.yaml").read_text())
    assert workstation["resources"] == {"gpu": 1}

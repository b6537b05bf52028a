"""What the paper's run (config.yaml) costs: GPU hours, CPU hours, memory and disk per rule and
stage, from the benchmark files and outputs of a finished demo run and a finished tiny run.

Per rule, a job's time is a fixed start-up plus a rate times the job's size:
- start-up: the median job time of the rule on the tiny run (tests/configs/tiny.yaml), whose work
  takes milliseconds: interpreter, imports, model construction;
- rate: the median over the demo run's jobs (configs/architectures.yaml: ViT-B/32 and DINOv2-S/14 at 224 px,
  real widths and depths) of (seconds - start-up) / size;
- size: what the job's work grows with (`work` below): images x forward MACs for encode, samples x
  units x d_out^2 for the float64 covariances of PCA, TwoNN sample^2 x units x d_out for intrinsic
  dimension, prompts x text MACs for text classifiers, epochs x samples x units x d_out for training.
Memory scales the same way from the tiny run's peak (the interpreter) by the size that holds it
(`held`), and disk by bytes per stored value (`stored`). The paper's jobs come from Snakemake's own
plan (`snakemake --summary` on config.yaml), its split sizes from the datasets' public sizes.

The demo runs on CPU. GPU hours divide the size-dependent part of the GPU rules' CPU time by the
ratio of an assumed GPU throughput (`--gpu-tflops`, effective float32) to the CPU's, measured on the
demo's encode jobs: an assumption, stated in the report, until a GPU measurement replaces it.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import subprocess
import sys
import tempfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
from tabulate import tabulate

from residual.config.validate import load_config
from residual.data.classnames import openai_classes, openai_templates
from residual.models.text import has_text_tower
from residual.units.layout import UnitLayout
from residual.units.unit_map import layout_of

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench/results"
STAGES = {
    "split": "data",
    "unit_map": "units",
    "encode": "units",
    "pca": "spectral",
    "intrinsic_dimension": "spectral",
    "similarity": "spectral",
    "classifier": "alignment",
    "train": "alignment",
}
# The config section whose `gpus` a rule's GPU request comes from (rules/*.smk); a classifier needs
# the GPU only for a text tower.
GPU_SECTION = {"encode": "encode", "classifier": "encode", "pca": "analysis", "intrinsic_dimension": "analysis", "train": "training"}
TEXT_TOKENS = 77  # CLIP's context length; BLIP's captions are shorter, so its figure is an upper bound


@dataclass(frozen=True)
class Arch:
    """A ViT's shape (from the libraries' configs of the named weights) and its text tower's."""

    layout: UnitLayout
    image: int
    patch: int
    registers: int = 0
    text_layers: int = 0
    text_width: int = 0

    @property
    def width(self) -> int:
        return self.layout.heads * self.layout.head_dim

    def forward_macs(self) -> float:
        """Multiply-adds of one image: patch embedding, then per block qkv + proj (4 w^2) and MLP
        (8 w^2) per token, plus attention scores and mixing (2 n^2 w)."""
        tokens = (self.image // self.patch) ** 2 + 1 + self.registers
        blocks = self.layout.layers * (12 * tokens * self.width**2 + 2 * tokens**2 * self.width)
        return blocks + (tokens - 1) * 3 * self.patch**2 * self.width

    def text_macs(self) -> float:
        return self.text_layers * (12 * TEXT_TOKENS * self.text_width**2 + 2 * TEXT_TOKENS**2 * self.text_width)

    def parameters(self) -> float:
        return 12 * self.layout.layers * self.width**2 + 12 * self.text_layers * self.text_width**2

    def stored_values(self) -> int:
        """Values per sample in a unit file: raw head outputs, emb and MLPs in output space."""
        layout = self.layout
        return layout.layers * layout.heads * layout.head_dim + (layout.layers + 1) * layout.out_dim


def vit_l(out_dim: int, image: int = 224, patch: int = 14, text: int = 0) -> Arch:
    return Arch(UnitLayout(24, 16, 64, out_dim), image, patch, text_layers=12 if text else 0, text_width=text)


ARCHS = {
    "clip_l": vit_l(768, text=768),
    "openclip_l": vit_l(768, text=768),
    "blip_l": vit_l(256, image=384, patch=16, text=768),  # BLIP ITM: ViT-L/16 at 384 px, 256-d projections
    "vit_l": vit_l(1024, patch=16),
    "dinov2_l": vit_l(1024),
    "clip_b32": Arch(UnitLayout(12, 12, 64, 512), 224, 32, text_layers=12, text_width=512),
    "dinov2_s_reg4": Arch(UnitLayout(12, 6, 64, 384), 224, 14, registers=4),
}
# Public sizes (images): official train pool and test set, or the whole set for datasets that the
# config re-splits; RESISC45's official train/val/test.
PAPER_IMAGES = {
    "imagenet": (1_281_167, 50_000),
    "gtsrb": (26_640, 12_630),
    "mnist": (60_000, 10_000),
    "cifar10": (50_000, 10_000),
    "cifar100": (50_000, 10_000),
    "svhn": (73_257, 26_032),
    "dtd": (3_760, 1_880),
    "stanford_cars": (8_144, 8_041),
    "eurosat": (27_000, 0),
    "sun397": (108_754, 0),
    "pacs": (9_991, 0),
    "imagenet_sketch": (50_889, 0),
}
RESISC45 = {"train": 18_900, "val": 6_300, "test": 6_300}


def paper_splits(config: dict[str, Any], dataset: str) -> dict[str, int]:
    """Samples per split of a paper dataset, from its public size and its split rule."""
    spec = config["datasets"][dataset]
    rule = spec["split"]
    if rule["rule"] == "official":
        return dict(RESISC45)
    pool, test = PAPER_IMAGES[dataset] if dataset in PAPER_IMAGES else (spec["size"], 0)
    pool = min(pool, rule.get("subset") or pool)
    if rule["rule"] == "holdout":
        return {"train": round(pool * (1 - rule["val"])), "val": round(pool * rule["val"]), "test": test}
    return {"train": round(pool * (1 - rule["val"] - rule["test"])), "val": round(pool * rule["val"]), "test": round(pool * rule["test"])}


def run_splits(run: Path, dataset: str) -> dict[str, int]:
    """Samples per split of a finished run's dataset, from its split table."""
    counts = pl.read_parquet(run / f"results/splits/{dataset}.parquet")["split"].value_counts()
    return dict(zip(counts["split"].to_list(), counts["count"].to_list()))


@dataclass(frozen=True)
class Job:
    rule: str
    wildcards: tuple[str, ...]  # in the order of the rule's output path: model, dataset, split/variant

    @property
    def dataset(self) -> str | None:
        if self.rule == "split":
            return self.wildcards[0]
        return self.wildcards[1] if len(self.wildcards) > 1 else None


def kind(job: Job, config: dict[str, Any]) -> str:
    """The job's rule, with text and class-mean classifiers apart (their work differs in kind)."""
    if job.rule == "classifier":
        return "classifier (text)" if has_text_tower(config["models"][job.wildcards[0]]) else "classifier (class means)"
    return job.rule


def sizes(job: Job, config: dict[str, Any], splits: dict[str, int]) -> tuple[float, float, float]:
    """(work, held, stored) of a job: what its time, its memory and its disk grow with."""
    n = splits.get("train", 0)
    if job.rule == "split":
        return sum(splits.values()), sum(splits.values()), sum(splits.values())
    model = ARCHS[job.wildcards[0]]
    layout = layout_of(model.tower)
    units = layout.count + 1  # and the model's own embedding
    if job.rule == "unit_map":
        return model.parameters(), model.parameters(), layout.layers * layout.heads * layout.head_dim * layout.out_dim
    if job.rule == "encode":
        images = splits[job.wildcards[2]]
        return images * model.forward_macs(), model.parameters(), images * model.stored_values()
    if job.rule == "pca":
        kept = layout.layers * layout.heads * (layout.head_dim + 2) + (layout.layers + 2) * layout.out_dim
        return n * units * layout.out_dim**2, units * layout.out_dim**2, kept * layout.out_dim
    if job.rule == "intrinsic_dimension":
        sample = min(config["analysis"]["id_samples"], n)
        return sample**2 * units * layout.out_dim, sample * layout.out_dim, units
    if job.rule == "similarity":
        return units * layout.out_dim**2, units * layout.out_dim**2, units
    if job.rule == "classifier":
        dataset = job.wildcards[1]
        classes = len(openai_classes(dataset))
        if has_text_tower(config["models"][job.wildcards[0]]):
            return classes * len(openai_templates(dataset)) * model.text_macs(), model.parameters(), classes * layout.out_dim
        return n * layout.out_dim, n * layout.out_dim, classes * layout.out_dim
    if job.rule == "train":
        epochs = config["training"]["epochs"]
        return epochs * n * units * layout.out_dim, n * model.stored_values(), units * layout.out_dim
    raise ValueError(f"no size model for rule {job.rule}")


def read_benchmarks(run: Path) -> dict[Job, dict[str, float]]:
    """Every benchmark file of a finished run: benchmarks/<rule>/<wildcards...>.tsv."""
    found = {}
    for path in sorted((run / "benchmarks").rglob("*.tsv")):
        parts = path.relative_to(run / "benchmarks").with_suffix("").parts
        if parts[0] not in STAGES:
            continue
        with path.open() as handle:
            row = next(csv.DictReader(handle, delimiter="\t"))
        found[Job(parts[0], parts[1:])] = {"s": float(row["s"]), "max_rss": float(row["max_rss"])}
    return found


def output_bytes(run: Path, job: Job) -> int:
    """Bytes of a finished job's outputs (its files under results/ named by its wildcards)."""
    folder = {"split": "splits", "unit_map": "units", "encode": "units", "classifier": "classifiers"}.get(job.rule, job.rule)
    stem = run / "results" / folder / Path(*job.wildcards)
    if job.rule == "unit_map":
        return (stem / "unit_map.safetensors").stat().st_size
    return sum(path.stat().st_size for path in stem.parent.glob(f"{stem.name}.*"))


def paper_jobs(config_path: Path) -> list[Job]:
    """The paper's jobs as Snakemake plans them (one line per output file; one job per output stem)."""
    command = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--configfile", str(config_path), "--summary"]
    with tempfile.TemporaryDirectory() as workdir:
        summary = subprocess.run([*command, "--directory", workdir], capture_output=True, text=True, check=True).stdout
    jobs = {}
    for line in summary.splitlines()[1:]:
        path, _, rule, *_ = line.split("\t")
        if rule not in STAGES:
            continue
        parts = Path(path).with_suffix("").parts[2:]
        jobs[Job(rule, parts[:-1] if rule == "unit_map" else parts)] = None
    return list(jobs)


def median_rates(measured: dict[Job, dict[str, float]], run: Path, config: dict[str, Any], startup: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """Per rule: seconds, MB and bytes per unit of work, held and stored size (medians over jobs)."""
    per_rule: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for job, bench in measured.items():
        work, held, stored = sizes(job, config, run_splits(run, job.dataset) if job.dataset else {})
        base = startup[kind(job, config)]
        per_rule[kind(job, config)]["work"].append(max(bench["s"] - base["s"], 0.0) / work)
        per_rule[kind(job, config)]["held"].append(max(bench["max_rss"] - base["max_rss"], 0.0) / held)
        per_rule[kind(job, config)]["stored"].append(output_bytes(run, job) / stored)
    return {rule: {key: statistics.median(values) for key, values in rates.items()} for rule, rates in per_rule.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--demo", type=Path, required=True, help="a finished run of configs/architectures.yaml (its --directory)")
    parser.add_argument("--tiny", type=Path, required=True, help="a finished run of tests/configs/tiny.yaml")
    parser.add_argument("--config", type=Path, default=REPO / "config.yaml", help="the run to cost (default: the paper's)")
    parser.add_argument("--gpu-tflops", type=float, default=10.0, help="assumed effective float32 TFLOP/s of one GPU")
    parser.add_argument("--name", default="paper_cost")
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    args = parser.parse_args()

    demo_config = load_config(REPO / "configs/architectures.yaml")
    paper = load_config(args.config)
    tiny_config = load_config(REPO / "tests/configs/tiny.yaml")
    tiny = read_benchmarks(args.tiny)
    startup = {
        name: {key: statistics.median(bench[key] for job, bench in tiny.items() if kind(job, tiny_config) == name) for key in ("s", "max_rss")}
        for name in {kind(job, tiny_config) for job in tiny}
    }
    measured = read_benchmarks(args.demo)
    rates = median_rates(measured, args.demo, demo_config, startup)
    encode = [(job, bench) for job, bench in measured.items() if job.rule == "encode"]
    cpu_macs_per_s = statistics.median(
        sizes(job, demo_config, run_splits(args.demo, job.wildcards[1]))[0] / max(bench["s"] - startup["encode"]["s"], 1e-9) for job, bench in encode
    )
    speedup = args.gpu_tflops * 1e12 / (2 * cpu_macs_per_s)

    rows: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for job in paper_jobs(args.config):
        name = kind(job, paper)
        row = rows[name]
        row["jobs"] += 1
        if name not in rates:  # no demo job of this kind finished: reported as not measured
            continue
        work, held, stored = sizes(job, paper, paper_splits(paper, job.dataset) if job.dataset else {})
        rate, base = rates[name], startup[name]
        if job.rule in GPU_SECTION and paper[GPU_SECTION[job.rule]]["gpus"] > 0 and name != "classifier (class means)":
            row["gpu_h"] += (base["s"] + rate["work"] * work / speedup) / 3600
        else:
            row["cpu_h"] += (base["s"] + rate["work"] * work) / 3600
        row["peak_gb"] = max(row["peak_gb"], (base["max_rss"] + rate["held"] * held) / 1024)
        row["disk_gb"] += rate["stored"] * stored / 1e9

    table = [
        [STAGES[kind.split(" ")[0]], kind, int(row["jobs"]), *(round(row[key], 1) if kind in rates else None for key in ("gpu_h", "cpu_h", "peak_gb", "disk_gb"))]
        for kind, row in sorted(rows.items(), key=lambda item: (list(STAGES).index(item[0].split(" ")[0]), item[0]))
    ]
    measured_rows = [line for line in table if line[3] is not None]
    totals = [sum(line[i] for line in measured_rows) for i in (3, 4)] + [max(line[5] for line in measured_rows), sum(line[6] for line in measured_rows)]
    table.append(["all measured", "", sum(line[2] for line in table), *(round(total, 1) for total in totals)])
    headers = ["stage", "rule", "jobs", "GPU h", "CPU h", "peak GB/job", "disk GB"]
    note = (
        f"Measured CPU throughput on the demo's encode jobs: {2 * cpu_macs_per_s / 1e9:.1f} GFLOP/s; "
        f"GPU hours assume {args.gpu_tflops:g} effective TFLOP/s per GPU (x{speedup:.0f} the CPU). "
        "Downloads and tables run on the login node and are not counted; empty rows: no demo job of that rule finished."
    )
    text = tabulate(table, headers=headers, tablefmt="github") + "\n\n" + note + "\n"
    print(text)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / f"{args.name}.txt").write_text(text)
    record = {
        # The runs' folder names only: their paths belong to the machine that made them.
        "runs": {"demo": args.demo.name, "tiny": args.tiny.name, "config": args.config.name},
        "headers": headers,
        "rows": table,
        "cpu_gflops": 2 * cpu_macs_per_s / 1e9,
        "assumed_gpu_tflops": args.gpu_tflops,
        "startup": startup,
        "rates": rates,
    }
    (args.out_dir / f"{args.name}.json").write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()

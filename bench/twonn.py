"""TwoNN against DADApy and scikit-dimension on the same points, each estimate in a fresh process.

Points: n samples of a `--manifold`-dimensional curved manifold in d = 768 (tanh of a random linear
map of uniform latents) plus a constant offset, saved once as float32 .npy and read by every method
(DADApy and scikit-dimension in float64, as they compute). Per n, repetitions are interleaved
(project, dadapy, skdim, project, ...). Each run reports the seconds of the estimate alone and its
peak memory above the process's own baseline (interpreter, libraries and the data loaded; the
kernel's peak counter is reset to it just before the estimate, so loading cannot hide the estimate's peak).
DADApy runs under `--dadapy-python`, a virtualenv holding it (it pins numpy < 2).

Headlines: median(fastest peer) / median(project) at n >= 20,000, target >= 2; the project's peak
memory above baseline at the largest n, target <= 0.5 GB on the CPU.

    python3 -m venv /tmp/dadapy && /tmp/dadapy/bin/pip install dadapy
    .venv/bin/python bench/twonn.py --dadapy-python /tmp/dadapy/bin/python --name twonn_cpu
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from common import environment, report, table

from residual.runtime.device import pick_device

WORKER = Path(__file__).resolve().parent / "twonn_worker.py"
SOURCE = Path(__file__).resolve().parents[1] / "src"
SPEED_TARGET, MEMORY_TARGET = 2.0, 0.5 * 2**30


def manifold_points(samples: int, dimension: int, manifold: int, seed: int) -> np.ndarray:
    generator = np.random.default_rng(seed)
    latent = generator.uniform(-1, 1, (samples, manifold))
    mixing = generator.normal(size=(manifold, dimension)) / np.sqrt(manifold)
    return (np.tanh(latent @ mixing) + 3.0).astype(np.float32)


def run(python: str, method: str, data: Path, device: str) -> dict[str, float]:
    environment_variables = {**os.environ, "PYTHONPATH": str(SOURCE)}
    command = [python, str(WORKER), "--method", method, "--data", str(data), "--device", device]
    completed = subprocess.run(command, capture_output=True, text=True, env=environment_variables, check=False)
    if completed.returncode:
        raise RuntimeError(f"{method} failed:\n{completed.stderr[-3000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, nargs="+", default=[5_000, 20_000, 50_000])
    parser.add_argument("--dimension", type=int, default=768)
    parser.add_argument("--manifold", type=int, default=12)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--reps-largest", type=int, default=2, help="repetitions at the largest n (the peers take a minute each)")
    parser.add_argument("--methods", nargs="+", default=["project", "dadapy", "skdim"])
    parser.add_argument("--dadapy-python", default="/tmp/dadapy/bin/python")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", default="twonn")
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args()
    device = pick_device(args.device)
    pythons = {"project": sys.executable, "skdim": sys.executable, "dadapy": args.dadapy_python}
    record: dict[str, object] = {"environment": environment(device, torch.get_num_threads()), "runs": {}}
    rows, lines = [], []
    with tempfile.TemporaryDirectory() as folder:
        for samples in args.samples:
            data = Path(folder) / f"points_{samples}.npy"
            np.save(data, manifold_points(samples, args.dimension, args.manifold, args.seed))
            reps = args.reps_largest if samples == max(args.samples) else args.reps
            runs: dict[str, list[dict[str, float]]] = {method: [] for method in args.methods}
            for _ in range(reps):
                for method in args.methods:
                    runs[method].append(run(pythons[method], method, data, str(device) if method == "project" else "cpu"))
            record["runs"][str(samples)] = runs
            medians = {method: statistics.median(entry["seconds"] for entry in entries) for method, entries in runs.items()}
            reference = runs["project"][0]["id"]
            for method, entries in runs.items():
                seconds = [entry["seconds"] for entry in entries]
                memory = max(entry["peak_bytes"] - entry["baseline_bytes"] for entry in entries) / 2**30
                relative = abs(entries[0]["id"] - reference) / abs(reference)
                rows.append([samples, method, medians[method], min(seconds), max(seconds), memory, entries[0]["id"], relative])
            peers = [medians[method] for method in medians if method != "project"]
            if peers and samples >= 20_000:
                ratio = min(peers) / medians["project"]
                passed = ratio >= SPEED_TARGET
                lines.append(f"RATIO n={samples}: fastest peer / project = {ratio:.2f} (target >= {SPEED_TARGET:g}): {'PASS' if passed else 'FAIL'}")
            if samples == max(args.samples):
                memory = max(entry["peak_bytes"] - entry["baseline_bytes"] for entry in runs["project"])
                verdict = "PASS" if memory <= MEMORY_TARGET else "FAIL"
                lines.append(f"MEMORY n={samples}: project peak above baseline = {memory / 2**30:.3f} GB (target <= 0.5 GB on the CPU): {verdict}")
    headers = ["n", "method", "median s", "min s", "max s", "peak above baseline GB", "ID", "|ID - project| / project"]
    text = [
        f"TwoNN, d = {args.dimension}, {args.manifold}-dimensional manifold; project on {device}, peers on the CPU",
        f"{torch.get_num_threads()} threads; repetitions interleaved ({args.reps}, {args.reps_largest} at the largest n); "
        "2 shared cores: other jobs ran beside this one",
        "",
        table(rows, headers),
        "",
        *lines,
        f"load average at the end: {os.getloadavg()}",
    ]
    report(args.name, args.out_dir, "\n".join(text), record)


if __name__ == "__main__":
    main()

"""PCA of every unit of one unit file: the stored-coordinate fit against the output-space fit it
replaced and scikit-learn unit by unit, with their estimates side by side.

- new: `fit_unit_file` (heads in their dh + 2 stored coordinates, mapped exactly to output space)
- previous: the output-space fit, `fit_pca` on each group's values as `UnitFile.read` returns them
  (float64 [d, d] covariances and their eigendecomposition), with LAPACK threading each batched
  decomposition as it did before `residual.runtime.threads.per_matrix`
- sklearn: `sklearn.decomposition.PCA(svd_solver="full")` on each unit's output-space values

Every method reads the file itself (groups of `--group-size` units); repetitions are interleaved
(new, previous, sklearn, new, ...). Headline: median(previous or sklearn, the faster) / median(new).
`--neighbours N` repeats the new and previous methods while N processes keep N cores busy (the
other jobs of a workflow run), and reports that ratio too: the steadiness under load.

    .venv/bin/python bench/pca_units.py --units results/units/clip_b32/digits/train.parquet --neighbours 1 --name pca_units_clip_b32
    .venv/bin/python bench/pca_units.py --synthetic ViT-L-14 --samples 2000 --methods new --name pca_units_vit_l14
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from unittest import mock

import numpy as np
import torch
from common import busy_neighbours, environment, report, set_threads, synchronize, table
from sklearn.decomposition import PCA
from synthetic_units import synthetic_unit_file

from residual import load_model
from residual.runtime.device import pick_device
from residual.spectral import pca as pca_module
from residual.spectral.pca import OUTPUT, UnitPCA, fit_pca, fit_unit_file
from residual.units.store import UnitFile

TARGET = 10.0
PAPER_SAMPLES = 80_000


def groups(path: Path, size: int) -> list[list[str]]:
    names = UnitFile(path).names
    return [names[start : start + size] for start in range(0, len(names), size)]


def previous(path: Path, group_size: int, device: torch.device) -> UnitPCA:
    """The output-space fit: every unit's [d, d] covariance, eigendecomposed by one batched call."""
    unit_file, parts = UnitFile(path), []
    with mock.patch.object(pca_module, "per_matrix", lambda function, *batches: function(*batches)):
        for group in groups(path, group_size):
            stored = unit_file.read(group)
            parts.append(fit_pca(stored.values.to(device), group))
        parts.append(fit_pca(stored.embedding[:, None].to(device), [OUTPUT]))
    return UnitPCA(
        names=[name for part in parts for name in part.names],
        samples=parts[0].samples,
        means=torch.cat([part.means for part in parts]),
        total_variance=torch.cat([part.total_variance for part in parts]),
        components=[c for part in parts for c in part.components],
        eigenvalues=[e for part in parts for e in part.eigenvalues],
    )


def scikit_learn(path: Path, group_size: int) -> list[np.ndarray]:
    """Explained variances per unit (units in file order, then OUTPUT)."""
    unit_file, spectra = UnitFile(path), []
    for group in groups(path, group_size):
        stored = unit_file.read(group)
        values = stored.values.double().numpy()
        spectra += [PCA(svd_solver="full").fit(values[:, unit]).explained_variance_ for unit in range(len(group))]
    spectra.append(PCA(svd_solver="full").fit(stored.embedding.double().numpy()).explained_variance_)
    return spectra


def agreement(pca: UnitPCA, spectra: list[np.ndarray]) -> dict[str, float | int]:
    """Largest eigenvalue error relative to the unit's largest, and units whose k(0.99) differs."""
    errors, k_differs = [], 0
    ours_k = pca.k(0.99).tolist()
    for unit, theirs in enumerate(spectra):
        ours = pca.eigenvalues[unit].double().numpy()
        errors.append(float(np.abs(ours - theirs[: len(ours)]).max() / theirs[0]))
        cevr = np.cumsum(theirs) / theirs.sum()
        k_differs += int(ours_k[unit] != int(np.argmax(cevr > 0.99)) + 1)
    return {"max_relative_eigenvalue_error": max(errors), "units_whose_k099_differs": k_differs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--units", type=Path, help="a unit file (its unit map beside it, as the pipeline writes it)")
    source.add_argument("--synthetic", help="open_clip architecture: random-init model's unit map, synthetic units")
    parser.add_argument("--samples", type=int, default=2000, help="synthetic samples")
    parser.add_argument("--methods", nargs="+", default=["new", "previous", "sklearn"], choices=("new", "previous", "sklearn"))
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--group-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--neighbours", type=int, default=0, help="then again new and previous beside this many busy processes")
    parser.add_argument("--name", default="pca_units")
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args()
    threads = set_threads(args.threads)
    device = pick_device(args.device)
    with tempfile.TemporaryDirectory() as folder:
        if args.synthetic:
            model = load_model({"library": "open_clip", "arch": args.synthetic, "pretrained": None}, device="cpu")
            path = synthetic_unit_file(model, args.samples, Path(folder))
            del model
        else:
            path = args.units
        unit_file = UnitFile(path)
        shape = {"samples": len(unit_file), "units": len(unit_file.names), **unit_file.layout.__dict__}
        methods: dict[str, Callable[[], object]] = {
            "new": lambda: fit_unit_file(path, batch_size=args.batch_size, group_size=args.group_size, device=device),
            "previous": lambda: previous(path, args.group_size, device),
            "sklearn": lambda: scikit_learn(path, args.group_size),
        }
        seconds: dict[str, list[float]] = {method: [] for method in args.methods}
        results: dict[str, object] = {}

        def measure(names: list[str], into: dict[str, list[float]]) -> None:
            for _ in range(args.reps):
                for method in names:
                    synchronize(device)
                    start = time.perf_counter()
                    results[method] = methods[method]()
                    synchronize(device)
                    into[method].append(time.perf_counter() - start)

        measure(args.methods, seconds)
        loaded = [method for method in ("new", "previous") if method in args.methods and args.neighbours]
        loaded_seconds: dict[str, list[float]] = {method: [] for method in loaded}
        if loaded:
            with busy_neighbours(args.neighbours):
                measure(loaded, loaded_seconds)
    medians = {method: statistics.median(values) for method, values in seconds.items()}
    rows = [[method, "none", medians[method], min(values), max(values)] for method, values in seconds.items()]
    rows += [[method, f"{args.neighbours} busy", statistics.median(values), min(values), max(values)] for method, values in loaded_seconds.items()]
    lines = [f"PCA of every unit of one file: {shape}", f"device {device}, {threads} threads, {args.reps} interleaved repetitions", ""]
    lines.append(table(rows, ["method", "neighbours", "median s", "min s", "max s"]))
    record: dict[str, object] = {"environment": environment(device, threads), "shape": shape, "seconds": seconds, "seconds_beside_busy_neighbours": loaded_seconds}
    if "sklearn" in results:
        for method in ("new", "previous"):
            if method in results:
                record[f"{method}_vs_sklearn"] = agreement(results[method], results["sklearn"])
                lines.append(f"{method} vs sklearn: {record[f'{method}_vs_sklearn']}")
    for peer in ("previous", "sklearn"):
        if peer in medians and "new" in medians:
            ratio = medians[peer] / medians["new"]
            record[f"speedup_vs_{peer}"] = ratio
            lines.append(f"RATIO {peer} / new = {ratio:.1f} (target >= {TARGET:g}): {'PASS' if ratio >= TARGET else 'FAIL'}")
    if len(loaded) == 2:
        ratio = statistics.median(loaded_seconds["previous"]) / statistics.median(loaded_seconds["new"])
        record["speedup_vs_previous_beside_busy_neighbours"] = ratio
        lines.append(f"RATIO previous / new beside {args.neighbours} busy process(es) = {ratio:.1f} (target >= {TARGET:g}): {'PASS' if ratio >= TARGET else 'FAIL'}")
    if "new" in medians:
        extrapolated = medians["new"] * PAPER_SAMPLES / shape["samples"]
        record["new_seconds_extrapolated_to_80000_samples"] = extrapolated
        lines.append(f"new, extrapolated linearly to {PAPER_SAMPLES} samples (an upper bound: the decomposition does not grow with n): {extrapolated:.0f} s per split")
    lines.append(f"load average at the end: {environment(device, threads)['load_average']}")
    report(args.name, args.out_dir, "\n".join(lines), record)


if __name__ == "__main__":
    main()

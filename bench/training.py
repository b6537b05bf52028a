"""Training throughput of the ResiDual variants against the backbone's own forward.

One epoch of `train` (batch 64, Schedule-Free AdamW, raw logits of a class-mean classifier) on the
features of one unit file, in samples/s, divided by the samples/s of a bare forward
(`tower.encode`, no hooks) of the same random-init backbone on random images. Each variant runs on
the folded path `train` takes (`residual.alignment.logits.FoldedLogits`) and, beside it, on the
general path (module, then classifier), with the final lambdas of both compared. Per-epoch time is
(t(3 epochs) - t(1 epoch)) / 2, which leaves out the once-per-run costs (the fold's products, the
checkpoint digest, the test pass); repetitions are interleaved.

    .venv/bin/python bench/training.py --arch ViT-B-32 --samples 800 --name training_clip_b32
    .venv/bin/python bench/training.py --arch ViT-L-14 --samples 2000 --name training_vit_l14
    .venv/bin/python bench/training.py --device cuda --name training_clip_b32_cuda
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from common import environment, report, set_threads, synchronize, table
from synthetic_units import synthetic_unit_file

from residual import load_model, read_units
from residual.alignment.classifier import ZeroShotClassifier, class_mean_classifier
from residual.alignment.training import TrainSettings, train
from residual.alignment.variants import SpectralReweighting, build_variant
from residual.models.loaded import LoadedModel
from residual.runtime.device import pick_device
from residual.spectral.pca import fit_unit_file

TARGET = 500.0


class GeneralReweighting(SpectralReweighting):
    """Not the exact type `logit_path` folds: trains on the general path, for comparison."""


def bare_samples_per_second(model: LoadedModel, batch: int, reps: int) -> list[float]:
    images = (torch.rand(batch, 3, 224, 224, generator=torch.Generator().manual_seed(0)) * 2 - 1).to(model.device)
    rates = []
    with torch.no_grad():
        model.tower.encode(images)  # warm-up
        for _ in range(reps):
            synchronize(model.device)
            start = time.perf_counter()
            model.tower.encode(images)
            synchronize(model.device)
            rates.append(batch / (time.perf_counter() - start))
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="ViT-B-32", help="open_clip architecture (random init)")
    parser.add_argument("--samples", type=int, default=800, help="synthetic training samples")
    parser.add_argument("--forward-batch", type=int, default=16)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--variants", nargs="+", default=["residual_full", "residual_fine"])
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, auto, ...")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--name", default="training")
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args()
    threads = set_threads(args.threads)
    device = pick_device(args.device)
    spec = {"library": "open_clip", "arch": args.arch, "pretrained": None}
    model = load_model(spec, device="cpu")  # the synthetic units are written on the CPU, as for PCA's benchmark
    with tempfile.TemporaryDirectory() as folder:
        path = synthetic_unit_file(model, args.samples, Path(folder))
        reference = fit_unit_file(path)
        stored = read_units(path)
    if device.type != "cpu":
        model = load_model(spec, device=str(device))
    bare = bare_samples_per_second(model, args.forward_batch, args.reps)
    del model
    rows, record = [], {"environment": environment(device, threads), "bare_samples_per_second": bare, "variants": {}}
    lines = []
    for variant in args.variants:
        plan, _ = build_variant(variant, reference, "ones", 0)
        features = plan.features(stored, device)
        small = features.select(torch.arange(64, device=device))  # val and test: a few samples, their cost is not the point
        classifier = ZeroShotClassifier(class_mean_classifier(features.embedding, features.labels, int(features.labels.max()) + 1))
        seconds: dict[tuple[str, int], list[float]] = {}
        lambdas = {}
        for _ in range(args.reps):
            for path_name in ("folded", "general"):
                for epochs in (1, 3):
                    module = build_variant(variant, reference, "ones", 0)[1] if path_name == "folded" else GeneralReweighting(plan, "ones", 0)
                    settings = TrainSettings(variant, 0.8, seed=0, epochs=epochs, patience=30)
                    module, classifier = module.to(device), classifier.to(device)
                    synchronize(device)
                    start = time.perf_counter()
                    result = train(module, features, small, small, classifier, settings)
                    synchronize(device)
                    seconds.setdefault((path_name, epochs), []).append(time.perf_counter() - start)
                    lambdas[path_name] = result.best_state["lambdas"]
        difference = float((lambdas["folded"] - lambdas["general"]).abs().max())
        entry = {"coordinates": features.coords.shape[1], "seconds": {f"{p}_{e}": v for (p, e), v in seconds.items()}, "max_lambda_difference": difference}
        for path_name in ("folded", "general"):
            per_epoch = (statistics.median(seconds[(path_name, 3)]) - statistics.median(seconds[(path_name, 1)])) / 2
            rate = len(features) / per_epoch
            ratio = rate / statistics.median(bare)
            entry[f"{path_name}_samples_per_second"], entry[f"{path_name}_ratio"] = rate, ratio
            rows.append([variant, path_name, features.coords.shape[1], per_epoch, rate, ratio])
        record["variants"][variant] = entry
        lines.append(f"{variant}: folded and general lambdas after 3 epochs differ by at most {difference:.2e}")
        if variant == "residual_full":
            ratio = entry["folded_ratio"]
            lines.append(f"RATIO residual_full epoch samples/s / bare forward samples/s = {ratio:.0f} (target >= {TARGET:g}): {'PASS' if ratio >= TARGET else 'FAIL'}")
    text = [
        f"{args.arch} (random init), {args.samples} synthetic samples through its unit map; {device}, {threads} threads; "
        f"bare forward {statistics.median(bare):.2f} samples/s (batch {args.forward_batch}, median of {args.reps})",
        f"{args.reps} interleaved repetitions; 2 shared cores: other jobs ran beside this one",
        "",
        table(rows, ["variant", "path", "coordinates K", "s per epoch", "samples/s", "x bare forward"]),
        "",
        *lines,
    ]
    report(args.name, args.out_dir, "\n".join(text), record)


if __name__ == "__main__":
    main()

"""What ResiDual saves over fine-tuning: samples/s of one `finetune` epoch against one `residual_full`
epoch on the same model and images, and the peak memory of each.

Both epochs are the pipeline's own loops (`residual.alignment.finetune.finetune` on the images,
`residual.alignment.training.train` on the stored units' spectral features) over the same train
and val images of scikit-learn's digits, at the same batch size, through the same kind of fixed
classifier. One epoch is timed as T(2 epochs) - T(1 epoch) of two fresh runs, so setup (model
load, checkpoint digest, the final test pass) cancels; an epoch is its train steps plus the val
evaluation. `residual_full` also needs the units once (encode + PCA of the train split): that
one-time cost is reported beside it. Each method runs in its own process, so the peak memory of
one does not hide in the other's: on CUDA torch's peak allocation during the timed run, on the CPU
the peak resident set size during it (sampled every 5 ms) minus the resident size before it;
both of the one-epoch run.

    .venv/bin/python bench/finetune_cost.py --images 64 --batch 32 --threads 2 --name finetune_cost_clip_b32
    .venv/bin/python bench/finetune_cost.py --device cuda --arch ViT-L-14 --images 2048 --batch 128 --name finetune_cost_vit_l14
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import polars as pl
import torch
from common import add_model_arguments, environment, model_spec, report, set_threads, synchronize, table
from resident_memory import status_bytes

from residual import load_model
from residual.alignment.classifier import ZeroShotClassifier
from residual.alignment.features import spectral_features
from residual.alignment.finetune import FinetuneData, FinetuneRuntime, finetune
from residual.alignment.options import FinetuneOptions
from residual.alignment.training import TrainSettings, train
from residual.alignment.variants import build_variant
from residual.data.sources import load_source
from residual.data.splits import split_table
from residual.runtime.device import pick_device
from residual.spectral.pca import fit_unit_file
from residual.units.encode import EncodeSettings, encode_split
from residual.units.store import UnitFile
from residual.units.unit_map import UnitMap

METHODS = ("finetune", "residual_full")
VAL, TEST = 32, 16


@contextmanager
def peak_memory(device: torch.device) -> Iterator[dict[str, int]]:
    """{'peak_bytes': ...} filled on exit: torch's peak allocation on CUDA, else the peak resident
    size sampled every 5 ms above the resident size on entry."""
    measured: dict[str, int] = {}
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
        yield measured
        synchronize(device)
        measured["peak_bytes"] = torch.cuda.max_memory_allocated(device) - start
        return
    start, peak, done = status_bytes("VmRSS"), [0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], status_bytes("VmRSS"))
            time.sleep(0.005)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield measured
    finally:
        done.set()
        thread.join()
        measured["peak_bytes"] = max(peak[0], status_bytes("VmRSS")) - start


def split_of(images: int, seed: int) -> pl.DataFrame:
    """`images` train, VAL val and TEST test rows of scikit-learn's digits, stratified."""
    source = load_source("digits", {"loader": "digits"}, seed)
    total = images + VAL + TEST
    return split_table(source, {"rule": "resplit", "val": VAL / total, "test": TEST / total, "subset": total}, seed, "digits")


def classifier_for(width: int, device: torch.device) -> ZeroShotClassifier:
    """A fixed random classifier over the 10 digits: the epoch's cost does not depend on its values."""
    weights = torch.nn.functional.normalize(torch.randn(10, width, generator=torch.Generator().manual_seed(0)), dim=-1)
    return ZeroShotClassifier(weights, "normalized", 100.0).to(device)


def timed_epochs(run: Callable[[int], Any], device: torch.device) -> tuple[float, dict[str, int]]:
    """Seconds of the second epoch (T(2) - T(1), fresh runs) and the peak memory of the first run
    (the second may start on memory the allocator kept from the first)."""
    seconds, memories = {}, []
    for epochs in (1, 2):
        synchronize(device)
        with peak_memory(device) as memory:
            start = time.perf_counter()
            run(epochs)
            synchronize(device)
            seconds[epochs] = time.perf_counter() - start
        memories.append(memory)
    return seconds[2] - seconds[1], memories[0]


def measure_finetune(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    rows = split_of(args.images, 42)
    source = load_source("digits", {"loader": "digits"}, 42)
    with tempfile.TemporaryDirectory() as folder:
        split_path = Path(folder) / "digits.parquet"
        rows.write_parquet(split_path)
        options = FinetuneOptions("normalized", 1e-5, 1.0, args.batch, 1, 5, None, 42)
        runtime = FinetuneRuntime(bf16=True, eval_batch_size=args.batch, workers=args.workers)

        def run(epochs: int) -> None:
            model = load_model(model_spec(args), device=str(device))
            data = FinetuneData.from_split(model, source, split_path, None, 42, {"dataset": "digits"})
            classifier = classifier_for(model.tower.out_dim, device)
            finetune(model, data, classifier, FinetuneOptions(**{**options.params(), "epochs": epochs}), runtime)

        seconds, memory = timed_epochs(run, device)
    return {"method": "finetune", "epoch_seconds": seconds, **memory, "setup_seconds": 0.0}


def measure_residual_full(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    rows = split_of(args.images, 42)
    source = load_source("digits", {"loader": "digits"}, 42)
    model = load_model(model_spec(args), device=str(device))
    with tempfile.TemporaryDirectory() as folder:
        unit_map = Path(folder) / "unit_map.safetensors"
        UnitMap.from_tower(model.tower).save(unit_map)
        start = time.perf_counter()
        paths = {}
        for split in ("train", "val", "test"):
            paths[split] = Path(folder) / f"{split}.parquet"
            settings = EncodeSettings("float16", batch_size=args.batch, workers=args.workers)
            encode_split(model, source, rows.filter(pl.col("split") == split), paths[split], unit_map, settings)
        reference = fit_unit_file(paths["train"], device=device)
        setup = time.perf_counter() - start
        plan, _ = build_variant("residual_full", reference, "randn", 42)
        features = [spectral_features(UnitFile(paths[split]), plan, 1024, device) for split in ("train", "val", "test")]
        classifier = classifier_for(model.tower.out_dim, device)
        del model

        def run(epochs: int) -> None:
            _, module = build_variant("residual_full", reference, "randn", 42)
            settings = TrainSettings("residual_full", 0.8, 42, epochs, 5, args.batch)
            train(module.to(device), *features, classifier, settings)

        seconds, memory = timed_epochs(run, device)
    return {"method": "residual_full", "epoch_seconds": seconds, **memory, "setup_seconds": setup}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_model_arguments(parser, arch="ViT-B-32")
    parser.add_argument("--images", type=int, default=64, help="train images (plus 32 val, 16 test)")
    parser.add_argument("--batch", type=int, default=32, help="batch size of both methods")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers")
    parser.add_argument("--method", choices=METHODS, default=None, help=argparse.SUPPRESS)  # one child process
    args = parser.parse_args()
    threads = set_threads(args.threads)
    device = pick_device(args.device)
    if args.method is not None:
        measure = measure_finetune if args.method == "finetune" else measure_residual_full
        print(json.dumps(measure(args, device)))
        return
    results = []
    for method in METHODS:
        child = subprocess.run([sys.executable, *sys.argv, "--method", method], capture_output=True, text=True, check=False)
        if child.returncode != 0:
            raise RuntimeError(f"{method} failed:\n{child.stderr[-3000:]}")
        results.append(json.loads(child.stdout.strip().splitlines()[-1]))
    for result in results:
        result["samples_per_second"] = args.images / result["epoch_seconds"]
    by = {result["method"]: result for result in results}
    speedup = by["residual_full"]["samples_per_second"] / by["finetune"]["samples_per_second"]
    memory = by["finetune"]["peak_bytes"] / max(by["residual_full"]["peak_bytes"], 1)
    rows = [
        [r["method"], f"{r['samples_per_second']:.4g}", f"{r['epoch_seconds']:.3f}", f"{r['peak_bytes'] / 2**20:.1f}", f"{r['setup_seconds']:.2f}"]
        for r in results
    ]
    headers = ["method", "train samples/s (one epoch)", "epoch s", "peak MiB", "one-time units s (encode + PCA)"]
    name = args.name or f"finetune_cost_{args.arch}"
    text = "\n".join(
        [
            f"{args.library} {args.arch} {args.kwargs or ''} on {device} ({threads} threads): {args.images} train and "
            f"{VAL} val digits, batch {args.batch}",
            table(rows, headers),
            f"residual_full epoch is {speedup:.1f}x faster per sample; fine-tuning's peak memory is {memory:.1f}x residual_full's",
        ]
    )
    record = {"environment": environment(device, threads), "args": {k: v for k, v in vars(args).items() if k != "out_dir"},
              "results": results, "speedup": speedup, "memory_ratio": memory}  # fmt: skip
    report(name, args.out_dir, text, record)


if __name__ == "__main__":
    main()

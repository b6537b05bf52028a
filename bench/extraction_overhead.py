"""Extraction overhead: `residual.trace` (hooks + head outputs at the CLS query) against a bare forward.

Both run on the same batch, device and threads in one process. After warm-up, repetitions are
interleaved (bare, trace, decompose, bare, ...) so drift in clock speed or load hits every method
alike; the headline is median(trace) / median(bare). `decompose` (trace + the map to output space
[B, U, d_out] + the invariant check) is reported beside it.

    .venv/bin/python bench/extraction_overhead.py --name extraction_overhead_clip_b32
    .venv/bin/python bench/extraction_overhead.py --library timm --arch vit_small_patch14_reg4_dinov2 \
        --kwargs '{"img_size": 224}' --name extraction_overhead_dinov2_s
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable

import torch
from common import (
    add_model_arguments,
    environment,
    headline,
    model_spec,
    report,
    set_threads,
    synchronize,
    table,
)
from torch import Tensor

from residual import decompose, load_model, trace
from residual.models.loaded import LoadedModel
from residual.units.unit_map import layout_of

TARGET = 1.25


def bare_forward(model: LoadedModel) -> Callable[[Tensor], Tensor]:
    """The tower's own embedding (open_clip encode_image, timm forward_features + pre-logits head), no hooks."""

    def run(images: Tensor) -> Tensor:
        with torch.no_grad():
            return model.tower.encode(images)

    return run


def timed(method: Callable[[Tensor], object], images: Tensor, device: torch.device) -> float:
    """Wall-clock seconds of one call, queued device work included."""
    synchronize(device)
    start = time.perf_counter()
    method(images)
    synchronize(device)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_model_arguments(parser, arch="ViT-B-32")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--reps", type=int, default=15, help="timed repetitions per method")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls per method first")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random input batch")
    args = parser.parse_args()
    name = args.name or f"extraction_overhead_{args.arch}"

    threads = set_threads(args.threads)
    model = load_model(model_spec(args), device=args.device)
    generator = torch.Generator().manual_seed(args.seed)
    images = (torch.rand(args.batch, 3, *model.input_size, generator=generator) * 2 - 1).to(model.device)
    methods: dict[str, Callable[[Tensor], object]] = {
        "bare": bare_forward(model),
        "trace": lambda batch: trace(model, batch),
        "decompose": lambda batch: decompose(model, batch),
    }

    env = environment(model.device, threads)
    embedding_gap = float((methods["bare"](images) - trace(model, images).embedding).abs().max())
    for _ in range(args.warmup):
        for method in methods.values():
            timed(method, images, model.device)
    timings: dict[str, list[float]] = {key: [] for key in methods}
    for _ in range(args.reps):
        for key, method in methods.items():
            timings[key].append(timed(method, images, model.device))

    medians = {key: statistics.median(values) for key, values in timings.items()}
    ratio = medians["trace"] / medians["bare"]
    paired = statistics.median(t / b for t, b in zip(timings["trace"], timings["bare"]))
    minima = min(timings["trace"]) / min(timings["bare"])
    rows = [
        [
            key,
            1e3 * medians[key],
            1e3 * min(values),
            1e3 * max(values),
            1e3 * medians[key] / args.batch,
            medians[key] / medians["bare"],
        ]
        for key, values in timings.items()
    ]
    load_end = list(os.getloadavg())
    layout = layout_of(model.tower)
    line, passed = headline(name, ratio, TARGET)
    kwargs = f" {json.dumps(args.kwargs)}" if args.kwargs else ""
    text = "\n".join(
        [
            f"# {name}: {args.library} {args.arch}{kwargs}, weights: {args.pretrained or 'random init'}",
            f"device {env['device']} ({env['device_name']}), threads {threads}, torch {env['versions']['torch']}, "
            f"batch {args.batch} at {model.input_size[0]}x{model.input_size[1]}, {args.warmup} warm-up + {args.reps} "
            f"interleaved reps per method, units {layout.count} ({layout.layers} layers x {layout.heads} heads)",
            "",
            table(rows, ["method", "median ms", "min ms", "max ms", "median ms/img", "x bare"]),
            "",
            f"cross-checks under load drift: median over reps of trace/bare (adjacent calls) = {paired:.3f}, "
            f"min(trace)/min(bare) = {minima:.3f}; 1-min load average {env['load_average'][0]:.2f} at start, "
            f"{load_end[0]:.2f} at end on {env['cpus']} CPUs",
            line,
        ]
    )
    record = {
        "name": name,
        **env,
        "model_spec": model_spec(args),
        "input_size": list(model.input_size),
        "batch": args.batch,
        "reps": args.reps,
        "warmup": args.warmup,
        "seed": args.seed,
        "layout": layout.__dict__,
        "embedding_max_abs_diff_trace_vs_bare": embedding_gap,
        "timings_s": timings,
        "median_s": medians,
        "ratio_trace_over_bare": ratio,
        "ratio_decompose_over_bare": medians["decompose"] / medians["bare"],
        "ratio_trace_over_bare_paired_median": paired,
        "ratio_trace_over_bare_of_minima": minima,
        "load_average_end": load_end,
        "target": TARGET,
        "pass": passed,
    }
    report(name, args.out_dir, text, record)


if __name__ == "__main__":
    main()

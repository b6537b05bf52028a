"""Storage: bytes per sample of the unit store against the authors' float32 layout, and read-back error.

Random images ("random" source: uniform [-1, 1] in the model's input space) are encoded with the
pipeline's own path (`UnitMap.save`, then `encode_split`) once per storage dtype. Bytes/sample is
the Parquet file's size / n, footer included; the footer (schema, per-column chunk metadata, the
`residual` JSON) is a fixed cost per file and is also reported apart. The read-back error is
max over units of max|y_read - y_exact| / max|y_exact|, y_exact from `decompose` (float32) on the
same inputs and y_read from `read_units`. The layout depends only on the architecture, so random
weights give the same bytes as trained ones; keep the full model (no width/depth kwargs).

    .venv/bin/python bench/storage.py --samples 64 --name storage_vit_l14
"""

from __future__ import annotations

import argparse
import json
import struct
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl
import torch
from common import (
    add_model_arguments,
    environment,
    headline,
    model_spec,
    report,
    set_threads,
    table,
)
from torch import Tensor
from torch.utils.data import DataLoader

from residual import decompose, load_model, read_units
from residual.data.sources import NoiseImages, Source
from residual.models.loaded import LoadedModel
from residual.report.tables import authors_bytes_per_sample
from residual.units.encode import EncodeSettings, SplitImages, encode_split
from residual.units.store import UnitFile
from residual.units.unit_map import UnitMap, layout_of

RATIO_TARGET = 0.5
READBACK_TARGET = 1e-3


def random_split(samples: int, seed: int) -> tuple[Source, pl.DataFrame]:
    """A one-part source of `samples` noise images and its split table (all rows in split 'test')."""
    source = Source({"all": NoiseImages(samples, seed)}, ["random"])
    index = np.arange(samples, dtype=np.int64)
    rows = pl.DataFrame(
        {
            "sample_id": index,
            "part": ["all"] * samples,
            "index": index,
            "label": np.zeros(samples, np.int64),
            "split": ["test"] * samples,
        }
    )
    return source, rows


def exact_units(model: LoadedModel, source: Source, rows: pl.DataFrame, batch: int) -> tuple[Tensor, Tensor]:
    """`decompose` over the inputs `encode_split` sees: values [n, U, d_out] float32 and sample ids [n]."""
    values, ids = [], []
    for images, _, sample_ids in DataLoader(SplitImages(source, rows, model), batch_size=batch):
        values.append(decompose(model, images).values.cpu())
        ids.append(sample_ids)
    return torch.cat(values), torch.cat(ids)


def readback_error(read: Tensor, exact: Tensor) -> tuple[float, int]:
    """max over units of max|read - exact| / max|exact| (read, exact: [n, U, d]) and the worst unit."""
    per_unit = (read - exact).abs().amax(dim=(0, 2)) / exact.abs().amax(dim=(0, 2)).clamp_min(torch.finfo(torch.float32).tiny)
    worst = int(per_unit.argmax())
    return float(per_unit[worst]), worst


def footer_bytes(path: Path) -> int:
    """Parquet's fixed tail: the footer (schema, row-group and column-chunk metadata, key-value metadata),
    its 4-byte length and the closing 'PAR1' magic."""
    with path.open("rb") as handle:
        handle.seek(-8, 2)
        length, magic = struct.unpack("<I4s", handle.read(8))
    if magic != b"PAR1":
        raise ValueError(f"{path} does not end in the Parquet magic")
    return length + 8


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_model_arguments(parser, arch="ViT-L-14")
    parser.add_argument("--samples", type=int, default=64, help="random images to encode")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--dtypes", nargs="+", default=["float16", "float32"], help="the first one gives the headline")
    parser.add_argument("--seed", type=int, default=0, help="seed of the noise images")
    args = parser.parse_args()
    name = args.name or f"storage_{args.arch}"

    threads = set_threads(args.threads)
    model = load_model(model_spec(args), device=args.device)
    env = environment(model.device, threads)
    layout, tower = layout_of(model.tower), model.tower
    authors = authors_bytes_per_sample(tower.layers, tower.heads, tower.head_dim, tower.width)
    source, rows = random_split(args.samples, args.seed)

    start = time.perf_counter()
    exact, exact_ids = exact_units(model, source, rows, args.batch)
    seconds = {"decompose": time.perf_counter() - start}
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        map_path = Path(folder) / "unit_map.safetensors"
        UnitMap.from_tower(model.tower).save(map_path)
        map_bytes = map_path.stat().st_size
        for dtype in args.dtypes:
            path = Path(folder) / f"units_{dtype}.parquet"
            start = time.perf_counter()
            encode_split(model, source, rows, path, map_path, EncodeSettings(dtype, batch_size=args.batch))
            seconds[f"encode_{dtype}"] = time.perf_counter() - start
            start = time.perf_counter()
            stored = read_units(path)
            seconds[f"read_{dtype}"] = time.perf_counter() - start
            if not torch.equal(stored.sample_ids, exact_ids):
                raise RuntimeError("read_units returned the samples in another order than they were encoded")
            error, worst = readback_error(stored.values, exact)
            metadata = UnitFile(path).metadata
            size, footer = path.stat().st_size, footer_bytes(path)
            values = layout.layers * layout.heads * layout.head_dim + (layout.layers + 2) * layout.out_dim
            results[dtype] = {
                "file_bytes": size,
                "footer_bytes": footer,
                "residual_metadata_bytes": len(json.dumps(metadata, sort_keys=True)),
                "bytes_per_sample": size / args.samples,
                "bytes_per_sample_without_footer": (size - footer) / args.samples,
                # units + embedding in `dtype`; sample_id and label (int64), ln_mean and ln_std (float32)
                "payload_bytes_per_sample": np.dtype(dtype).itemsize * values + 24,
                "ratio": size / args.samples / authors,
                "ratio_without_footer": (size - footer) / args.samples / authors,
                "readback_error": error,
                "readback_worst_unit": layout.names[worst],
                "readback_error_recorded_by_encode": metadata["readback_error"],
                "decomposition_error_recorded_by_encode": metadata["decomposition_error"],
            }

    headline_dtype = args.dtypes[0]
    line, passed = headline(name, results[headline_dtype]["ratio"], RATIO_TARGET)
    rows_out = [
        [
            dtype,
            round(r["bytes_per_sample"]),
            round(r["bytes_per_sample_without_footer"]),
            r["payload_bytes_per_sample"],
            r["footer_bytes"],
            r["ratio"],
            r["readback_error"],
            "PASS" if r["readback_error"] <= READBACK_TARGET else "FAIL",
        ]
        for dtype, r in results.items()
    ]
    kwargs = f" {json.dumps(args.kwargs)}" if args.kwargs else ""
    text = "\n".join(
        [
            f"# {name}: {args.library} {args.arch}{kwargs}, weights: {args.pretrained or 'random init'}",
            f"layout: {layout.layers} layers x {layout.heads} heads x {layout.head_dim} head dim, width {tower.width}, "
            f"out dim {layout.out_dim}, {layout.count} units; {args.samples} random images, batch {args.batch}, "
            f"device {env['device']}, threads {threads}, torch {env['versions']['torch']}",
            f"authors' float32 layout: {authors} B/sample (4 x (L*H*dh + (L+1)*width)); "
            f"unit map (once per model, not per sample): {map_bytes} B",
            "",
            table(
                rows_out,
                [
                    "dtype",
                    "B/sample (file/n)",
                    "B/sample w/o footer",
                    "payload B/sample",
                    "footer B",
                    "x authors",
                    "read-back err",
                    f"err <= {READBACK_TARGET:g}",
                ],
            ),
            "",
            f"headline dtype: {headline_dtype}; B/sample counts the whole file, footer included "
            f"(amortised over {args.samples} samples; a real split has thousands)",
            line,
        ]
    )
    record = {
        "name": name,
        **env,
        "model_spec": model_spec(args),
        "layout": layout.__dict__,
        "width": tower.width,
        "samples": args.samples,
        "batch": args.batch,
        "seed": args.seed,
        "authors_bytes_per_sample": authors,
        "unit_map_bytes": map_bytes,
        "results": results,
        "seconds": seconds,
        "headline_dtype": headline_dtype,
        "ratio_target": RATIO_TARGET,
        "readback_target": READBACK_TARGET,
        "pass": passed and all(r["readback_error"] <= READBACK_TARGET for r in results.values()),
    }
    report(name, args.out_dir, text, record)


if __name__ == "__main__":
    main()

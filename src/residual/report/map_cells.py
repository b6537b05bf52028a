"""The cells of a head maps picture (`residual.report.map_charts`): one maps file
(`residual.heads.maps`) drawn as one overlay image per head x map x test image."""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping

import numpy as np
import polars as pl
import torch
from PIL import Image
from torch import Tensor

from residual.heads.maps import CLASS_MAP, HeadMaps
from residual.report.map_charts import ALPHA, COLOURS, DISPLAY

LUMINANCE = np.array([0.299, 0.587, 0.114])  # ITU-R BT.601 weights of R, G, B


def overlay(pixels: Tensor, patches: Tensor, scale: float) -> str:
    """The image [H, W, 3] uint8 in grey with patch values [rows, columns] drawn over it in colour
    (value / scale in [-1, 1]: colour by `COLOURS`, opacity ALPHA * |value / scale|), as a PNG data
    URL DISPLAY pixels on its longer side. Grey, so that every colour on it is the map's."""
    height, width = pixels.shape[:2]
    values = (patches.double() / scale).clamp(-1, 1)
    values = torch.nn.functional.interpolate(values[None, None], size=(height, width), mode="nearest")[0, 0].numpy()
    stops = np.array(list(COLOURS))
    colours = np.array(list(COLOURS.values()), dtype=np.float64)
    tint = np.stack([np.interp(values, stops, colours[:, channel]) for channel in range(3)], axis=-1)
    alpha = ALPHA * np.abs(values)[..., None]
    grey = pixels.numpy().astype(np.float64) @ LUMINANCE
    blended = (1 - alpha) * grey[..., None] + alpha * tint
    image = Image.fromarray(np.round(blended).astype(np.uint8))
    factor = DISPLAY / max(height, width)
    size = (max(1, round(width * factor)), max(1, round(height * factor)))
    image = image.resize(size, Image.Resampling.NEAREST if factor >= 1 else Image.Resampling.BOX)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def map_label(maps: HeadMaps, head: int, kind: int) -> str:
    name = maps.maps[kind]
    if name == CLASS_MAP:
        return "true class"
    return f"{name.upper()} ({float(maps.ratios[head, kind]):.0%} of its variance)"


def map_cells(maps: HeadMaps, texts: Mapping[str, list[str]]) -> pl.DataFrame:
    """One row per head x drawn map x image, in that order: model, dataset, unit, map, row (the
    picture's row label), image (its column label), true, predicted, overlay (a PNG data URL), peak
    (the signed value of its largest patch over the row's scale), scale (the row's largest |patch
    value|), patches, prefix (CLS and registers), offset and total (their sum: the head's value
    along the map's direction), texts (lines beside the row: `texts[unit]` on the class map)."""
    prefix = len(maps.prefix)
    patches = maps.patches  # [I, K, M, rows, columns]
    columns = [
        f"{index + 1}. {maps.classes[label]} / {maps.classes[predicted]}"
        for index, (label, predicted) in enumerate(zip(maps.labels.tolist(), maps.predictions.tolist()))
    ]
    records = []
    for head, unit in enumerate(maps.heads):
        for kind, name in enumerate(maps.maps):
            if not bool(maps.drawn[head, kind]):
                continue
            row = patches[:, head, kind]  # [I, rows, columns]
            largest = float(row.abs().max())
            scale = largest if largest > 0 else 1.0
            for image, column in enumerate(columns):
                cell = row[image].flatten()
                part = maps.values[image, head, kind]
                records.append(
                    {
                        "model": maps.metadata["model"],
                        "dataset": maps.metadata["dataset"],
                        "unit": unit,
                        "map": name,
                        "row": f"{unit}: {map_label(maps, head, kind)}",
                        "image": column,
                        "true": maps.classes[int(maps.labels[image])],
                        "predicted": maps.classes[int(maps.predictions[image])],
                        "overlay": overlay(maps.images[image], row[image], scale),
                        "peak": float(cell[cell.abs().argmax()]) / scale,
                        "scale": largest,
                        "patches": float(part[prefix:].sum()),
                        "prefix": float(part[:prefix].sum()),
                        "offset": float(maps.offsets[image, head, kind]),
                        "total": float(part.sum() + maps.offsets[image, head, kind]),
                        "texts": list(texts.get(unit, [])) if name == CLASS_MAP else [],
                    }
                )
    return pl.DataFrame(records, schema_overrides={"texts": pl.List(pl.String)})

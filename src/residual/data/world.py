"""A world whose truth is known: procedurally rendered images with independent planted attributes.

Every image is a coloured glyph on a patterned grey background, in one of four regions of a
32 x 32 canvas. Its attributes (`ATTRIBUTES`: shape, colour, background, position, size) are drawn
uniformly and independently for every image from the run's seed, and recorded. Each image also has
a caption from a small grammar that names a random, non-empty subset of its attributes in varied
order and wording, and never a false one (as alt-text does: not every caption names everything).

Two disjoint streams of images are drawn from one seed: `TASKS`, the images of the world's task
datasets (one per attribute, `world_<attribute>`, classified by that attribute), and `PRETRAIN`,
the image-caption pairs a small CLIP is trained on (`residual.alignment.pretrain`). So the tasks
are evaluated on images the model never saw, as CLIP is on downstream datasets.

`named_attributes` reads back which attribute values a text names; it tags the world's description
dictionary (`dictionary_texts`, shipped as `builtin:world`) for the findings table.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from residual.data.sequences import DatasetError, Source

CANVAS = 32  # pixels per side of every rendered image
TASKS, PRETRAIN = 0, 1  # the two image streams drawn from one seed

# Attribute -> its values, in label order.
ATTRIBUTES: Mapping[str, tuple[str, ...]] = {
    "shape": ("circle", "square", "triangle", "cross", "ring", "diamond"),
    "colour": ("red", "green", "blue", "yellow", "magenta", "cyan"),
    "background": ("plain", "striped", "checkered", "dotted"),
    "position": ("top left", "top right", "bottom left", "bottom right"),
    "size": ("small", "large"),
}
NAMES = tuple(ATTRIBUTES)

# Zero-shot prompt templates per attribute task (`str.format` with the class name).
TEMPLATES: Mapping[str, tuple[str, ...]] = {
    "shape": ("a {}.", "a photo of a {}.", "a drawing of a {}."),
    "colour": ("a {} shape.", "something {}.", "a photo of a {} object."),
    "background": ("a shape on a {} background.", "a {} background.", "an object over a {} pattern."),
    "position": ("a shape in the {}.", "an object at the {}.", "something in the {} corner."),
    "size": ("a {} shape.", "a {} object."),
}

# Wordings a caption (or a dictionary text) may use for a value besides its name; `named_attributes`
# reads them back, so no wording may name another attribute's value.
SYNONYMS: Mapping[str, Mapping[str, tuple[str, ...]]] = {
    "background": {"striped": ("stripes",), "checkered": ("checkerboard", "checks"), "dotted": ("dots", "polka dots")},
    "size": {"small": ("tiny",), "large": ("big",)},
}
BACKGROUND_PHRASES = ("on a {} background", "over a {} background", "against a {} backdrop")
POSITION_PHRASES = ("in the {}", "at the {}", "in the {} corner", "placed at the {}")
OPENERS = ("a", "a photo of a", "an image of a", "there is a", "a picture of a")
NOUNS = ("shape", "object", "figure", "thing")  # the caption's noun when it does not name the shape
# Probability that a caption names each attribute (at least one is always named): as in alt-text,
# the object most often, where it is or what is behind it less. Colour and background are what a
# small ViT reads most easily; naming them in every caption would let the contrastive loss match
# pairs by them alone and leave shape and position unlearned (measured: both at chance after 3
# epochs with 0.6 for every attribute).
MENTION = {"shape": 0.8, "colour": 0.4, "background": 0.3, "position": 0.6, "size": 0.3}

# RGB of each colour; the glyph's colour is jittered around it per image.
RGB = {
    "red": (220, 40, 40),
    "green": (40, 190, 60),
    "blue": (50, 80, 235),
    "yellow": (230, 215, 40),
    "magenta": (215, 50, 210),
    "cyan": (40, 210, 220),
}
RADIUS = {"small": 4.5, "large": 6.5}
CENTRES = {"top left": (8, 8), "top right": (8, 24), "bottom left": (24, 8), "bottom right": (24, 24)}  # (row, column)


def sample_attributes(count: int, seed: int, stream: int) -> np.ndarray:
    """[count, len(NAMES)] int64: each image's value index of every attribute, uniform and independent."""
    rng = np.random.default_rng([seed, stream])
    sizes = [len(values) for values in ATTRIBUTES.values()]
    return np.stack([rng.integers(0, size, count) for size in sizes], axis=1).astype(np.int64)


def _values(row: np.ndarray) -> dict[str, str]:
    return {name: ATTRIBUTES[name][int(index)] for name, index in zip(NAMES, row)}


def _glyph(shape: str, dy: np.ndarray, dx: np.ndarray, radius: float) -> np.ndarray:
    """[H, W] bool mask of a glyph centred at (0, 0) in offsets dy, dx."""
    distance = np.hypot(dy, dx)
    if shape == "circle":
        return distance <= radius
    if shape == "square":
        return np.maximum(abs(dy), abs(dx)) <= radius * 0.8
    if shape == "triangle":  # apex up
        rows = (dy + radius) / (1.8 * radius)
        return (dy >= -radius) & (dy <= 0.8 * radius) & (abs(dx) <= rows * radius)
    if shape == "cross":
        arm = radius * 0.3
        return ((abs(dx) <= arm) & (abs(dy) <= radius)) | ((abs(dy) <= arm) & (abs(dx) <= radius))
    if shape == "ring":
        return (distance <= radius) & (distance >= radius * 0.55)
    if shape == "diamond":
        return abs(dy) + abs(dx) <= radius * 1.1
    raise ValueError(f"unknown shape {shape!r}")


def _background(pattern: str, rng: np.random.Generator) -> np.ndarray:
    """[H, W] float grey levels of a background pattern, with a random phase and contrast."""
    rows, cols = np.mgrid[0:CANVAS, 0:CANVAS]
    dark = rng.uniform(30, 80)
    light = dark + rng.uniform(50, 90)
    phase = rng.integers(0, 8, 2)
    if pattern == "plain":
        mask = np.zeros((CANVAS, CANVAS), bool)
    elif pattern == "striped":
        along = rows if rng.random() < 0.5 else cols
        mask = ((along + phase[0]) // 2) % 2 == 0
    elif pattern == "checkered":
        mask = (((rows + phase[0]) // 4) + ((cols + phase[1]) // 4)) % 2 == 0
    elif pattern == "dotted":
        mask = (((rows + phase[0]) % 5) < 2) & (((cols + phase[1]) % 5) < 2)
    else:
        raise ValueError(f"unknown background {pattern!r}")
    return np.where(mask, light, dark)


def render(row: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One image [CANVAS, CANVAS, 3] uint8 with the attribute values `row` ([len(NAMES)] indices)."""
    values = _values(row)
    grey = _background(values["background"], rng)
    image = np.repeat(grey[..., None], 3, axis=2)
    centre = np.asarray(CENTRES[values["position"]], float) + rng.uniform(-2, 2, 2)
    rows, cols = np.mgrid[0:CANVAS, 0:CANVAS]
    mask = _glyph(values["shape"], rows - centre[0], cols - centre[1], RADIUS[values["size"]] * rng.uniform(0.9, 1.1))
    colour = np.clip(np.asarray(RGB[values["colour"]], float) + rng.uniform(-20, 20, 3), 0, 255)
    image[mask] = colour
    image += rng.normal(0, 4, image.shape)
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def caption(row: np.ndarray, rng: np.random.Generator) -> str:
    """A caption naming a random non-empty subset of the attribute values `row`, in varied wording."""
    values = _values(row)
    named = [name for name in NAMES if rng.random() < MENTION[name]]
    if not named:
        named = [NAMES[int(rng.integers(len(NAMES)))]]

    def word(name: str) -> str:
        choices = (values[name], *SYNONYMS.get(name, {}).get(values[name], ()))
        return choices[int(rng.integers(len(choices)))]

    adjectives = [values[name] if name == "colour" else word(name) for name in ("size", "colour") if name in named]
    noun = values["shape"] if "shape" in named else NOUNS[int(rng.integers(len(NOUNS)))]
    phrase = " ".join([*adjectives, noun])
    opener = OPENERS[int(rng.integers(len(OPENERS)))]
    if opener.endswith(" a") and phrase[0] in "aeiou":
        opener += "n"
    tails = []
    if "background" in named:
        pattern = values["background"]
        synonyms = SYNONYMS["background"].get(pattern, ())
        tails.append(
            f"over {synonyms[int(rng.integers(len(synonyms)))]}"
            if synonyms and rng.random() < 0.3
            else BACKGROUND_PHRASES[int(rng.integers(len(BACKGROUND_PHRASES)))].format(pattern)
        )
    if "position" in named:
        tails.append(POSITION_PHRASES[int(rng.integers(len(POSITION_PHRASES)))].format(values["position"]))
    rng.shuffle(tails)
    if tails and rng.random() < 0.25:  # a leading phrase: "in the top left, a red circle"
        return f"{tails[0]}, {opener} {phrase}" + "".join(f" {tail}" for tail in tails[1:])
    return " ".join([f"{opener} {phrase}", *tails])


def _image_rng(seed: int, stream: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, stream, index])


def image(seed: int, stream: int, index: int, row: np.ndarray) -> np.ndarray:
    """Image `index` of a stream, [CANVAS, CANVAS, 3] uint8: the same on every machine and in any order."""
    return render(row, _image_rng(seed, stream, index))


def image_caption(seed: int, stream: int, index: int, row: np.ndarray) -> str:
    return caption(row, np.random.default_rng([seed, stream, index, 1]))


class WorldImages:
    """The `count` images of a stream as an `ImageSequence`, labelled by one attribute (label 0 for
    every image where `attribute` is None). Images are rendered when read: cheap, and seeded per image."""

    def __init__(self, count: int, seed: int, attribute: str | None, stream: int = TASKS) -> None:
        self.count, self.seed, self.stream = count, seed, stream
        self.attributes = sample_attributes(count, seed, stream)
        column = NAMES.index(attribute) if attribute is not None else None
        self.targets = [0] * count if column is None else self.attributes[:, column].tolist()

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        if not 0 <= index < self.count:
            raise IndexError(index)
        return Image.fromarray(image(self.seed, self.stream, index, self.attributes[index])), self.targets[index]


def pretrain_pairs(count: int, seed: int) -> tuple[np.ndarray, list[str], np.ndarray]:
    """The pretraining stream: images [count, CANVAS, CANVAS, 3] uint8, their captions, and their
    attributes [count, len(NAMES)] (value indices)."""
    attributes = sample_attributes(count, seed, PRETRAIN)
    images = np.stack([image(seed, PRETRAIN, index, row) for index, row in enumerate(attributes)])
    return images, [image_caption(seed, PRETRAIN, index, row) for index, row in enumerate(attributes)], attributes


def load_world_source(spec: Mapping[str, Any], root: Path | None, seed: int) -> Source:
    """A world dataset entry: `size` images of the task stream, classified by `attribute` (its
    values are the classes, `TEMPLATES` its prompts); without one, a single class (analysis only)."""
    attribute = spec.get("attribute")
    if attribute is not None and attribute not in ATTRIBUTES:
        raise DatasetError(f"world dataset: unknown attribute {attribute!r}; attributes: {list(ATTRIBUTES)}")
    images = WorldImages(int(spec.get("size", 3000)), seed, attribute)
    metadata = {"attribute": attribute or "none", "stream": "tasks"}
    if attribute is None:
        return Source({"all": images}, ["world"], metadata)
    return Source({"all": images}, list(ATTRIBUTES[attribute]), metadata, templates=list(TEMPLATES[attribute]))


def expand_world_datasets(datasets: Mapping[str, Any]) -> dict[str, Any]:
    """`datasets:` with every world entry that lists `attributes` followed by one task dataset per
    attribute, `<name>_<attribute>` (same images, split rule and size); the entry itself stays an
    analysis dataset (the attribute-free reference)."""
    expanded: dict[str, Any] = {}
    for name, spec in datasets.items():
        attributes = spec.get("attributes") if isinstance(spec, Mapping) and spec.get("loader") == "world" else None
        if attributes is None:
            expanded[name] = spec
            continue
        base = {key: value for key, value in spec.items() if key != "attributes"}
        expanded[name] = {**base, "role": "analysis"}
        for attribute in attributes:
            derived = f"{name}_{attribute}"
            if derived in datasets:
                raise DatasetError(f"datasets.{name}.attributes makes dataset {derived!r}, which the config also defines; rename one")
            expanded[derived] = {**base, "attribute": attribute, "role": "task"}
    return expanded


def _vocabulary() -> dict[str, list[tuple[str, str]]]:
    """attribute -> [(wording, value)], longest wording first (so 'polka dots' wins over 'dots')."""
    vocabulary = {}
    for name, values in ATTRIBUTES.items():
        words = [(value, value) for value in values] + [(synonym, value) for value, synonyms in SYNONYMS.get(name, {}).items() for synonym in synonyms]
        vocabulary[name] = sorted(words, key=lambda pair: -len(pair[0]))
    return vocabulary


def named_attributes(text: str) -> dict[str, list[str]]:
    """attribute -> the values of it that `text` names (whole words, case-insensitive)."""
    lowered = f" {' '.join(re.findall(r'[a-z]+', text.lower()))} "
    found: dict[str, list[str]] = {}
    for name, words in _vocabulary().items():
        remaining = lowered
        for wording, value in words:
            if f" {wording} " in remaining:
                found.setdefault(name, [])
                if value not in found[name]:
                    found[name].append(value)
                remaining = remaining.replace(f" {wording} ", " ")
    return found


def text_attribute(text: str) -> str | None:
    """The one attribute a dictionary text names, or None (it names none, or several)."""
    named = named_attributes(text)
    return next(iter(named)) if len(named) == 1 else None


DISTRACTORS = ("a picture", "an abstract image", "a simple drawing", "a computer graphic", "an icon", "a pattern of pixels")


def dictionary_texts() -> list[str]:
    """The world's description dictionary: texts that each name one attribute value, plus distractors
    that name none (`builtin:world` ships this list; a test keeps the two equal)."""
    texts: list[str] = []
    for value in ATTRIBUTES["shape"]:
        texts += [f"a {value}", f"a picture of a {value}", f"a {value} shape"]
    for value in ATTRIBUTES["colour"]:
        texts += [f"something {value}", f"a {value} object", f"the colour {value}"]
    for value in ATTRIBUTES["background"]:
        texts += [phrase.format(value) for phrase in BACKGROUND_PHRASES]
        texts += [f"a pattern of {synonym}" for synonym in SYNONYMS["background"].get(value, ())[:1]]
    for value in ATTRIBUTES["position"]:
        texts += [phrase.format(value) for phrase in POSITION_PHRASES[:3]]
    for value in ATTRIBUTES["size"]:
        texts += [f"a {value} object", f"something {SYNONYMS['size'][value][0]}"]
    return [*texts, *DISTRACTORS]


def world_task_names(datasets: Mapping[str, Any]) -> dict[str, str]:
    """Task dataset name -> the attribute it classifies, for every world task of a config's `datasets:`."""
    return {name: spec["attribute"] for name, spec in datasets.items() if spec.get("loader") == "world" and spec.get("attribute")}


def check_attributes(values: Sequence[str], key: str) -> None:
    unknown = [value for value in values if value not in ATTRIBUTES]
    if unknown:
        raise DatasetError(f"{key}: unknown world attributes {unknown}; attributes: {list(ATTRIBUTES)}")

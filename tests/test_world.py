"""The planted-attribute world: seeded images, independent attributes, captions that never lie."""

from __future__ import annotations

from importlib.resources import files

import numpy as np
import pytest
from scipy.stats import chi2_contingency

from residual.config.errors import ConfigError
from residual.config.validate import validate_config
from residual.data import world
from residual.data.sources import class_templates, load_source


def test_attributes_are_seeded_uniform_and_independent():
    values = world.sample_attributes(6000, seed=3, stream=world.TASKS)
    assert np.array_equal(values, world.sample_attributes(6000, seed=3, stream=world.TASKS))
    assert not np.array_equal(values, world.sample_attributes(6000, seed=3, stream=world.PRETRAIN))
    for column, name in enumerate(world.NAMES):
        counts = np.bincount(values[:, column], minlength=len(world.ATTRIBUTES[name]))
        assert counts.min() > 0.8 * len(values) / len(counts)
    # Every pair of attributes: no dependence a chi-squared test would notice (p fixed at 0.001).
    for first in range(len(world.NAMES)):
        for second in range(first + 1, len(world.NAMES)):
            table = np.zeros((len(world.ATTRIBUTES[world.NAMES[first]]), len(world.ATTRIBUTES[world.NAMES[second]])))
            np.add.at(table, (values[:, first], values[:, second]), 1)
            assert chi2_contingency(table).pvalue > 1e-3


def test_images_are_seeded_per_image_and_show_their_attributes():
    row = np.array([0, 0, 0, 0, 1])  # a large red circle on a plain background, top left
    one, again = world.image(7, world.TASKS, 5, row), world.image(7, world.TASKS, 5, row)
    assert one.shape == (world.CANVAS, world.CANVAS, 3) and one.dtype == np.uint8
    assert np.array_equal(one, again)
    assert not np.array_equal(one, world.image(7, world.TASKS, 6, row))
    red = (one[..., 0] > 150) & (one[..., 1] < 110) & (one[..., 2] < 110)
    rows, cols = np.nonzero(red)
    assert red.sum() > 60 and rows.mean() < 16 and cols.mean() < 16  # the glyph is where its position says
    moved = world.image(7, world.TASKS, 5, np.array([0, 0, 0, 3, 1]))  # bottom right
    rows, cols = np.nonzero((moved[..., 0] > 150) & (moved[..., 1] < 110))
    assert rows.mean() > 16 and cols.mean() > 16


def test_captions_name_only_true_attributes_in_varied_wording():
    values = world.sample_attributes(3000, seed=1, stream=world.PRETRAIN)
    captions = [world.image_caption(1, world.PRETRAIN, index, row) for index, row in enumerate(values)]
    named_counts = dict.fromkeys(world.NAMES, 0)
    for caption, row in zip(captions, values):
        named = world.named_attributes(caption)
        assert named, caption
        for name, found in named.items():
            assert found == [world.ATTRIBUTES[name][row[world.NAMES.index(name)]]], (caption, name, found)
            named_counts[name] += 1
    # Each attribute is named in some captions but not all (as alt-text), and wording varies.
    for name, count in named_counts.items():
        assert abs(count / len(captions) - world.MENTION[name]) < 0.05, named_counts  # at least one is always named
    assert len(set(captions)) > 0.8 * len(captions)
    assert any(caption.startswith(("in the", "at the", "on a", "over", "against", "placed")) for caption in captions)


def test_named_attributes_reads_synonyms_and_whole_words():
    assert world.named_attributes("a tiny cyan ring over polka dots") == {
        "colour": ["cyan"], "shape": ["ring"], "background": ["dotted"], "size": ["small"]
    }  # fmt: skip
    assert world.named_attributes("a redder thing") == {}
    assert world.text_attribute("in the top left corner") == "position"
    assert world.text_attribute("a red circle") is None  # names two attributes
    assert world.text_attribute("an abstract image") is None


def test_dictionary_ships_the_generated_texts_each_naming_at_most_one_attribute():
    shipped = files("residual.descriptions").joinpath("texts/world.txt").read_text(encoding="utf-8").splitlines()
    assert shipped == world.dictionary_texts()
    tags = [world.text_attribute(text) for text in shipped]
    assert {tag for tag in tags if tag} == set(world.NAMES)
    assert sum(tag is None for tag in tags) == len(world.DISTRACTORS)


def test_one_entry_makes_one_task_per_attribute_with_its_classes_and_templates():
    config = validate_config(
        {
            "models": {"m": {"library": "open_clip", "arch": "ViT-B-32", "pretrained": None}},
            "datasets": {"world": {"loader": "world", "size": 50, "attributes": ["colour", "position"], "split": {"rule": "resplit", "val": 0.2, "test": 0.2}}},
        }
    )
    datasets = config["datasets"]
    assert list(datasets) == ["world", "world_colour", "world_position"]
    assert datasets["world"]["role"] == "analysis" and datasets["world_colour"]["role"] == "task"
    assert world.world_task_names(datasets) == {"world_colour": "colour", "world_position": "position"}
    source = load_source("world_colour", datasets["world_colour"], seed=4)
    assert source.classes == list(world.ATTRIBUTES["colour"])
    assert class_templates(source, datasets["world_colour"]) == list(world.TEMPLATES["colour"])
    labels = source.labels("all")
    reference = load_source("world", datasets["world"], seed=4)
    assert reference.classes == ["world"] and set(reference.labels("all")) == {0}
    image, label = source.parts["all"][3]
    assert image.size == (world.CANVAS, world.CANVAS) and label == labels[3]
    assert np.array_equal(np.asarray(image), np.asarray(reference.parts["all"][3][0]))  # the same images in every task


def test_a_derived_name_that_the_config_also_defines_is_refused():
    with pytest.raises(ConfigError, match="world_colour"):
        validate_config(
            {
                "models": {"m": {"library": "open_clip", "arch": "ViT-B-32", "pretrained": None}},
                "datasets": {
                    "world": {"loader": "world", "attributes": ["colour"], "split": {"rule": "resplit", "val": 0.2, "test": 0.2}},
                    "world_colour": {"loader": "digits", "split": {"rule": "resplit", "val": 0.2, "test": 0.2}},
                },
            }
        )


def test_a_pretrained_model_takes_the_rule_checkpoint_and_refuses_another():
    spec = {"library": "open_clip", "arch": "ViT-B-32", "pretrained": None, "pretrain": {"images": 64}}
    datasets = {"digits": {"loader": "digits", "split": {"rule": "resplit", "val": 0.2, "test": 0.2}}}
    config = validate_config({"models": {"tiny": dict(spec)}, "datasets": dict(datasets)})
    assert config["models"]["tiny"]["pretrained"] == "results/pretrain/tiny.safetensors"
    assert config["models"]["tiny"]["pretrain"]["epochs"] >= 1  # defaults filled in
    with pytest.raises(ConfigError, match="models.tiny.pretrained"):
        validate_config({"models": {"tiny": {**spec, "pretrained": "other.safetensors"}}, "datasets": dict(datasets)})
    with pytest.raises(ConfigError, match="only open_clip"):
        validate_config({"models": {"tiny": {**spec, "library": "timm"}}, "datasets": dict(datasets)})

"""Reliability (issue 4) for the rules that exist: split, unit_map, encode, decomposition_table.

1. config mistakes stop a run before any job, naming the key and what to do (`residual.config.preflight`);
2. bad files (unit files, unit maps, checkpoints, dataset folders, split tables) raise our own
   errors naming the file;
3. an encode job killed midway (SIGKILL, SIGTERM) leaves nothing a rerun accepts, and the rerun
   equals an uninterrupted run;
4. runs from scratch are bit-identical on the CPU;
5. NaN/Inf in units stops the encode job naming the unit, the samples and the file;
6. nothing loads pickles, evaluates strings or hands config values to a shell.
"""

from __future__ import annotations

import ast
import inspect
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fake_datasets
import polars as pl
import pyarrow.parquet as pq
import pytest
import torch
from conftest import REPO, digest, results
from polars.testing import assert_frame_equal
from safetensors.torch import save_file
from snakemake_runs import TINY, command, copy_run, snakemake, tiny_config, write_config

from residual import load_model, read_units
from residual.config.errors import ConfigError
from residual.config.preflight import (
    PreflightError,
    check_config,
    missing_inputs,
    require_inputs,
)
from residual.config.validate import load_config, validate_config
from residual.data.sequences import DatasetError
from residual.data.sources import load_source
from residual.data.splits import read_split, split_table
from residual.models.loaded import LoadedModel, ModelSpecError
from residual.report.outputs import RunShape, table_kinds
from residual.report.tables import decomposition_table
from residual.units.decompose import decompose
from residual.units.encode import EncodeSettings, encode_split
from residual.units.guards import NonFiniteError
from residual.units.store import UnitFile, UnitFileError
from residual.units.unit_map import UnitMap

SPLIT_RULE = {"rule": "resplit", "val": 0.1, "test": 0.1}


def with_datasets(config: dict[str, Any], datasets: dict[str, Any]) -> dict[str, Any]:
    """`config` on other datasets: the keys that name the tiny config's datasets go back to their
    defaults (the reference is then the first dataset, or imagenet)."""
    config["datasets"] = datasets
    config.pop("reference_dataset", None)
    config["analysis"].pop("id_datasets", None)
    return config


def tiny_model_spec() -> dict[str, Any]:
    return tiny_config()["models"]["dino_tiny"]


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("network access")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


# 1. Config mistakes ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: c["models"]["clip_tiny"].update(archh="ViT-B-32"), r"models\.clip_tiny.*'archh' was unexpected.*allowed keys"),
        (lambda c: c["encode"].update(batch_size="big"), r"encode\.batch_size.*'big' is not of type 'integer'"),
        (lambda c: c["models"]["clip_tiny"].update(library="keras"), r"models\.clip_tiny\.library.*'keras'"),
        (lambda c: c["datasets"]["random"]["split"].update(rule="kfold"), r"datasets\.random\.split\.rule"),
    ],
)
def test_schema_errors_name_the_key(change, message: str) -> None:
    config = tiny_config()
    change(config)
    with pytest.raises(ConfigError, match=message):
        validate_config(config)


def test_preflight_lists_every_problem_with_its_key(tmp_path: Path, no_network: None) -> None:
    config = tiny_config()
    config["models"] = {
        "clip_typo": {"library": "open_clip", "arch": "ViT-L-15", "pretrained": None},
        "clip_tag": {"library": "open_clip", "arch": "ViT-L-14", "pretrained": "laion9b"},
        "vit_typo": {"library": "timm", "arch": "vit_large_patch16_2240", "pretrained": None},
        "vit_tag": {"library": "timm", "arch": "vit_large_patch16_224", "pretrained": "in99k"},
        "vit_file": {"library": "timm", "arch": "vit_large_patch16_224", "pretrained": str(tmp_path / "nope.safetensors")},
        "blip_kwargs": {"library": "transformers", "arch": "Salesforce/blip-itm-base-coco", "pretrained": None, "kwargs": {"a": 1}},
        "appendix": {"library": "timm", "arch": "not_a_model", "pretrained": None, "appendix": True},  # not run: not checked
    }
    with_datasets(config, {
        "typo": {"loader": "cifar1O", "root": str(tmp_path), "split": SPLIT_RULE},
        "rootless": {"loader": "imagenet", "split": {"rule": "holdout", "val": 0.2}},
        "sized": {"loader": "digits", "size": 10, "split": SPLIT_RULE},
        "greedy": {"loader": "random", "split": {"rule": "resplit", "val": 0.5, "test": 0.5}},
    })
    validate_config(config)
    with pytest.raises(PreflightError) as caught:
        check_config(config)
    message = str(caught.value)
    for expected in [
        "models.clip_typo.arch: open_clip has no architecture 'ViT-L-15' (did you mean ",
        "models.clip_tag.pretrained: open_clip has no weights 'laion9b' for 'ViT-L-14'; its tags are ['openai'",
        "models.vit_typo.arch: timm has no architecture 'vit_large_patch16_2240' (did you mean 'vit_large_patch16_224', ",
        "models.vit_tag.pretrained: timm has no weights 'in99k'",
        f"models.vit_file.pretrained: checkpoint file '{tmp_path / 'nope.safetensors'}' does not exist",
        "models.blip_kwargs.kwargs: only an architecture class (CLIPModel, ",
        "datasets.typo.loader: unknown loader 'cifar1O' (did you mean 'cifar10'",
        "datasets.rootless.root: loader 'imagenet' reads files",
        "datasets.sized.size: only the 'random' and 'world' loaders take a size",
        "datasets.greedy.split: val 0.5 + test 0.5 leaves nothing for train",
    ]:
        assert expected in message, message
    assert "'ViT-L-14'" in message.splitlines()[1]
    assert "appendix" not in message and message.startswith("config: the config names things that do not exist (10 problems)")


@pytest.mark.parametrize("path", ["config.yaml", "configs/demo.yaml", "configs/architectures.yaml", "tests/configs/tiny.yaml"])
def test_shipped_configs_pass_preflight(path: str, no_network: None) -> None:
    check_config(load_config(REPO / path))


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ({"library": "timm", "arch": "swin_tiny_patch4_window7_224"}, "SwinTransformer is not a plain timm VisionTransformer"),
        ({"library": "timm", "arch": "vit_base_patch16_224", "kwargs": {"global_pool": "avg"}}, "this timm ViT pools with 'avg'"),
        ({"library": "timm", "arch": "vit_medium_patch16_gap_256"}, "this timm ViT pools with 'avg'"),
        ({"library": "open_clip", "arch": "RN50"}, "ModifiedResNet is not an open_clip VisionTransformer"),
    ],
    ids=["swin", "average pooling by kwargs", "average pooling by design", "open_clip ResNet"],
)
def test_architectures_that_do_not_decompose_stop_the_preflight(model: dict[str, Any], message: str, no_network: None) -> None:
    """Found from the architecture alone (built without weights on the meta device), before any
    job: the splits no longer run first."""
    config = tiny_config()
    config["models"] = {"odd": {**model, "pretrained": None}}
    validate_config(config)
    with pytest.raises(PreflightError, match=rf"models\.odd\.arch: '{model['arch']}' does not decompose into residual units: {message}"):
        check_config(config)


def test_kwargs_the_library_rejects_stop_the_preflight(no_network: None) -> None:
    config = tiny_config()
    config["models"]["dino_tiny"]["kwargs"]["depht"] = 2
    validate_config(config)
    with pytest.raises(PreflightError, match=r"models\.dino_tiny\.kwargs: timm rejects .*'depht'.*; fix `kwargs`"):
        check_config(config)


def test_missing_data_is_named_with_what_to_do(tmp_path: Path, no_network: None) -> None:
    config = tiny_config()
    config["models"]["blip"] = {"library": "transformers", "arch": "no-such-org/no-such-blip", "pretrained": None}
    with_datasets(config, {
        "imagenet": {"loader": "imagenet", "root": str(tmp_path / "imagenet"), "split": {"rule": "holdout", "val": 0.2}},
        "cifar_kept": {"loader": "cifar10", "root": str(tmp_path / "c1"), "download": False, "split": SPLIT_RULE},
        "cifar_fetched": {"loader": "cifar10", "root": str(tmp_path / "c2"), "split": SPLIT_RULE},
        "pacs": {"loader": "pacs", "root": str(tmp_path / "pacs"), "split": SPLIT_RULE},
        "random": tiny_config()["datasets"]["random"],
    })
    validate_config(config)
    check_config(config)
    fake_datasets.pacs(tmp_path / "pacs")
    messages = missing_inputs(config)
    assert len(messages) == 3, messages
    imagenet, cifar, blip = messages
    assert imagenet.startswith(f"datasets.imagenet: {tmp_path / 'imagenet'} lacks train/, val/") and "image-net.org" in imagenet
    assert cifar.startswith(f"datasets.cifar_kept: {tmp_path / 'c1'} lacks cifar-10-batches-py/") and "`download: true`" in cifar
    assert blip.startswith("models.blip.arch: 'no-such-org/no-such-blip' is not in the local Hugging Face cache")
    assert missing_inputs(config, datasets={"pacs", "random"}, models={"clip_tiny"}) == []
    with pytest.raises(PreflightError, match=r"inputs are missing; no job was started \(1 problem\):\n  - datasets\.imagenet"):
        require_inputs(config, datasets={"imagenet"}, models=set())


def test_snakemake_stops_on_config_mistakes_before_any_job(tmp_path: Path) -> None:
    """Schema errors (test_schema_errors_name_the_key) stop Snakemake at the same place, while it reads the config."""
    config = tiny_config()
    config["models"]["clip_tiny"]["arch"] = "ViT-B-23"
    run = snakemake(tmp_path, "-n", config=config)
    assert run.returncode != 0, run.stdout + run.stderr
    assert "models.clip_tiny.arch: open_clip has no architecture 'ViT-B-23' (did you mean 'ViT-B-32'" in run.stdout + run.stderr
    assert not (tmp_path / "results").exists() and not (tmp_path / "logs").exists()


def test_missing_user_data_warns_in_dry_runs_and_stops_real_runs(tmp_path: Path) -> None:
    config = tiny_config()
    del config["models"]["clip_tiny"]
    config["datasets"]["imagenet"] = {"loader": "imagenet", "root": "data/imagenet", "split": {"rule": "holdout", "val": 0.2}}
    expected = f"datasets.imagenet: {tmp_path / 'data/imagenet'} lacks train/, val/. ImageNet needs a login"

    dry = snakemake(tmp_path, "-n", config=config)
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert "Preflight: a real run that needs this stops before its first job: " + expected in dry.stdout + dry.stderr

    real = snakemake(tmp_path, "--cores", "1", config=config)
    assert real.returncode != 0
    output = real.stdout + real.stderr
    assert "PreflightError" in output and "inputs are missing; no job was started" in output
    assert expected in output
    assert not (tmp_path / "results").exists() and not (tmp_path / "logs").exists()
    assert not list((tmp_path / ".snakemake/locks").glob("*")), "the lock must be released"


# 2. Bad files ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model() -> LoadedModel:
    return load_model(tiny_model_spec(), name="dino_tiny", device="cpu")


def encode_random(model: LoadedModel, folder: Path, split: str = "train") -> Path:
    """Encode one split of 40 random images into folder/units/<split>.parquet, beside the model's unit map."""
    source = load_source("random", {"loader": "random", "size": 40}, 42)
    rows = split_table(source, SPLIT_RULE, 42, "random").filter(pl.col("split") == split)
    unit_map = folder / "unit_map.safetensors"
    if not unit_map.exists():
        UnitMap.from_tower(model.tower).save(unit_map)
    output = folder / "units" / f"{split}.parquet"
    encode_split(model, source, rows, output, unit_map, EncodeSettings(batch_size=8, rows_per_group=8))
    return output


@pytest.fixture(scope="module")
def unit_file(model: LoadedModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return encode_random(model, tmp_path_factory.mktemp("units"))


def damaged_copies(path: Path, folder: Path) -> Iterator[tuple[str, Path]]:
    """Truncations, and bursts of flipped bytes all over the file (data pages, footer, metadata)."""
    data = path.read_bytes()
    (folder / "unit_map.safetensors").write_bytes((path.parent.parent / "unit_map.safetensors").read_bytes())
    (folder / "units").mkdir(exist_ok=True)
    copy = folder / "units" / path.name
    for size in (0, 3, len(data) // 2, len(data) - 1):
        copy.write_bytes(data[:size])
        yield f"truncated to {size} bytes", copy
    for position in range(16, len(data) - 16, len(data) // 25):
        damaged = bytearray(data)
        damaged[position : position + 4] = bytes(255 - byte for byte in damaged[position : position + 4])
        copy.write_bytes(bytes(damaged))
        yield f"bytes {position}..{position + 3} flipped", copy


def test_damaged_unit_files_are_reported_with_their_path(unit_file: Path, tmp_path: Path) -> None:
    reference = read_units(unit_file)
    for damage, path in damaged_copies(unit_file, tmp_path):
        try:
            units = read_units(path)
        except UnitFileError as error:
            assert str(path) in str(error), (damage, error)
            continue
        # A flip may hit bytes nobody reads (padding, statistics); what is read must then be exact.
        assert torch.equal(units.values, reference.values) and torch.equal(units.sample_ids, reference.sample_ids), damage
    truncated = tmp_path / "units/truncated.parquet"
    truncated.write_bytes(unit_file.read_bytes()[:-1])
    with pytest.raises(UnitFileError, match=re.escape(f"unit file {truncated} is unreadable")):
        decomposition_table([truncated], "tiny")


def test_unit_file_metadata_must_match_its_columns(unit_file: Path, tmp_path: Path) -> None:
    table = pq.read_table(unit_file)
    metadata = json.loads(pq.ParquetFile(unit_file).metadata.metadata[b"residual"])
    path = tmp_path / "units/train.parquet"
    path.parent.mkdir()
    for residual, expected in [
        (b'{"format": "residual-units/1", "layout": {', "could not be read (Expecting property name"),
        (json.dumps({"format": "residual-units/1"}).encode(), "lacks metadata ['layout', 'dtype', 'units', 'samples'"),
        (json.dumps({**metadata, "samples": 7}).encode(), f"holds {table.num_rows} rows and columns that do not match"),
        (json.dumps({**metadata, "layout": {**metadata["layout"], "heads": 4}}).encode(), "do not match its metadata"),
    ]:
        pq.write_table(table.replace_schema_metadata({b"residual": residual}), path)
        with pytest.raises(UnitFileError, match=re.escape(f"{path}") + ".*" + re.escape(expected)):
            read_units(path)


def test_damaged_unit_map_is_reported_with_its_path(model: LoadedModel, unit_file: Path, tmp_path: Path) -> None:
    shutil.copytree(unit_file.parent.parent, tmp_path / "copy")
    unit_map = tmp_path / "copy/unit_map.safetensors"
    unit_map.write_bytes(unit_map.read_bytes()[:100])
    with pytest.raises(UnitFileError, match=f"unit file {tmp_path / 'copy/units/train.parquet'}.*{unit_map}"):
        read_units(tmp_path / "copy/units/train.parquet")
    with pytest.raises(UnitFileError, match=f"unit map {unit_map} is unreadable.*rerun the unit_map rule"):
        encode_random(model, tmp_path / "copy", split="val")


@pytest.mark.parametrize("damage", ["wrong shapes", "truncated", "not a checkpoint", "NaN"])
@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_bad_checkpoints_name_the_file(model: LoadedModel, tmp_path: Path, damage: str, suffix: str) -> None:
    spec = tiny_model_spec()
    state = {key: value.clone().contiguous() for key, value in model.module.state_dict().items()}
    if damage == "wrong shapes":
        other = {**spec, "kwargs": {**spec["kwargs"], "embed_dim": 24}}
        state = {key: value.contiguous() for key, value in load_model(other, device="cpu").module.state_dict().items()}
    if damage == "NaN":
        state["blocks.1.attn.qkv.weight"][0, 0] = float("nan")
    path = tmp_path / f"weights{suffix}"
    save_file(state, str(path)) if suffix == ".safetensors" else torch.save(state, path)
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:-100])
    if damage == "not a checkpoint":
        path.write_text("<html>404 Not Found</html>")
    expected = {
        "wrong shapes": f"checkpoint {path} does not fit timm 'vit_small_patch14_reg4_dinov2'",
        "truncated": f"checkpoint {path} cannot be read as timm 'vit_small_patch14_reg4_dinov2' weights",
        "not a checkpoint": f"checkpoint {path} cannot be read",
        "NaN": f"parameter 'blocks.1.attn.qkv.weight' holds NaN or Inf after loading weights '{path}'",
    }[damage]
    with pytest.raises(ModelSpecError) as caught:
        load_model({**spec, "pretrained": str(path)}, name="dino_tiny", device="cpu")
    assert str(caught.value).startswith("model 'dino_tiny': ") and expected in str(caught.value), caught.value


def test_constructor_errors_name_the_kwargs() -> None:
    spec = tiny_model_spec()
    with pytest.raises(ModelSpecError, match=r"model 'dino_tiny': timm rejects `kwargs` .*'depht'.*; fix `kwargs`"):
        load_model({**spec, "kwargs": {**spec["kwargs"], "depht": 2}}, name="dino_tiny", device="cpu")


def test_dataset_folders_missing_classes_or_images(tmp_path: Path) -> None:
    spec = {"loader": "pacs", "root": str(tmp_path / "pacs"), "split": SPLIT_RULE}
    fake_datasets.pacs(tmp_path / "pacs")
    shutil.rmtree(tmp_path / "pacs/sketch/horse")
    with pytest.raises(DatasetError, match=f"the domain folders under {tmp_path / 'pacs'} hold different class folders"):
        load_source("pacs", spec)
    (tmp_path / "pacs/sketch/horse").mkdir()  # the class folder is back, empty
    with pytest.raises(DatasetError, match=f"dataset 'pacs': torchvision cannot read {tmp_path / 'pacs'}.*horse"):
        load_source("pacs", spec)
    for index in range(4):
        fake_datasets.write_image(tmp_path / f"pacs/sketch/horse/pic_{index:03d}.jpg", fake_datasets.PACS.index("horse"))
    broken = tmp_path / "pacs/photo/guitar/pic_002.jpg"
    broken.write_bytes(broken.read_bytes()[:40])
    images = load_source("pacs", spec).parts["all"]
    with pytest.raises(DatasetError, match=re.escape(f"image file {broken} cannot be decoded (")):
        for index in range(len(images)):
            images[index]

    wnids = fake_datasets.wnids()[:999]  # one class short: labels would shift onto the wrong names
    for folder in ("train", "val"):
        fake_datasets.folder_tree(tmp_path / "imagenet" / folder, wnids, 1, lambda wnid, i: f"{wnid}.JPEG")
    with pytest.raises(DatasetError, match="dataset 'imagenet': the files hold 999 classes, OpenAI's list has 1000"):
        load_source("imagenet", {"loader": "imagenet", "root": str(tmp_path / "imagenet")})


def test_empty_or_damaged_splits_name_the_file(tmp_path: Path) -> None:
    source = load_source("random", {"loader": "random", "size": 2}, 0)
    with pytest.raises(DatasetError, match=r"dataset 'random': 1 samples of 1 classes cannot be split so .*too few samples"):
        split_table(source, SPLIT_RULE, 0, "random")
    digits = load_source("digits", {"loader": "digits"}, 0)
    with pytest.raises(DatasetError, match=r"dataset 'digits': 30 samples of 10 classes cannot be split so \(The test_size"):
        split_table(digits, {**SPLIT_RULE, "subset": 30}, 0, "digits")
    table = split_table(load_source("random", {"loader": "random", "size": 40}, 0), SPLIT_RULE, 0, "random")
    path = tmp_path / "random.parquet"
    table.filter(pl.col("split") != "val").write_parquet(path)
    with pytest.raises(DatasetError, match=f"split table {path} has no rows for split 'val'"):
        read_split(path, "val")
    assert read_split(path, "test").height == 4
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(DatasetError, match=f"split table {path} is unreadable .*rerun the split rule"):
        read_split(path, "test")


# 5. Numerical guards ---------------------------------------------------------------------------


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_units_stop_encoding_naming_unit_samples_and_file(tmp_path: Path, value: float) -> None:
    broken = load_model(tiny_model_spec(), name="dino_tiny", device="cpu")
    UnitMap.from_tower(broken.tower).save(tmp_path / "unit_map.safetensors")
    with torch.no_grad():  # layer 1's heads blow up; emb, layer 0 and every unit map entry stay finite
        broken.module.blocks[1].attn.qkv.weight[:, 0] = value
    output = tmp_path / "units/train.parquet"
    with pytest.raises(NonFiniteError) as caught:
        encode_random(broken, tmp_path)
    message = str(caught.value)
    assert message.startswith(f"encode {output}: model 'dino_tiny', batch of samples ")
    assert "unit 'head_1_0' (the first in forward order; " in message and " holds NaN or Inf for samples " in message
    rows = split_table(load_source("random", {"loader": "random", "size": 40}, 42), SPLIT_RULE, 42, "random")
    first_batch = rows.filter(pl.col("split") == "train")["sample_id"].to_list()[:8]
    assert f"for samples {', '.join(map(str, first_batch))}." in message
    assert not output.exists() and not list(output.parent.glob("*")), "nothing may be left, not even a temporary"

    with pytest.raises(NonFiniteError, match=r"decompose with model 'dino_tiny': unit 'head_1_0' .* for samples 0, 1, 2\."):
        decompose(broken, torch.randn(3, 3, 28, 28))


# 3 and 4. Interruptions and determinism, end to end ----------------------------------------------

UNITS = "results/units/dino_tiny/random"


def slow_config() -> dict[str, Any]:
    """One tiny model on 600 random images encoded one at a time: the train split takes ~1 s to write."""
    config = tiny_config()
    config["models"] = {"dino_tiny": config["models"]["dino_tiny"]}
    with_datasets(config, {"random": {**config["datasets"]["random"], "size": 600}})
    config["encode"]["batch_size"] = 1
    return config


TARGETS = [f"{UNITS}/{split}.parquet" for split in ("train", "val", "test")] + [
    f"results/tables/decomposition.{ext}" for ext in ("parquet", "csv", "md")
]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted run from scratch."""
    workdir = tmp_path_factory.mktemp("reference")
    run = snakemake(workdir, "--cores", "2", *TARGETS, config=slow_config())
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return workdir


def interrupt(workdir: Path, sig: signal.Signals, *targets: str, watch: str = f"{UNITS}/.train.parquet.*.tmp", config: dict | None = None) -> None:
    """Start the workflow, and send `sig` to its whole process group as soon as a file matching
    `watch` appears that was not there before (one left by an earlier kill does not count). By
    default: while the encode job writes train.parquet."""
    config = config or slow_config()
    interrupted = command(workdir, "--cores", "2", *targets, configfiles=[write_config(workdir, config)])
    earlier = set(workdir.glob(watch))
    with open(workdir / "interrupted.log", "w") as log:
        process = subprocess.Popen(interrupted, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 300
        while not set(workdir.glob(watch)) - earlier:
            assert process.poll() is None and time.monotonic() < deadline, (workdir / "interrupted.log").read_text()
            time.sleep(0.01)
        os.killpg(process.pid, sig)
        process.wait(timeout=120)


def assert_same_results(workdir: Path, reference: Path) -> None:
    found = results(workdir)
    assert found == results(reference)
    for name in found:
        if name.startswith("results/units/") and name.endswith(".parquet"):
            ours, theirs = read_units(workdir / name), read_units(reference / name)
            assert ours.names == theirs.names and torch.equal(ours.values, theirs.values)
            assert torch.equal(ours.embedding, theirs.embedding) and torch.equal(ours.sample_ids, theirs.sample_ids)
        if name.endswith(".parquet") and not name.startswith("results/units"):
            assert_frame_equal(pl.read_parquet(workdir / name), pl.read_parquet(reference / name))


def test_killed_encodes_leave_nothing_a_rerun_accepts_and_the_rerun_equals_an_uninterrupted_run(
    reference: Path, tmp_path: Path
) -> None:
    """SIGTERM, then SIGKILL, while train.parquet is written; then a rerun. This run starts from
    scratch too, in other processes, so it is also the determinism check."""
    train = tmp_path / UNITS / "train.parquet"
    interrupt(tmp_path, signal.SIGTERM, *TARGETS)
    assert not train.exists()
    assert not list((tmp_path / ".snakemake/locks").glob("*")), "SIGTERM: Snakemake releases its lock"

    interrupt(tmp_path, signal.SIGKILL, *TARGETS)
    temporaries = list((tmp_path / UNITS).glob(".train.parquet.*.tmp"))
    assert temporaries and not train.exists()
    with pytest.raises(UnitFileError):
        UnitFile(temporaries[0])  # a partial file without its footer: unreadable, and under a name no rule accepts

    assert snakemake(tmp_path, "--unlock", config=slow_config()).returncode == 0  # SIGKILL leaves Snakemake's lock
    rerun = snakemake(tmp_path, "--cores", "2", *TARGETS, config=slow_config())
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert "left by a writer that was killed" in (tmp_path / "logs/encode/dino_tiny/random/train.log").read_text()
    assert_same_results(tmp_path, reference)  # byte for byte; no temporary is left over


TRAINING = "results/train/clip_tiny/digits"


def slow_training_config() -> dict[str, Any]:
    """The whole tiny DAG for one model, with one variant trained for many short epochs (batches of
    8, no early stop) so that the job can be killed between epochs."""
    config = tiny_config()
    config["models"] = {"clip_tiny": config["models"]["clip_tiny"]}
    config["training"].update(variants=["residual_full"], epochs=150, patience=150, batch_size=8)
    return config


def test_killed_training_resumes_and_the_whole_run_equals_an_uninterrupted_one(
    tiny_run: tuple[Path, str], tmp_path_factory: pytest.TempPathFactory
) -> None:
    """SIGTERM, then SIGKILL, once the training job has saved an epoch; the rerun resumes from the
    saved epoch. Both runs start from copies of the completed tiny run, where the changed training
    settings rerun the training and everything after it (its tables in other processes, so those
    are also checked for run-to-run determinism; the encode test above checks the units')."""
    reference = copy_run(tiny_run[0], tmp_path_factory.mktemp("training_reference"))
    workdir = copy_run(tiny_run[0], tmp_path_factory.mktemp("training_killed"))
    run = snakemake(reference, "--cores", "2", config=slow_training_config())
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "rule train:" in run.stdout + run.stderr and "rule encode:" not in run.stdout + run.stderr, "only what follows the training reruns"
    checkpoint = f"{TRAINING}/.residual_full.resume.safetensors"
    assert not (reference / checkpoint).exists(), "a finished run removes its resume checkpoint"

    outputs = [workdir / TRAINING / f"residual_full.{suffix}" for suffix in ("parquet", "safetensors")]
    interrupt(workdir, signal.SIGTERM, watch=checkpoint, config=slow_training_config())
    assert not any(path.exists() for path in outputs)
    (workdir / checkpoint).unlink()  # the SIGKILL below must interrupt a later epoch of a fresh start
    interrupt(workdir, signal.SIGKILL, watch=checkpoint, config=slow_training_config())
    assert not any(path.exists() for path in outputs) and (workdir / checkpoint).exists()

    assert snakemake(workdir, "--unlock", config=slow_training_config()).returncode == 0
    rerun = snakemake(workdir, "--cores", "2", config=slow_training_config())
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert "resumed from" in (workdir / "logs/train/clip_tiny/digits/residual_full.log").read_text()
    assert_same_results(workdir, reference)
    tables = sorted(path.name for path in (reference / "results/tables").glob("*.parquet"))
    # The tiny run: 2 datasets, 1 task dataset (digits), 6 variants trained on units and one fine-tuned.
    kinds = table_kinds(RunShape(datasets=2, tasks=1, variants=7, world_tasks=0))
    assert tables == sorted(f"{kind}.parquet" for kind in kinds)


ENCODE_ONE_SPLIT = """
import sys, polars as pl, yaml
from pathlib import Path
from residual import load_model
from residual.data.sources import load_source
from residual.data.splits import split_table
from residual.units.encode import EncodeSettings, encode_split
from residual.units.unit_map import UnitMap
config, out = yaml.safe_load(open(sys.argv[1])), Path(sys.argv[2])
model = load_model({**config["models"]["clip_tiny"], "seed": config["seed"]}, name="clip_tiny", device="cpu")
source = load_source("digits", config["datasets"]["digits"], config["seed"])
rows = split_table(source, config["datasets"]["digits"]["split"], config["seed"], "digits").filter(pl.col("split") == "val")
UnitMap.from_tower(model.tower).save(out / "unit_map.safetensors")
encode_split(model, source, rows, out / "units/val.parquet", out / "unit_map.safetensors", EncodeSettings(batch_size=8, rows_per_group=16))
"""


def test_open_clip_on_digits_is_bit_identical_across_processes(tmp_path: Path) -> None:
    """The end-to-end runs above use timm on random images; this covers open_clip on real images,
    in two processes with different hash seeds (hash order is what made safetensors headers differ)."""
    runs = []
    for seed in ("1", "2"):
        (tmp_path / seed).mkdir()
        environment = {**os.environ, "PYTHONHASHSEED": seed}
        encode = [sys.executable, "-c", ENCODE_ONE_SPLIT, str(TINY), str(tmp_path / seed)]
        runs.append(subprocess.Popen(encode, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    for run in runs:
        assert run.wait(timeout=300) == 0, run.stdout.read().decode()[-3000:]
    for name in ("units/val.parquet", "unit_map.safetensors"):
        assert digest(tmp_path / "1" / name) == digest(tmp_path / "2" / name), name


# 6. Safe loading -------------------------------------------------------------------------------

UNSAFE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "shelve", "marshal", "joblib"}


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return node.id if isinstance(node, ast.Name) else ""


def _keyword_is(call: ast.Call, name: str, value: object) -> bool:
    return any(k.arg == name and isinstance(k.value, ast.Constant) and k.value.value is value for k in call.keywords)


def unsafe_calls(source: str) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            modules = [alias.name for alias in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
            found += [f"import {m}" for m in modules if m and m.split(".")[0] in UNSAFE_MODULES]
        if isinstance(node, (ast.Name, ast.Attribute)) and "pickle" in _dotted(node).lower():
            found.append(_dotted(node))
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        if name in ("eval", "exec", "compile", "__import__", "os.system", "os.popen", "yaml.load", "yaml.unsafe_load", "yaml.full_load"):
            found.append(name)
        if name.endswith("torch.load") and not _keyword_is(node, "weights_only", True):
            found.append("torch.load without weights_only=True")
        if _keyword_is(node, "shell", True) or _keyword_is(node, "allow_pickle", True):
            found.append(f"{name} with shell=True or allow_pickle=True")
    return found


def test_unsafe_call_scanner_catches_what_it_must() -> None:
    bad = "import pickle\nimport torch, yaml\ntorch.load(p)\nyaml.load(s)\neval(x)\nsubprocess.run(c, shell=True)\nnp.load(p, allow_pickle=True)\n"
    assert len(unsafe_calls(bad)) == 6
    assert unsafe_calls("torch.load(p, map_location='cpu', weights_only=True)\nyaml.safe_load(s)\nmodel.eval()\n") == []


def test_no_pickle_eval_or_shell_in_our_code() -> None:
    files = [*sorted((REPO / "src").rglob("*.py")), *sorted((REPO / "workflow_scripts").glob("*.py"))]
    found = {str(path.relative_to(REPO)): unsafe_calls(path.read_text()) for path in files}
    assert {path: calls for path, calls in found.items() if calls} == {}


def test_config_values_never_reach_a_shell() -> None:
    """Rules run `script:`s (the config arrives as Python objects); none builds a shell command."""
    shell = re.compile(r"^\s*(shell|run):|\bshell\(|\bsubprocess\b|\bos\.(system|popen)\b", re.M)
    for path in [REPO / "Snakefile", *sorted((REPO / "rules").glob("*.smk"))]:
        assert not shell.search(path.read_text()), f"{path.name} builds commands: config values could reach a shell"


def test_libraries_load_checkpoints_without_pickle_by_default() -> None:
    """timm and open_clip read `pretrained` files with torch.load(weights_only=True) unless told otherwise."""
    import open_clip
    import timm.models

    assert inspect.signature(timm.models.load_checkpoint).parameters["weights_only"].default is True
    assert inspect.signature(open_clip.create_model_and_transforms).parameters["weights_only"].default is True


def test_only_safe_yaml_reaches_the_config(tmp_path: Path) -> None:
    path = tmp_path / "evil.yaml"
    path.write_text("models: !!python/object/apply:os.system ['echo owned']\ndatasets: {}\n")
    with pytest.raises(ConfigError, match=re.escape(f"config file {path} is not valid YAML")):
        load_config(path)

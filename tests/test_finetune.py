"""The fine-tuning baseline on tiny models: which parameters it trains, one step's effect, resuming
after an interruption, and the paper's DAG planning one GPU job per model x task dataset."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_DINOV2, TINY_OPEN_CLIP
from torch import Tensor

from residual import load_model
from residual.alignment.classifier import ZeroShotClassifier, class_mean_classifier
from residual.alignment.finetune import FinetuneData, FinetuneRuntime, _Augmented, finetune, tower_parameters
from residual.alignment.options import FinetuneOptions
from residual.config.errors import ConfigError
from residual.data.sources import load_source
from residual.data.splits import split_table
from residual.models.loaded import LoadedModel
from residual.runtime.workflow import rule_context

RUNTIME = FinetuneRuntime(bf16=False, eval_batch_size=64, workers=0)


@pytest.fixture(scope="module")
def split_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A split table of 120 digits: 72 train, 24 val, 24 test."""
    source = load_source("digits", {"loader": "digits"}, 42)
    path = tmp_path_factory.mktemp("finetune") / "digits.parquet"
    split_table(source, {"rule": "resplit", "val": 0.2, "test": 0.2, "subset": 120}, 42, "digits").write_parquet(path)
    return path


def data_of(model: LoadedModel, split_path: Path, max_train_images: int | None = None) -> FinetuneData:
    source = load_source("digits", {"loader": "digits"}, 42)
    return FinetuneData.from_split(model, source, split_path, max_train_images, 42, {"dataset": "digits"})


def classifier_of(model: LoadedModel, data: FinetuneData) -> ZeroShotClassifier:
    """Class means of the val embeddings: a fixed classifier that depends on nothing trained."""
    images, labels, _ = next(iter(torch.utils.data.DataLoader(data.val, batch_size=len(data.val))))
    with torch.no_grad():
        weights = class_mean_classifier(model.tower.encode(images), labels, 10)
    return ZeroShotClassifier(weights, "normalized", 10.0)


def loss_on(model: LoadedModel, classifier: ZeroShotClassifier, images: Tensor, labels: Tensor) -> float:
    with torch.no_grad():
        return float(F.cross_entropy(classifier(model.tower.encode(images)), labels))


@pytest.mark.parametrize(("spec", "outside"), [(TINY_OPEN_CLIP, "visual."), (TINY_DINOV2, "head.")])
def test_the_tower_is_what_the_embedding_depends_on(spec: dict, outside: str) -> None:
    model = load_model(spec, device="cpu")
    names = tower_parameters(model)
    every = dict(model.module.named_parameters())
    if spec["library"] == "open_clip":  # the text tower and logit scale stay frozen
        assert set(names) == {name for name in every if name.startswith(outside)}
    else:  # the classifier head is unused: the embedding is the pooled CLS before it
        assert set(names) == {name for name in every if not name.startswith(outside)}


@pytest.mark.parametrize("images", [1, 70])
def test_a_train_image_budget_without_one_image_per_class_names_its_key(split_path: Path, images: int, tmp_path: Path) -> None:
    """72 train images of 10 classes: a stratified draw of 1, or of 70 (which leaves 2 out), is
    refused naming `finetune.max_train_images` and the range that works, not the split rule's keys,
    and the job ends on that one line."""
    model = load_model(TINY_DINOV2, device="cpu")
    expected = r"at `finetune\.max_train_images`: .* each of its 10 classes .*give between 10 and 62, or null"
    with pytest.raises(ConfigError, match=expected) as caught:
        data_of(model, split_path, max_train_images=images)
    assert "subset" not in str(caught.value)
    job = SimpleNamespace(threads=1, log=[str(tmp_path / "job.log")], rule="finetune")
    try:
        with pytest.raises(SystemExit) as exited, rule_context(job):
            data_of(model, split_path, max_train_images=images)
    finally:
        logging.getLogger().handlers.clear()  # rule_context configured logging into the job's log
    assert str(exited.value) == str(caught.value)


def test_one_step_changes_the_tower_and_lowers_the_loss(split_path: Path) -> None:
    model = load_model(TINY_OPEN_CLIP, device="cpu")
    data = data_of(model, split_path, max_train_images=20)
    classifier = classifier_of(model, data)
    before = {name: parameter.detach().clone() for name, parameter in model.module.named_parameters()}
    options = FinetuneOptions(logits="normalized", lr=1e-3, batch_size=20, epochs=1, seed=0, max_train_images=20)
    result = finetune(model, data, classifier, options, RUNTIME)  # 20 images, batch 20: one step
    after = dict(model.module.named_parameters())
    changed = {name for name in before if not torch.equal(before[name], after[name].detach())}
    assert changed and all(name.startswith("visual.") for name in changed)
    assert set(result.best_state) == set(tower_parameters(model)) and result.epochs_run == 1
    assert result.trainable_parameters == sum(p.numel() for name, p in after.items() if name.startswith("visual."))
    # The step's own batch, augmented as it was: its loss before the step is the epoch's train loss.
    augmented = _Augmented(data.train, options.seed)
    augmented.epoch = 1
    images, labels, _ = next(iter(torch.utils.data.DataLoader(augmented, batch_size=len(augmented))))
    assert loss_on(model, classifier, images, labels) < result.history[0]["train_loss"]


class _Killed(Exception):
    pass


class KilledAt(ZeroShotClassifier):
    """Raises at training step `step` (counted over epochs): the job killed mid-epoch."""

    def __init__(self, classifier: ZeroShotClassifier, step: int) -> None:
        super().__init__(classifier.weights, classifier.logits, classifier.scale)
        self.step, self.steps = step, 0

    def forward(self, representation: Tensor) -> Tensor:
        if torch.is_grad_enabled():
            self.steps += 1
            if self.steps == self.step:
                raise _Killed
        return super().forward(representation)


def test_resume_after_a_kill_equals_an_uninterrupted_run(tmp_path, split_path: Path, caplog) -> None:
    options = FinetuneOptions(logits="raw", lr=1e-4, batch_size=8, epochs=3, patience=5, max_train_images=24, seed=3)

    def fresh() -> tuple[LoadedModel, FinetuneData, ZeroShotClassifier]:
        model = load_model(TINY_DINOV2, device="cpu")
        data = data_of(model, split_path, options.max_train_images)
        return model, data, classifier_of(model, data)

    model, data, classifier = fresh()
    straight = finetune(model, data, classifier, options, RUNTIME, tmp_path / "straight.safetensors")
    checkpoint = tmp_path / "killed.safetensors"
    model, data, classifier = fresh()
    with pytest.raises(_Killed):  # 3 steps per epoch: killed at the second step of epoch 2
        finetune(model, data, KilledAt(classifier, step=5), options, RUNTIME, checkpoint)
    assert checkpoint.is_file()
    model, data, classifier = fresh()
    with caplog.at_level("INFO"):
        resumed = finetune(model, data, classifier, options, RUNTIME, checkpoint)
    assert "resumed from" in caplog.text and "after epoch 1" in caplog.text
    # The same operations in the same order on one CPU: the bits agree, hence zero tolerance.
    assert resumed.history == straight.history and resumed.epochs_run == 3
    assert (resumed.test_accuracy, resumed.best_epoch) == (straight.test_accuracy, straight.best_epoch)
    torch.testing.assert_close(resumed.best_state, straight.best_state, rtol=0, atol=0)


def test_a_checkpoint_of_other_options_is_not_resumed(tmp_path, split_path: Path, caplog) -> None:
    model = load_model(TINY_DINOV2, device="cpu")
    data = data_of(model, split_path, 16)
    options = FinetuneOptions(logits="raw", lr=1e-4, batch_size=8, epochs=1, max_train_images=16, seed=3)
    finetune(model, data, classifier_of(model, data), options, RUNTIME, tmp_path / "run.safetensors")
    model = load_model(TINY_DINOV2, device="cpu")
    result = finetune(model, data, classifier_of(model, data), FinetuneOptions(**{**options.params(), "lr": 2e-4}), RUNTIME,
                      tmp_path / "run.safetensors")  # fmt: skip
    assert "other settings or inputs" in caplog.text and result.epochs_run == 1


def test_the_paper_dag_plans_a_gpu_finetune_job_per_model_and_task_dataset(paper_plan: str) -> None:
    """config.yaml: 5 models x 11 task datasets, each asking for the config's GPU."""
    jobs = re.findall(r"^rule finetune:\n(.*?)\n\n", paper_plan, re.M | re.S)
    assert len(jobs) == 5 * 11
    pairs = {tuple(re.search(r"wildcards: model=(\w+), dataset=(\w+)", job).groups()) for job in jobs}
    assert len(pairs) == 5 * 11
    assert all(re.search(r"resources: .*\bgpu=1\b", job) for job in jobs)

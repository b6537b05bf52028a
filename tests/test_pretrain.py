"""The pretrain step: a small open_clip CLIP trained from scratch on the world's image-caption pairs."""

from __future__ import annotations

import pytest
import torch

from residual import load_model
from residual.io.tensors import open_tensors
from residual.models.pretrain import PretrainOptions, epoch_order, learning_rate, pretrain, save_pretrained

TINY = {
    "library": "open_clip",
    "arch": "ViT-B-32",
    "seed": 5,
    "kwargs": {
        "embed_dim": 16,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8, "head_width": 8},
        "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    },
    "pretrain": {"images": 256, "epochs": 3, "batch_size": 64, "lr": 0.002, "weight_decay": 0.1, "warmup": 2},
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    torch.set_num_threads(1)
    model, result = pretrain({**TINY, "pretrained": "unused.safetensors"}, "tiny", device="cpu")
    path = tmp_path_factory.mktemp("pretrain") / "tiny.safetensors"
    save_pretrained(model, result, PretrainOptions.from_spec(TINY), path)
    return model, result, path


def test_the_contrastive_loss_falls_and_the_run_is_logged(trained):
    _, result, _ = trained
    losses = [row["loss"] for row in result.history]
    assert len(losses) == TINY["pretrain"]["epochs"]
    assert losses[-1] < losses[0] - 0.1
    assert result.samples_per_second > 0


def test_the_checkpoint_loads_as_the_model_entry_pretrained_and_is_seeded(trained):
    model, _, path = trained
    loaded = load_model({**TINY, "pretrained": str(path)}, name="tiny", device="cpu")
    for name, tensor in model.module.state_dict().items():
        assert torch.equal(tensor, loaded.module.state_dict()[name]), name
    with open_tensors(path, "checkpoint", "pretrain") as (_, header):
        assert header["options"] == PretrainOptions.from_spec(TINY).params()
        assert [row["epoch"] for row in header["history"]] == [0, 1, 2]
    again, _ = pretrain({**TINY, "pretrained": None}, "tiny", device="cpu")
    for name, tensor in model.module.state_dict().items():
        assert torch.allclose(tensor, again.module.state_dict()[name], atol=1e-5), name  # same seed, same weights


def test_a_wrong_image_size_is_refused_with_the_key_to_fix():
    spec = {**TINY, "pretrained": None, "kwargs": {**TINY["kwargs"], "vision_cfg": {**TINY["kwargs"]["vision_cfg"], "image_size": 16}}}
    with pytest.raises(ValueError, match="vision_cfg.image_size"):
        pretrain(spec, "tiny", device="cpu")


def test_hard_negative_batches_keep_every_pair_once_in_runs_that_share_a_key():
    keys = torch.arange(64) % 4
    order = epoch_order(keys, 8, torch.Generator().manual_seed(0))
    assert sorted(order.tolist()) == list(range(64))
    runs = keys[order].reshape(8, 8)
    assert bool((runs == runs[:, :1]).all())
    assert torch.equal(order, epoch_order(keys, 8, torch.Generator().manual_seed(0)))


def test_learning_rate_warms_up_then_decays_to_zero():
    options = PretrainOptions(seed=0, images=640, epochs=2, batch_size=64, lr=1.0, warmup=4)
    rates = [learning_rate(step, options) for step in range(20)]
    assert rates[:4] == [0.25, 0.5, 0.75, 1.0]
    assert all(later <= earlier for earlier, later in zip(rates[3:], rates[4:]))
    assert rates[-1] < 0.02

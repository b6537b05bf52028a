"""The decomposition invariant sum_u y_u == embedding, and oracles for each of its parts."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY_DINOV2, TINY_OPEN_CLIP, TINY_TIMM, perturb
from safetensors.torch import save_file

from residual import decompose, load_model, trace
from residual.models.loaded import ModelSpecError
from residual.models.tower import UnsupportedModelError
from residual.units.guards import TOLERANCE, DecompositionError, check_decomposition
from residual.units.layout import UnitLayout
from residual.units.unit_map import UnitMap, layout_of

FULL_SIZE = [
    pytest.param({"library": "open_clip", "arch": "ViT-B-32", "pretrained": None}, id="open_clip-ViT-B-32"),
    pytest.param({"library": "timm", "arch": "vit_small_patch16_224", "pretrained": None}, id="timm-vit_small_patch16_224"),
    pytest.param(
        {"library": "timm", "arch": "vit_small_patch14_reg4_dinov2", "pretrained": None, "kwargs": {"img_size": 56}},
        id="timm-dinov2-registers",
    ),
]
TINY = [
    pytest.param(TINY_OPEN_CLIP, id="open_clip-tiny"),
    pytest.param(TINY_TIMM, id="timm-tiny"),
    pytest.param(TINY_DINOV2, id="dinov2-tiny"),
    pytest.param({**TINY_TIMM, "kwargs": {**TINY_TIMM["kwargs"], "qk_norm": True}}, id="timm-tiny-qk-norm"),
]


@pytest.mark.parametrize("spec", FULL_SIZE + TINY)
def test_units_sum_to_the_embedding(spec: dict) -> None:
    model = load_model(spec, device="cpu")
    perturb(model.module)
    images = torch.randn(2, 3, *model.input_size, generator=torch.Generator().manual_seed(0))
    result = decompose(model, images)
    layout = layout_of(model.tower)
    assert result.values.shape == (2, 1 + layout.layers + layout.layers * layout.heads, layout.out_dim)
    assert result.names == layout.names
    assert result.error <= TOLERANCE
    with torch.no_grad():
        assert torch.equal(result.embedding, model.tower.encode(images))  # the library's own forward, untouched


def test_unit_order_and_names() -> None:
    layout = UnitLayout(layers=2, heads=3, head_dim=4, out_dim=5)
    assert layout.names == ["emb", "mlp_0", "mlp_1", *(f"head_{l}_{h}" for l in range(2) for h in range(3))]
    assert [layout.index(name) for name in layout.names] == list(range(layout.count))
    assert layout.parse("head_1_2") == ("head", 1, 2)
    with pytest.raises(KeyError, match="outside this model"):
        layout.parse("head_2_0")
    with pytest.raises(KeyError, match="unknown unit name"):
        layout.parse("attn_0")


def test_head_outputs_match_timm_own_attention(images: torch.Tensor) -> None:
    """Oracle for the key/value-free CLS attention: the input timm's attention feeds its output projection."""
    model = load_model(TINY_TIMM, device="cpu")
    perturb(model.module)
    seen = []
    attn = model.module.blocks[1].attn
    handle = attn.proj.register_forward_pre_hook(lambda module, args: seen.append(args[0][:, 0]))
    raw = trace(model, images)
    handle.remove()
    heads, head_dim = layout_of(model.tower).heads, layout_of(model.tower).head_dim
    assert torch.allclose(raw.heads[:, 1].reshape(len(images), heads * head_dim), seen[0], atol=1e-5)


def test_head_outputs_match_torch_multihead_attention(images: torch.Tensor) -> None:
    """Oracle for open_clip: per-head attention weights from torch's own MultiheadAttention times V."""
    model = load_model(TINY_OPEN_CLIP, device="cpu")
    perturb(model.module)
    block = model.module.visual.transformer.resblocks[0]
    captured = []
    handle = block.attn.register_forward_pre_hook(lambda module, args: captured.append(args[0]))
    raw = trace(model, images)
    handle.remove()
    x = captured[0]
    weights = block.attn(x, x, x, need_weights=True, average_attn_weights=False)[1]  # [B, H, N, N]
    width = x.shape[-1]
    values = x @ block.attn.in_proj_weight[2 * width :].T + block.attn.in_proj_bias[2 * width :]
    heads, head_dim = layout_of(model.tower).heads, layout_of(model.tower).head_dim
    values = values.reshape(*values.shape[:2], heads, head_dim)  # [B, N, H, dh]
    expected = torch.einsum("bhn,bnhk->bhk", weights[:, :, 0], values)
    assert torch.allclose(raw.heads[:, 0], expected, atol=1e-5)


def test_layer_scale_is_applied() -> None:
    """DINOv2's layer scales multiply heads and MLPs; dropping them breaks the sum."""
    model = load_model(TINY_DINOV2, device="cpu")
    perturb(model.module)
    images = torch.randn(2, 3, *model.input_size)
    assert decompose(model, images).error <= TOLERANCE
    unit_map = UnitMap.from_tower(model.tower)
    with torch.no_grad():
        model.module.blocks[0].ls1.gamma.mul_(3.0)  # the model changes; the map made before must not fit
    raw = trace(model, images)
    stale = raw.values(unit_map)
    assert (stale.sum(dim=1) - raw.embedding).abs().max() > 1e-3
    assert decompose(model, images).error <= TOLERANCE  # decompose maps with the model as it is now


def test_checkpoint_file_round_trip(tmp_path, images: torch.Tensor) -> None:
    """A random-init model saved to disk loads back through `pretrained: <path>` with equal units."""
    for spec, filename in ((TINY_TIMM, "tiny.safetensors"), (TINY_OPEN_CLIP, "tiny.pt")):
        original = load_model(spec, device="cpu")
        perturb(original.module)
        path = tmp_path / filename
        state = {k: v.contiguous() for k, v in original.module.state_dict().items()}
        if filename.endswith(".safetensors"):
            save_file(state, str(path))
        else:
            torch.save(state, path)
        loaded = load_model({**spec, "pretrained": str(path)}, device="cpu")
        first, second = decompose(original, images), decompose(loaded, images)
        assert torch.equal(first.values, second.values)


def test_random_init_is_seeded(images: torch.Tensor) -> None:
    a = load_model({**TINY_TIMM, "seed": 3}, device="cpu")
    b = load_model({**TINY_TIMM, "seed": 3}, device="cpu")
    c = load_model({**TINY_TIMM, "seed": 4}, device="cpu")
    with torch.no_grad():
        assert torch.equal(a.tower.encode(images), b.tower.encode(images))
        assert not torch.equal(a.tower.encode(images), c.tower.encode(images))


@pytest.mark.parametrize(
    ("spec", "error", "message"),
    [
        ({"library": "keras", "arch": "ViT-B-32", "pretrained": None}, ModelSpecError, "library 'keras'"),
        ({"library": "timm", "pretrained": None}, ModelSpecError, "`arch`"),
        ({"library": "timm", "arch": "vit_nonexistent_9000", "pretrained": None}, ValueError, "vit_nonexistent_9000"),
        ({"library": "open_clip", "arch": "ViT-Q-99", "pretrained": None}, ValueError, "ViT-Q-99"),
        ({**TINY_TIMM, "pretrained": "/no/such/weights.safetensors"}, ModelSpecError, "/no/such/weights.safetensors"),
        ({**TINY_TIMM, "kwargs": {**TINY_TIMM["kwargs"], "global_pool": "avg"}}, UnsupportedModelError, "CLS-token"),
        (
            {**TINY_OPEN_CLIP, "kwargs": {**TINY_OPEN_CLIP["kwargs"], "vision_cfg": {**TINY_OPEN_CLIP["kwargs"]["vision_cfg"], "pool_type": "avg"}}},
            UnsupportedModelError,
            "CLS-token",
        ),
    ],
)
def test_bad_specs_fail_clearly(spec: dict, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        load_model(spec, device="cpu")


def test_checkpoint_with_wrong_shapes_names_the_file(tmp_path) -> None:
    other = load_model({**TINY_TIMM, "kwargs": {**TINY_TIMM["kwargs"], "embed_dim": 24}}, device="cpu")
    path = tmp_path / "other.safetensors"
    save_file({k: v.contiguous() for k, v in other.module.state_dict().items()}, str(path))
    with pytest.raises(ModelSpecError, match="other.safetensors"):
        load_model({**TINY_TIMM, "pretrained": str(path)}, device="cpu")


def test_invariant_violation_is_reported() -> None:
    with pytest.raises(DecompositionError, match="tolerance"):
        check_decomposition(1e-2, context="model 'x'")
    with pytest.raises(DecompositionError):
        check_decomposition(float("nan"), context="model 'x'")


def test_sequence_first_blocks(images: torch.Tensor) -> None:
    """open_clip can run its blocks on [N, B, D] while ln_pre/ln_post still see [B, N, D]."""
    from residual.models import openclip_tower

    model = load_model(TINY_OPEN_CLIP, device="cpu")
    perturb(model.module)
    model.module.visual.transformer.batch_first = False
    for block in model.module.visual.transformer.resblocks:
        block.attn.batch_first = False
    model.tower = openclip_tower.tower(model.module)
    assert not model.tower.batch_first
    assert decompose(model, images).error <= TOLERANCE


@pytest.mark.parametrize("head", ["with", "without"])
def test_timm_checkpoint_loads_with_or_without_its_classifier_head(tmp_path, images: torch.Tensor, head: str) -> None:
    """A headless timm checkpoint (the usual feature-extractor export) needs no `num_classes: 0`;
    one with a head still loads; both give the original's units (the head is never used)."""
    original = load_model(TINY_TIMM, device="cpu")
    perturb(original.module)
    state = {k: v.contiguous() for k, v in original.module.state_dict().items()}
    if head == "without":
        state = {k: v for k, v in state.items() if not k.startswith("head.")}
    assert any(k.startswith("head.") for k in state) == (head == "with")
    save_file(state, str(tmp_path / "tiny.safetensors"))
    loaded = load_model({**TINY_TIMM, "pretrained": str(tmp_path / "tiny.safetensors")}, device="cpu")
    # Same weights, same operations, same batch: the same bits.
    assert torch.equal(decompose(original, images).values, decompose(loaded, images).values)

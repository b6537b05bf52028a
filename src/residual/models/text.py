"""Text embeddings in the image embedding's space, and zero-shot classifiers built from them.

Each library's adapter with a text tower encodes a batch of texts its own way (its
`encode_text`); timm models have none.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from residual.libraries import LIBRARIES, has_text_tower
from residual.models.loaded import LoadedModel

Template = str | Callable[[str], str]


class NoTextTowerError(ValueError):
    """The model has no text encoder (or was built without its tokenizer)."""


@torch.no_grad()
def encode_text(model: LoadedModel, texts: list[str], batch_size: int = 256) -> Tensor:
    """Texts -> their embeddings [n, d_out] float32 on the model's device, not normalised."""
    if not has_text_tower(model.spec):
        raise NoTextTowerError(
            f"model {model.name!r} ({model.spec['library']} {model.spec['arch']}) has no text tower: use the class means of its train outputs as the classifier"
        )
    tokenizer = model.extras.get("tokenizer")
    if tokenizer is None:
        raise NoTextTowerError(
            f"model {model.name!r} was built without a tokenizer (random init or a bare weights file): point "
            "`pretrained` at a checkpoint directory or model id that includes its tokenizer"
        )
    encode = LIBRARIES[model.spec["library"]].module().encode_text
    width = model.tower.out_dim
    parts = [encode(model, tokenizer, texts[start : start + batch_size]).float() for start in range(0, len(texts), batch_size)]
    return torch.cat(parts) if parts else torch.empty(0, width, device=model.device)


def zero_shot_classifier(
    model: LoadedModel, classnames: Sequence[str], templates: Sequence[Template], batch_size: int = 256
) -> Tensor:
    """Class weights [C, d_out], unit-norm rows: per class, every template filled with the class name
    (`str.format` strings with `{}`, or callables like open_clip's `zero_shot_metadata` ones) is
    encoded and L2-normalised; the mean over templates is re-normalised."""
    if not classnames or not templates:
        raise ValueError("a zero-shot classifier needs at least one class name and one template")
    texts = [template(name) if callable(template) else template.format(name) for name in classnames for template in templates]
    embeddings = F.normalize(encode_text(model, texts, batch_size), dim=-1)
    return F.normalize(embeddings.reshape(len(classnames), len(templates), -1).mean(dim=1), dim=-1)

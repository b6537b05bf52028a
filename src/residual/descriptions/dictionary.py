"""The text dictionary that describes units (METHOD section 7): one description per line.

A run names one source (`descriptions.dictionary.source`): a local text file, a list shipped with
the package (`builtin:<name>`, e.g. the demo's `builtin:demo`), or a URL fetched once by the
`description_texts` rule (optionally checked against `sha256`; `residual.descriptions.sources`). Each model with a text tower then
encodes the list once (`encode_dictionary`); rows are L2-normalised and stored with their texts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch.nn.functional as F
from torch import Tensor

from residual.descriptions.options import DICTIONARY_FORMAT
from residual.io.tensors import TensorFileError, open_tensors, save_tensors
from residual.models.loaded import LoadedModel
from residual.models.text import encode_text

# Its format, DICTIONARY_FORMAT, is in residual.descriptions.options: bump it with a change to the file layout, the texts kept or the encoding.


class DictionaryFileError(TensorFileError):
    """An encoded dictionary file is missing or corrupt."""


@dataclass(frozen=True)
class Dictionary:
    """A model's encoded dictionary: texts [m]; embeddings [m, d_out] float32, rows of unit norm
    (a text the tower maps to zero stays a zero row)."""

    texts: list[str]
    embeddings: Tensor
    metadata: dict[str, Any]

    def save(self, path: str | Path) -> None:
        save_tensors(path, {"embeddings": self.embeddings.float()}, {"format": DICTIONARY_FORMAT, "texts": self.texts, **self.metadata})

    @classmethod
    def load(cls, path: str | Path) -> Dictionary:
        with open_tensors(path, "dictionary file", "encode_descriptions", format=DICTIONARY_FORMAT, error=DictionaryFileError) as (
            handle,
            header,
        ):
            texts = header.pop("texts")
            embeddings = handle.get_tensor("embeddings")
            if embeddings.shape[0] != len(texts):
                raise DictionaryFileError(f"dictionary file {path}: {embeddings.shape[0]} rows for {len(texts)} texts")
            return cls(texts, embeddings, {key: value for key, value in header.items() if key != "format"})


def encode_dictionary(model: LoadedModel, texts: list[str], batch_size: int = 256) -> Dictionary:
    """The texts through the model's own text tower (`encode_text`), rows L2-normalised, on the CPU."""
    embeddings = F.normalize(encode_text(model, texts, batch_size), dim=-1).cpu()
    return Dictionary(texts, embeddings, {"model": model.name})

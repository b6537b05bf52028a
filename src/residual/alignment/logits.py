"""How a training step turns a batch of features into logits: the general path, or a folded one.

With raw logits the classifier is linear, so for the spectral variants

    ((coords * lambda) @ B + rest) @ W^T = (coords * lambda) @ (B W^T) + rest @ W^T

and both products on the right are constants of the run: B W^T [K, C] once, rest @ W^T [n, C] once
per split. A step then multiplies [b, K] by [K, C] instead of [b, K] by [K, d] and [b, d] by
[d, C], and copies [b, C] instead of two [b, d] rows per sample. Equal to the general path up to
float rounding (the products are summed in another order; they are formed in float64).
"""

from __future__ import annotations

from torch import Tensor, nn

from residual.alignment.classifier import ZeroShotClassifier
from residual.alignment.features import Features
from residual.alignment.variants import SpectralReweighting, UnitScaling


class LogitPath(nn.Module):
    """The general path: classifier(module(batch)). `prepare` maps a split's features to what
    `forward` reads (here unchanged)."""

    def __init__(self, module: nn.Module, classifier: ZeroShotClassifier) -> None:
        super().__init__()
        self.module, self.classifier = module, classifier

    def prepare(self, features: Features) -> Features:
        return features

    def forward(self, batch: Features) -> Tensor:
        return self.classifier(self.module(batch))


class FoldedLogits(LogitPath):
    """SpectralReweighting or UnitScaling through a raw-logit classifier, with the classifier folded
    into the basis. Prepared features hold rest @ W^T [n, C] as `rest` and no embedding."""

    def __init__(self, module: SpectralReweighting | UnitScaling, classifier: ZeroShotClassifier) -> None:
        super().__init__(module, classifier)
        self.register_buffer("basis_logits", self._logits(module.basis))  # [K, C]
        if isinstance(module, UnitScaling):
            self.register_buffer("means_logits", self._logits(module.means))  # [A, C]

    def _logits(self, values: Tensor) -> Tensor:
        """values [m, d] -> [m, C] raw logits, formed in float64."""
        return (values.double() @ self.classifier.weights.double().T).to(values.dtype)

    def prepare(self, features: Features) -> Features:
        return Features(
            features.coords,
            self._logits(features.rest),
            features.embedding[:, :0],
            features.labels,
            features.centred_energy,
            features.kept_energy,
        )

    def forward(self, batch: Features) -> Tensor:
        lambdas = self.module.lambdas
        if isinstance(self.module, UnitScaling):
            return (batch.coords * lambdas[self.module.unit_of]) @ self.basis_logits + lambdas @ self.means_logits + batch.rest
        return (batch.coords * lambdas) @ self.basis_logits + batch.rest


def logit_path(module: nn.Module, classifier: ZeroShotClassifier) -> LogitPath:
    """The folded path wherever the logit convention allows it (raw logits, spectral variants),
    the general one otherwise (normalised logits, adapters, base)."""
    if classifier.logits == "raw" and type(module) in (SpectralReweighting, UnitScaling):
        return FoldedLogits(module, classifier)
    return LogitPath(module, classifier)

"""Classification loss as an objective module (cross-entropy with optional label smoothing)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pmrl_sci.registry import register_objective


@register_objective("classification")
class ClassificationObjective(nn.Module):
    """Cross-entropy of class logits ``[B, C]`` against integer labels ``[B]``.

    Parameters
    ----------
    label_smoothing : float
        Cross-entropy label smoothing.
    class_weights : sequence of float, optional
        Per-class weights (for imbalanced cohorts).
    """

    def __init__(self, label_smoothing: float = 0.0, class_weights: list[float] | None = None) -> None:
        super().__init__()
        self.label_smoothing = label_smoothing
        weight = torch.as_tensor(class_weights, dtype=torch.float32) if class_weights is not None else None
        self.register_buffer("class_weights", weight, persistent=False)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Loss and accuracy."""
        if not torch.isfinite(logits).all():
            raise ValueError("non-finite class logits: check the encoders' inputs and the learning rate")
        loss = F.cross_entropy(logits.float(), labels, weight=self.class_weights, label_smoothing=self.label_smoothing)
        accuracy = (logits.argmax(dim=1) == labels).float().mean()
        return {"loss": loss, "accuracy": accuracy.detach()}

"""Prediction heads on fused embeddings, registered by name."""

from __future__ import annotations

import torch
from torch import nn

from pmrl_sci.registry import register_head


@register_head("mlp")
class MLPClassifier(nn.Module):
    """An MLP classifier: ``num_layers`` linear layers with ReLU and dropout between them.

    Parameters
    ----------
    in_features : int
        Input (fused embedding) dimension.
    num_classes : int
        Output logits.
    hidden_dim : int
        Hidden width.
    num_layers : int
        Linear layers (3 for ABIDE, as in the paper).
    dropout : float
        Dropout after each hidden layer.
    """

    def __init__(self, in_features: int, num_classes: int, hidden_dim: int = 256, num_layers: int = 3,
                 dropout: float = 0.1) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        layers: list[nn.Module] = []
        width = in_features
        for _ in range(num_layers - 1):
            layers += [nn.Linear(width, hidden_dim), nn.ReLU(), nn.Dropout(dropout)]
            width = hidden_dim
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, num_classes]``."""
        return self.net(x)


@register_head("linear")
class LinearClassifier(MLPClassifier):
    """A linear classifier (logistic regression on the fused embedding)."""

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__(in_features, num_classes, num_layers=1)

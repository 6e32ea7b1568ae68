"""Multilayer perceptron encoder for tabular features (e.g. FreeSurfer sMRI measures)."""

from __future__ import annotations

import torch
from torch import nn

from pmrl_sci.encoders.base import Encoder, InputSpec
from pmrl_sci.registry import register_encoder


@register_encoder("mlp")
class MLPEncoder(Encoder):
    """A ``num_layers``-layer MLP (Linear, LayerNorm, GELU, Dropout) to ``embed_dim``.

    Parameters
    ----------
    in_features : int
        Number of input features.
    embed_dim : int
        Output dimension.
    hidden_dim : int
        Width of the hidden layers.
    num_layers : int
        Number of linear layers (>= 1).
    dropout : float
        Dropout after each hidden layer.
    """

    def __init__(self, in_features: int, embed_dim: int = 128, hidden_dim: int = 256,
                 num_layers: int = 2, dropout: float = 0.1) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        self.embed_dim = embed_dim
        self.input_spec = InputSpec("tensor", (in_features,), "float", f"features [batch, {in_features}]")
        layers: list[nn.Module] = []
        width = in_features
        for _ in range(num_layers - 1):
            layers += [nn.Linear(width, hidden_dim), nn.LayerNorm(hidden_dim), nn.GELU(), nn.Dropout(dropout)]
            width = hidden_dim
        layers.append(nn.Linear(width, embed_dim))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``[batch, in_features]`` to ``[batch, embed_dim]``."""
        return self.net(x)

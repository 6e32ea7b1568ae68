"""Precomputed features: a projection only (the usual way to train on large video sets)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pmrl_sci.encoders.base import Encoder, InputSpec
from pmrl_sci.registry import register_encoder


@register_encoder("features")
class FeatureEncoder(Encoder):
    """Precomputed embeddings ``[batch, in_features]`` (or ``[batch, time, in_features]``, time-averaged) to ``[B, d]``.

    Parameters
    ----------
    in_features : int
        Width of the precomputed embeddings.
    embed_dim : int
        Output dimension.
    hidden_dim : int, optional
        A hidden layer (Linear, GELU) before the output; ``None`` for a single linear map.
    dropout : float
        Dropout on the input.
    """

    def __init__(self, in_features: int, embed_dim: int = 128, hidden_dim: int | None = None,
                 dropout: float = 0.0) -> None:
        super().__init__()
        if in_features < 1:
            raise ValueError(f"in_features must be >= 1, got {in_features}")
        self.embed_dim = embed_dim
        self.in_features = in_features
        self.input_spec = InputSpec("tensor", (in_features,), "float",
                                    f"precomputed features [batch, {in_features}] or [batch, time, {in_features}]")
        layers: list[nn.Module] = [nn.LayerNorm(in_features), nn.Dropout(dropout)]
        if hidden_dim is None:
            layers.append(nn.Linear(in_features, embed_dim))
        else:
            layers += [nn.Linear(in_features, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, embed_dim)]
        self.net = nn.Sequential(*layers)

    def check_input(self, value: Any, modality: str = "input") -> None:
        """Accept ``[B, F]`` or ``[B, T, F]`` float tensors with ``F == in_features``."""
        expected = self.input_spec.description
        if not isinstance(value, torch.Tensor) or not value.is_floating_point():
            got = value.dtype if isinstance(value, torch.Tensor) else type(value).__name__
            raise ValueError(f"modality {modality!r}: expected a floating-point tensor ({expected}), got {got}")
        if value.ndim not in (2, 3) or value.shape[-1] != self.in_features:
            raise ValueError(f"modality {modality!r}: expected {expected}, got shape {list(value.shape)}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Project ``[B, F]`` (or time-pooled ``[B, T, F]``) to ``[B, embed_dim]``."""
        if x.ndim == 3:
            x = x.mean(dim=1)
        return self.net(x)

"""VanillaTF: the plain graph transformer baseline of the BrainNetTF paper (Kan et al., 2022).

Two transformer encoder layers over the connection profiles (the node features of
:mod:`pmrl_sci.encoders.brainnettf`), then the concatenation readout of the reference code:
each node reduced to 8 features (Linear + LeakyReLU), flattened to ``8 R``, and an MLP to
``embed_dim``.
"""

from __future__ import annotations

import torch
from torch import nn

from pmrl_sci.encoders.base import Encoder
from pmrl_sci.encoders.brainnettf import _transformer_layer, connection_profiles, connectivity_input_spec
from pmrl_sci.registry import register_encoder

__all__ = ["VanillaTF"]


@register_encoder("vanillatf")
class VanillaTF(Encoder):
    """Transformer over regions with a concatenation readout: ``[B, (C,) R, R]`` to ``[B, embed_dim]``.

    Parameters
    ----------
    n_rois : int
        Number of regions ``R``.
    embed_dim : int
        Output dimension.
    channels : int
        Connectivity matrices per subject ``C`` (node features ``C * R``).
    n_layers, n_heads, dim_feedforward : int
        Transformer depth (2), heads (4) and feed-forward width (1024).
    dropout : float
        Transformer dropout.
    reduced_dim : int
        Per-node dimension before flattening (8).
    hidden_dim : int
        Hidden width of the final MLP (256).
    """

    def __init__(self, n_rois: int, embed_dim: int = 128, channels: int = 1, n_layers: int = 2, n_heads: int = 4,
                 dim_feedforward: int = 1024, dropout: float = 0.1, reduced_dim: int = 8,
                 hidden_dim: int = 256) -> None:
        super().__init__()
        if n_layers < 1:
            raise ValueError(f"n_layers must be >= 1, got {n_layers}")
        self.input_spec = connectivity_input_spec(n_rois, channels)
        self.n_rois, self.channels, self.embed_dim = n_rois, channels, embed_dim
        feature_dim = channels * n_rois
        self.layers = nn.ModuleList(
            _transformer_layer(feature_dim, n_heads, dim_feedforward, dropout) for _ in range(n_layers))
        self.dim_reduction = nn.Sequential(nn.Linear(feature_dim, reduced_dim), nn.LeakyReLU())
        self.head = nn.Sequential(nn.Linear(reduced_dim * n_rois, hidden_dim), nn.LeakyReLU(),
                                  nn.Linear(hidden_dim, embed_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Embed connectivity ``[B, R, R]`` or ``[B, C, R, R]`` to ``[B, embed_dim]``."""
        h = connection_profiles(x, self.n_rois, self.channels)
        for layer in self.layers:
            h = layer(h)
        return self.head(self.dim_reduction(h).flatten(1))

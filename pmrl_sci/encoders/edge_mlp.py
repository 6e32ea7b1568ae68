"""An MLP over the edges of a connectome: the fully-connected baseline of ABIDE classification.

The strict upper triangle of every connectivity matrix (``R (R - 1) / 2`` edges per channel), the input of
the linear models that set the reference on ABIDE (Abraham et al., NeuroImage 2017) and of the
fully-connected networks of Heinsfeld et al. (NeuroImage Clinical 2018), goes through dropout on the edges, one
hidden layer (Linear, LayerNorm, GELU, Dropout) and a linear map to ``embed_dim``. With a few hundred subjects
its parameter count is dominated by the first layer, which dropout on the inputs and weight decay regularise.
"""

from __future__ import annotations

import torch
from torch import nn

from pmrl_sci.encoders.base import Encoder
from pmrl_sci.encoders.brainnettf import as_channels, connectivity_input_spec
from pmrl_sci.registry import register_encoder

__all__ = ["EdgeMLP"]


@register_encoder("edge_mlp")
class EdgeMLP(Encoder):
    """Connectivity ``[B, (C,) R, R]`` to ``[B, embed_dim]`` through an MLP over the upper-triangle edges.

    Parameters
    ----------
    n_rois : int
        Number of regions ``R``.
    embed_dim : int
        Output dimension.
    channels : int
        Connectivity matrices per subject ``C`` (their edges are concatenated).
    hidden_dim : int
        Width of the hidden layer.
    edge_dropout : float
        Dropout on the input edges.
    dropout : float
        Dropout after the hidden layer.
    """

    def __init__(self, n_rois: int, embed_dim: int = 128, channels: int = 1, hidden_dim: int = 256,
                 edge_dropout: float = 0.5, dropout: float = 0.1) -> None:
        super().__init__()
        self.input_spec = connectivity_input_spec(n_rois, channels)
        self.n_rois, self.channels, self.embed_dim = n_rois, channels, embed_dim
        rows, cols = torch.triu_indices(n_rois, n_rois, offset=1)
        self.register_buffer("edge_index", rows * n_rois + cols, persistent=False)
        self.net = nn.Sequential(nn.Dropout(edge_dropout), nn.Linear(channels * len(rows), hidden_dim),
                                 nn.LayerNorm(hidden_dim), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(hidden_dim, embed_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map connectivity ``[B, (C,) R, R]`` to ``[B, embed_dim]``."""
        x = as_channels(x, self.n_rois, self.channels)
        edges = x.flatten(2)[:, :, self.edge_index]  # [B, C, E]
        return self.net(edges.flatten(1))

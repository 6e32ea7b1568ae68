"""BrainNetCNN (Kawahara et al., NeuroImage 2017) as a connectivity encoder.

Edge-to-edge layers (cross-shaped filters: the response at edge ``(i, j)`` combines row ``i``
and column ``j``), an edge-to-node layer (a ``1 x R`` filter per node), a node-to-graph layer
(an ``R x 1`` filter), then dense layers to ``embed_dim``; LeakyReLU with slope 0.33 and
dropout 0.5 as in the paper and the BrainNetTF authors' baseline code (which uses E2E widths
32 and 64, one E2N map and 256 N2G maps). The channels of the input (e.g. Pearson and partial
correlation) are the input planes of the first edge-to-edge layer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pmrl_sci.encoders.base import Encoder
from pmrl_sci.encoders.brainnettf import as_channels, connectivity_input_spec
from pmrl_sci.registry import register_encoder

__all__ = ["BrainNetCNN", "EdgeToEdge"]

_SLOPE = 0.33


class EdgeToEdge(nn.Module):
    """Cross-shaped edge-to-edge convolution: ``out[i, j] = row_filter(x[i, :]) + col_filter(x[:, j])``.

    Parameters
    ----------
    in_channels, out_channels : int
        Input and output feature maps.
    n_rois : int
        Matrix size ``R``.
    """

    def __init__(self, in_channels: int, out_channels: int, n_rois: int) -> None:
        super().__init__()
        self.row = nn.Conv2d(in_channels, out_channels, (1, n_rois))
        self.col = nn.Conv2d(in_channels, out_channels, (n_rois, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, in, R, R]`` to ``[B, out, R, R]`` (broadcast sum of the row and column responses)."""
        return self.row(x) + self.col(x)  # [B, out, R, 1] + [B, out, 1, R]


@register_encoder("brainnetcnn")
class BrainNetCNN(Encoder):
    """BrainNetCNN encoder: connectivity ``[B, (C,) R, R]`` to ``[B, embed_dim]``.

    Parameters
    ----------
    n_rois : int
        Number of regions ``R``.
    embed_dim : int
        Output dimension.
    channels : int
        Connectivity matrices per subject ``C``.
    e2e_channels : tuple of int
        Widths of the edge-to-edge layers (32, 64).
    e2n_channels : int
        Edge-to-node feature maps (1 in the reference code).
    n2g_channels : int
        Node-to-graph feature maps (256).
    hidden_dim : int
        Dense layer width before the output (128).
    dropout : float
        Dropout after the node-to-graph and dense layers (0.5).
    """

    def __init__(self, n_rois: int, embed_dim: int = 128, channels: int = 1,
                 e2e_channels: tuple[int, ...] = (32, 64), e2n_channels: int = 1, n2g_channels: int = 256,
                 hidden_dim: int = 128, dropout: float = 0.5) -> None:
        super().__init__()
        if not e2e_channels:
            raise ValueError("e2e_channels must list at least one edge-to-edge layer width")
        self.input_spec = connectivity_input_spec(n_rois, channels)
        self.n_rois, self.channels, self.embed_dim = n_rois, channels, embed_dim
        widths = (channels, *e2e_channels)
        self.e2e = nn.ModuleList(EdgeToEdge(a, b, n_rois) for a, b in zip(widths[:-1], widths[1:]))
        self.e2n = nn.Conv2d(widths[-1], e2n_channels, (1, n_rois))
        self.n2g = nn.Conv2d(e2n_channels, n2g_channels, (n_rois, 1))
        self.dense = nn.Linear(n2g_channels, hidden_dim)
        self.out = nn.Linear(hidden_dim, embed_dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Embed connectivity ``[B, R, R]`` or ``[B, C, R, R]`` to ``[B, embed_dim]``."""
        h = as_channels(x, self.n_rois, self.channels)
        for layer in self.e2e:
            h = F.leaky_relu(layer(h), _SLOPE)
        h = F.leaky_relu(self.e2n(h), _SLOPE)                      # [B, e2n, R, 1]
        h = self.dropout(F.leaky_relu(self.n2g(h), _SLOPE))        # [B, n2g, 1, 1]
        h = self.dropout(F.leaky_relu(self.dense(h.flatten(1)), _SLOPE))
        return self.out(h)

"""Patch CNN encoders for remote sensing: a spectral-spatial CNN for hyperspectral patches and one for LiDAR.

Both use unpadded ("valid") 3 x 3 convolutions followed by mean pooling over what is left of the patch, so the
embedding of a patch depends only on the patch. The same network therefore runs densely on a whole (reflect-
padded) scene: :meth:`PatchCNNEncoder.forward_dense` gives the embedding of every pixel's patch at once, equal to
cutting the patches one by one, at a fraction of the cost (each convolution is computed once per pixel instead of
once per patch and pixel).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from pmrl_sci.encoders.base import Encoder, InputSpec
from pmrl_sci.registry import register_encoder


class PatchCNNEncoder(Encoder):
    """Conv stack (optional 1 x 1 spectral stage, then valid 3 x 3 spatial convs) + mean pooling + projection.

    Parameters
    ----------
    in_channels : int
        Bands of the input patches.
    embed_dim : int
        Output dimension.
    patch_size : int
        Odd side of the input patches (>= 1). At most ``(patch_size - 1) // 2`` 3 x 3 layers are used, so the
        pooled window is never empty.
    spectral_channels : int or None
        Width of the 1 x 1 spectral convolution (band mixing), or None to skip it.
    spatial_channels : sequence of int
        Widths of the 3 x 3 convolutions.
    dropout : float
        Dropout before the projection.
    name : str
        What the patches are, for error messages.
    """

    def __init__(self, in_channels: int, embed_dim: int = 256, patch_size: int = 11,
                 spectral_channels: int | None = 64, spatial_channels: Sequence[int] = (128, 128),
                 dropout: float = 0.1, name: str = "patches") -> None:
        super().__init__()
        if patch_size < 1 or patch_size % 2 == 0:
            raise ValueError(f"patch_size must be a positive odd number, got {patch_size}")
        self.embed_dim = int(embed_dim)
        self.in_channels = int(in_channels)
        self.patch_size = int(patch_size)
        self.input_spec = InputSpec("tensor", (in_channels, patch_size, patch_size), "float",
                                    f"{name} [batch, {in_channels}, {patch_size}, {patch_size}]")
        layers: list[nn.Module] = []
        width = in_channels
        if spectral_channels:
            layers += [nn.Conv2d(width, spectral_channels, 1), nn.BatchNorm2d(spectral_channels), nn.ReLU()]
            width = spectral_channels
        spatial = list(spatial_channels)[: (patch_size - 1) // 2]
        for channels in spatial:
            layers += [nn.Conv2d(width, channels, 3), nn.BatchNorm2d(channels), nn.ReLU()]
            width = channels
        self.trunk = nn.Sequential(*layers)
        self.shrink = 2 * len(spatial)  # pixels lost per side pair by the valid convolutions
        self.dropout = nn.Dropout(dropout)
        self.projection = nn.Conv2d(width, embed_dim, 1)  # a Linear on the channel axis, dense-friendly

    def forward_dense(self, x: torch.Tensor) -> torch.Tensor:
        """Embed every ``patch_size`` window of ``x`` ``[B, C, H, W]`` as ``[B, embed_dim, H - p + 1, W - p + 1]``.

        Pass a scene reflect-padded by ``patch_size // 2`` to get one embedding per pixel.
        """
        features = self.trunk(x)
        window = self.patch_size - self.shrink
        pooled = F.avg_pool2d(features, window, stride=1) if window > 1 else features
        return self.projection(self.dropout(pooled))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map patches ``[B, C, p, p]`` to ``[B, embed_dim]``."""
        return self.forward_dense(x).flatten(1)


@register_encoder("hsi_cnn")
def hsi_cnn(in_bands: int = 144, embed_dim: int = 256, patch_size: int = 11, spectral_channels: int = 64,
            spatial_channels: Sequence[int] = (128, 128), dropout: float = 0.1) -> PatchCNNEncoder:
    """Spectral-spatial CNN for hyperspectral patches: 1 x 1 band mixing, two 3 x 3 convs, mean pooling.

    Parameters
    ----------
    in_bands : int
        Hyperspectral bands (144 for CASI).
    embed_dim, patch_size, spectral_channels, spatial_channels, dropout
        See :class:`PatchCNNEncoder`.
    """
    return PatchCNNEncoder(in_bands, embed_dim, patch_size, spectral_channels, spatial_channels, dropout,
                           name="hyperspectral patches")


@register_encoder("lidar_cnn")
def lidar_cnn(in_channels: int = 1, embed_dim: int = 256, patch_size: int = 11,
              spatial_channels: Sequence[int] = (32, 64), dropout: float = 0.1) -> PatchCNNEncoder:
    """CNN for LiDAR (DSM) patches: two 3 x 3 convs and mean pooling.

    Parameters
    ----------
    in_channels : int
        Rasters stacked per patch (1 for the DSM).
    embed_dim, patch_size, spatial_channels, dropout
        See :class:`PatchCNNEncoder`.
    """
    return PatchCNNEncoder(in_channels, embed_dim, patch_size, None, spatial_channels, dropout,
                           name="LiDAR patches")

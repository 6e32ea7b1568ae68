"""Touch encoder: tactile images (GelSight / DIGIT-style) through the vision encoder family, as the paper does."""

from __future__ import annotations

import torch

from pmrl_sci.encoders.base import InputSpec
from pmrl_sci.encoders.vision import VisionEncoder
from pmrl_sci.registry import register_encoder


@register_encoder("touch")
class TouchEncoder(VisionEncoder):
    """Tactile images ``[batch, C, H, W]`` in ``[0, 1]`` (or ``[batch, T, C, H, W]`` sequences) to ``[B, embed_dim]``.

    Same parameters as :class:`~pmrl_sci.encoders.vision.VisionEncoder`, plus:

    Parameters
    ----------
    subtract_background : bool
        Remove each image's per-channel mean before encoding. Optical tactile sensors show the
        contact as a deformation over a fixed background tint that differs between sensors; this
        keeps the deformation and drops the tint.
    """

    def __init__(self, embed_dim: int = 128, in_channels: int = 3, image_size: int | None = None, width: int = 32,
                 num_blocks: int = 3, model_name_or_path: str | None = None, trainable_backbone: bool = False,
                 dropout: float = 0.0, subtract_background: bool = True) -> None:
        super().__init__(embed_dim, in_channels, image_size, width, num_blocks, model_name_or_path,
                         trainable_backbone, dropout)
        self.subtract_background = subtract_background
        self.input_spec = InputSpec("tensor", (in_channels, None, None), "float",
                                    self.input_spec.description.replace("images", "tactile images"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Encode tactile images (or sequences) to ``[B, embed_dim]``."""
        if self.subtract_background:
            x = x - x.mean(dim=(-2, -1), keepdim=True) + 0.5
        return super().forward(x)

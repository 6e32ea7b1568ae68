"""Depth encoder: single-channel depth maps through a CNN, or through the vision encoder on a replicated channel."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pmrl_sci.encoders.base import Encoder, InputSpec
from pmrl_sci.encoders.vision import ConvBackbone, VisionEncoder
from pmrl_sci.registry import register_encoder


@register_encoder("depth")
class DepthEncoder(Encoder):
    """Depth maps ``[batch, 1, H, W]`` (metres) to ``[batch, embed_dim]``.

    Depths are divided by ``max_depth`` and clipped to ``[0, 1]``; invalid (non-finite or
    negative) pixels become 0, the value NYUDv2 uses for missing depth.

    Parameters
    ----------
    embed_dim : int
        Output dimension.
    image_size : int, optional
        Required height and width; ``None`` accepts any size.
    max_depth : float
        Depth (in the input's unit) mapped to 1.
    backbone : {"cnn", "vision"}
        A single-channel CNN, or the :class:`~pmrl_sci.encoders.vision.VisionEncoder` (CNN or a local
        ``transformers`` model) applied to the depth replicated over three channels.
    width, num_blocks : int
        CNN size.
    model_name_or_path : str, optional
        Local ``transformers`` vision model for ``backbone="vision"``.
    trainable_backbone : bool
        Fine-tune that model.
    """

    def __init__(self, embed_dim: int = 128, image_size: int | None = None, max_depth: float = 10.0,
                 backbone: str = "cnn", width: int = 32, num_blocks: int = 3, model_name_or_path: str | None = None,
                 trainable_backbone: bool = False) -> None:
        super().__init__()
        if backbone not in ("cnn", "vision"):
            raise ValueError(f"depth backbone must be 'cnn' or 'vision', got {backbone!r}")
        if max_depth <= 0:
            raise ValueError(f"max_depth must be positive, got {max_depth}")
        if model_name_or_path is not None and backbone == "cnn":
            raise ValueError("model_name_or_path needs backbone='vision' for the depth encoder")
        self.embed_dim = embed_dim
        self.image_size = image_size
        self.max_depth = float(max_depth)
        self.backbone_kind = backbone
        if backbone == "cnn":
            self.cnn = ConvBackbone(1, width, num_blocks)
            self.projection = nn.Linear(self.cnn.out_features, embed_dim)
            self.vision = None
        else:
            self.cnn = None
            self.projection = None
            self.vision = VisionEncoder(embed_dim, 3, image_size, width, num_blocks, model_name_or_path,
                                        trainable_backbone)
        size = "H, W" if image_size is None else f"{image_size}, {image_size}"
        self.input_spec = InputSpec("tensor", (1, None, None), "float", f"depth maps [batch, 1, {size}]")

    def check_input(self, value: Any, modality: str = "input") -> None:
        """Validate ``[B, 1, H, W]`` depth maps (and the size when ``image_size`` is set)."""
        self.input_spec.check(value, modality)
        if self.image_size is not None and tuple(value.shape[-2:]) != (self.image_size, self.image_size):
            raise ValueError(f"modality {modality!r}: expected depth maps of {self.image_size}x{self.image_size} "
                             f"pixels, got {value.shape[-2]}x{value.shape[-1]} (resize them when loading)")

    def normalise(self, depth: torch.Tensor) -> torch.Tensor:
        """Scale to ``[0, 1]`` by ``max_depth``; invalid pixels to 0."""
        depth = torch.where(torch.isfinite(depth) & (depth > 0), depth, torch.zeros_like(depth))
        return (depth / self.max_depth).clamp(0.0, 1.0)

    def forward(self, depth: torch.Tensor) -> torch.Tensor:
        """Encode ``[B, 1, H, W]`` depth maps to ``[B, embed_dim]``."""
        x = self.normalise(depth)
        if self.vision is not None:
            return self.vision(x.expand(-1, 3, -1, -1))
        return self.projection(self.cnn(x))

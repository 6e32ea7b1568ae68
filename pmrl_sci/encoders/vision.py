"""Vision encoder: images and video frames, by a small CNN trained from scratch or a local ``transformers`` model.

Images are float tensors ``[batch, channels, height, width]`` with values in ``[0, 1]``; videos are
``[batch, time, channels, height, width]``: frames are encoded one by one and mean-pooled over time.
A ``transformers`` vision model (ViT, DeiT, CLIP / SigLIP vision tower, ...) is loaded from a local
directory only (saved with ``save_pretrained``); nothing is downloaded.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pmrl_sci.encoders.base import Encoder, InputSpec, pooled_output
from pmrl_sci.extras import require
from pmrl_sci.registry import register_encoder


class ConvBackbone(nn.Module):
    """A small VGG-style CNN: ``num_blocks`` x (conv3x3, GroupNorm, ReLU, conv3x3, GroupNorm, ReLU, pool).

    GroupNorm rather than BatchNorm: no running statistics, so few-shot and small-batch training
    behave the same in train and eval mode.

    Parameters
    ----------
    in_channels : int
        Input channels.
    width : int
        Channels of the first block; doubled at each block.
    num_blocks : int
        Number of down-sampling blocks (>= 1).

    Attributes
    ----------
    out_features : int
        Width of the globally average-pooled output.
    """

    def __init__(self, in_channels: int, width: int = 32, num_blocks: int = 3) -> None:
        super().__init__()
        if num_blocks < 1:
            raise ValueError(f"num_blocks must be >= 1, got {num_blocks}")
        layers: list[nn.Module] = []
        channels = in_channels
        for block in range(num_blocks):
            out = width * 2**block
            groups = math.gcd(out, 8)
            layers += [nn.Conv2d(channels, out, 3, padding=1, bias=False), nn.GroupNorm(groups, out),
                       nn.ReLU(inplace=True), nn.Conv2d(out, out, 3, padding=1, bias=False),
                       nn.GroupNorm(groups, out), nn.ReLU(inplace=True), nn.MaxPool2d(2, ceil_mode=True)]
            channels = out
        self.features = nn.Sequential(*layers)
        self.out_features = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``[batch, in_channels, H, W]`` to ``[batch, out_features]`` (global average pooling)."""
        return self.features(x).mean(dim=(2, 3))


def _read_image_stats(path: Path) -> tuple[list[float] | None, list[float] | None]:
    config = path / "preprocessor_config.json"
    if not config.is_file():
        return None, None
    data = json.loads(config.read_text(encoding="utf-8"))
    return data.get("image_mean"), data.get("image_std")


class HFVisionBackbone(nn.Module):
    """A ``transformers`` vision model loaded from a local directory, returning one vector per image.

    CLIP / SigLIP-style checkpoints (a config with ``vision_config``) contribute their vision tower only.
    Inputs in ``[0, 1]`` are resized to the model's ``image_size`` and normalised with the
    ``image_mean`` / ``image_std`` of ``preprocessor_config.json`` (0.5 / 0.5 when absent).

    Parameters
    ----------
    path : str or path-like
        Directory holding ``config.json`` and the weights.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__()
        require("transformers", "text", "a Hugging Face vision backbone")
        from transformers import AutoConfig, AutoModel

        directory = Path(path).expanduser()
        if not (directory / "config.json").is_file():
            raise FileNotFoundError(f"vision model directory {directory} has no config.json: expected a Hugging Face "
                                    "model saved with save_pretrained() (models are loaded from disk only)")
        config = AutoConfig.from_pretrained(directory, local_files_only=True)
        model = AutoModel.from_pretrained(directory, local_files_only=True)
        if hasattr(config, "vision_config"):
            if not hasattr(model, "vision_model"):
                raise ValueError(f"{directory}: model {type(model).__name__} has a vision_config but no vision_model")
            model = model.vision_model
            config = config.vision_config
        self.model = model
        self.image_size = int(getattr(config, "image_size", 224))
        self.num_channels = int(getattr(config, "num_channels", 3))
        self.out_features = int(getattr(config, "hidden_size", 0) or config.hidden_sizes[-1])
        mean, std = _read_image_stats(directory)
        mean = mean if mean is not None else [0.5] * self.num_channels
        std = std if std is not None else [0.5] * self.num_channels
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``[batch, C, H, W]`` in ``[0, 1]`` to ``[batch, hidden]``."""
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        x = (x - self.mean) / self.std
        output = self.model(pixel_values=x)
        return pooled_output(output)


@register_encoder("vision")
class VisionEncoder(Encoder):
    """Images or videos to ``[batch, embed_dim]``.

    Parameters
    ----------
    embed_dim : int
        Output dimension.
    in_channels : int
        Image channels (3 for RGB).
    image_size : int, optional
        Required height and width; ``None`` accepts any size (the CNN pools globally).
    width : int
        Channels of the first CNN block.
    num_blocks : int
        Number of CNN blocks.
    model_name_or_path : str, optional
        Local directory of a ``transformers`` vision model; replaces the CNN.
    trainable_backbone : bool
        Fine-tune the ``transformers`` model (the CNN always trains).
    dropout : float
        Dropout before the projection.
    """

    def __init__(self, embed_dim: int = 128, in_channels: int = 3, image_size: int | None = None, width: int = 32,
                 num_blocks: int = 3, model_name_or_path: str | None = None, trainable_backbone: bool = False,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.in_channels = in_channels
        self.image_size = image_size
        self.trainable_backbone = trainable_backbone or model_name_or_path is None
        if model_name_or_path is None:
            self.backbone: nn.Module = ConvBackbone(in_channels, width, num_blocks)
        else:
            self.backbone = HFVisionBackbone(model_name_or_path)
            if self.backbone.num_channels != in_channels:
                raise ValueError(f"vision model {model_name_or_path} takes {self.backbone.num_channels} channels, "
                                 f"the encoder was configured for in_channels={in_channels}")
            for parameter in self.backbone.parameters():
                parameter.requires_grad_(trainable_backbone)
        size = "H, W" if image_size is None else f"{image_size}, {image_size}"
        self.input_spec = InputSpec("tensor", (in_channels, None, None), "float",
                                    f"images [batch, {in_channels}, {size}] or videos [batch, time, {in_channels}, "
                                    f"{size}] with values in [0, 1]")
        self.projection = nn.Sequential(nn.Dropout(dropout), nn.Linear(self.backbone.out_features, embed_dim))

    def check_input(self, value: Any, modality: str = "input") -> None:
        """Accept ``[B, C, H, W]`` images or ``[B, T, C, H, W]`` videos; raise ``ValueError`` otherwise."""
        expected = self.input_spec.description
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"modality {modality!r}: expected a tensor ({expected}), got {type(value).__name__}")
        if not value.is_floating_point():
            raise ValueError(f"modality {modality!r}: expected a floating-point tensor ({expected}), got {value.dtype}")
        if value.ndim not in (4, 5) or value.shape[-3] != self.in_channels:
            raise ValueError(f"modality {modality!r}: expected {expected}, got shape {list(value.shape)}")
        if self.image_size is not None and tuple(value.shape[-2:]) != (self.image_size, self.image_size):
            raise ValueError(f"modality {modality!r}: expected images of {self.image_size}x{self.image_size} pixels, "
                             f"got {value.shape[-2]}x{value.shape[-1]} (resize them when loading)")

    def encode_frames(self, images: torch.Tensor) -> torch.Tensor:
        """Backbone features ``[N, out_features]`` of ``[N, C, H, W]`` images (no projection)."""
        if self.trainable_backbone:
            return self.backbone(images)
        self.backbone.eval()
        with torch.no_grad():
            return self.backbone(images)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Encode images ``[B, C, H, W]`` or videos ``[B, T, C, H, W]`` (frames mean-pooled) to ``[B, embed_dim]``."""
        if x.ndim == 5:
            batch, time = x.shape[:2]
            features = self.encode_frames(x.flatten(0, 1)).view(batch, time, -1).mean(dim=1)
        else:
            features = self.encode_frames(x)
        return self.projection(features)

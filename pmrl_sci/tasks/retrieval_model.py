"""Retrieval model: one encoder per modality, the anchor, the instance-matching head, embedding rows."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from pmrl_sci.data.manifest import LoadedData
from pmrl_sci.errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    from pmrl_sci.tasks.retrieval import RetrievalConfig


def build_encoders(data: LoadedData, cfg: RetrievalConfig, text_widths: dict[str, int],
                   sample_rate: int) -> dict[str, nn.Module]:
    """One registered encoder per modality, chosen by its kind (touch / tactile columns get ``touch``)."""
    from pmrl_sci.registry import build_encoder

    d, cnn = cfg.embed_dim, {"width": cfg.width, "num_blocks": cfg.num_blocks}
    encoders: dict[str, nn.Module] = {}
    for m in data.modalities:
        kind = data.kinds[m]
        if kind in ("image", "video"):
            name = "touch" if m in ("touch", "tactile") else "vision"
            encoders[m] = build_encoder(name, embed_dim=d, image_size=cfg.image_size,
                                        model_name_or_path=cfg.vision_model, **cnn)
        elif kind == "depth":
            encoders[m] = build_encoder("depth", embed_dim=d, image_size=cfg.image_size, max_depth=cfg.max_depth,
                                        **cnn)
        elif kind == "audio":
            encoders[m] = build_encoder("audio", embed_dim=d, sample_rate=sample_rate,
                                        num_samples=int(data.arrays[m].shape[1]), n_mels=cfg.n_mels,
                                        model_name_or_path=cfg.audio_model, **cnn)
        elif kind == "features":
            encoders[m] = build_encoder("features", in_features=int(data.arrays[m].shape[1]), embed_dim=d)
        elif kind == "text":
            encoders[m] = build_encoder("text", embed_dim=d, precomputed_dim=text_widths[m])
        else:  # pragma: no cover - kinds are validated by the manifest reader
            raise InputError(f"modality {m!r}: no encoder for kind {kind!r}")
    return encoders


def resolve_anchor(cfg: RetrievalConfig, modalities: Sequence[str]) -> str:
    """GRAM / VAST and instance-matching anchor: ``--anchor``, else ``text`` when present, else the first modality.

    Raises
    ------
    InputError
        When ``--anchor`` names a modality that is not aligned.
    """
    anchor = cfg.anchor or ("text" if "text" in modalities else modalities[0])
    if anchor not in modalities:
        raise InputError(f"--anchor {anchor!r} is not among the modalities {list(modalities)}")
    return anchor


def build_matching(cfg: RetrievalConfig, modalities: Sequence[str], anchor: str) -> nn.Module | None:
    """The instance-matching head (weight ``--lambda2``), or None when ``lambda2 == 0``."""
    from pmrl_sci.objectives import build_objective

    if cfg.lambda2 <= 0:
        return None
    return build_objective("instance_matching", embed_dim=cfg.embed_dim, num_modalities=len(modalities),
                           anchor=anchor)


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Move the tensors of a batch dict to ``device`` (lists of strings stay)."""
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


@torch.no_grad()
def embed_rows(model: nn.Module, data: LoadedData, rows: np.ndarray, batch_size: int,
               device: torch.device, sharded: bool = False) -> dict[str, torch.Tensor]:
    """L2-normalised embeddings ``{modality: [len(rows), d]}`` on CPU (eval mode; missing rows are placeholders).

    Parameters
    ----------
    model : nn.Module
        The unwrapped :class:`~pmrl_sci.training.MultimodalModel` (identical on every rank under torchrun).
    data : LoadedData
        Every row.
    rows : numpy.ndarray
        Rows to embed, in this order.
    batch_size : int
        Rows per forward pass.
    device : torch.device
        The model's device.
    sharded : bool
        Under ``torch.distributed`` each rank embeds a contiguous part of ``rows`` and every rank gets the whole,
        in order.
    """
    from pmrl_sci.distributed import gather_objects, get_world_size, shard_range

    rows = np.asarray(rows, dtype=int)
    if sharded and get_world_size() > 1 and rows.size >= get_world_size():
        part = shard_range(rows.size)
        parts = gather_objects(embed_rows(model, data, rows[part.start:part.stop], batch_size, device))
        return {m: torch.cat([p[m] for p in parts]) for m in parts[0]}
    model.eval()
    chunks: dict[str, list[torch.Tensor]] = {m: [] for m in data.modalities}
    for start in range(0, len(rows), batch_size):
        batch, _ = data.batch(rows[start:start + batch_size])
        out = model(to_device(batch, device))
        for m, value in out.items():
            chunks[m].append(torch.nn.functional.normalize(value.float(), dim=-1).cpu())
    return {m: torch.cat(v) for m, v in chunks.items()}

"""Houston 2013 model parts: label encoders, the three-modality model and MLP head, and prediction.

* Encoders: ``hsi_cnn`` and ``lidar_cnn`` (:mod:`pmrl_sci.encoders.cnn`) on on-the-fly patches; the class label
  is the third modality, a learnable ``nn.Embedding`` (``label_embedding="learned"``, as in the paper) or the
  class names through the text model with a trainable projection (``"text"``).
* Heads: ``retrieval`` (average of the L2-normalised HSI and LiDAR embeddings, nearest class embedding by cosine)
  and ``mlp`` (a supervised classifier on the same fused embedding).
* Prediction: per patch (:func:`predict_pixels`, validation and test) or densely over the whole scene in strips
  (:func:`predict_scene`, the classification map); both give the same class per pixel.

The training task is :mod:`pmrl_sci.tasks.houston13`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pmrl_sci.data.houston13.patches import PatchDataset, patch_loader
from pmrl_sci.encoders.base import Encoder, InputSpec

HEADS = ("retrieval", "mlp")


class Houston13ModelOptions(Protocol):
    """The options :func:`build_models` reads (:class:`pmrl_sci.tasks.houston13.Houston13Config` has them)."""

    label_embedding: str
    embed_dim: int
    patch_size: int

    @property
    def heads(self) -> tuple[str, ...]:
        """The heads evaluated."""


class ClassEmbedding(Encoder):
    """Learnable class embeddings: the label modality's encoder (class index -> ``[embed_dim]``)."""

    def __init__(self, n_classes: int, embed_dim: int) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.input_spec = InputSpec("tensor", (), "long", "class indices [batch]")
        self.table = nn.Embedding(n_classes, embed_dim)
        nn.init.normal_(self.table.weight, std=1.0)

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        """Embed class indices ``[B]`` to ``[B, embed_dim]``."""
        return self.table(labels)


class LabelInputs:
    """Turns class indices into the label modality's encoder input (indices, or text embeddings)."""

    def __init__(self, text_table: torch.Tensor | None) -> None:
        self.text_table = text_table

    def __call__(self, classes: torch.Tensor) -> torch.Tensor:
        """Class indices ``[B]`` -> the label encoder's input (``[B]`` indices or ``[B, H]`` text embeddings)."""
        return classes if self.text_table is None else self.text_table[classes]


def build_models(cfg: Houston13ModelOptions, n_bands: int, n_classes: int, text_dim: int | None
                 ) -> tuple[nn.Module, nn.Module | None]:
    """The three-modality model (``MultimodalModel``) and the MLP head (or None when the MLP head is off).

    Parameters
    ----------
    cfg : Houston13ModelOptions
        Anything with ``label_embedding``, ``embed_dim``, ``patch_size`` and ``heads`` (e.g. the run config).
    n_bands, n_classes : int
        Hyperspectral bands and classes of the scene.
    text_dim : int or None
        Width of the frozen text embeddings (``label_embedding == "text"``).
    """
    from pmrl_sci.registry import build_encoder
    from pmrl_sci.training import MultimodalModel

    if cfg.label_embedding == "learned":
        label_encoder: nn.Module = ClassEmbedding(n_classes, cfg.embed_dim)
    else:
        label_encoder = build_encoder("text", embed_dim=cfg.embed_dim, precomputed_dim=text_dim, dropout=0.0)
    model = MultimodalModel({
        "hsi": build_encoder("hsi_cnn", in_bands=n_bands, embed_dim=cfg.embed_dim, patch_size=cfg.patch_size),
        "lidar": build_encoder("lidar_cnn", in_channels=1, embed_dim=cfg.embed_dim, patch_size=cfg.patch_size),
        "label": label_encoder,
    })
    head = None
    if "mlp" in cfg.heads:
        head = nn.Sequential(nn.Linear(cfg.embed_dim, cfg.embed_dim), nn.ReLU(), nn.Dropout(0.2),
                             nn.Linear(cfg.embed_dim, n_classes))
    return model, head


def fused_embedding(embeddings: dict[str, torch.Tensor]) -> torch.Tensor:
    """Average of the L2-normalised HSI and LiDAR embeddings."""
    from pmrl_sci.training import fuse_mean

    return fuse_mean({"hsi": embeddings["hsi"], "lidar": embeddings["lidar"]}, normalize=True)


def class_embeddings(model: nn.Module, label_inputs: LabelInputs, n_classes: int, device: torch.device
                     ) -> torch.Tensor:
    """L2-normalised embeddings ``[n_classes, d]`` of every class."""
    classes = torch.arange(n_classes, device=device)
    return F.normalize(model.encoders["label"](label_inputs(classes)), dim=-1)


def predict_from_fused(fused: torch.Tensor, head_name: str, class_emb: torch.Tensor,
                       head: nn.Module | None) -> torch.Tensor:
    """Class predictions of one head from fused embeddings."""
    if head_name == "retrieval":
        return (F.normalize(fused, dim=-1) @ class_emb.T).argmax(dim=1)
    assert head is not None
    return head(fused).argmax(dim=1)


@torch.no_grad()
def predict_pixels(model: nn.Module, head: nn.Module | None, dataset: PatchDataset, heads: tuple[str, ...],
                   label_inputs: LabelInputs, n_classes: int, device: torch.device, batch_size: int = 512,
                   sharded: bool = False) -> dict[str, np.ndarray]:
    """Predicted class index per sample of ``dataset`` for each head (per-patch path).

    ``sharded``: under torch.distributed each rank predicts a contiguous part and every rank gets the whole,
    in order (the modules must be the unwrapped ones, identical on every rank).
    """
    if sharded:
        from pmrl_sci.distributed import gather_objects, shard_range

        part = shard_range(len(dataset))
        labels = None if dataset.labels is None else dataset.labels[part.start:part.stop]
        mine = PatchDataset(dataset.hsi, dataset.lidar, dataset.rows[part.start:part.stop],
                            dataset.cols[part.start:part.stop], labels, dataset.patch_size)
        parts = gather_objects(predict_pixels(model, head, mine, heads, label_inputs, n_classes, device, batch_size))
        return {name: np.concatenate([p[name] for p in parts]) for name in heads}
    model.eval()
    if head is not None:
        head.eval()
    class_emb = class_embeddings(model, label_inputs, n_classes, device)
    out: dict[str, list[np.ndarray]] = {name: [] for name in heads}
    for batch in patch_loader(dataset, batch_size):
        emb = model({"hsi": batch["hsi"].to(device), "lidar": batch["lidar"].to(device)})
        fused = fused_embedding(emb)
        for name in heads:
            out[name].append(predict_from_fused(fused, name, class_emb, head).cpu().numpy())
    return {name: np.concatenate(parts) if parts else np.zeros(0, np.int64) for name, parts in out.items()}


def _reflect_range(start: int, stop: int, size: int) -> np.ndarray:
    idx = np.abs(np.arange(start, stop))
    return np.where(idx >= size, 2 * (size - 1) - idx, idx)


@torch.no_grad()
def predict_scene(model: nn.Module, head: nn.Module | None, hsi: np.ndarray, lidar: np.ndarray, head_name: str,
                  label_inputs: LabelInputs, n_classes: int, patch_size: int, device: torch.device,
                  tile_rows: int = 32, progress: Callable[..., Any] | None = None) -> np.ndarray:
    """Classify every pixel of the scene (``[rows, cols]`` class indices) with the dense CNN path.

    The scene is processed in strips of ``tile_rows`` rows, each reflect-padded by ``patch_size // 2``, so memory
    stays bounded by one strip's feature maps; the result equals classifying each pixel's patch.
    """
    model.eval()
    if head is not None:
        head.eval()
    half = patch_size // 2
    rows, cols = hsi.shape[1:]
    col_idx = _reflect_range(-half, cols + half, cols)
    class_emb = class_embeddings(model, label_inputs, n_classes, device)
    prediction = np.zeros((rows, cols), dtype=np.int64)
    starts = range(0, rows, tile_rows)
    for r0 in (progress(starts, desc="classification map", leave=False) if progress else starts):
        r1 = min(rows, r0 + tile_rows)
        row_idx = _reflect_range(r0 - half, r1 + half, rows)
        emb = {}
        for name, cube in (("hsi", hsi), ("lidar", lidar)):
            tile = torch.from_numpy(np.ascontiguousarray(cube[:, row_idx][:, :, col_idx]))[None].to(device)
            dense = model.encoders[name].forward_dense(tile)  # [1, d, r1 - r0, cols]
            emb[name] = dense[0].permute(1, 2, 0).reshape(-1, dense.shape[1])
        fused = fused_embedding(emb)
        prediction[r0:r1] = predict_from_fused(fused, head_name, class_emb, head).view(r1 - r0, cols).cpu().numpy()
    return prediction

"""The ABIDE multimodal model and its evaluation pass.

BrainNetTF (fMRI), an MLP (sMRI) and a projection of frozen text embeddings, each to ``embed_dim``, averaged
over the modalities present and classified by a 3-layer MLP.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from pmrl_sci.data.abide.cohort import AbideCohort
from pmrl_sci.registry import build_encoder, build_head
from pmrl_sci.spectral import spectrum
from pmrl_sci.tasks.abide_data import FMRI_CHANNELS
from pmrl_sci.training import MultimodalModel

if TYPE_CHECKING:  # pragma: no cover
    from pmrl_sci.tasks.abide import AbideConfig

logger = logging.getLogger(__name__)


class AbideModel(nn.Module):
    """Modality encoders, mean fusion over present modalities, and a 3-layer MLP classifier."""

    def __init__(self, encoders: Mapping[str, nn.Module], embed_dim: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.backbone = MultimodalModel(encoders)
        self.classifier = build_head("mlp", in_features=embed_dim, num_classes=2, hidden_dim=embed_dim, num_layers=3,
                                     dropout=dropout)

    def forward(self, inputs: Mapping[str, torch.Tensor], mask: Mapping[str, torch.Tensor]
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Class logits ``[B, 2]`` and the modality embeddings."""
        embeddings = self.backbone(inputs)
        weights = torch.stack([mask[m].to(e.dtype) for m, e in embeddings.items()])  # [k, B]
        stacked = torch.stack(list(embeddings.values()))  # [k, B, d]
        fused = (stacked * weights.unsqueeze(-1)).sum(0) / weights.sum(0).clamp_min(1.0).unsqueeze(-1)
        return self.classifier(fused), embeddings


def build_abide_model(config: AbideConfig, cohort: AbideCohort) -> AbideModel:
    """BrainNetTF for fMRI, a 2-layer MLP for sMRI, a projection of frozen text embeddings."""
    encoders: dict[str, nn.Module] = {}
    if "fmri" in config.modalities:
        n_rois = cohort.fmri.shape[-1]
        channels = len(FMRI_CHANNELS[config.fmri_channels])
        # BrainNetTF uses 4 heads over R-dimensional node features (R = 200 for CC200); atlases whose
        # feature size 4 does not divide (ho: 111, tt: 97, dosenbach160: 161) get the largest divisor below
        heads = next(h for h in (4, 3, 2, 1) if (channels * n_rois) % h == 0)
        if heads != 4 and config.fmri_encoder in ("brainnettf", "vanillatf"):
            logger.warning("BrainNetTF: %d node features are not divisible by 4 heads; using %d", channels * n_rois,
                           heads)
        if config.fmri_encoder == "brainnettf":
            encoders["fmri"] = build_encoder("brainnettf", n_rois=n_rois, embed_dim=config.embed_dim,
                                             channels=channels, n_heads=heads, n_clusters=min(100, channels * n_rois))
        elif config.fmri_encoder == "vanillatf":
            encoders["fmri"] = build_encoder("vanillatf", n_rois=n_rois, embed_dim=config.embed_dim,
                                             channels=channels, n_heads=heads)
        elif config.fmri_encoder == "edge_mlp":
            encoders["fmri"] = build_encoder("edge_mlp", n_rois=n_rois, embed_dim=config.embed_dim,
                                             channels=channels, dropout=config.dropout)
        else:
            encoders["fmri"] = build_encoder(config.fmri_encoder, n_rois=n_rois, embed_dim=config.embed_dim,
                                             channels=channels)
    if "smri" in config.modalities:
        encoders["smri"] = build_encoder("mlp", in_features=cohort.smri.shape[1], embed_dim=config.embed_dim,
                                         hidden_dim=256, num_layers=2, dropout=config.dropout)
    if "text" in config.modalities:
        encoders["text"] = build_encoder("text", embed_dim=config.embed_dim,
                                         precomputed_dim=cohort.text_embeddings.shape[1], dropout=config.dropout)
    return AbideModel(encoders, config.embed_dim, config.dropout)



def to_device(batch: Mapping[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """Every tensor of a ``{modality: tensor}`` batch on ``device``."""
    return {k: v.to(device) for k, v in batch.items()}


@torch.no_grad()
def evaluate(model: AbideModel, loader: DataLoader, device: torch.device) -> dict[str, Any]:
    """Probabilities of autism, labels, and the mean singular values of the modality matrix."""
    model.eval()
    probs, labels, sigmas, u1s, vs = [], [], [], [], []
    for inputs, mask, y in loader:
        inputs, mask = to_device(inputs, device), to_device(mask, device)
        logits, embeddings = model(inputs, mask)
        probs.append(torch.softmax(logits.float(), dim=1)[:, 1].cpu())
        labels.append(y)
        if len(embeddings) >= 2:
            full = torch.stack([mask[m] for m in embeddings]).all(0)
            z = torch.stack([nn.functional.normalize(e.float(), dim=-1) for e in embeddings.values()], dim=1)
            if bool(full.any()):
                spec = spectrum(z[full])
                sigmas.append(spec.sigma.cpu())
                u1s.append(spec.u1.cpu())
                vs.append(spec.v.abs().cpu())
    out: dict[str, Any] = {"prob": torch.cat(probs).numpy(), "label": torch.cat(labels).numpy()}
    p = np.clip(out["prob"], 1e-7, 1 - 1e-7)
    out["loss"] = float(-np.mean(out["label"] * np.log(p) + (1 - out["label"]) * np.log(1 - p)))
    out["sigma"] = torch.cat(sigmas).numpy() if sigmas else None
    if u1s:
        u1 = torch.cat(u1s)
        cosine = u1 @ u1.T
        n = u1.shape[0]
        # mean cosine between the leading directions of different instances
        out["u1_cosine"] = float((cosine.sum() - cosine.diagonal().sum()) / max(n * (n - 1), 1))
        # modality contribution: mean |V| over instances (rows: modalities, columns: singular directions)
        out["v_abs_mean"] = torch.cat(vs).mean(0).tolist()
    return out

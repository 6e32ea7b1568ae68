"""VAST-style pairwise symmetric InfoNCE between modalities."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from pmrl_sci.objectives._common import (
    GatherFlag,
    LearnableTemperature,
    MaskLike,
    check_gather_flag,
    gather_active,
    gather_embeddings,
    stack_modalities,
    symmetric_cross_entropy,
    zero_loss,
)
from pmrl_sci.registry import register_objective


@register_objective("vast")
class VASTObjective(nn.Module):
    """Pairwise symmetric InfoNCE, anchored (anchor vs each other modality) or over all pairs.

    Parameters
    ----------
    anchor : str, optional
        Anchor modality for ``pairs="anchored"``; default the first key of the dict.
    pairs : {"anchored", "all"}
        Which modality pairs to contrast.
    temperature : float
        Initial temperature (learnable, 0.07).
    learnable_temperature : bool
        Learn the temperature.
    label_smoothing : float
        Cross-entropy label smoothing (0.1).
    gather : bool or "auto"
        Under ``torch.distributed`` (>= 2 ranks), gather every rank's embeddings with gradient and contrast the
        global batch on every rank ("auto", the default, and True; False: local batch only); DDP's gradient
        averaging then gives the single-process gradient of the global loss (see :mod:`pmrl_sci.distributed`).

    Notes
    -----
    Masks: each pair uses the instances that have both of its modalities; a pair with
    fewer than two such instances adds nothing. The loss is the mean over pairs.
    """

    def __init__(self, anchor: str | None = None, pairs: str = "anchored", temperature: float = 0.07,
                 learnable_temperature: bool = True, label_smoothing: float = 0.1, gather: GatherFlag = "auto") -> None:
        super().__init__()
        self.gather = check_gather_flag(gather)
        if pairs not in ("anchored", "all"):
            raise ValueError(f"pairs must be 'anchored' or 'all', got {pairs!r}")
        self.anchor, self.pairs, self.label_smoothing = anchor, pairs, label_smoothing
        self.temperature = LearnableTemperature(temperature, learnable_temperature)

    def modality_pairs(self, names: list[str]) -> list[tuple[int, int]]:
        """Index pairs (a, b) contrasted for these modality names."""
        if self.pairs == "all":
            return [(a, b) for a in range(len(names)) for b in range(a + 1, len(names))]
        anchor = self.anchor if self.anchor is not None else names[0]
        if anchor not in names:
            raise ValueError(f"VAST anchor {anchor!r} is not among the modalities {names}")
        a = names.index(anchor)
        return [(a, b) for b in range(len(names)) if b != a]

    def forward(self, embeddings: Mapping[str, torch.Tensor], mask: MaskLike = None) -> dict[str, torch.Tensor]:
        """Loss and per-pair parts for a ``{modality: [B, d]}`` dict (the global batch's under ``gather``)."""
        if gather_active(self.gather):
            embeddings, mask = gather_embeddings(embeddings, mask)
        names, z, present = stack_modalities(embeddings, mask)
        scale = self.temperature()
        out: dict[str, torch.Tensor] = {}
        losses = []
        for a, b in self.modality_pairs(names):
            both = present[:, a] & present[:, b]
            if int(both.sum()) < 2:
                continue
            logits = scale * z[both, a] @ z[both, b].transpose(0, 1)
            pair_loss = symmetric_cross_entropy(logits, self.label_smoothing)
            out[f"{names[a]}-{names[b]}"] = pair_loss.detach()
            losses.append(pair_loss)
        out["loss"] = torch.stack(losses).mean() if losses else zero_loss(z) + zero_loss(scale)
        out["temperature"] = (1.0 / scale).detach()
        return out

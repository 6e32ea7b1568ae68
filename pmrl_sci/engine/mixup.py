"""Mixup of multimodal training batches (Zhang et al., ICLR 2018), for tasks on the engine.

Each training batch is replaced by convex combinations of its instances: with ``lam ~ Beta(alpha, alpha)`` drawn
once per batch and a random pairing ``perm`` of the batch, every modality's input becomes
``lam * x + (1 - lam) * x[perm]`` (the same ``lam`` and partner for all modalities, so a mixed instance is still one
coherent multimodal instance, which the alignment objectives can align), a modality is present only where both
partners have it, and the classification loss is ``lam * CE(y) + (1 - lam) * CE(y[perm])``. The draws come from
torch's global generator, which the engine records in its resume checkpoints, so a resumed unit draws the same
mixes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["MixedBatch", "mix_batch", "mixed_cross_entropy"]


@dataclass
class MixedBatch:
    """A mixed batch: inputs and presence masks per modality, the partner of each instance and the weight ``lam``
    of the instance itself."""

    inputs: dict[str, torch.Tensor]
    mask: dict[str, torch.Tensor]
    partner: torch.Tensor
    lam: float


def mix_batch(inputs: Mapping[str, torch.Tensor], mask: Mapping[str, torch.Tensor], alpha: float) -> MixedBatch:
    """Mix a batch of ``{modality: [B, ...]}`` inputs with ``{modality: [B]}`` boolean presence masks.

    Parameters
    ----------
    inputs, mask : mapping of modality to tensor
        The batch (every tensor on the same device, batch first).
    alpha : float
        Concentration of the Beta distribution of ``lam`` (> 0; the mixup paper used 0.1 to 0.4 on ImageNet and 1
        on CIFAR-10; fastai's default is 0.4).

    Returns
    -------
    MixedBatch
    """
    if not alpha > 0:
        raise ValueError(f"mixup alpha must be > 0, got {alpha}")
    size = len(next(iter(inputs.values())))
    lam = float(torch.distributions.Beta(float(alpha), float(alpha)).sample())
    partner = torch.randperm(size)
    mixed = {m: lam * x + (1.0 - lam) * x[partner.to(x.device)] for m, x in inputs.items()}
    present = {m: v & v[partner.to(v.device)] for m, v in mask.items()}
    return MixedBatch(mixed, present, partner, lam)


def mixed_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, mixed: MixedBatch) -> torch.Tensor:
    """Per-instance cross-entropy against both partners' labels, weighted ``lam`` and ``1 - lam`` (``[B]``)."""
    partner_labels = labels[mixed.partner.to(labels.device)]
    return (mixed.lam * nn.functional.cross_entropy(logits, labels, reduction="none")
            + (1.0 - mixed.lam) * nn.functional.cross_entropy(logits, partner_labels, reduction="none"))

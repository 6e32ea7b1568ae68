"""PMRL (Liu et al. 2025): singular-value alignment plus an instance-wise term on u1."""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from pmrl_sci.objectives._common import MaskLike, stack_modalities, zero_loss
from pmrl_sci.registry import register_objective
from pmrl_sci.spectral import spectrum


def signed_leading_value(sigma: torch.Tensor, v: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """sigma_1 * (1^T v_1) / sqrt(k_i) = u_1 . (sum_m z^m) / sqrt(k_i), per instance ``[B]``.

    Singular values cannot tell a modality from its negation (flipping the sign of a column of
    Z leaves every sigma unchanged), so sigma_1 = sqrt(k) is also reached with some modalities
    anti-parallel to the others. This value equals sigma_1 when the modalities agree in sign and
    reaches sqrt(k) only when all embeddings are equal; anti-parallel modalities lower it.
    """
    n_present = present.sum(dim=1).clamp_min(1).to(sigma.dtype)
    return sigma[:, 0] * v[:, :, 0].sum(dim=1) / n_present.sqrt()


def pmrl_alignment_loss(sigma: torch.Tensor, present: torch.Tensor, tau1: float, rank: int = 1,
                        leading: torch.Tensor | None = None) -> torch.Tensor:
    """L_M: cross-entropy over singular values as logits, target the leading ``rank`` values.

    ``-log sum_{j<rank} softmax(sigma / tau1)_j`` averaged over instances with at least two
    present modalities; ``rank=1`` is the paper's L_M, ``rank=2`` its higher-rank ablation.
    Singular values of missing modalities (exactly zero, at the end) are left out of the softmax.
    ``leading`` replaces sigma_1 in the logits (the sign-aware variant).
    """
    n_present = present.sum(dim=1)
    k = sigma.shape[1]
    if leading is not None:
        sigma = torch.cat([leading.unsqueeze(1), sigma[:, 1:]], dim=1)
    valid_entry = torch.arange(k, device=sigma.device).unsqueeze(0) < n_present.unsqueeze(1)
    logits = (sigma / tau1).masked_fill(~valid_entry, float("-inf"))
    log_p = torch.log_softmax(logits, dim=1)
    target = min(rank, k)
    per_instance = -torch.logsumexp(log_p[:, :target], dim=1)
    rows = n_present >= max(2, target)
    if not bool(rows.any()):
        return zero_loss(sigma)
    return per_instance[rows].mean()


def instance_contrastive_loss(u1: torch.Tensor, valid: torch.Tensor, tau2: float) -> torch.Tensor:
    """L_M': InfoNCE over instances on the (sign-fixed) leading directions u1."""
    u = u1[valid]
    if u.shape[0] < 2:
        return zero_loss(u1)
    logits = u @ u.transpose(0, 1) / tau2
    return F.cross_entropy(logits, torch.arange(u.shape[0], device=u.device))


@register_objective("pmrl")
class PMRLObjective(nn.Module):
    """PMRL: L = L_M(tau1) + lambda1 * L_M'(tau2).

    Parameters
    ----------
    tau1 : float
        Temperature of the softmax over singular values (0.05; 0.01 for pre-training).
    tau2 : float
        Temperature of the instance-wise InfoNCE over leading directions (0.1; 0.4 on ABIDE).
    lambda1 : float
        Weight of the instance-wise term; ``instance_term=False`` drops it ("w/o reg").
    instance_term : bool
        Keep L_M'.
    rank : int
        1 for the paper's objective; 2 for the higher-rank ablation that maximises the
        softmax mass of sigma_1 and sigma_2 together.
    sign_aware : bool
        Replace sigma_1 in L_M by u_1 . (sum_m z^m) / sqrt(k) (see :func:`signed_leading_value`).
        The paper's L_M (False, the default) is blind to the sign of each modality: trained
        from scratch, a modality can align anti-parallel to the others and still give
        sigma_1 = sqrt(k), which breaks cross-modal retrieval by cosine. With pre-trained,
        positively correlated encoders (the paper's setting) this does not arise.

    Notes
    -----
    Missing modalities (mask False) are zero columns of Z: the singular values of
    ``[Z_present, 0]`` are those of ``Z_present`` followed by zeros, which are dropped from
    the softmax. L_M averages over instances with >= 2 modalities; L_M' uses every instance
    with >= 1 modality (u1 of a single modality is that embedding).
    """

    def __init__(self, tau1: float = 0.05, tau2: float = 0.1, lambda1: float = 1.0, instance_term: bool = True,
                 rank: int = 1, sign_aware: bool = False) -> None:
        super().__init__()
        if tau1 <= 0 or tau2 <= 0:
            raise ValueError(f"temperatures must be positive, got tau1={tau1}, tau2={tau2}")
        if rank < 1:
            raise ValueError(f"rank must be >= 1, got {rank}")
        self.tau1, self.tau2, self.lambda1 = tau1, tau2, lambda1
        self.instance_term, self.rank, self.sign_aware = instance_term, rank, sign_aware

    def forward(self, embeddings: Mapping[str, torch.Tensor], mask: MaskLike = None) -> dict[str, torch.Tensor]:
        """Loss and its parts for a ``{modality: [B, d]}`` dict."""
        _, z, present = stack_modalities(embeddings, mask)
        spec = spectrum(z)
        leading = signed_leading_value(spec.sigma, spec.v, present) if self.sign_aware else None
        alignment = pmrl_alignment_loss(spec.sigma, present, self.tau1, self.rank, leading)
        out = {"alignment": alignment}
        loss = alignment
        if self.instance_term and self.lambda1 != 0:
            instance = instance_contrastive_loss(spec.u1, present.any(dim=1), self.tau2)
            loss = loss + self.lambda1 * instance
            out["instance"] = instance
        full = present.all(dim=1)
        sigma1 = spec.sigma[full, 0].mean() if bool(full.any()) else spec.sigma.new_zeros(())
        out["sigma1"] = sigma1.detach()
        out["loss"] = loss
        return out

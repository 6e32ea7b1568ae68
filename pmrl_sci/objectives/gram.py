"""GRAM (Cicchetti et al., ICLR 2025): contrastive loss over Gram-matrix volumes, anchored."""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from pmrl_sci.objectives._common import (
    GatherFlag,
    LearnableTemperature,
    MaskLike,
    check_gather_flag,
    gather_active,
    gather_embeddings,
    stack_modalities,
    zero_loss,
)
from pmrl_sci.registry import register_objective


def polynomial_det(matrix: torch.Tensor) -> torch.Tensor:
    """Determinant of small matrices ``[..., n, n]`` by Laplace expansion.

    A polynomial in the entries, so its gradient is finite for singular matrices too
    (``torch.linalg.det``'s backward solves with the matrix). Meant for n <= 6.
    """
    n = matrix.shape[-1]
    if n == 1:
        return matrix[..., 0, 0]
    if n == 2:
        return matrix[..., 0, 0] * matrix[..., 1, 1] - matrix[..., 0, 1] * matrix[..., 1, 0]
    total = matrix.new_zeros(matrix.shape[:-2])
    rest = matrix[..., 1:, :]
    for col in range(n):
        keep = [c for c in range(n) if c != col]
        minor = polynomial_det(rest[..., keep])
        term = matrix[..., 0, col] * minor
        total = total + term if col % 2 == 0 else total - term
    return total


def adjugate(matrix: torch.Tensor) -> torch.Tensor:
    """Adjugate ``adj(H)`` of small matrices ``[..., n, n]`` (``H adj(H) = det(H) I``)."""
    n = matrix.shape[-1]
    if n == 1:
        return torch.ones_like(matrix)
    cofactor = []
    for row in range(n):
        rows = [r for r in range(n) if r != row]
        line = []
        for col in range(n):
            cols = [c for c in range(n) if c != col]
            minor = polynomial_det(matrix[..., rows, :][..., cols])
            line.append(minor if (row + col) % 2 == 0 else -minor)
        cofactor.append(torch.stack(line, dim=-1))
    return torch.stack(cofactor, dim=-2).transpose(-1, -2)


def anchored_gram_determinants(anchor: torch.Tensor, others: torch.Tensor, others_present: torch.Tensor
                               ) -> torch.Tensor:
    """det of the Gram of ``[anchor_i, x_j^1, ..., x_j^{k-1}]`` for every pair (i, j).

    Parameters
    ----------
    anchor : Tensor [B, d]
        Unit-norm anchor embeddings.
    others : Tensor [B, k-1, d]
        Unit-norm embeddings of the other modalities (zero where missing).
    others_present : Tensor [B, k-1] of bool

    Returns
    -------
    Tensor [B, B]
        Squared volumes. With H_j the Gram of candidate j's vectors and c_ij its inner
        products with anchor i, det = det(H_j) - c_ij^T adj(H_j) c_ij (no B x B x k x k
        tensor of matrices). A missing modality of candidate j contributes an identity row and
        column to the Gram (a unit vector orthogonal to everything), which leaves the determinant
        exactly that of the present modalities' Gram: the squared volume of the vectors present.
        These are not comparable across candidates with different numbers of modalities (see
        :func:`comparable_volumes`).
    """
    k1 = others.shape[1]
    eye = torch.eye(k1, dtype=others.dtype, device=others.device)
    gram = others @ others.transpose(1, 2)  # [B, k-1, k-1]
    pair_present = others_present.unsqueeze(2) & others_present.unsqueeze(1)
    gram = torch.where(pair_present, gram, eye.expand_as(gram))
    det_h = polynomial_det(gram)  # [B]
    adj_h = adjugate(gram)  # [B, k-1, k-1]
    cross = torch.einsum("id,jmd->ijm", anchor, others)  # [B_i, B_j, k-1]
    cross = cross * others_present.unsqueeze(0).to(cross.dtype)
    quad = torch.einsum("ijm,jmn,ijn->ij", cross, adj_h, cross)
    return det_h.unsqueeze(0) - quad


def comparable_volumes(volume: torch.Tensor, others_present: torch.Tensor) -> torch.Tensor:
    """Put volumes over different numbers of modalities on the scale of the complete tuple.

    The volume of n unit vectors is the product of n - 1 heights (the distance of each vector from the
    span of the ones before it, each at most 1), so fewer modalities mean fewer factors below one: an
    incomplete tuple gets a systematically larger volume (matched pairs with every cosine 0.8: 0.60
    for [anchor, x^2] against 0.32 for [anchor, x^2, x^3], as large as a complete mismatched tuple).
    Here each volume over c_j present non-anchor modalities is raised to the power (k - 1) / c_j: the
    geometric mean of its heights, V^(1 / c_j), taken to the k - 1 heights a complete tuple has.
    Complete candidates are unchanged. With all pairwise cosines equal to c the complete volume is
    (1 - c)^((k-1)/2) (1 + (k-1) c)^(1/2) and the rescaled incomplete one (1 - c)^((k-1)/2)
    (1 + c_j c)^((k-1) / (2 c_j)): for 0 <= c < 1 their ratio lies between 1 and 1.16 for k = 3,
    1.41 for k = 4 and 2.31 for k = 6 (one modality of five present), against a raw ratio that grows
    without bound as c -> 1.

    Parameters
    ----------
    volume : Tensor [B, B]
        Volumes, anchor i (rows) against candidate j (columns).
    others_present : Tensor [B, k-1] of bool
        Which non-anchor modalities candidate j has.

    Returns
    -------
    Tensor [B, B]
        ``volume[i, j] ** ((k - 1) / c_j)``; columns with c_j = 0 are left as they are.
    """
    n_others = others_present.shape[1]
    counts = others_present.sum(dim=1)
    if bool((counts == n_others).all()):
        return volume
    exponent = n_others / counts.clamp_min(1).to(volume.dtype)
    return volume ** exponent.unsqueeze(0)


@register_objective("gram")
class GRAMObjective(nn.Module):
    """GRAM's volume contrastive loss, anchored on one modality.

    For anchor a_i and candidate j, V_ij = sqrt(det G_ij + eps) with G_ij the Gram of
    [a_i, x_j^2, ..., x_j^k]. Loss: symmetric cross-entropy over logits -V / temperature
    (anchor -> candidates and candidates -> anchor), label smoothing 0.1, learnable
    temperature initialised at 0.07.

    Parameters
    ----------
    anchor : str, optional
        The anchor modality (text in the paper); default: the first key of the dict.
    temperature : float
        Initial temperature.
    learnable_temperature : bool
        Learn it (as GRAM does).
    label_smoothing : float
        Cross-entropy label smoothing.
    eps : float
        Added under the square root so the gradient stays finite at zero volume.
    contrastive : bool
        False gives the "w/o reg" variant: the mean volume of matched tuples alone.
    gather : bool or "auto"
        Under ``torch.distributed`` (>= 2 ranks), gather every rank's embeddings with gradient and compute the
        loss of the global batch on every rank ("auto", the default, and True; False: local batch only). The
        gradient each rank's embeddings receive is then ``world_size`` times that of the global loss, which DDP's
        averaging cancels (see :mod:`pmrl_sci.distributed`). Single-process results are unchanged.

    comparable_incomplete : bool
        With masks, rescale the volume of a candidate with c_j < k - 1 non-anchor modalities to the
        complete tuple's scale, V ** ((k - 1) / c_j) (:func:`comparable_volumes`; default). False keeps
        the raw volume, which favours incomplete candidates: an incomplete matched tuple then scores
        like a complete mismatched one.

    Notes
    -----
    Masks: the volume of candidate j is that of the anchor and the modalities j has (a missing
    one is left out), made comparable across candidates as above. Instances without the anchor
    are neither queries nor negatives; candidates with no non-anchor modality are left out.
    Logged ``volume``: the mean (rescaled) volume of the matched tuples.
    """

    def __init__(self, anchor: str | None = None, temperature: float = 0.07, learnable_temperature: bool = True,
                 label_smoothing: float = 0.1, eps: float = 1e-6, contrastive: bool = True,
                 gather: GatherFlag = "auto", comparable_incomplete: bool = True) -> None:
        super().__init__()
        self.anchor, self.gather = anchor, check_gather_flag(gather)
        self.comparable_incomplete = comparable_incomplete
        self.temperature = LearnableTemperature(temperature, learnable_temperature)
        self.label_smoothing, self.eps, self.contrastive = label_smoothing, eps, contrastive

    def volumes(self, embeddings: Mapping[str, torch.Tensor], mask: MaskLike = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Pairwise volumes ``[B, B]`` (anchor i x candidate j; rescaled as in :func:`comparable_volumes`
        unless ``comparable_incomplete=False``) and the valid-instance mask [B]."""
        names, z, present = stack_modalities(embeddings, mask)
        anchor = self.anchor if self.anchor is not None else names[0]
        if anchor not in names:
            raise ValueError(f"GRAM anchor {anchor!r} is not among the modalities {names}")
        a = names.index(anchor)
        rest = [m for m in range(len(names)) if m != a]
        with torch.autocast(device_type=z.device.type, enabled=False):
            z = z.float() if z.dtype not in (torch.float32, torch.float64) else z
            det = anchored_gram_determinants(z[:, a], z[:, rest], present[:, rest])
            volume = torch.sqrt(det.clamp_min(0.0) + self.eps)
            if self.comparable_incomplete:
                volume = comparable_volumes(volume, present[:, rest])
        valid = present[:, a] & present[:, rest].any(dim=1)
        return volume, valid

    def forward(self, embeddings: Mapping[str, torch.Tensor], mask: MaskLike = None) -> dict[str, torch.Tensor]:
        """Loss and its parts for a ``{modality: [B, d]}`` dict (the global batch's under ``gather``)."""
        if gather_active(self.gather):
            embeddings, mask = gather_embeddings(embeddings, mask)
        volume, valid = self.volumes(embeddings, mask)
        matched = volume.diagonal()[valid]
        out = {"volume": matched.mean().detach() if matched.numel() else volume.new_zeros(())}
        if not self.contrastive:
            out["loss"] = matched.mean() if matched.numel() else zero_loss(volume)
            return out
        v = volume[valid][:, valid]
        if v.shape[0] < 2:
            out["loss"] = zero_loss(volume)
            return out
        scale = self.temperature()
        logits = -v * scale
        targets = torch.arange(v.shape[0], device=v.device)
        loss = 0.5 * (F.cross_entropy(logits, targets, label_smoothing=self.label_smoothing)
                      + F.cross_entropy(logits.transpose(0, 1), targets, label_smoothing=self.label_smoothing))
        out.update(loss=loss, contrastive=loss.detach(), temperature=(1.0 / scale).detach())
        return out

"""PMRL (Liu et al. 2025): singular-value alignment plus an instance-wise term on u1."""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from pmrl_sci.objectives._common import (
    GatherFlag,
    MaskLike,
    check_gather_flag,
    gather_active,
    stack_modalities,
    zero_loss,
)
from pmrl_sci.registry import register_objective
from pmrl_sci.spectral import (
    batched_eigh,
    complement_basis,
    decomposition_dtype,
    gram_spectrum,
    sqrt_derivative,
    value_eps,
)


class _SignAwareValues(torch.autograd.Function):
    """(ell, r_1, ..., r_{k-1}) [B, k] from G [B, k, k] and the present weights [B, k]; bounded backward.

    ``_SignAwareValues.apply(gram, weights, complete)``. The residual's Gram matrix is B^T G B: with every
    modality present, B is the fixed orthonormal basis [k, k-1] of the complement of 1, so its k - 1
    eigenvalues are the residual's; with missing ones, B = Q = diag(m) - m m^T / k_i per instance [B, k, k],
    and the smallest eigenvalue (the mean direction's, zero up to rounding) is dropped.
    """

    @staticmethod
    def forward(ctx, gram: torch.Tensor, weights: torch.Tensor, complete: bool):  # type: ignore[override]
        k = gram.shape[-1]
        if complete:
            n_present = torch.full_like(weights[:, :1], float(k))
            energy = gram.sum(dim=(1, 2)).unsqueeze(1) / k
            basis = complement_basis(k, gram.dtype, gram.device)
            residual_values, residual_vectors = batched_eigh(basis.transpose(0, 1) @ gram @ basis)
        else:
            n_present = weights.sum(dim=1, keepdim=True).clamp_min(1.0)  # [B, 1]
            energy = ((gram @ weights.unsqueeze(2)).squeeze(2) * weights).sum(1, keepdim=True) / n_present
            basis = torch.diag_embed(weights) - weights.unsqueeze(2) * (weights / n_present).unsqueeze(1)
            residual_values, residual_vectors = batched_eigh(basis @ gram @ basis)
            # rank <= k_i - 1: drop the smallest (the mean direction's, zero up to rounding)
            residual_values, residual_vectors = residual_values[:, 1:], residual_vectors[:, :, 1:]
        leading = energy.clamp_min(0.0).sqrt()
        rest = residual_values.flip(-1).clamp_min(0.0).sqrt()
        ctx.save_for_backward(weights, n_present, leading, basis @ residual_vectors.flip(-1), rest, value_eps(gram))
        return torch.cat([leading, rest], dim=1)

    @staticmethod
    def backward(ctx, grad_values: torch.Tensor) -> tuple[torch.Tensor, None, None]:  # type: ignore[override]
        weights, n_present, leading, projected, rest, eps = ctx.saved_tensors
        # ell = sqrt(w^T G w / n): d ell / dG = w w^T ell / (2 n (ell^2 + eps))
        scale_leading = grad_values[:, :1] * sqrt_derivative(leading, eps) / n_present
        grad_gram = scale_leading.unsqueeze(2) * (weights.unsqueeze(2) * weights.unsqueeze(1))
        # r_j = sqrt(eig_j(B^T G B)): d r_j / dG = (B w_j)(B w_j)^T r_j / (2 (r_j^2 + eps)); projected = B W
        scale_rest = grad_values[:, 1:] * sqrt_derivative(rest, eps)
        grad_gram = grad_gram + (projected * scale_rest.unsqueeze(1)) @ projected.transpose(1, 2)
        return grad_gram, None, None


def sign_aware_values(z: torch.Tensor, present: torch.Tensor, *, gram: torch.Tensor | None = None) -> torch.Tensor:
    """The sign-aware counterpart of the singular values, ``[B, k]``.

    Singular values cannot tell a modality from its negation (negating a column of Z leaves every
    sigma unchanged), so sigma_1 = sqrt(k) is also reached with modalities anti-parallel to each
    other. Here the leading value is the energy along the mean embedding, sqrt(k) ||mean_m z^m||
    (= ||sum_m z^m|| / sqrt(k), at most sigma_1, and sqrt(k) exactly when every embedding is the
    same), and the others are the singular values of the residual Z - mean 1^T (rank <= k - 1).
    The squares still add up to k, so a softmax over them rewards exactly what full, same-sign
    alignment means, and its gradient always pulls the modalities together. With missing
    modalities the mean is over the present ones (k_i of them).

    Both parts follow from the k x k Gram matrix G = Z^T Z: with m the indicator of the present
    modalities (k_i = 1^T m), the leading value is sqrt(m^T G m / k_i), and the residual is Z Q with
    Q = diag(m) - m m^T / k_i, so its values are the square roots of the eigenvalues of Q G Q (with
    every modality present, of the (k-1) x (k-1) matrix H^T G H, H an orthonormal basis of the
    complement of the all-ones vector). No second pass over the embedding dimension is needed. The
    square roots' derivatives are regularised as in :func:`~pmrl_sci.spectral.sqrt_derivative`, so
    gradients stay bounded at exact alignment and when the modalities cancel exactly (the values near
    zero are then rounding noise of size sqrt(eps k), which a softmax at temperature 0.05 does not
    notice).

    Relation to the singular values: the leading value is sigma_1 computed with the right singular
    vector forced to be the (present) all-ones direction, and the rest are the singular values of Z
    restricted to its orthogonal complement. Hence ell <= sigma_1, and by Ky Fan's maximum principle
    every partial sum of squares ell^2 + r_1^2 + ... + r_{j-1}^2 <= sigma_1^2 + ... + sigma_j^2, with
    all equal exactly when the all-ones vector is a right singular vector of Z belonging to sigma_1
    (all row sums of G equal with a non-negative cosine structure, e.g. k = 2 with a non-negative
    cosine, or all pairwise cosines equal and non-negative). Otherwise, for k >= 3, the values and
    the loss differ from the paper's even when every cosine is positive.

    Parameters
    ----------
    z : Tensor [B, k, d]
        Unit-norm embeddings, zero rows where missing (float32 or float64).
    present : Tensor [B, k] of bool
    gram : Tensor [B, k, k], optional
        ``z z^T`` if already formed (with gradient), e.g. by :func:`~pmrl_sci.spectral.gram_spectrum`;
        ``z`` is then not read.

    Returns
    -------
    Tensor [B, k]
        ``[ell, r_1, ..., r_{k-1}]``; with k_i present modalities the entries from k_i on are zero.
    """
    if gram is None:
        with torch.autocast(device_type=z.device.type, enabled=False):
            z = z.to(decomposition_dtype(z.dtype))
            gram = z @ z.transpose(1, 2)
    return _SignAwareValues.apply(gram, present.to(gram.dtype), bool(present.all()))


def pmrl_alignment_loss(sigma: torch.Tensor, present: torch.Tensor, tau1: float, rank: int = 1) -> torch.Tensor:
    """L_M: cross-entropy over singular values as logits, target the leading ``rank`` values.

    ``-log sum_{j<rank} softmax(sigma / tau1)_j`` averaged over instances with at least two
    present modalities; ``rank=1`` is the paper's L_M, ``rank=2`` its higher-rank ablation.
    Singular values of missing modalities (exactly zero, at the end) are left out of the softmax.
    ``sigma`` may also be the output of :func:`sign_aware_values`.
    """
    k = sigma.shape[1]
    if rank == 1 and bool(present.all()):  # the common case, in a third of the operations
        target = torch.zeros(sigma.shape[0], dtype=torch.long, device=sigma.device)
        return F.cross_entropy(sigma / tau1, target)
    n_present = present.sum(dim=1)
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
    u = u1 if bool(valid.all()) else u1[valid]
    if u.shape[0] < 2:
        return zero_loss(u1)
    logits = u @ u.transpose(0, 1) / tau2
    return F.cross_entropy(logits, torch.arange(u.shape[0], device=u.device))


def _global_batch_terms(alignment: torch.Tensor, sigma: torch.Tensor, u1: torch.Tensor, present: torch.Tensor,
                        rank: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Distributed PMRL parts: (L_M share, sigma_1 share, global u1, global u1 mask).

    ``alignment`` is the local L_M (a mean over the local rows with >= 2 modalities); it is rescaled to
    ``W * local_sum / global_rows`` so that the mean over ranks is the global-batch L_M. One collective carries
    the local counts, one the u1 (with gradient) and one their mask.
    """
    from pmrl_sci.distributed import gather_counts, gather_no_grad, gather_with_grad, get_world_size

    world = get_world_size()
    rows = present.sum(dim=1) >= max(2, min(rank, sigma.shape[1]))
    full = present.all(dim=1)
    counts = gather_counts([u1.shape[0], int(rows.sum()), int(full.sum())], u1.device)  # [W, 3]
    sizes = counts[:, 0].tolist()
    n_rows, n_full = int(counts[:, 1].sum()), int(counts[:, 2].sum())
    share = alignment * (world * int(rows.sum()) / n_rows) if n_rows else alignment * 0.0
    sigma1 = sigma[full, 0].sum() * (world / n_full) if n_full else sigma.new_zeros(())
    valid = present.any(dim=1)
    return share, sigma1, gather_with_grad(u1, sizes), gather_no_grad(valid, sizes)


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
        softmax mass of sigma_1 and sigma_2 together. With ``sign_aware=True``, rank 2 targets
        the leading sign-aware value and the top residual value, (ell, r_1): ell^2 + r_1^2 is the
        energy of Z in the best pair of right directions of which one is the same-sign mean
        direction, the sign-aware counterpart of sigma_1^2 + sigma_2^2 (the best pair without
        that constraint, which is at least as large). It is not sigma_2 (see
        :func:`sign_aware_values`).
    sign_aware : bool
        Use :func:`sign_aware_values` in L_M in place of the singular values.
        The paper's L_M (False, the default) is blind to the sign of each modality: trained
        from scratch, a modality can align anti-parallel to the others and still give
        sigma_1 = sqrt(k), which breaks cross-modal retrieval by cosine. With pre-trained,
        positively correlated encoders (the paper's setting) this does not arise. The two
        forms agree exactly only where the all-ones vector is the leading right singular vector
        of Z (k = 2 with a non-negative cosine; all pairwise cosines equal and non-negative);
        for k >= 3 they differ otherwise, also when every cosine is positive (ell < sigma_1, and
        the residual values carry the difference). The instance term uses the paper's u1 in
        both forms.

    gather : bool or "auto"
        Under ``torch.distributed`` (>= 2 ranks; "auto", the default, and True): L_M' contrasts the u1 of
        the global batch, gathered with gradient from every rank, and L_M (per instance, no communication)
        becomes this rank's share ``W * sum_local / N_global`` of the global mean. Averaged over ranks (DDP
        averages gradients; average the logged values) both give the single-process loss and gradient of
        the global batch. False: local batch only. Single-process results are unchanged.

    Notes
    -----
    Missing modalities (mask False) are zero columns of Z: the singular values of
    ``[Z_present, 0]`` are those of ``Z_present`` followed by zeros, which are dropped from
    the softmax. L_M averages over instances with >= 2 modalities; L_M' uses every instance
    with >= 1 modality (u1 of a single modality is that embedding).
    """

    def __init__(self, tau1: float = 0.05, tau2: float = 0.1, lambda1: float = 1.0, instance_term: bool = True,
                 rank: int = 1, sign_aware: bool = False, gather: GatherFlag = "auto") -> None:
        super().__init__()
        self.gather = check_gather_flag(gather)
        if tau1 <= 0 or tau2 <= 0:
            raise ValueError(f"temperatures must be positive, got tau1={tau1}, tau2={tau2}")
        if rank < 1:
            raise ValueError(f"rank must be >= 1, got {rank}")
        self.tau1, self.tau2, self.lambda1 = tau1, tau2, lambda1
        self.instance_term, self.rank, self.sign_aware = instance_term, rank, sign_aware

    def forward(self, embeddings: Mapping[str, torch.Tensor], mask: MaskLike = None) -> dict[str, torch.Tensor]:
        """Loss and its parts for a ``{modality: [B, d]}`` dict."""
        _, z, present = stack_modalities(embeddings, mask)
        with torch.autocast(device_type=z.device.type, enabled=False):
            z = z.to(decomposition_dtype(z.dtype))
            spec, gram = gram_spectrum(z)
            values = sign_aware_values(z, present, gram=gram) if self.sign_aware else spec.sigma
        alignment = pmrl_alignment_loss(values, present, self.tau1, self.rank)
        u1, valid = spec.u1, present.any(dim=1)
        if gather_active(self.gather):
            alignment, sigma1, u1, valid = _global_batch_terms(alignment, spec.sigma, u1, present, self.rank)
        elif mask is None:
            sigma1 = spec.sigma[:, 0].mean()
        else:
            full = present.all(dim=1)
            sigma1 = spec.sigma[full, 0].mean() if bool(full.any()) else spec.sigma.new_zeros(())
        out = {"alignment": alignment}
        loss = alignment
        if self.instance_term and self.lambda1 != 0:
            instance = instance_contrastive_loss(u1, valid, self.tau2)
            loss = loss + self.lambda1 * instance
            out["instance"] = instance
        out["sigma1"] = sigma1.detach()
        out["loss"] = loss
        return out

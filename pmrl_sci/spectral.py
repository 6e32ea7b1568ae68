"""Batched spectral operations on the per-instance modality matrix Z.

For instance i with k modality embeddings of dimension d, PMRL looks at
Z_i = [z_i^1 ... z_i^k] (d x k). Here a batch is a tensor ``z`` of shape ``[B, k, d]``
(row m of ``z[i]`` is modality m), so ``z[i] = Z_i^T``.

Route
-----
Nothing of size d x d is formed. The k x k Gram matrix G_i = z_i z_i^T = Z_i^T Z_i costs
O(k^2 d); its eigendecomposition G = V diag(lambda) V^T gives the right singular vectors V
(k x k). The singular values are then taken as sigma_j = ||Z v_j|| (the norm of the
projection, accurate to float rounding of Z even for tiny sigma_j, unlike sqrt(lambda_j)),
and the leading left singular vector is u_1 = Z v_1 / sigma_1.

Gradients
---------
Autograd through ``eigh`` (or ``svd``) divides by eigenvalue gaps and returns NaN or inf when
singular values coincide, which is exactly the state PMRL drives towards (all modalities equal:
sigma_2 = ... = sigma_k = 0). :class:`GramSpectrum` therefore has its own backward, the standard
eigenvector perturbation formula with every 1/(l_j - l_i) replaced by
(l_j - l_i) / ((l_j - l_i)^2 + eps): exact for well separated spectra (relative bias
eps / gap^2) and bounded by 1 / (2 sqrt(eps)) everywhere. The singular-value part uses
d sigma_j / dZ = u_j v_j^T with u_j = Z v_j / max(sigma_j, tiny), whose norm is at most one.

Sign convention
---------------
Singular vectors are defined up to sign. Every right singular vector v_j is oriented so that
its entries sum to a positive number; for v_1 this is the same as u_1 . (sum_m z^m) > 0,
because u_1^T Z 1 = sigma_1 (1^T v_1). When the sum is zero up to rounding
(|1^T v_j| <= tie_tol; e.g. k = 2 with anti-correlated modalities, v_1 = (1, -1) / sqrt(2)), the
tie is broken by making the first entry (in modality order) whose magnitude exceeds tie_tol
positive, so u_1 then points along the first modality's component. Same input, same output.

Precision
---------
Everything runs in float32 (float64 input stays float64), with autocast disabled, whatever the
ambient autocast state.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

#: Regulariser of the eigenvalue gaps in the custom backward (see module docstring).
DEFAULT_GAP_EPS = 1e-10
#: Relative tolerance under which the sign of 1^T v_j counts as zero.
DEFAULT_TIE_TOL = 1e-6


class Spectrum(NamedTuple):
    """Singular values and vectors of a batch of modality matrices.

    Attributes
    ----------
    sigma : Tensor [B, k]
        Singular values of each Z_i, descending.
    u1 : Tensor [B, d]
        Leading left singular vector (unit length, sign-fixed).
    v : Tensor [B, k, k]
        Right singular vectors; column j (``v[..., :, j]``) belongs to ``sigma[..., j]``.
    """

    sigma: torch.Tensor
    u1: torch.Tensor
    v: torch.Tensor


def _decomposition_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _orient(v: torch.Tensor, tie_tol: float) -> torch.Tensor:
    """Flip columns of ``v`` [..., k, k] so each has a positive sum (ties: first large entry > 0)."""
    col_sum = v.sum(dim=-2)  # [..., k]
    k = v.shape[-1]
    tie = col_sum.abs() <= tie_tol * (k ** 0.5)
    large = v.abs() > tie_tol  # [..., k(rows), k(cols)]
    first_large = large.to(torch.int8).argmax(dim=-2, keepdim=True)  # first row index per column
    first_entry = v.gather(-2, first_large).squeeze(-2)
    reference = torch.where(tie, first_entry, col_sum)
    sign = torch.where(reference < 0, -1.0, 1.0).to(v.dtype)
    return v * sign.unsqueeze(-2)


class GramSpectrum(torch.autograd.Function):
    """sigma [B, k], V [B, k, k] and u1 [B, d] of z [B, k, d] through the Gram matrix, with a stable backward."""

    @staticmethod
    def forward(ctx, z: torch.Tensor, gap_eps: float, tie_tol: float):  # type: ignore[override]
        gram = z @ z.transpose(-1, -2)
        _, vectors = torch.linalg.eigh(gram)  # ascending; eigh reads one triangle, so no symmetrisation
        projections = torch.einsum("bkj,bkd->bjd", vectors, z)  # row j = (Z v_j)^T, [B, k, d]
        sigma = projections.norm(dim=-1)
        sigma, order = sigma.sort(dim=-1, descending=True, stable=True)
        vectors = vectors.gather(-1, order.unsqueeze(-2).expand_as(vectors))
        vectors = _orient(vectors, tie_tol)
        tiny = torch.finfo(sigma.dtype).tiny ** 0.5
        u1 = torch.einsum("bk,bkd->bd", vectors[..., :, 0], z) / sigma[..., :1].clamp_min(tiny)
        ctx.gap_eps = gap_eps
        ctx.save_for_backward(z, sigma, vectors, u1)
        return sigma, vectors, u1

    @staticmethod
    def backward(ctx, grad_sigma: torch.Tensor | None, grad_v: torch.Tensor | None,  # type: ignore[override]
                 grad_u1: torch.Tensor | None):
        z, sigma, vectors, u1 = ctx.saved_tensors
        tiny = torch.finfo(sigma.dtype).tiny ** 0.5
        grad_z_direct = None
        if grad_u1 is not None:
            # u1 = p / ||p|| with p = Z v1: through the normalisation, then into Z and v1
            grad_p = (grad_u1 - u1 * (u1 * grad_u1).sum(-1, keepdim=True)) / sigma[..., :1].clamp_min(tiny)
            grad_z_direct = vectors[..., :, 0].unsqueeze(-1) * grad_p.unsqueeze(-2)
            grad_v1 = torch.einsum("bkd,bd->bk", z, grad_p)
            extra = torch.zeros_like(vectors)
            extra[..., :, 0] = grad_v1
            grad_v = extra if grad_v is None else grad_v + extra
        inner = torch.zeros(vectors.shape, dtype=vectors.dtype, device=vectors.device)
        if grad_sigma is not None:
            # d sigma_j = v_j^T dG v_j / (2 sigma_j)
            inner = inner + torch.diag_embed(grad_sigma / (2.0 * sigma.clamp_min(tiny)))
        if grad_v is not None:
            lam = sigma * sigma
            gap = lam.unsqueeze(-2) - lam.unsqueeze(-1)  # [.., i, j] = l_j - l_i
            inv_gap = gap / (gap * gap + ctx.gap_eps)
            inner = inner + inv_gap * (vectors.transpose(-1, -2) @ grad_v)
        grad_gram = vectors @ inner @ vectors.transpose(-1, -2)
        grad_z = torch.einsum("bij,bjd->bid", grad_gram + grad_gram.transpose(-1, -2), z)
        if grad_z_direct is not None:
            grad_z = grad_z + grad_z_direct
        return grad_z, None, None


def spectrum(z: torch.Tensor, *, gap_eps: float = DEFAULT_GAP_EPS, tie_tol: float = DEFAULT_TIE_TOL) -> Spectrum:
    """Singular values, sign-fixed leading left singular vector and right singular vectors.

    Parameters
    ----------
    z : Tensor [B, k, d] (or [k, d])
        k modality embeddings of dimension d per instance (row m = modality m). Not
        normalised here; PMRL normalises before calling.
    gap_eps : float
        Regulariser of the eigenvalue gaps in the backward pass.
    tie_tol : float
        Tolerance of the sign convention's tie test.

    Returns
    -------
    Spectrum
        ``sigma`` [B, k] descending, ``u1`` [B, d] unit length with u1 . sum_m z^m >= 0,
        ``v`` [B, k, k] right singular vectors in columns.

    Notes
    -----
    Runs in float32 (float64 stays float64) with autocast disabled. Gradients are finite
    for every input, including exactly coinciding or orthogonal modalities.
    """
    if z.dim() < 2:
        raise ValueError(f"spectrum expects z of shape [B, k, d], got {list(z.shape)}")
    squeeze = z.dim() == 2
    if squeeze:
        z = z.unsqueeze(0)
    if z.shape[-2] > z.shape[-1]:
        raise ValueError(f"spectrum expects k <= d (k modalities of dimension d), got k={z.shape[-2]}, "
                         f"d={z.shape[-1]}")
    with torch.autocast(device_type=z.device.type, enabled=False):
        z = z.to(_decomposition_dtype(z.dtype))
        sigma, vectors, u1 = GramSpectrum.apply(z, gap_eps, tie_tol)
    if squeeze:
        return Spectrum(sigma[0], u1[0], vectors[0])
    return Spectrum(sigma, u1, vectors)


def singular_values(z: torch.Tensor) -> torch.Tensor:
    """Singular values ``[B, k]`` (descending) of each ``z[i]`` (see :func:`spectrum`)."""
    return spectrum(z).sigma


def svd_reference(z: torch.Tensor, full_matrices: bool = True) -> Spectrum:
    """The reference implementation's route: ``torch.linalg.svd`` of Z = z^T ([B, d, k]).

    Used by tests and benchmarks only. With ``full_matrices=True`` it materialises a d x d
    matrix per instance; its gradients are NaN on degenerate spectra. The sign of u1 is left
    to the solver, as in the reference code.
    """
    u, s, vh = torch.linalg.svd(z.transpose(-1, -2), full_matrices=full_matrices)
    return Spectrum(s, u[..., :, 0], vh.transpose(-1, -2))

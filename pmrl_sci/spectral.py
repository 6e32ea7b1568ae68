"""Batched spectral operations on the per-instance modality matrix Z.

For instance i with k modality embeddings of dimension d, PMRL looks at
Z_i = [z_i^1 ... z_i^k] (d x k). Here a batch is a tensor ``z`` of shape ``[B, k, d]``
(row m of ``z[i]`` is modality m), so ``z[i] = Z_i^T``.

Route
-----
Nothing of size d x d is formed. The k x k Gram matrix G_i = z_i z_i^T = Z_i^T Z_i costs
O(k^2 d); its eigendecomposition G = V diag(lambda) V^T gives the right singular vectors V
(k x k), the singular values sigma_j = sqrt(lambda_j) and the leading left singular vector
u_1 = Z v_1 / ||Z v_1||. Everything after the Gram matrix is k x k work, so one pass over d
forms G, one forms u_1, and the backward pass goes back to z in one more.

Accuracy of the values
----------------------
sqrt(lambda_j) has an absolute error of about sqrt(eps * k) (eps the unit round-off: about 3e-4
in float32 for k = 4, 1e-8 in float64), so in float32 the small singular values near alignment
(sigma_2..sigma_k below about 1e-3) are rounding noise on this route. That does not matter to a
loss (they enter a softmax at temperature 0.05), and the objectives use this route
(:func:`gram_spectrum`). Values that are read or logged should come from :func:`spectrum` (its
default ``exact_values=True``) or :func:`singular_values`, which take them from
``torch.linalg.svdvals`` of Z (error about eps * sigma_1, also for tiny sigma_j).

Gradients
---------
Autograd through ``eigh`` (or ``svd``) divides by eigenvalue gaps and returns NaN or inf when
singular values coincide, which is exactly the state PMRL drives towards (all modalities equal:
sigma_2 = ... = sigma_k = 0). :class:`GramSpectrum` therefore has its own backward, the
standard eigenvector perturbation formula with every 1/(l_j - l_i) replaced by
(l_j - l_i) / ((l_j - l_i)^2 + gap_eps): exact for well separated spectra (relative bias
gap_eps / gap^2) and bounded by 1 / (2 sqrt(gap_eps)) everywhere. The eigenvalues' own
derivative d lambda_j = v_j^T dG v_j needs no regularisation.

The square root is the other hazard: d sigma = d lambda / (2 sigma) is unbounded as sigma -> 0,
and near zero lambda_j is rounding noise, so 1 / sigma_j multiplies noise (the previous backward
clamped sigma_j at 1e-19 / 1e-154 and gave gradient norms up to 1e105, or NaN, at exact alignment).
:func:`sqrt_derivative` uses sigma / (2 (lambda + value_eps)) instead, with
value_eps = 16 eps trace(G) per instance (:func:`value_eps`): exact up to a relative bias
value_eps / lambda (below 1e-4 for sigma_j > 0.1 in float32), and the gradient into z stays below
|dL/dsigma_j| times a small constant however small or noisy lambda_j is. A singular value at zero
receives no gradient (zero is a valid subgradient of a singular value at zero, and the one that
does not blow up). An exactly zero embedding gets a zero gradient from the row normalisation
(:func:`normalize_rows`).

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

from functools import lru_cache
from typing import NamedTuple

import torch

#: Regulariser of the eigenvalue gaps in the custom backward (see module docstring).
DEFAULT_GAP_EPS = 1e-10
#: Relative tolerance under which the sign of 1^T v_j counts as zero.
DEFAULT_TIE_TOL = 1e-6
#: value_eps = VALUE_EPS_FACTOR * eps(dtype) * trace(G): the regulariser of d sqrt(lambda) (module docstring).
VALUE_EPS_FACTOR = 16.0
#: Rows of norm at or below this count as exactly zero in :func:`normalize_rows`.
NORMALIZE_EPS = 1e-12


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


def decomposition_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the decompositions run in: float64 for float64 input, float32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32


class _NormalizeRows(torch.autograd.Function):
    """``x / ||x||`` along the last axis; rows of norm <= NORMALIZE_EPS give 0 with a zero gradient."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, norms: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        above = norms > NORMALIZE_EPS
        scale = torch.where(above, norms.clamp_min(NORMALIZE_EPS).reciprocal(), 0.0).unsqueeze(-1)
        y = x * scale
        ctx.save_for_backward(y, scale)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        y, scale = ctx.saved_tensors
        radial = (grad * y).sum(-1, keepdim=True)
        return (grad - y * radial) * scale, None


def normalize_rows(x: torch.Tensor, norms: torch.Tensor | None = None) -> torch.Tensor:
    """Unit-normalise along the last axis, with a bounded gradient at exactly zero rows.

    Parameters
    ----------
    x : Tensor [..., d]
    norms : Tensor [...], optional
        ``||x||`` along the last axis, if already computed.

    Returns
    -------
    Tensor [..., d]
        ``x / ||x||``; a row of norm <= 1e-12 (an exactly zero embedding, in practice) gives zero
        and receives a zero gradient. ``F.normalize`` instead divides by ``max(||x||, 1e-12)``, so
        its gradient at an exactly zero row is 1e12 times the incoming one. The direction of a zero
        vector is undefined; treating the row as a constant zero is the bounded choice. The
        backward is fused (3 passes instead of autograd's 8).
    """
    if norms is None:
        norms = torch.linalg.vector_norm(x, dim=-1)
    return _NormalizeRows.apply(x, norms)


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


def _eigh_2x2(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Closed-form eigendecomposition of symmetric 2 x 2 matrices (ascending, like ``torch.linalg.eigh``)."""
    a, b, c = matrix[..., 0, 0], matrix[..., 1, 0], matrix[..., 1, 1]  # the lower triangle, as eigh reads it
    half_difference = 0.5 * (a - c)
    mean, radius = 0.5 * (a + c), torch.hypot(half_difference, b)
    angle = 0.5 * torch.atan2(b, half_difference)  # of the eigenvector of the larger value
    cos, sin = torch.cos(angle), torch.sin(angle)
    values = torch.stack([mean - radius, mean + radius], dim=-1)
    vectors = torch.stack([torch.stack([-sin, cos], dim=-1), torch.stack([cos, sin], dim=-1)], dim=-1)
    return values, vectors


def batched_eigh(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigendecomposition of a batch ``[..., k, k]`` of small symmetric matrices, ascending.

    ``torch.linalg.eigh`` (LAPACK on CPU: about 1.3 us per 2 x 2 matrix, 4 us per 4 x 4 and 7 us per
    6 x 6, one matrix after the other), except for k = 1 and k = 2, which have closed forms: the 2 x 2
    eigenvalues (a + c) / 2 -+ hypot((a - c) / 2, b) (absolute error about eps (a + c), as LAPACK's) and
    the rotation angle atan2(b, (a - c) / 2) / 2 of the eigenvectors. Only the lower triangle is read.
    """
    size = matrix.shape[-1]
    if size == 1:
        return matrix[..., 0], torch.ones_like(matrix)
    if size == 2:
        return _eigh_2x2(matrix)
    return torch.linalg.eigh(matrix)


def value_eps(gram: torch.Tensor) -> torch.Tensor:
    """Regulariser of d sqrt(lambda) for Gram matrices ``[B, k, k]``: ``16 eps trace(G)``, shape [B, 1].

    ``eps`` is the unit round-off of ``gram``'s dtype: value_eps is a few times the rounding error of
    the eigenvalues, so below it lambda_j is noise (floored at the dtype's smallest normal number, for
    all-zero matrices).
    """
    finfo = torch.finfo(gram.dtype)
    trace = gram.diagonal(dim1=-2, dim2=-1).sum(-1, keepdim=True)
    return (VALUE_EPS_FACTOR * finfo.eps * trace).clamp_min(finfo.tiny)


def sqrt_derivative(root: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """The regularised derivative of ``root = sqrt(lambda)``: ``root / (2 (root^2 + eps))`` (0 at root = 0).

    Exact up to a relative bias eps / lambda, and at most 1 / (4 sqrt(eps)) where 1 / (2 root) is unbounded.
    """
    return root / (2.0 * (root * root + eps))


@lru_cache(maxsize=64)
def complement_basis(k: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """An orthonormal basis ``[k, k-1]`` of the vectors orthogonal to the all-ones vector (Helmert's).

    Column j (0-based) is (1, ..., 1, -(j + 1), 0, ..., 0) / sqrt((j + 1)(j + 2)), with j + 1 ones.
    """
    basis = torch.zeros(k, k - 1, dtype=torch.float64)
    for j in range(k - 1):
        basis[: j + 1, j] = 1.0
        basis[j + 1, j] = -(j + 1.0)
        basis[:, j] /= ((j + 1.0) * (j + 2.0)) ** 0.5
    return basis.to(dtype=dtype, device=device)


class GramSpectrum(torch.autograd.Function):
    """sigma [B, k], V [B, k, k], u1 [B, d] and G [B, k, k] of z [B, k, d] through the Gram matrix.

    ``GramSpectrum.apply(z, gap_eps, tie_tol)``. Forward: G = z z^T, its eigendecomposition (values
    descending, vectors oriented as in the module docstring), sigma = sqrt(max(lambda, 0)) and
    u1 = z^T v1 / sigma_1 (0 where sigma_1 is 0). G is returned too, so that losses built on it (the
    sign-aware values) send their gradient back through the same single pass over d. Backward:
    X = V (diag(g_sigma sigma / (2 (lambda + value_eps))) + F o (V^T g_V)) V^T + g_G with
    F_ij = (l_j - l_i) / ((l_j - l_i)^2 + gap_eps), then g_z = (X + X^T) z + v1 (x) g_p, where g_p is
    the gradient reaching p = z^T v1 through u1 = p / ||p||.
    """

    @staticmethod
    def forward(ctx, z: torch.Tensor, gap_eps: float, tie_tol: float):  # type: ignore[override]
        gram = z @ z.transpose(-1, -2)
        values, vectors = batched_eigh(gram)  # ascending; eigh reads one triangle, so no symmetrisation
        values, vectors = values.flip(-1), _orient(vectors.flip(-1), tie_tol)
        sigma = values.clamp_min(0.0).sqrt()
        tiny = torch.finfo(sigma.dtype).tiny ** 0.5
        leading = sigma[..., :1]
        inverse_sigma1 = torch.where(leading > tiny, leading.clamp_min(tiny).reciprocal(), 0.0)
        u1 = torch.einsum("bk,bkd->bd", vectors[..., :, 0], z) * inverse_sigma1  # ||z^T v1|| = sigma_1
        ctx.gap_eps = gap_eps
        ctx.save_for_backward(z, sigma, vectors, u1, inverse_sigma1, value_eps(gram))
        return sigma, vectors, u1, gram

    @staticmethod
    def backward(ctx, grad_sigma: torch.Tensor | None, grad_v: torch.Tensor | None,  # type: ignore[override]
                 grad_u1: torch.Tensor | None, grad_gram: torch.Tensor | None):
        z, sigma, vectors, u1, inverse_sigma1, eps = ctx.saved_tensors
        grad_z_direct = None
        if grad_u1 is not None:
            # u1 = p / ||p|| with p = Z v1: through the normalisation, then into Z and v1
            grad_p = (grad_u1 - u1 * (u1 * grad_u1).sum(-1, keepdim=True)) * inverse_sigma1
            grad_z_direct = vectors[..., :, 0].unsqueeze(-1) * grad_p.unsqueeze(-2)
            grad_v1 = torch.einsum("bkd,bd->bk", z, grad_p)
            extra = torch.zeros_like(vectors)
            extra[..., :, 0] = grad_v1
            grad_v = extra if grad_v is None else grad_v + extra
        inner = None
        if grad_v is not None:
            lam = sigma * sigma
            gap = lam.unsqueeze(-2) - lam.unsqueeze(-1)  # [.., i, j] = l_j - l_i
            inner = gap / (gap * gap + ctx.gap_eps) * (vectors.transpose(-1, -2) @ grad_v)
        if grad_sigma is not None:
            diagonal = torch.diag_embed(grad_sigma * sqrt_derivative(sigma, eps))
            inner = diagonal if inner is None else inner + diagonal
        total = grad_gram
        if inner is not None:
            rotated = vectors @ inner @ vectors.transpose(-1, -2)
            total = rotated if total is None else total + rotated
        grad_z = None if total is None else (total + total.transpose(-1, -2)) @ z
        if grad_z_direct is not None:
            grad_z = grad_z_direct if grad_z is None else grad_z + grad_z_direct
        return grad_z, None, None


def gram_spectrum(z: torch.Tensor, *, gap_eps: float = DEFAULT_GAP_EPS, tie_tol: float = DEFAULT_TIE_TOL
                  ) -> tuple[Spectrum, torch.Tensor]:
    """Singular values, u1 and V of ``z`` [B, k, d] from its Gram matrix alone (the objectives' route).

    ``z`` must already be in its decomposition dtype, outside autocast (as :func:`spectrum` does). The
    values are ``sqrt(lambda_j)``: fast, with bounded gradients, but with an absolute error of about
    sqrt(eps k) (see the module docstring); use :func:`spectrum` or :func:`singular_values` for values
    that are read.

    Parameters
    ----------
    z : Tensor [B, k, d]
    gap_eps, tie_tol : float
        As in :func:`spectrum`.

    Returns
    -------
    spectrum : Spectrum
    gram : Tensor [B, k, k]
        ``z z^T``, differentiable: its gradient joins the same backward pass over d.
    """
    sigma, vectors, u1, gram = GramSpectrum.apply(z, gap_eps, tie_tol)
    return Spectrum(sigma, u1, vectors), gram


def spectrum(z: torch.Tensor, *, gap_eps: float = DEFAULT_GAP_EPS, tie_tol: float = DEFAULT_TIE_TOL,
             exact_values: bool = True) -> Spectrum:
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
    exact_values : bool
        True (default): ``sigma`` from ``torch.linalg.svdvals`` of Z, accurate to about
        eps * sigma_1 even for tiny sigma_j (use this for values that are logged or analysed).
        False: ``sigma = sqrt(eigenvalues of G)`` as the objectives compute it, cheaper but with an
        absolute error of about sqrt(eps k) (3e-4 in float32 at k = 4), so sigma_j below about
        1e-3 are noise in float32.

    Returns
    -------
    Spectrum
        ``sigma`` [B, k] descending, ``u1`` [B, d] unit length with u1 . sum_m z^m >= 0,
        ``v`` [B, k, k] right singular vectors in columns.

    Notes
    -----
    Runs in float32 (float64 stays float64) with autocast disabled. Gradients are finite and
    bounded for every input, including exactly coinciding or orthogonal modalities and zero
    rows (with ``exact_values=True`` the gradient of ``sigma`` is torch's ``U diag(g) V^T``,
    which involves no division).
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
        z = z.to(decomposition_dtype(z.dtype))
        result, _ = gram_spectrum(z, gap_eps=gap_eps, tie_tol=tie_tol)
        if exact_values:
            result = result._replace(sigma=torch.linalg.svdvals(z))
    if squeeze:
        return Spectrum(*(part[0] for part in result))
    return result


def singular_values(z: torch.Tensor) -> torch.Tensor:
    """Singular values ``[B, k]`` (descending) of each ``z[i]``, from ``torch.linalg.svdvals``.

    Accurate to about eps * sigma_1 also for tiny values (float32 or float64, autocast off): the route
    for logged values.
    """
    with torch.autocast(device_type=z.device.type, enabled=False):
        return torch.linalg.svdvals(z.to(decomposition_dtype(z.dtype)))


def svd_reference(z: torch.Tensor, full_matrices: bool = True) -> Spectrum:
    """The reference implementation's route: ``torch.linalg.svd`` of Z = z^T ([B, d, k]).

    Used by tests and benchmarks only. With ``full_matrices=True`` it materialises a d x d
    matrix per instance; its gradients are NaN on degenerate spectra. The sign of u1 is left
    to the solver, as in the reference code.
    """
    u, s, vh = torch.linalg.svd(z.transpose(-1, -2), full_matrices=full_matrices)
    return Spectrum(s, u[..., :, 0], vh.transpose(-1, -2))

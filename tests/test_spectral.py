"""pmrl_sci.spectral against float64 SVD, on degenerate inputs, and by gradcheck."""

import pytest
import torch
import torch.nn.functional as F

from pmrl_sci.spectral import (
    GramSpectrum,
    batched_eigh,
    complement_basis,
    singular_values,
    spectrum,
    sqrt_derivative,
    svd_reference,
)


def _random(batch: int, k: int, d: int, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(batch, k, d, generator=g, dtype=dtype), dim=-1)


def _reference_u1(z64: torch.Tensor) -> torch.Tensor:
    ref = svd_reference(z64, full_matrices=False)
    sign = torch.sign((ref.u1 * z64.sum(1)).sum(-1, keepdim=True))
    return ref.u1 * sign


@pytest.mark.parametrize("k,d", [(2, 8), (3, 64), (4, 128), (6, 32)])
def test_forward_matches_float64_svd(k, d):
    z = _random(128, k, d, seed=k)
    spec = spectrum(z)
    ref = svd_reference(z.double(), full_matrices=False)
    rel = (spec.sigma.double() - ref.sigma).norm(dim=-1) / ref.sigma.norm(dim=-1)
    assert rel.max() < 1e-5
    gram_route = spectrum(z, exact_values=False)  # the objectives' values: sqrt of the Gram eigenvalues
    assert ((gram_route.sigma.double() - ref.sigma).norm(dim=-1) / ref.sigma.norm(dim=-1)).max() < 1e-5
    assert torch.equal(gram_route.u1, spec.u1) and torch.equal(gram_route.v, spec.v)
    assert torch.all(spec.sigma[:, :-1] >= spec.sigma[:, 1:])
    ref_u1 = _reference_u1(z.double())
    tie = (ref_u1 * z.double().sum(1)).sum(-1).abs() < 1e-5  # k = 2 with a negative cosine: u1 . sum z = 0
    assert (spec.u1.double() - ref_u1).norm(dim=-1)[~tie].max() < 1e-4
    # on ties: equal up to sign, and oriented along the first modality
    tie_err = (spec.u1.double().abs() - ref_u1.abs()).norm(dim=-1)[tie]
    assert torch.cat([tie_err, torch.zeros(1, dtype=torch.float64)]).max() < 1e-4
    assert torch.all((spec.u1 * z[:, 0]).sum(-1)[tie] > 0)
    assert torch.allclose(spec.u1.norm(dim=-1), torch.ones(128), atol=1e-5)
    # right singular vectors: Z^T Z v_j = sigma_j^2 v_j
    gram = z.double() @ z.double().transpose(1, 2)
    v = spec.v.double()
    assert torch.allclose(gram @ v, v * spec.sigma.double().unsqueeze(1) ** 2, atol=1e-5)


def test_sign_convention_and_determinism():
    z = _random(64, 3, 16, seed=3)
    spec = spectrum(z)
    assert torch.all((spec.u1 * z.sum(1)).sum(-1) > 0)
    assert torch.all(spec.v.sum(dim=1) > 0)
    again = spectrum(z.clone())
    assert torch.equal(spec.u1, again.u1) and torch.equal(spec.v, again.v)
    flipped = spectrum(-z)  # flipping every modality flips u1 with it: u1 . sum z > 0 still
    assert torch.all((flipped.u1 * (-z).sum(1)).sum(-1) > 0)


def test_sign_tie_broken_towards_first_modality():
    a = F.normalize(torch.randn(1, 16, generator=torch.Generator().manual_seed(0)), dim=-1)
    b = F.normalize(torch.randn(1, 16, generator=torch.Generator().manual_seed(1)), dim=-1)
    b = F.normalize(b - (b * a).sum() * a, dim=-1)
    c = F.normalize(a - 0.5 * b, dim=-1)
    z = torch.stack([c, -c], dim=1)  # exactly anti-parallel: u1 . (z1 + z2) = 0
    spec = spectrum(z)
    assert torch.allclose(spec.u1, c, atol=1e-5)  # oriented along the first modality
    assert torch.equal(spectrum(z).u1, spec.u1)


@pytest.mark.parametrize("k", [2, 3, 4])
def test_gradients_match_float64_svd_on_separated_spectra(k):
    torch.manual_seed(k)
    left, _ = torch.linalg.qr(torch.randn(32, 24, k))
    right, _ = torch.linalg.qr(torch.randn(32, k, k))
    values = torch.linspace(2.0, 0.4, k)  # well separated singular values, instances of varied shape
    z = (left * values) @ right.transpose(1, 2)  # Z = U S V^T, [32, d, k]
    z = z.transpose(1, 2).contiguous()  # [32, k, d]
    w = torch.randn(32, 24)

    def objective(spec_sigma, spec_u1):
        return (torch.log_softmax(spec_sigma / 0.3, dim=1)[:, 0]).sum() + (spec_u1 * w.to(spec_u1)).sum()

    ref = z.double().clone().requires_grad_()
    r = svd_reference(ref, full_matrices=False)
    sign = torch.sign((r.u1 * ref.sum(1)).sum(-1, keepdim=True)).detach()
    objective(r.sigma, r.u1 * sign).backward()
    gap = (r.sigma[:, :-1] - r.sigma[:, 1:]).min()
    assert gap > 1e-2  # well-separated spectra
    for exact_values in (False, True):  # the Gram route's own backward, and svdvals' for the values
        ours = z.clone().requires_grad_()
        s = spectrum(ours, exact_values=exact_values)
        objective(s.sigma, s.u1).backward()
        rel = (ours.grad.double() - ref.grad).norm() / ref.grad.norm()
        assert rel < 1e-4, exact_values


def _pmrl_like_loss(z: torch.Tensor, exact_values: bool = False) -> torch.Tensor:
    s = spectrum(z, exact_values=exact_values)
    logits = s.sigma / 0.05
    target = torch.zeros(z.shape[0], dtype=torch.long)
    return F.cross_entropy(logits, target) + (s.u1 @ s.u1.T / 0.1).logsumexp(1).mean()


def _degenerate_inputs(k: int = 4, d: int = 16, noisy: bool = True):
    g = torch.Generator().manual_seed(0)
    one = F.normalize(torch.randn(d, generator=g), dim=0)
    identical = one.expand(3, k, d).clone()
    orthogonal = torch.eye(d)[:k].expand(3, k, d).clone()
    two_identical_rest_orthogonal = torch.eye(d)[:k].clone()
    two_identical_rest_orthogonal[1] = two_identical_rest_orthogonal[0]
    random_aligned = F.normalize(torch.randn(3, 1, d, generator=g), dim=-1).expand(3, k, d).clone()
    cases = {"identical": identical, "orthogonal": orthogonal, "random_aligned": random_aligned,
             "pair": two_identical_rest_orthogonal.expand(3, k, d).clone()}
    for name in ("random_aligned", "orthogonal"):  # an exactly zero embedding among equal or orthogonal ones
        with_zero = cases[name].clone()
        with_zero[:, 1] = 0.0
        cases[f"{name}_one_zero"] = with_zero
    if noisy:
        for name in ("identical", "orthogonal", "pair"):
            for scale in (1e-7, 1e-4):
                noise = torch.randn(cases[name].shape, generator=g) * scale
                cases[f"{name}+{scale:g}"] = F.normalize(cases[name] + noise, dim=-1)
    return cases


@pytest.mark.parametrize("name,z", list(_degenerate_inputs().items()))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gradients_finite_on_degenerate_inputs(name, z, dtype):
    for exact_values in (False, True):
        z = z.detach().to(dtype).clone().requires_grad_()
        loss = _pmrl_like_loss(z, exact_values)
        loss.backward()
        assert torch.isfinite(loss)
        assert torch.isfinite(z.grad).all(), name


@pytest.mark.parametrize("k", range(2, 9))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gradients_bounded_on_exactly_degenerate_inputs(k, dtype):
    """Exactly equal, orthogonal, paired and zero rows: every gradient norm stays O(1 / tau), k = 2..8.

    Autograd through torch.linalg.svd gives NaN here (equal singular values); the previous Gram backward
    gave norms of 1e96..1e105 in float64 (a residual value clamped to 1e-154 still took gradient).
    """
    for name, value in _degenerate_inputs(k=k, d=32, noisy=False).items():
        for exact_values in (False, True):
            z = value.to(dtype).clone().requires_grad_()
            spec = spectrum(z, exact_values=exact_values)
            loss = F.cross_entropy(spec.sigma / 0.05, torch.zeros(3, dtype=torch.long)) + spec.u1.sum()
            loss.backward()
            assert torch.isfinite(loss), (name, exact_values)
            assert z.grad.norm(dim=-1).max() < 100.0, (name, exact_values, z.grad.norm(dim=-1).max())


def test_ours_bounded_where_torch_svd_gradient_is_nan():
    """Orthogonal modalities (equal sigmas): torch's SVD backward is NaN, ours is bounded and finite."""
    z = _degenerate_inputs(noisy=False)["orthogonal"].double().clone().requires_grad_()
    ours = spectrum(z, exact_values=False)
    logits = ours.sigma / 0.05
    target = torch.zeros(z.shape[0], dtype=torch.long)
    loss = F.cross_entropy(logits, target) + (ours.u1 @ ours.u1.T / 0.1).logsumexp(1).mean()
    loss.backward()
    assert torch.isfinite(z.grad).all() and z.grad.norm() < 100.0
    # at equal eigenvalues the eigenvector part of the backward is switched off (F_ij = 0), and the value
    # part is exact: d sigma_j = v_j^T dG v_j / (2 sigma_j) with sigma_j = 1 here
    grad_values = torch.randn(3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    zz = z.detach().clone().requires_grad_()
    sigma = spectrum(zz, exact_values=False).sigma
    (sigma * grad_values).sum().backward()
    vectors = spectrum(zz.detach(), exact_values=False).v
    expected = torch.einsum("bj,bkj,bij,bid->bkd", grad_values, vectors, vectors, zz.detach())
    assert torch.allclose(zz.grad, expected, atol=1e-10)


def test_sqrt_derivative_exact_above_eps_and_bounded_below():
    root = torch.tensor([2.0, 1e-2, 1e-5, 0.0], dtype=torch.float64)
    derivative = sqrt_derivative(root, torch.tensor(1e-12, dtype=torch.float64))
    assert torch.allclose(derivative[:2], 0.5 / root[:2], rtol=1e-7)
    assert derivative[3] == 0.0
    assert sqrt_derivative(root, torch.tensor(1e-6, dtype=torch.float64)).max() <= 1 / (4 * 1e-3) + 1e-9


def test_logged_values_accurate_near_alignment_in_float32():
    """sigma_2 ~ 1e-4: svdvals (spectrum's default, singular_values) is accurate, the Gram route is not."""
    g = torch.Generator().manual_seed(0)
    base = F.normalize(torch.randn(64, 1, 128, generator=g, dtype=torch.float64), dim=-1)
    z64 = F.normalize(base + 1e-5 * torch.randn(64, 4, 128, generator=g, dtype=torch.float64), dim=-1)
    reference = torch.linalg.svdvals(z64)
    assert reference[:, 1].median() < 3e-4  # near alignment
    z = z64.float()
    for values in (singular_values(z), spectrum(z).sigma):
        assert values.dtype == torch.float32
        assert ((values.double() - reference).abs() / reference).max() < 1e-2
    # the Gram route's values: absolute error of about sqrt(eps k), documented, not relative accuracy
    gram_values = spectrum(z, exact_values=False).sigma.double()
    assert (gram_values - reference).abs().max() < 4 * (torch.finfo(torch.float32).eps * 4) ** 0.5


def test_theorem_sigma1_sqrt_k_iff_aligned_and_sum_of_squares():
    k = 5
    z = _random(32, k, 20)
    sigma = spectrum(z).sigma
    assert torch.allclose((sigma ** 2).sum(1), torch.full((32,), float(k)), atol=1e-5)
    assert torch.all(sigma[:, 0] < k ** 0.5 - 1e-3)
    aligned = z[:, :1].expand(-1, k, -1)
    sigma_aligned = spectrum(aligned).sigma
    assert torch.allclose(sigma_aligned[:, 0], torch.full((32,), k ** 0.5), atol=1e-5)
    assert sigma_aligned[:, 1:].abs().max() < 1e-3


def test_closed_form_2x2_eigh_matches_lapack():
    g = torch.Generator().manual_seed(0)
    matrices = torch.randn(200, 2, 2, generator=g, dtype=torch.float64)
    matrices = matrices @ matrices.transpose(1, 2)
    matrices[:3] = torch.tensor([[1.0, 1.0], [1.0, 1.0]], dtype=torch.float64)  # aligned pair
    matrices[3:6] = torch.eye(2, dtype=torch.float64)  # orthogonal pair: equal values
    matrices[6:9] = torch.tensor([[1.0, -1.0], [-1.0, 1.0]], dtype=torch.float64)  # anti-parallel pair
    values, vectors = batched_eigh(matrices)
    reference = torch.linalg.eigh(matrices)
    assert torch.allclose(values, reference.eigenvalues, atol=1e-12)
    assert torch.allclose(vectors.transpose(1, 2) @ vectors, torch.eye(2, dtype=torch.float64).expand(200, 2, 2),
                          atol=1e-12)
    assert torch.allclose(matrices @ vectors, vectors * values.unsqueeze(1), atol=1e-12)
    assert torch.allclose(batched_eigh(matrices.float())[0].double(), values, atol=1e-5)


def test_complement_basis_is_orthonormal_and_orthogonal_to_ones():
    for k in range(2, 9):
        basis = complement_basis(k, torch.float64, torch.device("cpu"))
        assert basis.shape == (k, k - 1)
        assert torch.allclose(basis.T @ basis, torch.eye(k - 1, dtype=torch.float64), atol=1e-14)
        assert basis.sum(0).abs().max() < 1e-14


def test_gradcheck_custom_backward():
    torch.manual_seed(0)
    z2 = torch.randn(4, 2, 5, dtype=torch.float64, requires_grad=True)  # the closed-form 2 x 2 route
    assert torch.autograd.gradcheck(lambda x: GramSpectrum.apply(x, 1e-20, 1e-6), (z2,), eps=1e-6, atol=1e-6,
                                    rtol=1e-4)
    z = torch.randn(4, 3, 7, dtype=torch.float64, requires_grad=True)

    def fn(x):
        return GramSpectrum.apply(x, 1e-20, 1e-6)  # sigma, V, u1 and G

    assert torch.autograd.gradcheck(fn, (z,), eps=1e-6, atol=1e-6, rtol=1e-4)
    assert torch.autograd.gradcheck(lambda x: spectrum(x, gap_eps=1e-20).u1, (z,), eps=1e-6, atol=1e-6)
    assert torch.autograd.gradcheck(lambda x: spectrum(x, exact_values=False).sigma, (z,), eps=1e-6, atol=1e-6)


def test_float32_under_autocast():
    z = _random(8, 3, 32).to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        spec = spectrum(z)
    assert spec.sigma.dtype == torch.float32 and spec.u1.dtype == torch.float32
    assert spectrum(_random(4, 3, 8, dtype=torch.float64)).sigma.dtype == torch.float64


def test_bad_shapes():
    with pytest.raises(ValueError, match="k <= d"):
        spectrum(torch.randn(2, 5, 3))
    with pytest.raises(ValueError, match=r"\[B, k, d\]"):
        spectrum(torch.randn(3))

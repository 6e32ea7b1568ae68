"""Objectives on degenerate inputs, the sign-aware values' relation to the singular values, GRAM with masks."""

import pytest
import torch
import torch.nn.functional as F

from pmrl_sci.objectives import build_objective
from pmrl_sci.objectives.gram import anchored_gram_determinants
from pmrl_sci.objectives.pmrl import pmrl_alignment_loss, sign_aware_values


def _degenerate_batches(k: int, d: int = 24, batch: int = 4) -> dict[str, torch.Tensor]:
    """Exactly degenerate unit-norm batches [B, k, d] (each instance its own direction where it matters)."""
    g = torch.Generator().manual_seed(k)
    directions = F.normalize(torch.randn(batch, 1, d, generator=g, dtype=torch.float64), dim=-1)
    equal = directions.expand(batch, k, d).clone()
    orthogonal = torch.eye(d, dtype=torch.float64)[:k].expand(batch, k, d).clone()
    pairs = orthogonal.clone()
    pairs[:, 1] = pairs[:, 0]  # modalities 0 and 1 equal, the rest orthogonal
    if k >= 4:
        pairs[:, 3] = pairs[:, 2]
    cases = {"equal": equal, "orthogonal": orthogonal, "pairs": pairs}
    for name in ("equal", "orthogonal"):
        with_zero = cases[name].clone()
        with_zero[:, k - 1] = 0.0  # an exactly zero embedding, counted as present
        cases[f"{name}+zero"] = with_zero
    return cases


def _max_gradient_norm(objective, z: torch.Tensor, mask: torch.Tensor | None) -> tuple[float, float]:
    embeddings = {f"m{m}": z[:, m].clone().requires_grad_() for m in range(z.shape[1])}
    loss = objective(embeddings, mask)["loss"]
    loss.backward()
    grads = [value.grad for value in embeddings.values() if value.grad is not None]
    return loss.item(), max(float(grad.norm(dim=-1).max()) for grad in grads)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("k", range(2, 9))
def test_pmrl_gradients_bounded_on_exactly_degenerate_inputs(k, dtype):
    """Paper and sign-aware form, with and without masks: finite loss, gradient norm <= 100 per unit input.

    Before: NaN loss and gradient in float32 for the sign-aware form at k = 7, 8 (equal modalities), norms of
    1e96..1e105 in float64, and about 1e12 on an exactly zero embedding (row normalisation).
    """
    objectives = {sign_aware: build_objective("pmrl", sign_aware=sign_aware) for sign_aware in (False, True)}
    one_missing = torch.ones(4, k, dtype=torch.bool)
    one_missing[::2, 0] = False
    for name, z in _degenerate_batches(k).items():
        for sign_aware, objective in objectives.items():
            for mask in (None, one_missing):
                loss, norm = _max_gradient_norm(objective, z.to(dtype), mask)
                where = (name, sign_aware, mask is not None)
                assert loss == loss and abs(loss) < float("inf"), where
                assert norm < 100.0, (*where, norm)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name,kwargs", [("vast", {}), ("vast", {"pairs": "all"}), ("gram", {})])
def test_baselines_bounded_gradient_on_an_exactly_zero_embedding(name, kwargs, dtype):
    """F.normalize's backward at an exactly zero row is 1e12 x the incoming gradient; ours gives zero there."""
    g = torch.Generator().manual_seed(0)
    for k in (2, 3, 5):
        z = F.normalize(torch.randn(6, k, 16, generator=g, dtype=dtype), dim=-1)
        z[2, k - 1] = 0.0
        loss, norm = _max_gradient_norm(build_objective(name, **kwargs), z, None)
        assert loss == loss and norm < 100.0, (k, norm)


def _positive_configurations(k: int, count: int = 400, seed: int = 0) -> torch.Tensor:
    """Random unit-norm [N, k, 16] float64 instances whose pairwise cosines are all positive."""
    g = torch.Generator().manual_seed(seed)
    shared = torch.randn(count, 1, 16, generator=g, dtype=torch.float64)
    scale = 2.0 * torch.rand(count, 1, 1, generator=g, dtype=torch.float64)
    z = F.normalize(scale * shared + torch.randn(count, k, 16, generator=g, dtype=torch.float64), dim=-1)
    positive = ((z @ z.transpose(1, 2)) > 0).flatten(1).all(1)
    return z[positive]


def test_sign_aware_values_gradcheck():
    g = torch.Generator().manual_seed(2)
    z = torch.randn(5, 4, 6, generator=g, dtype=torch.float64, requires_grad=True)
    present = torch.ones(5, 4, dtype=torch.bool)
    present[1, 3] = False
    present[2, 0] = False
    valid_entries = torch.arange(4) < present.sum(1, keepdim=True)  # beyond k_i the values are zeros (noise)

    def fn(x):
        return sign_aware_values(x * present.unsqueeze(-1), present) * valid_entries

    assert torch.autograd.gradcheck(fn, (z,), eps=1e-6, atol=1e-6, rtol=1e-4)
    complete = torch.ones(5, 4, dtype=torch.bool)  # the fixed-basis route
    assert torch.autograd.gradcheck(lambda x: sign_aware_values(x, complete), (z,), eps=1e-6, atol=1e-6, rtol=1e-4)
    pairs = torch.ones(5, 2, dtype=torch.bool)  # k = 2: a 1 x 1 residual
    assert torch.autograd.gradcheck(lambda x: sign_aware_values(x[:, :2], pairs), (z,), eps=1e-6, atol=1e-6,
                                    rtol=1e-4)


def test_sign_aware_values_match_their_definition_with_masks():
    """ell = ||sum of present z|| / sqrt(k_i), rest = singular values of the residual (from G alone)."""
    g = torch.Generator().manual_seed(0)
    z = F.normalize(torch.randn(32, 5, 12, generator=g, dtype=torch.float64), dim=-1)
    present = torch.rand(32, 5, generator=g) > 0.3
    present[:, :2] = True
    z = z * present.unsqueeze(-1)
    values = sign_aware_values(z, present)
    n = present.sum(1, keepdim=True).double()
    mean = z.sum(1) / n
    assert torch.allclose(values[:, 0], z.sum(1).norm(dim=-1) / n[:, 0].sqrt(), atol=1e-12)
    residual = (z - mean.unsqueeze(1)) * present.unsqueeze(-1)
    assert torch.allclose(values[:, 1:], torch.linalg.svdvals(residual)[:, :-1], atol=1e-7)
    assert torch.allclose((values ** 2).sum(1), n[:, 0], atol=1e-10)


@pytest.mark.parametrize("k", [3, 4, 6, 8])
def test_sign_aware_relation_to_singular_values(k):
    """What is true of (ell, r_1, ...) against (sigma_1, ...), stated instead of hidden.

    ell <= sigma_1 and every partial sum of squares is at most sigma's (Ky Fan); equal when the all-ones vector
    is the leading right singular vector (all pairwise cosines equal and positive). For k >= 3 they differ
    otherwise, also when every cosine is positive, and so does L_M (by well over 1% on most configurations).
    """
    z = _positive_configurations(k)
    assert z.shape[0] > 100
    present = torch.ones(z.shape[0], k, dtype=torch.bool)
    values, sigma = sign_aware_values(z, present), torch.linalg.svdvals(z)
    assert torch.all(values[:, 0] <= sigma[:, 0] + 1e-12)
    assert torch.all((values ** 2).cumsum(1) <= (sigma ** 2).cumsum(1) + 1e-9)
    paper = pmrl_alignment_loss(sigma, present, 0.2)
    per_paper = -torch.log_softmax(sigma / 0.2, 1)[:, 0]
    per_signed = -torch.log_softmax(values / 0.2, 1)[:, 0]
    relative = (per_signed - per_paper) / per_paper
    assert (relative.abs() > 0.01).double().mean() > 0.5
    assert pmrl_alignment_loss(values, present, 0.2).item() != pytest.approx(paper.item(), rel=1e-3)
    # equal positive cosines c: 1 is a right singular vector with sigma_1^2 = 1 + (k - 1) c
    c = 0.3
    gram = (1 - c) * torch.eye(k, dtype=torch.float64) + c
    equal = torch.linalg.cholesky(gram).unsqueeze(0)  # rows: unit vectors with pairwise cosine c
    equal = torch.cat([equal, torch.zeros(1, k, 4, dtype=torch.float64)], dim=2)
    ones = torch.ones(1, k, dtype=torch.bool)
    assert torch.allclose(sign_aware_values(equal, ones), torch.linalg.svdvals(equal), atol=1e-7)


def test_sign_aware_equals_paper_for_two_modalities_with_nonnegative_cosine():
    g = torch.Generator().manual_seed(1)
    z = F.normalize(torch.randn(200, 2, 8, generator=g, dtype=torch.float64), dim=-1)
    cosine = (z[:, 0] * z[:, 1]).sum(-1)
    present = torch.ones(200, 2, dtype=torch.bool)
    values, sigma = sign_aware_values(z, present), torch.linalg.svdvals(z)
    same = cosine >= 0
    assert torch.allclose(values[same], sigma[same], atol=1e-7)
    assert torch.all(values[~same, 0] < sigma[~same, 0] - 1e-3)


def test_rank_two_sign_aware_targets_the_best_two_dimensional_fit_containing_the_mean():
    """rank=2 with sign_aware: ell^2 + r_1^2 = max over unit w orthogonal to 1 of ||Z 1||^2 / k + ||Z w||^2.

    The sign-aware counterpart of sigma_1^2 + sigma_2^2 (the best two right directions, unconstrained): the
    best pair of right directions of which one is the same-sign mean direction. At most sigma_1^2 + sigma_2^2.
    """
    k = 4
    z = _positive_configurations(k, count=50, seed=3)
    present = torch.ones(z.shape[0], k, dtype=torch.bool)
    values = sign_aware_values(z, present)
    ones = torch.full((k,), k ** -0.5, dtype=torch.float64)
    complement = torch.linalg.svd(torch.eye(k, dtype=torch.float64) - torch.outer(ones, ones))[0][:, : k - 1]
    # Z restricted to the complement of 1: its best direction w gives ||Z w|| = r_1
    restricted = torch.einsum("bkd,kj->bjd", z, complement)
    best = torch.linalg.svdvals(restricted)[:, 0]
    captured = (z * ones[None, :, None]).sum(1).norm(dim=-1) ** 2 + best ** 2
    assert torch.allclose(values[:, 0] ** 2 + values[:, 1] ** 2, captured, atol=1e-9)
    g = torch.Generator().manual_seed(0)
    for _ in range(20):  # no other direction orthogonal to 1 does better
        w = complement @ F.normalize(torch.randn(k - 1, generator=g, dtype=torch.float64), dim=0)
        other = (z * ones[None, :, None]).sum(1).norm(dim=-1) ** 2 + (z * w[None, :, None]).sum(1).norm(dim=-1) ** 2
        assert torch.all(other <= captured + 1e-9)
    sigma = torch.linalg.svdvals(z)
    assert torch.all(captured <= sigma[:, 0] ** 2 + sigma[:, 1] ** 2 + 1e-9)
    objective = build_objective("pmrl", rank=2, sign_aware=True, instance_term=False, tau1=0.2)
    embeddings = {f"m{m}": z[:, m] for m in range(k)}
    expected = -torch.logsumexp(torch.log_softmax(values / 0.2, 1)[:, :2], dim=1).mean()
    assert objective(embeddings)["loss"].item() == pytest.approx(expected.item(), rel=1e-9)


def _gram_batch(incomplete: bool) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Matched tuples with every within-instance cosine near 0.8, candidate modalities of one instance alike."""
    g = torch.Generator().manual_seed(0)
    batch, d = 12, 64
    shared = F.normalize(torch.randn(batch, d, generator=g, dtype=torch.float64), dim=-1)
    emb = {name: F.normalize(shared + 0.45 * F.normalize(torch.randn(batch, d, generator=g, dtype=torch.float64),
                                                          dim=-1), dim=-1) for name in ("a", "b", "c")}
    mask = torch.ones(batch, 3, dtype=torch.bool)
    if incomplete:
        mask[: batch // 2, 2] = False  # half the candidates lack modality c
    return emb, mask


def test_gram_incomplete_matched_tuples_score_below_complete_mismatched_ones():
    """Before: the volume over fewer modalities is systematically larger (an incomplete positive scored like
    a complete negative). Now each volume is on the complete tuple's scale."""
    emb, mask = _gram_batch(incomplete=True)
    objective = build_objective("gram")
    volume, _ = objective.volumes(emb, mask)
    incomplete = ~mask[:, 2]
    matched = volume.diagonal()
    off_diagonal = ~torch.eye(12, dtype=torch.bool)
    complete_negatives = volume[:, ~incomplete][off_diagonal[:, ~incomplete]]
    assert matched[incomplete].max() < complete_negatives.min()
    # and on the scale of complete matched tuples (ratio within the documented bound for k = 3)
    complete_matched = objective.volumes(emb)[0].diagonal()
    ratio = matched[incomplete] / complete_matched[incomplete]
    assert ratio.min() > 0.5 and ratio.max() < 1.5
    # complete candidates are unchanged, and the raw volumes are still available
    raw = build_objective("gram", comparable_incomplete=False).volumes(emb, mask)[0]
    assert torch.equal(raw[:, ~incomplete], volume[:, ~incomplete])
    z = torch.stack([emb[n] for n in "abc"], dim=1)
    det = anchored_gram_determinants(z[:, 0], z[:, 1:], mask[:, 1:])
    assert torch.allclose(raw, torch.sqrt(det.clamp_min(0) + 1e-6))
    assert torch.allclose(volume[:, incomplete], raw[:, incomplete] ** 2)


def test_gram_retrieval_with_missing_modalities_ranks_the_match_first():
    emb, mask = _gram_batch(incomplete=True)
    for comparable, expected_all_first in ((True, True), (False, False)):
        volume, _ = build_objective("gram", comparable_incomplete=comparable).volumes(emb, mask)
        # candidates ranked per anchor by ascending volume: the match should come first
        first = volume.argmin(dim=1)
        assert bool((first == torch.arange(12)).all()) is expected_all_first

"""Objectives: values, toy optimisation, masks, errors."""

import math

import pytest
import torch
import torch.nn.functional as F

from pmrl_sci.objectives import build_objective, list_objectives
from pmrl_sci.objectives.gram import adjugate, anchored_gram_determinants, polynomial_det
from pmrl_sci.registry import UnknownNameError


def _embeddings(batch=16, dim=12, k=3, noise=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(batch, dim, generator=g)
    return {f"m{i}": base + noise * torch.randn(batch, dim, generator=g) for i in range(k)}


ALIGNMENT = [("pmrl", {}), ("pmrl", {"rank": 2}), ("pmrl", {"instance_term": False}),
             ("gram", {}), ("gram", {"contrastive": False}), ("vast", {}), ("vast", {"pairs": "all"})]


def test_registered_names():
    assert {"pmrl", "gram", "vast", "instance_matching", "classification"} <= set(list_objectives())
    with pytest.raises(UnknownNameError, match="Did you mean 'pmrl'"):
        build_objective("pmr")


@pytest.mark.parametrize("name,kwargs", ALIGNMENT + [("instance_matching", {"embed_dim": 12, "num_modalities": 3})])
def test_objective_decreases_on_toy_problem(name, kwargs):
    torch.manual_seed(0)
    params = {key: torch.nn.Parameter(value) for key, value in _embeddings(noise=1.5).items()}
    objective = build_objective(name, **kwargs)
    optimizer = torch.optim.Adam(list(params.values()) + list(objective.parameters()), lr=0.05)
    losses = []
    for _ in range(60):
        out = objective(params)
        assert set(out) >= {"loss"} and all(v.dim() == 0 for v in out.values())
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
        losses.append(out["loss"].item())
    assert losses[-1] < 0.7 * losses[0], losses[::10]


def test_pmrl_drives_sigma1_to_sqrt_k():
    torch.manual_seed(0)
    k = 4
    params = {key: torch.nn.Parameter(value) for key, value in _embeddings(batch=8, k=k, noise=2.0).items()}
    objective = build_objective("pmrl", tau1=0.5, instance_term=False)
    optimizer = torch.optim.Adam(params.values(), lr=0.05)
    start = objective(params)["sigma1"].item()
    for _ in range(200):
        optimizer.zero_grad()
        objective(params)["loss"].backward()
        optimizer.step()
    end = objective(params)["sigma1"].item()
    assert start < 1.6 and end > math.sqrt(k) - 0.02


def test_pmrl_value_by_hand():
    emb = _embeddings(batch=5, k=3)
    out = build_objective("pmrl", tau1=0.05, tau2=0.1)(emb)
    z = torch.stack([F.normalize(v, dim=-1) for v in emb.values()], dim=2).double()  # [B, d, k]
    u, s, _ = torch.linalg.svd(z, full_matrices=False)
    expected_align = F.cross_entropy(s / 0.05, torch.zeros(5, dtype=torch.long))
    u1 = u[:, :, 0] * torch.sign((u[:, :, 0] * z.sum(2)).sum(1, keepdim=True))
    expected_inst = F.cross_entropy(u1 @ u1.T / 0.1, torch.arange(5))
    assert out["alignment"].item() == pytest.approx(expected_align.item(), rel=1e-4, abs=1e-6)
    assert out["instance"].item() == pytest.approx(expected_inst.item(), rel=1e-4)
    assert out["loss"].item() == pytest.approx(expected_align.item() + expected_inst.item(), rel=1e-4, abs=1e-6)


def test_pmrl_mask_equals_loss_on_present_modalities():
    emb = _embeddings(batch=6, k=3)
    mask = torch.ones(6, 3, dtype=torch.bool)
    mask[:, 2] = False
    objective = build_objective("pmrl")
    masked = objective(emb, mask)
    two = objective({"m0": emb["m0"], "m1": emb["m1"]})
    assert masked["alignment"].item() == pytest.approx(two["alignment"].item(), rel=1e-5)
    assert masked["instance"].item() == pytest.approx(two["instance"].item(), rel=1e-5)
    # a NaN in a masked-out row never reaches the loss
    emb["m2"] = emb["m2"].clone()
    emb["m2"][0] = float("nan")
    mask2 = torch.ones(6, 3, dtype=torch.bool)
    mask2[0, 2] = False
    assert torch.isfinite(objective(emb, mask2)["loss"])
    with pytest.raises(ValueError, match="no entry for modalities"):  # a partial dict mask is ambiguous
        objective(emb, {"m2": mask2[:, 2]})


def test_gram_determinants_match_full_gram():
    emb = _embeddings(batch=5, k=4)
    z = torch.stack([F.normalize(v.double(), dim=-1) for v in emb.values()], dim=1)
    present = torch.ones(5, 3, dtype=torch.bool)
    det = anchored_gram_determinants(z[:, 0], z[:, 1:], present)
    for i in range(5):
        for j in range(5):
            vectors = torch.cat([z[i, :1], z[j, 1:]])
            assert det[i, j].item() == pytest.approx(torch.linalg.det(vectors @ vectors.T).item(), abs=1e-10)
    # missing modality 2 of every candidate: the volume of the modalities present
    present[:, 1] = False
    det = anchored_gram_determinants(z[:, 0], z[:, 1:], present)
    vectors = torch.stack([z[1, 0], z[3, 1], z[3, 3]])
    assert det[1, 3].item() == pytest.approx(torch.linalg.det(vectors @ vectors.T).item(), abs=1e-10)
    h = torch.randn(7, 4, 4, dtype=torch.float64)
    assert torch.allclose(polynomial_det(h), torch.linalg.det(h))
    assert torch.allclose(h @ adjugate(h), torch.linalg.det(h)[:, None, None] * torch.eye(4, dtype=torch.float64))


def test_gram_finite_gradient_at_zero_volume():
    same = torch.randn(4, 8)
    emb = {"a": same.clone().requires_grad_(), "b": same.clone().requires_grad_(), "c": same.clone().requires_grad_()}
    out = build_objective("gram")(emb)
    out["loss"].backward()
    assert all(torch.isfinite(v.grad).all() for v in emb.values())


def test_vast_value_by_hand_and_mask():
    emb = _embeddings(batch=6, k=2)
    objective = build_objective("vast", label_smoothing=0.0)
    a, b = (F.normalize(v, dim=-1) for v in emb.values())
    logits = a @ b.T / 0.07
    expected = 0.5 * (F.cross_entropy(logits, torch.arange(6)) + F.cross_entropy(logits.T, torch.arange(6)))
    assert objective(emb)["loss"].item() == pytest.approx(expected.item(), rel=1e-5)
    mask = torch.ones(6, 2, dtype=torch.bool)
    mask[4:, 1] = False
    sub = {key: value[:4] for key, value in emb.items()}
    assert objective(emb, mask)["loss"].item() == pytest.approx(objective(sub)["loss"].item(), rel=1e-5)


@pytest.mark.parametrize("name,kwargs", ALIGNMENT + [("instance_matching", {"embed_dim": 12, "num_modalities": 3})])
def test_non_finite_embedding_names_the_modality(name, kwargs):
    emb = _embeddings()
    emb["m1"] = emb["m1"].clone()
    emb["m1"][3, 0] = float("inf")
    with pytest.raises(ValueError, match="'m1'"):
        build_objective(name, **kwargs)(emb)


def test_bad_inputs():
    objective = build_objective("pmrl")
    with pytest.raises(ValueError, match="at least 2"):
        objective({"a": torch.randn(3, 4)})
    with pytest.raises(ValueError, match="same"):
        objective({"a": torch.randn(3, 4), "b": torch.randn(3, 5)})
    with pytest.raises(ValueError, match="mask"):
        objective({"a": torch.randn(3, 4), "b": torch.randn(3, 4)}, torch.ones(3, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="anchor"):
        build_objective("gram", anchor="text")({"a": torch.randn(3, 4), "b": torch.randn(3, 4)})
    with pytest.raises(TypeError, match="cannot build objective 'pmrl'"):
        build_objective("pmrl", tau=0.1)


def test_classification_objective():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0]])
    labels = torch.tensor([0, 1, 1])
    out = build_objective("classification")(logits, labels)
    assert out["loss"].item() == pytest.approx(F.cross_entropy(logits, labels).item())
    assert out["accuracy"].item() == pytest.approx(2 / 3)


def test_paper_alignment_is_sign_blind_and_sign_aware_variant_is_not():
    """Negating a modality leaves every singular value unchanged: the paper's L_M cannot tell.

    The sign-aware L_M equals the paper's only where the all-ones vector is the leading right singular
    vector (k = 2 with a positive cosine; equal positive cosines); see
    tests/test_objective_numerics.py for the relation on random positive configurations (k >= 3).
    """
    g = torch.Generator().manual_seed(0)
    base = torch.randn(8, 16, generator=g)
    pair = {"a": base, "b": base + 0.5 * torch.randn(8, 16, generator=g)}
    aligned = dict(pair, c=base.clone())
    flipped = dict(aligned, c=-aligned["c"])
    paper = build_objective("pmrl", instance_term=False, tau1=0.5)
    signed = build_objective("pmrl", instance_term=False, tau1=0.5, sign_aware=True)
    assert paper(aligned)["loss"].item() == pytest.approx(paper(flipped)["loss"].item(), rel=1e-5)
    assert signed(pair)["loss"].item() == pytest.approx(paper(pair)["loss"].item(), rel=1e-5)  # k = 2, cos > 0
    assert signed(aligned)["loss"].item() > paper(aligned)["loss"].item()  # k = 3: differs, all cosines > 0
    assert signed(flipped)["loss"].item() > paper(flipped)["loss"].item() + 0.3


def _pair_cosines_after_training(sign_aware: bool) -> torch.Tensor:
    torch.manual_seed(0)
    params = {key: torch.nn.Parameter(value) for key, value in _embeddings(batch=16, k=3, noise=3.0, seed=3).items()}
    objective = build_objective("pmrl", tau1=0.2, sign_aware=sign_aware)
    optimizer = torch.optim.Adam(params.values(), lr=0.05)
    for _ in range(300):
        optimizer.zero_grad()
        objective(params)["loss"].backward()
        optimizer.step()
    a, b, c = (F.normalize(v.detach(), dim=-1) for v in params.values())
    return torch.cat([(a * b).sum(1), (a * c).sum(1), (b * c).sum(1)])


def test_sign_aware_pmrl_aligns_modalities_with_positive_cosine():
    paper, signed = _pair_cosines_after_training(False), _pair_cosines_after_training(True)
    assert int((paper < 0).sum()) >= 10  # the paper's L_M leaves many modality pairs anti-parallel
    assert int((signed < 0).sum()) <= 5 and signed.mean() > 0.6


def test_sign_aware_values_energy_and_gradient_direction():
    from pmrl_sci.objectives.pmrl import sign_aware_values

    z = F.normalize(torch.randn(6, 3, 10, generator=torch.Generator().manual_seed(1)), dim=-1)
    present = torch.ones(6, 3, dtype=torch.bool)
    values = sign_aware_values(z, present)
    assert torch.allclose((values ** 2).sum(1), torch.full((6,), 3.0), atol=1e-4)
    assert torch.all(values[:, 0] <= torch.linalg.svdvals(z)[:, 0] + 1e-5)
    aligned = sign_aware_values(z[:, :1].expand(-1, 3, -1), present)
    assert torch.allclose(aligned[:, 0], torch.full((6,), 3 ** 0.5), atol=1e-5)
    # two modalities with a negative cosine: the loss must pull them together (the cosine rises)
    a = torch.tensor([[1.0, 0.0, 0.0]])
    b = torch.nn.Parameter(torch.tensor([[-0.6, 0.8, 0.0]]))
    objective = build_objective("pmrl", instance_term=False, sign_aware=True)
    objective({"a": a, "b": b})["loss"].backward()
    assert b.grad[0, 0] < 0  # gradient descent moves b towards a


# ----------------------------------------------------------------------------------------
# input checks shared by the objectives (stack_modalities)


@pytest.mark.parametrize("name", ["pmrl", "vast", "gram"])
def test_a_dict_mask_must_name_every_modality(name):
    torch.manual_seed(0)
    emb = {m: torch.randn(4, 8) for m in ("a", "b", "c")}
    objective = build_objective(name, **({"anchor": "c"} if name != "pmrl" else {}))
    with pytest.raises(ValueError, match=r"no entry for modalities \['b'\]"):
        objective(emb, {"a": torch.ones(4, dtype=torch.bool), "c": torch.ones(4, dtype=torch.bool)})
    full = {m: torch.ones(4, dtype=torch.bool) for m in emb}
    assert torch.isfinite(objective(emb, full)["loss"])


@pytest.mark.parametrize("name", ["pmrl", "vast"])
def test_huge_but_finite_embeddings_are_normalised_not_refused(name):
    torch.manual_seed(0)
    small = {m: torch.randn(6, 16) for m in ("a", "b", "c")}
    huge = {m: (v / v.abs().amax(dim=1, keepdim=True) * 3e38).requires_grad_() for m, v in small.items()}
    objective = build_objective(name, **({"anchor": "c"} if name == "vast" else {}))
    expected = objective({m: v / v.abs().amax(dim=1, keepdim=True) for m, v in small.items()})["loss"]
    loss = objective(huge)["loss"]  # float32 max is 3.4e38: the values are finite, only their squares overflow
    assert torch.isfinite(loss) and loss.item() == pytest.approx(expected.item(), rel=1e-5)
    loss.backward()
    assert all(torch.isfinite(v.grad).all() for v in huge.values())
    with pytest.raises(ValueError, match="non-finite values"):
        objective({**small, "b": torch.full((6, 16), float("inf"))})

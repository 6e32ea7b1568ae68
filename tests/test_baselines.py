"""ABIDE baselines: logistic regression and the population-graph GCN."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from pmrl_sci.baselines import check_splits, vectorize_connectivity
from pmrl_sci.baselines.logistic import LogisticConfig, fit_predict_logistic
from pmrl_sci.baselines.population_gcn import (
    PopulationGCNConfig,
    build_population_graph,
    fit_predict_population_gcn,
    phenotype_scores,
)

torch.set_num_threads(1)

R = 12
FAST = PopulationGCNConfig(n_selected=20, rfe_step=0.2, patience=20)


def _cohort(n: int = 120, seed: int = 0, signal: float = 0.6) -> dict:
    """Connectivity with a label-dependent block, three sites, sex and age."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    rng.shuffle(y)
    a = rng.normal(scale=0.5, size=(n, 2, R, R))
    a[:, :, :3, :3] += signal * y[:, None, None, None]
    a = (a + a.transpose(0, 1, 3, 2)) / 2
    a[:, :, np.arange(R), np.arange(R)] = 0.0
    perm = rng.permutation(n)
    n_tr, n_va = int(0.6 * n), int(0.2 * n)
    return {"matrices": a, "y": y, "sites": rng.choice(["NYU", "UM_1", "USM"], n),
            "sex": rng.integers(1, 3, n), "age": rng.uniform(8, 30, n),
            "train": perm[:n_tr], "val": perm[n_tr:n_tr + n_va], "test": perm[n_tr + n_va:]}


def test_vectorize_connectivity_upper_triangle_per_channel() -> None:
    c = _cohort(4)
    vec = vectorize_connectivity(c["matrices"])
    assert vec.shape == (4, 2 * R * (R - 1) // 2)
    iu = np.triu_indices(R, 1)
    np.testing.assert_allclose(np.sort(vec[1, : R * (R - 1) // 2]), np.sort(c["matrices"][1, 0][iu]))
    with pytest.raises(ValueError, match="expected"):
        vectorize_connectivity(np.zeros((3, 4, 5)))
    bad = c["matrices"].copy()
    bad[0, 0, 1, 2] = np.inf
    with pytest.raises(ValueError, match="NaN or infinite"):
        vectorize_connectivity(bad)


def test_split_and_label_checks() -> None:
    c = _cohort(20)
    x = vectorize_connectivity(c["matrices"])
    with pytest.raises(ValueError, match="overlap"):
        check_splits(20, train_idx=[0, 1, 2], test_idx=[2, 3])
    with pytest.raises(ValueError, match=r"\[0, 20\)"):
        check_splits(20, train_idx=[0, 25])
    with pytest.raises(ValueError, match="binary labels"):
        fit_predict_logistic(x, c["y"] + 1, c["train"], c["val"], c["test"])
    with pytest.raises(ValueError, match="one per subject"):
        fit_predict_population_gcn(x, c["y"][:5], None, None, None, c["train"], c["val"], c["test"])


def test_logistic_beats_chance_and_is_deterministic() -> None:
    c = _cohort()
    x = vectorize_connectivity(c["matrices"])
    prob, info = fit_predict_logistic(x, c["y"], c["train"], c["val"], c["test"], seed=1, return_info=True)
    assert prob.shape == (len(c["test"]),) and ((prob >= 0) & (prob <= 1)).all()
    assert info["selection"] == "validation" and info["C"] in LogisticConfig().c_grid
    assert roc_auc_score(c["y"][c["test"]], prob) > 0.8
    again = fit_predict_logistic(x, c["y"], c["train"], c["val"], c["test"], seed=1)
    np.testing.assert_array_equal(prob, again)


def test_logistic_inner_cv_without_validation() -> None:
    c = _cohort()
    x = vectorize_connectivity(c["matrices"])
    train = np.concatenate([c["train"], c["val"]])
    prob, info = fit_predict_logistic(x, c["y"], train, None, c["test"], seed=0, return_info=True,
                                      config=LogisticConfig(c_grid=(0.001, 0.1, 10.0), inner_folds=3))
    assert info["selection"] == "inner_cv" and set(info["scores"]) == {0.001, 0.1, 10.0}
    assert roc_auc_score(c["y"][c["test"]], prob) > 0.8


def test_logistic_chance_on_noise() -> None:
    """With labels unrelated to the features the test AUC stays near chance (the test can fail)."""
    c = _cohort(200, seed=3, signal=0.0)
    x = vectorize_connectivity(c["matrices"])
    prob = fit_predict_logistic(x, c["y"], c["train"], c["val"], c["test"])
    assert abs(roc_auc_score(c["y"][c["test"]], prob) - 0.5) < 0.2


def test_phenotype_scores() -> None:
    s = phenotype_scores(4, sites=np.array(["a", "a", "b", None], dtype=object), sex=np.array([1, 2, 1, 1]),
                         age=np.array([10.0, 11.0, 30.0, np.nan]), age_threshold=2.0)
    assert s[0, 1] == 2  # same site, close age
    assert s[0, 2] == 1  # same sex only
    assert s[0, 3] == 1  # same sex; missing site and age never match
    assert s[3, 3] == 1  # missing site/age do not match even with themselves
    np.testing.assert_array_equal(s, s.T)
    np.testing.assert_array_equal(phenotype_scores(3), np.ones((3, 3)))


def test_population_graph_weights() -> None:
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(6, 10))
    sites = np.array([0, 0, 0, 1, 1, 1])
    g = build_population_graph(feats, sites=sites)
    assert g.num_nodes == 6 and g.x.shape == (6, 10)
    src, dst = g.edge_index.numpy()
    assert (src != dst).all()
    assert (sites[src] == sites[dst]).all()  # only same-site pairs are linked here
    assert g.num_edges == 2 * 3 * 2
    assert ((g.edge_weight > 0) & (g.edge_weight <= 1)).all()
    dense = np.zeros((6, 6))
    dense[src, dst] = g.edge_weight.numpy()
    np.testing.assert_allclose(dense, dense.T, rtol=1e-6)
    with pytest.raises(ValueError, match="sites: expected one value per subject"):
        build_population_graph(feats, sites=sites[:3])


def test_population_gcn_beats_chance_and_is_deterministic() -> None:
    c = _cohort(160, seed=1)
    x = vectorize_connectivity(c["matrices"])
    args = (x, c["y"], c["sites"], c["sex"], c["age"], c["train"], c["val"], c["test"])
    state = torch.get_rng_state()
    prob, info = fit_predict_population_gcn(*args, seed=0, epochs=80, config=FAST, return_info=True)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is left alone
    assert prob.shape == (len(c["test"]),) and ((prob >= 0) & (prob <= 1)).all()
    assert info["n_features"] == 20 and 0 <= info["best_epoch"] < info["epochs_run"] <= 80
    assert roc_auc_score(c["y"][c["test"]], prob) > 0.75
    again = fit_predict_population_gcn(*args, seed=0, epochs=80, config=FAST)
    np.testing.assert_array_equal(prob, again)
    every = fit_predict_population_gcn(*args, seed=0, epochs=80, config=FAST, return_all=True)
    assert every.shape == (160,)
    np.testing.assert_array_equal(every[c["test"]], prob)


def test_population_gcn_test_labels_are_not_used() -> None:
    c = _cohort(100, seed=2)
    x = vectorize_connectivity(c["matrices"])
    flipped = c["y"].copy()
    flipped[c["test"]] = 1 - flipped[c["test"]]
    common = (x, c["sites"], c["sex"], c["age"], c["train"], c["val"], c["test"])
    a = fit_predict_population_gcn(common[0], c["y"], *common[1:], seed=0, epochs=20, config=FAST)
    b = fit_predict_population_gcn(common[0], flipped, *common[1:], seed=0, epochs=20, config=FAST)
    np.testing.assert_array_equal(a, b)


def test_precomputed_chebyshev_layer_equals_pyg_chebconv() -> None:
    """The first layer (linear over the Chebyshev basis) is PyG's ChebConv with the same weights."""
    from torch_geometric.nn import ChebConv
    from torch_geometric.transforms import LaplacianLambdaMax

    from pmrl_sci.baselines.population_gcn import chebyshev_basis, laplacian_lambda_max, scaled_laplacian

    rng = np.random.default_rng(4)
    feats = rng.normal(size=(15, 7))
    g = build_population_graph(feats, sites=rng.integers(0, 2, 15), sex=rng.integers(0, 2, 15))
    lam = laplacian_lambda_max(g.edge_index, g.edge_weight, 15)
    ref = LaplacianLambdaMax("sym", is_undirected=True)(g.clone().update({"edge_attr": g.edge_weight})).lambda_max
    assert lam == pytest.approx(ref, rel=1e-4) and 1.0 < lam <= 2.0
    torch.manual_seed(0)
    conv = ChebConv(7, 5, K=4, normalization="sym")
    linear = torch.nn.Linear(4 * 7, 5)
    with torch.no_grad():
        linear.weight.copy_(torch.cat([lin.weight for lin in conv.lins], dim=1))
        linear.bias.copy_(conv.bias)
    lam_t = torch.tensor(lam)
    expected = conv(g.x, g.edge_index, g.edge_weight, lambda_max=lam_t)
    basis = chebyshev_basis(g.x, scaled_laplacian(g.edge_index, g.edge_weight, 15, lam_t), degree=3)
    torch.testing.assert_close(linear(basis), expected, rtol=1e-5, atol=1e-5)

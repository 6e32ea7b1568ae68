"""ComBat estimator: agreement with neuroCombat, out-of-sample transform, and each failure case."""

from __future__ import annotations

import contextlib
import io
import json
import warnings

import numpy as np
import pandas as pd
import pytest
from neuroCombat import neuroCombat, neuroCombatFromTraining

from pmrl_sci.data.combat import ComBat

SITE_SHIFT = {"A": 0.0, "B": 3.0, "C": -2.0, "D": 1.0}
SITE_SCALE = {"A": 1.0, "B": 1.8, "C": 0.6, "D": 1.2}


def simulate(n_per_site: dict[str, int], p: int = 12, seed: int = 0) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """Features with an age slope, a sex effect, and additive + multiplicative site effects."""
    rng = np.random.default_rng(seed)
    sites = np.concatenate([[s] * k for s, k in n_per_site.items()])
    n = len(sites)
    # ages exactly representable in float32 (neuroCombat casts continuous covariates to float32)
    age = rng.uniform(8, 40, n).astype(np.float32).astype(np.float64)
    sex = rng.integers(1, 3, n)
    loadings = rng.uniform(0.5, 1.5, p)
    shift = np.array([SITE_SHIFT[s] for s in sites])[:, None] * loadings
    scale = np.array([SITE_SCALE[s] for s in sites])[:, None]
    X = 100.0 + 0.3 * age[:, None] + 1.5 * (sex[:, None] == 2) + shift + scale * rng.normal(size=(n, p))
    return X, sites, pd.DataFrame({"site": sites, "age": age, "sex": sex})


def run_neurocombat(X: np.ndarray, cov: pd.DataFrame, **kwargs) -> dict:
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return neuroCombat(X.T.copy(), cov, "site", categorical_cols=["sex"], continuous_cols=["age"], **kwargs)


@pytest.mark.parametrize("kwargs", [{}, {"eb": False}, {"mean_only": True}, {"parametric": False},
                                    {"parametric": False, "mean_only": True}])
def test_fit_transform_matches_neurocombat(kwargs):
    X, sites, cov = simulate({"A": 30, "B": 35, "C": 25})
    ref = run_neurocombat(X, cov, **kwargs)
    model = ComBat(**kwargs)
    out = model.fit_transform(X, sites, cov, categorical=["sex"], continuous=["age"])
    est = ref["estimates"]
    # neuroCombat stops its parametric iteration on a signed relative change (see combat.py), so its
    # gamma*/delta* sit up to ~1e-5 from the fixed point; every other path agrees to round-off.
    tol = 2e-5 if kwargs == {} else 1e-9
    np.testing.assert_allclose(model.var_pooled_, est["var.pooled"].ravel(), rtol=1e-9)
    np.testing.assert_allclose(model.gamma_star_, np.asarray(est["gamma.star"], dtype=float), atol=tol)
    np.testing.assert_allclose(model.delta_star_, np.asarray(est["delta.star"], dtype=float), atol=tol)
    np.testing.assert_allclose(out, ref["data"].T, atol=tol * np.sqrt(model.var_pooled_.max()) * 10)
    # and the harmonisation does something: site C's spread changes
    assert np.abs(out - X).max() > 0.5


def test_parametric_fixed_point_is_neurocombats():
    """With a much tighter stop, our parametric EB moves no further from neuroCombat than its own error."""
    X, sites, cov = simulate({"A": 30, "B": 35, "C": 25}, seed=3)
    ref = np.asarray(run_neurocombat(X, cov)["estimates"]["gamma.star"], dtype=float)
    loose = ComBat().fit(X, sites, cov, ["sex"], ["age"]).gamma_star_
    tight = ComBat(conv=1e-12).fit(X, sites, cov, ["sex"], ["age"]).gamma_star_
    assert np.abs(tight - ref).max() < 5e-5
    assert np.abs(tight - loose).max() < 5e-5


def test_neurocombat_from_training_fails_on_numpy2():
    X, sites, cov = simulate({"A": 10, "B": 10})
    ref = run_neurocombat(X, cov)
    with pytest.raises(TypeError), contextlib.redirect_stdout(io.StringIO()):
        neuroCombatFromTraining(X[:4].T, sites[:4], ref["estimates"])


def test_transform_on_training_subjects_reproduces_fit_transform():
    X, sites, cov = simulate({"A": 20, "B": 25, "C": 15}, seed=1)
    frame = pd.DataFrame(X, columns=[f"f{j}" for j in range(X.shape[1])], index=[f"s{i}" for i in range(len(X))])
    model = ComBat()
    fitted = model.fit_transform(frame, sites, cov, categorical=["sex"], continuous=["age"])
    assert isinstance(fitted, pd.DataFrame) and list(fitted.index) == list(frame.index)
    order = np.random.default_rng(0).permutation(len(X))  # shuffled rows: per-row lookups, not positions
    again = model.transform(frame.iloc[order], sites[order], cov.iloc[order])
    np.testing.assert_allclose(again.to_numpy(), fitted.to_numpy()[order], rtol=0, atol=1e-9)
    # the state survives a JSON round trip
    restored = ComBat.from_state(json.loads(json.dumps(model.get_state())))
    np.testing.assert_allclose(restored.transform(frame, sites, cov).to_numpy(), fitted.to_numpy(), atol=1e-9)


def _residual(values: np.ndarray, cov: pd.DataFrame) -> np.ndarray:
    """Residual of a site-free least-squares fit on age and sex (so covariates do not mask site effects)."""
    design = np.column_stack([np.ones(len(values)), cov["age"], cov["sex"] == 2])
    return values - design @ np.linalg.lstsq(design, values, rcond=None)[0]


def _site_mean_spread(values: np.ndarray, sites: np.ndarray, cov: pd.DataFrame) -> float:
    resid = _residual(values, cov)
    means = np.stack([resid[sites == s].mean(axis=0) for s in np.unique(sites)])
    return float(means.std(axis=0).mean())


def _site_sd_ratio(values: np.ndarray, sites: np.ndarray, cov: pd.DataFrame) -> float:
    resid = _residual(values, cov)
    sds = np.stack([resid[sites == s].std(axis=0) for s in np.unique(sites)])
    return float((sds.max(axis=0) / sds.min(axis=0)).mean())


def test_site_effects_shrink_and_covariates_survive():
    X, sites, cov = simulate({"A": 90, "B": 90, "C": 90, "D": 90}, p=15, seed=2)
    rng = np.random.default_rng(5)
    test = np.zeros(len(X), dtype=bool)
    for s in np.unique(sites):  # a third of each site held out
        idx = np.flatnonzero(sites == s)
        test[rng.choice(idx, size=len(idx) // 3, replace=False)] = True
    model = ComBat().fit(X[~test], sites[~test], cov[~test], categorical=["sex"], continuous=["age"])
    train_out = model.transform(X[~test], sites[~test], cov[~test])
    test_out = model.transform(X[test], sites[test], cov[test])
    for rows, after in [(~test, train_out), (test, test_out)]:
        before, s, c = X[rows], sites[rows], cov[rows]
        assert _site_mean_spread(after, s, c) < 0.25 * _site_mean_spread(before, s, c)
        assert _site_sd_ratio(after, s, c) < 1.0 + 0.5 * (_site_sd_ratio(before, s, c) - 1.0)
    # the age slope (0.3 per year in every feature) is preserved in the harmonised data
    out = np.empty_like(X)
    out[~test], out[test] = train_out, test_out
    design = np.column_stack([np.ones(len(X)), cov["age"], cov["sex"] == 2])
    slope = np.linalg.lstsq(design, out, rcond=None)[0][1]
    np.testing.assert_allclose(slope, 0.3, atol=0.08)


def test_single_subject_site_is_left_unadjusted():
    X, sites, cov = simulate({"A": 20, "B": 20, "C": 15, "D": 1}, seed=4)
    assert np.isnan(run_neurocombat(X, cov)["data"]).all()  # neuroCombat: the whole output is NaN
    model = ComBat()
    with pytest.warns(UserWarning, match=r"single subject.*'D'|'D'.*single subject"):
        out = model.fit_transform(X, sites, cov, categorical=["sex"], continuous=["age"])
    assert np.isfinite(out).all()
    lone = sites == "D"
    np.testing.assert_allclose(out[lone], X[lone], rtol=0, atol=1e-9)
    assert model.singleton_sites_ == ["D"]
    others = ~lone
    spread = _site_mean_spread(out[others], sites[others], cov[others])
    assert spread < 0.25 * _site_mean_spread(X[others], sites[others], cov[others])
    np.testing.assert_allclose(model.transform(X, sites, cov), out, atol=1e-9)


def test_covariate_confounded_with_site_is_dropped():
    X, sites, cov = simulate({"A": 20, "B": 20, "C": 20}, seed=5)
    cov = cov.assign(field=np.where(sites == "A", "3T", "1.5T"),  # scanner field strength: a site property
                     site_age=cov.groupby("site")["age"].transform("mean"))  # continuous, constant per site
    with pytest.warns(UserWarning, match="field") as record:
        model = ComBat().fit(X, sites, cov, categorical=["sex", "field"], continuous=["age", "site_age"])
    assert any("site_age" in str(w.message) for w in record)
    assert set(model.dropped_covariates_) == {"field", "site_age"}
    assert model.covariates_ == ["sex", "age"]
    reference = ComBat().fit_transform(X, sites, cov, categorical=["sex"], continuous=["age"])
    np.testing.assert_allclose(model.transform(X, sites, cov), reference, atol=1e-9)
    np.testing.assert_allclose(model.transform(X, sites, cov[["sex", "age"]]), reference, atol=1e-9)


def test_unseen_site_policy():
    X, sites, cov = simulate({"A": 20, "B": 20, "C": 10}, seed=6)
    seen = sites != "C"
    with pytest.raises(ValueError, match=r"\['C'\] were not in the fit data"):
        ComBat().fit(X[seen], sites[seen], cov[seen], ["sex"], ["age"]).transform(X, sites, cov)
    model = ComBat(unseen_site="passthrough").fit(X[seen], sites[seen], cov[seen], ["sex"], ["age"])
    with pytest.warns(UserWarning, match="not seen in fit"):
        out = model.transform(X, sites, cov)
    np.testing.assert_array_equal(out[~seen], X[~seen])
    np.testing.assert_allclose(out[seen], model.transform(X[seen], sites[seen], cov[seen]), atol=1e-12)


def test_nan_and_bad_inputs_raise_clear_errors():
    X, sites, cov = simulate({"A": 10, "B": 10}, p=5, seed=7)
    frame = pd.DataFrame(X, columns=[f"aseg:roi{j}" for j in range(5)])
    frame.iloc[3, 2] = np.nan
    frame.iloc[5, 4] = np.nan
    with pytest.raises(ValueError, match=r"NaN.*\['aseg:roi2', 'aseg:roi4'\]"):
        ComBat().fit(frame, sites, cov, ["sex"], ["age"])
    bad_cov = cov.assign(age=cov["age"].where(cov.index != 7))
    with pytest.raises(ValueError, match=r"'age' has missing values at row\(s\) \[7\]"):
        ComBat().fit(X, sites, bad_cov, ["sex"], ["age"])
    with pytest.raises(ValueError, match=r"\['iq'\] not found"):
        ComBat().fit(X, sites, cov, ["sex"], ["iq"])
    labelled = pd.DataFrame(X, index=[f"s{i}" for i in range(len(X))])
    with pytest.raises(ValueError, match="another order"):
        ComBat().fit(labelled, sites, cov.set_axis(labelled.index[::-1]), ["sex"], ["age"])
    model = ComBat().fit(X, sites, cov, ["sex"], ["age"])
    with pytest.raises(ValueError, match="level"):
        model.transform(X[:3], sites[:3], cov[:3].assign(sex=[1, 2, 3]))
    with pytest.raises(ValueError, match="features"):
        model.transform(X[:, :4], sites, cov)


def test_constant_feature_passes_through():
    X, sites, cov = simulate({"A": 15, "B": 15}, p=6, seed=8)
    X[:, 2] = 0.0  # e.g. an aseg structure that FreeSurfer reports as 0 for everyone
    model = ComBat()
    out = model.fit_transform(X, sites, cov, ["sex"], ["age"])
    np.testing.assert_array_equal(out[:, 2], 0.0)
    assert model.constant_features_.tolist() == [False, False, True, False, False, False]
    assert np.isfinite(out).all()


def _residual_site_gap(out: np.ndarray, sites: np.ndarray, cov: pd.DataFrame, site: str) -> float:
    """Mean absolute gap between ``site``'s mean and the other sites' mean, after the known age and sex effects."""
    resid = out - 0.3 * cov["age"].to_numpy()[:, None] - 1.5 * (cov["sex"].to_numpy()[:, None] == 2)
    mine = sites == site
    return float(np.abs(resid[mine].mean(axis=0) - resid[~mine].mean(axis=0)).mean())


def test_unseen_site_estimate_removes_its_shift_and_passthrough_keeps_it():
    X, sites, cov = simulate({"A": 40, "C": 40, "D": 40, "B": 40}, seed=11)
    seen = sites != "B"  # B: +3 shift, 1.8x scale, never in the fit
    cov.loc[~seen, "age"] += 10.0  # the unseen site is older: its age effect must be kept, not removed as site
    X[~seen] += 3.0  # the age effect of the extra 10 years
    fit = (X[seen], sites[seen], cov[seen].reset_index(drop=True), ["sex"], ["age"])
    raw_gap = _residual_site_gap(X, sites, cov, "B")
    assert raw_gap > 2.0
    passthrough = ComBat(unseen_site="passthrough").fit(*fit)
    with pytest.warns(UserWarning, match="not seen in fit"):
        out_pass = passthrough.transform(X, sites, cov)
    np.testing.assert_array_equal(out_pass[~seen], X[~seen])  # the shift stays
    assert passthrough.unseen_sites_ == {"B": 40}
    for kwargs in ({}, {"eb": False}, {"parametric": False}):
        model = ComBat(unseen_site="estimate", **kwargs).fit(*fit)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no pass-through warning: the site is harmonised
            out = model.transform(X, sites, cov)
        assert model.unseen_sites_ == {"B": 40}
        assert _residual_site_gap(out, sites, cov, "B") < 0.1 * raw_gap, kwargs
        # the scale too: B's within-site spread now matches the seen sites'
        resid = out - 0.3 * cov["age"].to_numpy()[:, None]
        ratio = resid[~seen].std(axis=0).mean() / resid[sites == "A"].std(axis=0).mean()
        assert 0.7 < ratio < 1.4, (kwargs, ratio)
        # seen sites are harmonised exactly as without unseen subjects
        np.testing.assert_allclose(out[seen], model.transform(X[seen], sites[seen], cov[seen]), atol=1e-12)


def test_unseen_site_estimate_matches_a_refit_location_and_leaves_a_single_subject_unadjusted():
    X, sites, cov = simulate({"A": 30, "C": 30, "B": 30}, seed=5)
    seen = sites != "B"
    model = ComBat(unseen_site="estimate", eb=False).fit(X[seen], sites[seen], cov[seen], ["sex"], ["age"])
    out = model.transform(X, sites, cov)
    # without empirical Bayes, B's harmonised standardised data has mean 0 and variance 1 (ddof 1) per feature
    mod = cov["age"].to_numpy()[:, None] * model.beta_[-1] + (cov["sex"].to_numpy()[:, None] == 2) * model.beta_[0]
    s = (out - model.grand_mean_ - mod) / np.sqrt(model.var_pooled_)
    np.testing.assert_allclose(s[~seen].mean(axis=0), 0.0, atol=1e-9)
    np.testing.assert_allclose(s[~seen].var(axis=0, ddof=1), 1.0, atol=1e-9)
    one = np.flatnonzero(~seen)[:1]
    rows = np.concatenate([np.flatnonzero(seen), one])
    out_one = model.transform(X[rows], sites[rows], cov.iloc[rows].reset_index(drop=True))
    np.testing.assert_array_equal(out_one[-1], X[one[0]])  # one subject cannot separate a site effect
    with pytest.raises(ValueError, match="'estimate'"):
        ComBat(unseen_site="guess").fit(X, sites, cov, ["sex"], ["age"])

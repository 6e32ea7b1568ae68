"""Site-stratified splits: sizes, disjointness, coverage, stratification, determinism."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from pmrl_sci.data.splits import (
    bnt_split,
    domain_holdout_split,
    domain_unit_name,
    leave_one_domain_out,
    stratified_site_folds,
    stratum_keys,
)
from pmrl_sci.errors import InputError
from pmrl_sci.metrics import UndefinedAUCWarning, binary_classification_metrics, per_group_metrics


def _cohort(n: int = 200, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    sites = rng.choice(["NYU", "UM_1", "USM", "PITT"], size=n, p=[0.4, 0.3, 0.2, 0.1])
    labels = (rng.random(n) < np.where(sites == "NYU", 0.35, 0.55)).astype(int)
    return labels, sites


def test_bnt_split_sizes_disjoint_and_stratified() -> None:
    labels, sites = _cohort(200)
    train, val, test = bnt_split(labels, sites, seed=3)
    assert (len(train), len(val), len(test)) == (140, 20, 40)  # validation 10 %, test 20 %
    joined = np.concatenate([train, val, test])
    assert len(set(joined)) == 200 and set(joined) == set(range(200))
    for part, size in ((train, 140), (test, 40)):
        for site in np.unique(sites):
            expected = np.mean(sites == site) * size
            assert abs(np.sum(sites[part] == site) - expected) <= 1.5, site
        assert abs(labels[part].mean() - labels.mean()) < 0.05


def test_bnt_split_deterministic_and_seed_dependent() -> None:
    labels, sites = _cohort(120)
    first = bnt_split(labels, sites, seed=1)
    again = bnt_split(labels, sites, seed=1)
    other = bnt_split(labels, sites, seed=2)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not np.array_equal(first[2], other[2])


def test_bnt_split_rare_strata_and_bad_fractions() -> None:
    labels, sites = _cohort(60)
    sites[:1] = "SINGLE"  # a site with one subject
    train, val, test = bnt_split(labels, sites, seed=0)
    assert len(train) + len(val) + len(test) == 60
    with pytest.raises(ValueError, match="sum to 1"):
        bnt_split(labels, sites, seed=0, train=0.7, val=0.2, test=0.2)
    with pytest.raises(ValueError, match="too few"):
        bnt_split(labels[:5], sites[:5], seed=0)


def test_stratified_site_folds() -> None:
    labels, sites = _cohort(150, seed=4)
    folds = stratified_site_folds(labels, sites, n_folds=5, seed=7)
    assert len(folds) == 5
    tests = np.concatenate([f[2] for f in folds])
    assert sorted(tests) == list(range(150))  # the test parts partition the cohort
    for train, val, test in folds:
        assert len(val) == 15 and len(test) == 30 and len(train) == 105
        assert not (set(train) & set(val) or set(train) & set(test) or set(val) & set(test))
        # each test fold holds every (site, diagnosis) stratum in proportion, within one subject
        for key, count in Counter(zip(sites, labels)).items():
            in_test = sum(1 for i in test if (sites[i], labels[i]) == key)
            assert abs(in_test - count / 5) <= 1, key
    again = stratified_site_folds(labels, sites, n_folds=5, seed=7)
    assert all(np.array_equal(a, b) for f, g in zip(folds, again) for a, b in zip(f, g))


def test_stratum_keys_fallback() -> None:
    labels = np.array([0, 1, 0, 1, 0, 0, 1])
    sites = np.array(["A", "A", "A", "A", "B", "B", "C"])
    keys = stratum_keys(labels, sites, min_count=2)
    assert list(keys[:4]) == ["A|0", "A|1", "A|0", "A|1"]
    assert keys[4] == keys[5] == "B|0"
    assert Counter(keys)[keys[6]] >= 2  # the single C subject joined a larger stratum


def test_folds_beyond_the_smallest_class_are_refused() -> None:
    """With more folds than subjects of a class some test folds lack it: AUC NaN. Refused, saying why."""
    labels = np.array([1] * 4 + [0] * 26)
    sites = np.array(["NYU", "UM_1"] * 15)
    with pytest.raises(InputError, match=r"--folds 5 is too many: the smallest class \(label 1\) has only 4 "
                                         r"subjects \(label 0: 26, label 1: 4\).*use --folds 4 or fewer.*"
                                         r"smallest site\|label stratum, 'NYU\|1', has 2 subjects"):
        stratified_site_folds(labels, sites, n_folds=5, seed=0)
    folds = stratified_site_folds(labels, sites, n_folds=4, seed=0, val_fraction=0.0)
    assert all(set(labels[test]) == {0, 1} for _, _, test in folds)  # every test fold has both classes


def test_auc_of_one_class_warns() -> None:
    with pytest.warns(UndefinedAUCWarning, match=r"AUC is undefined \(NaN\): the 3 evaluated subjects all have "
                                                  r"label \[0\]"):
        metrics = binary_classification_metrics([0, 0, 0], [0.2, 0.4, 0.9])
    assert np.isnan(metrics["auc"]) and metrics["specificity"] == pytest.approx(2 / 3)


def test_domain_holdout_split_tests_on_whole_sites_and_validates_on_the_others() -> None:
    labels, sites = _cohort(200)
    train, val, test = domain_holdout_split(labels, sites, ["USM", "PITT"], seed=1)
    np.testing.assert_array_equal(test, np.flatnonzero(np.isin(sites, ["USM", "PITT"])))
    assert set(sites[train]) == set(sites[val]) == {"NYU", "UM_1"}
    rest = np.flatnonzero(~np.isin(sites, ["USM", "PITT"]))
    assert len(val) == round(0.125 * len(rest)) and sorted(np.concatenate([train, val])) == rest.tolist()
    for site in ("NYU", "UM_1"):  # stratified by site x diagnosis
        for label in (0, 1):
            share = np.mean((sites[rest] == site) & (labels[rest] == label))
            assert abs(np.sum((sites[val] == site) & (labels[val] == label)) - share * len(val)) <= 1.0
    again = domain_holdout_split(labels, sites, ["PITT", "USM"], seed=1)
    assert all(np.array_equal(a, b) for a, b in zip((train, val, test), again))
    other = domain_holdout_split(labels, sites, ["USM", "PITT"], seed=2)
    assert np.array_equal(other[2], test) and not np.array_equal(other[1], val)


def test_domain_holdout_split_refuses_unknown_sites_and_one_class_training() -> None:
    labels, sites = _cohort(100)
    with pytest.raises(InputError, match=r"--test-sites: unknown site\(s\) \['CALTECH'\]; the sites available are "
                                         r"NYU, PITT, UM_1, USM"):
        domain_holdout_split(labels, sites, ["NYU", "CALTECH"], seed=0)
    with pytest.raises(InputError, match="leaves no site for training"):
        domain_holdout_split(labels, sites, ["NYU", "PITT", "UM_1", "USM"], seed=0)
    labels = np.where(sites == "NYU", 0, 1)  # every control is at NYU
    with pytest.raises(InputError, match=r"--test-sites NYU leaves a training part without label\(s\) \[0\].*"
                                         "the sites available are NYU, PITT, UM_1, USM"):
        domain_holdout_split(labels, sites, ["NYU"], seed=0)
    with pytest.raises(InputError, match="--split loso NYU leaves a training part without"):
        leave_one_domain_out(labels, sites, seed=0)
    with pytest.raises(InputError, match="--split loso needs at least two sites"):
        leave_one_domain_out(labels, np.full(len(labels), "NYU"), seed=0)


def test_leave_one_domain_out_has_one_split_per_site_and_tests_everyone_once() -> None:
    labels, sites = _cohort(200)
    splits = leave_one_domain_out(labels, sites, seed=0)
    assert [site for site, _ in splits] == ["NYU", "PITT", "UM_1", "USM"]
    tested = np.concatenate([test for _, (_, _, test) in splits])
    assert sorted(tested.tolist()) == list(range(200))
    for site, (train, val, test) in splits:
        assert set(sites[test]) == {site} and site not in set(sites[train]) | set(sites[val])
        assert set(labels[train]) == {0, 1} and len(val) > 0
    assert domain_unit_name(["UCLA_1", "NYU", "NYU"]) == "NYU+UCLA_1" and domain_unit_name(["a/b c"]) == "a_b_c"


def test_per_group_metrics_reports_undefined_metrics_as_null_with_a_reason() -> None:
    labels = np.array([0, 1, 0, 1, 1, 1])
    scores = np.array([0.2, 0.8, 0.6, 0.4, 0.9, 0.3])
    groups = np.array(["A", "A", "A", "A", "B", "B"])
    out = per_group_metrics(labels, scores, groups)
    assert list(out) == ["A", "B"]
    assert out["A"] == {"auc": 0.75, "accuracy": 0.5, "sensitivity": 0.5, "specificity": 0.5, "n": 4,
                        "n_positive": 2}
    assert out["B"]["auc"] is None and out["B"]["specificity"] is None and out["B"]["accuracy"] == 0.5
    assert out["B"]["sensitivity"] == 0.5 and out["B"]["n"] == 2
    assert set(out["B"]["undefined"]) == {"auc", "specificity"} and "both classes" in out["B"]["undefined"]["auc"]

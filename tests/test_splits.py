"""Site-stratified splits: sizes, disjointness, coverage, stratification, determinism."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from pmrl_sci.data.splits import bnt_split, stratified_site_folds, stratum_keys
from pmrl_sci.errors import InputError
from pmrl_sci.metrics import UndefinedAUCWarning, binary_classification_metrics


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

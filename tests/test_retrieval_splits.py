"""Manifest row splits of retrieval (``pmrl_sci.data.splits``): train / test, validation, few-shot draws."""

from __future__ import annotations

import numpy as np
import pytest

from pmrl_sci.data.manifest import LoadedData
from pmrl_sci.data.splits import few_shot_indices, split_indices, split_rows, validation_split
from pmrl_sci.errors import InputError


def _data(labels, splits) -> LoadedData:
    n = len(labels)
    return LoadedData(["a"], {"a": "features"}, {"a": np.zeros((n, 2), np.float32)}, np.ones((n, 1), bool),
                      [str(i) for i in range(n)], labels, splits)


def test_few_shot_draws_per_class_or_instances() -> None:
    labels = ["x"] * 6 + ["y"] * 6 + ["z"] * 2
    train = np.arange(14)
    rows, mode = few_shot_indices(train, labels, 3, seed=0)
    assert mode == "per_class" and len(rows) == 3 + 3 + 2  # a class with fewer rows gives them all
    drawn = [labels[i] for i in rows]
    assert drawn.count("x") == 3 and drawn.count("y") == 3 and drawn.count("z") == 2
    rows, mode = few_shot_indices(train, [None] * 14, 5, seed=0)
    assert mode == "instances" and len(rows) == 5 and len(set(rows.tolist())) == 5
    other, _ = few_shot_indices(train, [None] * 14, 5, seed=1)
    assert not np.array_equal(rows, other)


def test_split_indices_uses_the_split_column_else_a_seeded_random_split() -> None:
    labels = ["x"] * 14
    tr, te = split_indices(_data(labels, ["train"] * 10 + ["test"] * 4), 0.2, 0)
    assert tr.tolist() == list(range(10)) and te.tolist() == [10, 11, 12, 13]
    tr, te = split_indices(_data(labels, ["train"] * 10 + ["val"] * 4), 0.2, 0)  # val stands in for test
    assert te.tolist() == [10, 11, 12, 13]
    tr, te = split_indices(_data(labels, [None] * 14), 0.25, 0)
    assert len(te) == 4 and len(tr) == 10 and sorted([*tr, *te]) == list(range(14))
    again, _ = split_indices(_data(labels, [None] * 14), 0.25, 0)
    assert np.array_equal(again, tr)
    with pytest.raises(InputError, match="too few"):
        split_indices(_data(["x"], [None]), 0.5, 0)


def test_validation_split_is_stratified_and_disjoint() -> None:
    labels = ["x"] * 20 + ["y"] * 10 + ["z"] + [None] * 5  # the unlabelled rows are not training rows here
    train = np.arange(31)
    fit, val = validation_split(train, labels, 0.2, seed=1)
    assert len(val) == 6 and len(fit) == 25 and sorted([*fit, *val]) == list(range(31))
    val_labels = [labels[i] for i in val]
    assert val_labels.count("x") == 4 and val_labels.count("y") == 2  # proportional to the class sizes
    assert "z" not in val_labels  # a class with one row keeps it for fitting
    again, _ = validation_split(train, labels, 0.2, seed=1)
    other, _ = validation_split(train, labels, 0.2, seed=2)
    assert np.array_equal(again, fit) and not np.array_equal(other, fit)
    fit, val = validation_split(np.arange(36), labels, 0.25, seed=0)  # some rows unlabelled: a random draw
    assert len(val) == 9 and not set(fit) & set(val) and len(fit) + len(val) == 36
    fit, val = validation_split(train, labels, 0.0, seed=0)
    assert len(val) == 0 and len(fit) == 31


def test_split_rows_uses_the_manifest_val_rows() -> None:
    labels = ["x", "y"] * 8
    fit, val, test = split_rows(_data(labels, ["train"] * 10 + ["val"] * 2 + ["test"] * 4), 0.2, 0.5, 0)
    assert fit.tolist() == list(range(10)) and val.tolist() == [10, 11] and test.tolist() == [12, 13, 14, 15]
    fit, val, test = split_rows(_data(labels, ["train"] * 12 + ["test"] * 4), 0.2, 0.25, 0)
    assert len(val) == 3 and len(fit) == 9 and test.tolist() == [12, 13, 14, 15]
    assert sorted([*fit, *val]) == list(range(12))


def test_repeated_rows_never_straddle_a_random_split() -> None:
    n = 40
    groups = np.arange(n)
    groups[[3, 17, 29]] = 3  # one row repeated three times
    groups[[8, 9]] = 8
    for seed in range(10):
        data = _data([None] * n, [None] * n)
        data.groups = groups
        fit, val, test = split_rows(data, 0.3, 0.25, seed)
        assert sorted(np.concatenate([fit, val, test]).tolist()) == list(range(n))
        part = {int(r): name for name, rows in (("fit", fit), ("val", val), ("test", test)) for r in rows}
        for group in ([3, 17, 29], [8, 9]):
            assert len({part[r] for r in group}) == 1, (seed, group, part)
        plain, distinct = _data([None] * n, [None] * n), _data([None] * n, [None] * n)
        distinct.groups = np.arange(n)  # every row its own group: the same split as without groups
        assert all(np.array_equal(a, b) for a, b in zip(split_rows(plain, 0.3, 0.25, seed),
                                                        split_rows(distinct, 0.3, 0.25, seed), strict=True))

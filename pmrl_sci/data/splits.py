"""Site-stratified train / validation / test splits (scikit-learn underneath).

Strata are the joint ``diagnosis x site`` key; a stratum too small for the splitter falls back
to its site, and a site that is still too small joins one pooled ``rare`` stratum (which, if
still too small, joins the largest stratum). Every split is deterministic for a seed.

Manifest rows (retrieval) are split by :func:`split_rows`: the manifest's ``split`` column or a seeded
random train / test split, then a validation part of the training rows (:func:`validation_split`,
stratified by class when every row has a label); :func:`few_shot_indices` draws few-shot training rows.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from sklearn.model_selection import StratifiedKFold, StratifiedShuffleSplit

from pmrl_sci.errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    from pmrl_sci.data.manifest import LoadedData

logger = logging.getLogger(__name__)

Split = tuple[np.ndarray, np.ndarray, np.ndarray]


def stratum_keys(labels: Sequence[int] | np.ndarray, sites: Sequence[str] | np.ndarray,
                 min_count: int = 2) -> np.ndarray:
    """Joint ``site|label`` keys with the fallback for strata smaller than ``min_count``.

    Parameters
    ----------
    labels, sites : array-like
        One entry per subject.
    min_count : int
        Smallest stratum the splitter accepts (2 for shuffle splits, ``n_folds`` for k-fold).

    Returns
    -------
    ndarray of str
    """
    labels = np.asarray(labels)
    sites = np.asarray(sites).astype(str)
    if labels.ndim != 1 or sites.shape != labels.shape:
        raise ValueError(f"labels and sites must be 1-D of the same length, got {labels.shape} and {sites.shape}")
    keys = np.array([f"{s}|{y}" for s, y in zip(sites, labels)], dtype=object)
    counts = Counter(keys)
    keys = np.array([k if counts[k] >= min_count else k.rsplit("|", 1)[0] for k in keys], dtype=object)
    counts = Counter(keys)
    keys = np.array([k if counts[k] >= min_count else "__rare__" for k in keys], dtype=object)
    counts = Counter(keys)
    if 0 < counts.get("__rare__", 0) < min_count and len(counts) > 1:
        largest = max((k for k in counts if k != "__rare__"), key=lambda k: (counts[k], k))
        keys = np.where(keys == "__rare__", largest, keys)
    return keys.astype(str)


def _check(labels: Sequence[int] | np.ndarray, sites: Sequence[str] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels)
    sites = np.asarray(sites)
    if labels.ndim != 1 or sites.ndim != 1 or len(labels) != len(sites):
        raise ValueError(f"labels and sites must be 1-D of the same length, got {labels.shape} and {sites.shape}")
    return labels, sites


def bnt_split(labels: Sequence[int] | np.ndarray, sites: Sequence[str] | np.ndarray, seed: int,
              train: float = 0.7, val: float = 0.1, test: float = 0.2) -> Split:
    """BrainNetTF's protocol: one site-stratified 70 / 10 / 20 train / validation / test split.

    As in BrainNetTF, ``n_train = floor(train * N)``, ``n_val = floor(val * N)`` and the test
    part takes the rest; the train part is drawn first (stratified shuffle split), then the
    remainder is split into validation and test, both stratified by ``site x diagnosis``
    (with the fallback of :func:`stratum_keys`).

    Parameters
    ----------
    labels, sites : array-like
        Diagnosis and site per subject.
    seed : int
        Random state (a trial index).
    train, val, test : float
        Fractions; must sum to 1.

    Returns
    -------
    train_idx, val_idx, test_idx : ndarray of int
        Sorted, disjoint, covering ``range(N)``.
    """
    labels, sites = _check(labels, sites)
    if min(train, val, test) <= 0 or abs(train + val + test - 1.0) > 1e-6:
        raise ValueError(f"split fractions must be positive and sum to 1, got train={train}, val={val}, test={test}")
    n = len(labels)
    n_train, n_val = int(np.floor(train * n)), int(np.floor(val * n))
    n_test = n - n_train - n_val
    if min(n_train, n_val, n_test) < 1:
        raise ValueError(f"{n} subjects are too few for a {train}/{val}/{test} split")
    all_idx = np.arange(n)
    first = StratifiedShuffleSplit(n_splits=1, train_size=n_train, test_size=n_val + n_test, random_state=seed)
    train_idx, rest = next(first.split(all_idx, _safe_keys(labels, sites, n_train, n_val + n_test)))
    second = StratifiedShuffleSplit(n_splits=1, train_size=n_val, test_size=n_test, random_state=seed + 1)
    val_pos, test_pos = next(second.split(rest, _safe_keys(labels[rest], sites[rest], n_val, n_test)))
    return np.sort(train_idx), np.sort(rest[val_pos]), np.sort(rest[test_pos])


def _safe_keys(labels: np.ndarray, sites: np.ndarray, n_a: int, n_b: int, site_first: bool = True) -> np.ndarray:
    """Strata usable by ``StratifiedShuffleSplit`` for parts of ``n_a`` and ``n_b`` subjects.

    The splitter needs every stratum to have 2 members and at most ``min(n_a, n_b)`` strata;
    when the joint key has too many strata the site alone is used, then the diagnosis, then none
    (``site_first=False``: the diagnosis before the site, so that a small validation part keeps both classes).
    """
    limit = min(n_a, n_b)
    by_site = stratum_keys(np.zeros_like(labels), sites, 2)
    by_label = stratum_keys(labels, np.zeros(len(labels), dtype=str), 2)
    for keys in (stratum_keys(labels, sites, 2), *((by_site, by_label) if site_first else (by_label, by_site))):
        if len(set(keys)) <= limit:
            return keys
    return np.zeros(len(labels), dtype=str)


def _check_folds_fit_classes(labels: np.ndarray, sites: np.ndarray, n_folds: int) -> None:
    """Refuse ``n_folds`` larger than the smallest class: a test fold without a class has no AUC."""
    classes = Counter(labels.tolist())
    smallest_class, smallest = min(classes.items(), key=lambda item: (item[1], str(item[0])))
    if len(classes) < 2 or smallest >= n_folds:
        return
    strata = Counter(f"{site}|{label}" for site, label in zip(sites.astype(str), labels.tolist()))
    stratum, stratum_count = min(strata.items(), key=lambda item: (item[1], item[0]))
    counts = ", ".join(f"label {c}: {k}" for c, k in sorted(classes.items(), key=lambda item: str(item[0])))
    raise InputError(f"--folds {n_folds} is too many: the smallest class (label {smallest_class}) has only "
                     f"{smallest} subjects ({counts}), so some test folds would lack it and their AUC would be "
                     f"undefined (NaN); use --folds {max(2, smallest)} or fewer (the smallest site|label stratum, "
                     f"{stratum!r}, has {stratum_count} subjects; strata smaller than --folds are pooled)")


def stratified_site_folds(labels: Sequence[int] | np.ndarray, sites: Sequence[str] | np.ndarray, n_folds: int,
                          seed: int, val_fraction: float = 0.1) -> list[Split]:
    """K folds stratified by ``diagnosis x site``, each with a validation part carved from its training part.

    Each fold's test part is one ``StratifiedKFold`` fold (shuffled with ``seed``) on the joint
    key (rare strata fall back as in :func:`stratum_keys`); the validation part,
    ``round(val_fraction * N)`` subjects, is drawn from the remaining subjects by a stratified
    shuffle split. With 5 folds and ``val_fraction=0.1`` the parts are 70 / 10 / 20 %.

    Parameters
    ----------
    labels, sites : array-like
        Diagnosis and site per subject.
    n_folds : int
        Number of folds (>= 2).
    seed : int
        Random state.
    val_fraction : float
        Validation size as a fraction of all subjects (0 for no validation part).

    Returns
    -------
    list of (train_idx, val_idx, test_idx)
        Sorted, disjoint index arrays; the test parts partition ``range(N)``; every test part holds
        every class.

    Raises
    ------
    InputError
        When a class has fewer subjects than ``n_folds`` (some test folds would lack it and their AUC
        would be undefined); the message names ``--folds``, the class counts and the smallest
        ``site|label`` stratum.
    """
    labels, sites = _check(labels, sites)
    n = len(labels)
    if n_folds < 2 or n_folds > n:
        raise ValueError(f"n_folds must be in [2, {n}] for {n} subjects, got {n_folds}")
    if not 0 <= val_fraction < 1 - 1 / n_folds:
        raise ValueError(f"val_fraction must be in [0, {1 - 1 / n_folds:.2f}), got {val_fraction}")
    _check_folds_fit_classes(labels, sites, n_folds)
    keys = stratum_keys(labels, sites, n_folds)
    if min(Counter(keys).values()) < n_folds:  # even the pooled strata are too small: stratify by diagnosis
        keys = stratum_keys(labels, np.zeros(n, dtype=str), n_folds)
        if min(Counter(keys).values()) < n_folds:
            keys = np.zeros(n, dtype=str)
    folder = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    folds: list[Split] = []
    for fold, (train_idx, test_idx) in enumerate(folder.split(np.arange(n), keys)):
        n_val = int(round(val_fraction * n))
        if n_val == 0:
            folds.append((np.sort(train_idx), np.array([], dtype=int), np.sort(test_idx)))
            continue
        n_fit = len(train_idx) - n_val
        if n_fit < 1:
            raise ValueError(f"fold {fold}: {len(train_idx)} training subjects cannot give {n_val} for validation")
        splitter = StratifiedShuffleSplit(n_splits=1, train_size=n_fit, test_size=n_val, random_state=seed + fold)
        fit_pos, val_pos = next(splitter.split(train_idx, _safe_keys(labels[train_idx], sites[train_idx],
                                                                      n_fit, n_val)))
        folds.append((np.sort(train_idx[fit_pos]), np.sort(train_idx[val_pos]), np.sort(test_idx)))
    return folds


# -- domain (site) splits: hold out whole domains ------------------------------------------------------------
#: share of the training domains' subjects held out for validation (BrainNetTF's 70:10 train:validation ratio)
DOMAIN_VAL_FRACTION = 0.125


def domain_unit_name(domains: Sequence[str]) -> str:
    """A stable, file-name-safe name for a set of held-out domains (sorted, joined by ``+``)."""
    return "+".join(re.sub(r"[^A-Za-z0-9_.-]", "_", str(d)) for d in sorted({str(d) for d in domains}))


def domain_holdout_split(labels: Sequence[int] | np.ndarray, domains: Sequence[str] | np.ndarray,
                         test_domains: Sequence[str], seed: int, val_fraction: float = DOMAIN_VAL_FRACTION,
                         option: str = "--test-sites") -> Split:
    """Test on every subject of ``test_domains``; train and validate on the other domains.

    The validation part, ``round(val_fraction * n_rest)`` of the ``n_rest`` subjects of the other domains, is a
    stratified shuffle split on the joint ``label x domain`` key (with the fallback of :func:`stratum_keys`), so it
    holds every training domain in proportion (when it is too small for the joint key: stratified by label, so
    that it keeps both classes, then by domain); only the validation draw depends on ``seed``.

    Parameters
    ----------
    labels, domains : array-like
        Class label and domain (e.g. acquisition site) per subject.
    test_domains : sequence of str
        Domains held out for testing.
    seed : int
        Random state of the validation draw.
    val_fraction : float
        Validation share of the training domains' subjects (0: no validation part).
    option : str
        Command-line option named in error messages.

    Returns
    -------
    train_idx, val_idx, test_idx : ndarray of int
        Sorted, disjoint, covering ``range(N)``; no training or validation subject is from a test domain.

    Raises
    ------
    InputError
        When a test domain is unknown (the message lists the domains available), when no domain is left for
        training, or when the training part lacks a class.
    """
    labels, domains = _check(labels, domains)
    domains = domains.astype(str)
    available = sorted(set(domains.tolist()))
    wanted = sorted({str(d) for d in test_domains})
    unknown = [d for d in wanted if d not in available]
    if not wanted or unknown:
        raise InputError(f"{option}: unknown site(s) {unknown or wanted}; the sites available are "
                         f"{', '.join(available)}")
    held = np.isin(domains, wanted)
    rest = np.flatnonzero(~held)
    if rest.size == 0:
        raise InputError(f"{option} {','.join(wanted)} leaves no site for training; the sites available are "
                         f"{', '.join(available)}")
    classes, rest_classes = sorted(set(labels.tolist())), set(labels[rest].tolist())
    if len(rest_classes) < len(classes):
        missing = [c for c in classes if c not in rest_classes]
        raise InputError(f"{option} {','.join(wanted)} leaves a training part without label(s) {missing} (training "
                         f"sites: {', '.join(sorted(set(domains[rest].tolist())))}); hold out fewer sites (the sites "
                         f"available are {', '.join(available)})")
    n_val = int(round(val_fraction * rest.size))
    if val_fraction <= 0 or n_val == 0:
        return np.sort(rest), np.array([], dtype=int), np.flatnonzero(held)
    n_fit = rest.size - n_val
    if n_fit < 2:
        raise InputError(f"{option} {','.join(wanted)} leaves {rest.size} subjects for training and validation: "
                         "too few to carve a validation part")
    splitter = StratifiedShuffleSplit(n_splits=1, train_size=n_fit, test_size=n_val, random_state=seed)
    keys = _safe_keys(labels[rest], domains[rest], n_fit, n_val, site_first=False)
    fit_pos, val_pos = next(splitter.split(rest, keys))
    return np.sort(rest[fit_pos]), np.sort(rest[val_pos]), np.flatnonzero(held)


def leave_one_domain_out(labels: Sequence[int] | np.ndarray, domains: Sequence[str] | np.ndarray, seed: int,
                         val_fraction: float = DOMAIN_VAL_FRACTION, option: str = "--split loso"
                         ) -> list[tuple[str, Split]]:
    """One split per domain: test on that domain, train and validate on the others (:func:`domain_holdout_split`).

    Returns
    -------
    list of (domain, (train_idx, val_idx, test_idx))
        In sorted domain order; the test parts partition ``range(N)``.

    Raises
    ------
    InputError
        When there are fewer than two domains, or leaving a domain out leaves a training part without a class.
    """
    labels, domains = _check(labels, domains)
    available = sorted(set(np.asarray(domains).astype(str).tolist()))
    if len(available) < 2:
        raise InputError(f"{option} needs at least two sites, got {available}")
    return [(d, domain_holdout_split(labels, domains, [d], seed, val_fraction, option)) for d in available]


# -- manifest rows (retrieval): train / validation / test and few-shot draws ----------------------------------
def split_indices(data: LoadedData, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Train and test rows: the manifest's ``split`` column (``test``, else ``val``), else a seeded random split."""
    splits = np.array([s or "" for s in data.splits])
    train = np.flatnonzero(splits == "train")
    for name in ("test", "val"):
        test = np.flatnonzero(splits == name)
        if test.size and train.size:
            return train, test
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(data))
    n_test = max(1, int(round(test_fraction * len(data))))
    if len(data) - n_test < 1:
        raise InputError(f"{len(data)} rows are too few to split into train and test")
    logger.info("no usable split column: random %d train / %d test rows", len(data) - n_test, n_test)
    return keep_groups_together(np.sort(order[n_test:]), np.sort(order[:n_test]), data.groups)


def keep_groups_together(first: np.ndarray, second: np.ndarray, groups: np.ndarray | None
                         ) -> tuple[np.ndarray, np.ndarray]:
    """Move repeated rows so that each group of rows sits in one part.

    Parameters
    ----------
    first, second : numpy.ndarray
        Sorted row indices of two disjoint parts (e.g. train and test).
    groups : numpy.ndarray or None
        Group number per row of the whole data set (:meth:`~pmrl_sci.data.manifest.Manifest.row_groups`:
        repeated rows share one). None, or all groups distinct, leaves the parts unchanged.

    Returns
    -------
    tuple of numpy.ndarray
        The two parts, sorted; a group split between them goes wholly to the part of its lowest row, so
        the same files never appear on both sides of a split (no leak through repeated rows).
    """
    if groups is None or len(np.unique(groups)) == len(groups):
        return first, second
    groups = np.asarray(groups)
    rows = np.concatenate([first, second])
    part = np.concatenate([np.zeros(len(first), dtype=int), np.ones(len(second), dtype=int)])
    order = np.argsort(rows, kind="stable")
    rows, part = rows[order], part[order]
    owner: dict[int, int] = {}
    for row, side in zip(rows.tolist(), part.tolist(), strict=True):
        owner.setdefault(int(groups[row]), side)
    moved = np.array([owner[int(groups[row])] for row in rows.tolist()], dtype=int)
    if (moved != part).any():
        logger.info("%d repeated row(s) moved to the part of their first copy", int((moved != part).sum()))
    return np.sort(rows[moved == 0]), np.sort(rows[moved == 1])


def validation_split(train: np.ndarray, labels: Sequence[str | None], fraction: float, seed: int
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Carve a validation part out of the training rows; returns sorted ``(fit, val)`` row indices.

    Parameters
    ----------
    train : numpy.ndarray
        Training row indices (into ``labels``).
    labels : sequence of str or None
        Class name per row of the whole data set (``None`` where unlabelled).
    fraction : float
        Share of ``train`` held out (``round(fraction * len(train))``, at least one row when positive).
    seed : int
        Seed of the draw.

    Notes
    -----
    When every training row has a label the split is stratified: the validation rows are shared among the classes
    in proportion to their sizes (largest remainders, ties broken at random) and every class keeps at least one
    fitting row, so a class with a single row stays out of validation. Otherwise the rows are drawn at random.
    """
    train = np.sort(np.asarray(train, dtype=int))
    if fraction <= 0 or train.size < 2:
        return train, train[:0]
    rng = np.random.default_rng(seed)
    n_val = min(train.size - 1, max(1, int(round(fraction * train.size))))
    train_labels = [labels[i] for i in train]
    if any(label is None for label in train_labels):
        order = rng.permutation(train)
        return np.sort(order[n_val:]), np.sort(order[:n_val])
    groups: dict[str, list[int]] = {}
    for row, label in zip(train.tolist(), train_labels, strict=True):
        groups.setdefault(str(label), []).append(row)
    names = sorted(groups)
    counts = np.array([len(groups[name]) for name in names])
    caps = counts - 1  # every class keeps a fitting row
    n_val = min(n_val, int(caps.sum()))
    exact = n_val * counts / counts.sum()
    quota = np.minimum(np.floor(exact).astype(int), caps)
    remainder = exact - quota
    tiebreak = rng.random(len(names))
    while quota.sum() < n_val:
        open_ = np.flatnonzero(quota < caps)
        best = open_[np.lexsort((tiebreak[open_], -remainder[open_]))[0]]
        quota[best] += 1
        remainder[best] -= 1.0
    val = [row for name, q in zip(names, quota.tolist(), strict=True) if q
           for row in rng.choice(groups[name], size=q, replace=False).tolist()]
    val_rows = np.sort(np.asarray(val, dtype=int))
    return np.setdiff1d(train, val_rows), val_rows


def split_rows(data: LoadedData, test_fraction: float, val_fraction: float, seed: int
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fitting, validation and test rows.

    Test rows as :func:`split_indices`. Validation: the manifest's ``val`` rows when it has ``train``, ``val`` and
    ``test`` rows, else a part of the training rows (:func:`validation_split`, stratified by class when every
    training row has a label; empty when ``val_fraction`` is 0).
    """
    train, test = split_indices(data, test_fraction, seed)
    splits = np.array([s or "" for s in data.splits])
    manifest_val = np.flatnonzero(splits == "val")
    if manifest_val.size and (splits == "test").any() and (splits == "train").any():
        return train, manifest_val, test
    fit, val = validation_split(train, data.labels, val_fraction, seed)
    fit, val = keep_groups_together(fit, val, data.groups)
    return fit, val, test


def few_shot_indices(train: np.ndarray, labels: Sequence[str | None], n: int, seed: int) -> tuple[np.ndarray, str]:
    """``n`` rows per class when every training row has a label, else ``n`` rows; returns (rows, mode)."""
    rng = np.random.default_rng(seed)
    train_labels = [labels[i] for i in train]
    if all(label is not None for label in train_labels):
        chosen = []
        for label in sorted(set(train_labels)):  # type: ignore[type-var]
            rows = train[[i for i, lab in enumerate(train_labels) if lab == label]]
            chosen.extend(rng.choice(rows, size=min(n, rows.size), replace=False).tolist())
        return np.sort(np.asarray(chosen, dtype=int)), "per_class"
    return np.sort(rng.choice(train, size=min(n, train.size), replace=False)), "instances"

"""Evaluation metrics: binary classification, land-cover classification and retrieval.

Thin, tested wrappers over scikit-learn where it has the metric; values are plain floats
in [0, 1] (ranks excepted).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from sklearn.metrics import accuracy_score, cohen_kappa_score, confusion_matrix, roc_auc_score, roc_curve


class UndefinedAUCWarning(UserWarning):
    """An AUC asked of labels that hold one class only (the value is NaN)."""


def binary_classification_metrics(y_true: Sequence[int] | np.ndarray, score: Sequence[float] | np.ndarray,
                                  threshold: float = 0.5) -> dict[str, float]:
    """AUC, accuracy, sensitivity (recall of class 1) and specificity (recall of class 0).

    Parameters
    ----------
    y_true : array of {0, 1}
        1 = positive (autism on ABIDE).
    score : array of float
        Predicted probability of class 1.
    threshold : float
        Decision threshold on ``score``.

    Returns
    -------
    dict of str to float
        ``auc`` (NaN, with an :class:`UndefinedAUCWarning`, when ``y_true`` holds one class),
        ``accuracy``, ``sensitivity`` and ``specificity`` (NaN when their class is absent).
    """
    y_true = np.asarray(y_true).astype(int)
    score = np.asarray(score, dtype=float)
    if y_true.shape != score.shape or y_true.ndim != 1:
        raise ValueError(f"y_true and score must be 1-D of the same length, got {y_true.shape} and {score.shape}")
    if not np.isfinite(score).all():
        raise ValueError("scores contain NaN or inf")
    pred = (score >= threshold).astype(int)
    tn, fp, fn, tp = confusion_matrix(y_true, pred, labels=[0, 1]).ravel()
    present = np.unique(y_true)
    if len(present) == 2:
        auc = float(roc_auc_score(y_true, score))
    else:
        auc = float("nan")
        warnings.warn(f"AUC is undefined (NaN): the {len(y_true)} evaluated subjects all have label "
                      f"{present.tolist()}; a test part needs both classes (fewer folds, or a larger test part)",
                      UndefinedAUCWarning, stacklevel=2)
    return {
        "auc": auc,
        "accuracy": float(accuracy_score(y_true, pred)),
        "sensitivity": float(tp / (tp + fn)) if tp + fn else float("nan"),
        "specificity": float(tn / (tn + fp)) if tn + fp else float("nan"),
    }


def youden_threshold(y_true: Sequence[int] | np.ndarray, score: Sequence[float] | np.ndarray,
                     default: float = 0.5) -> float:
    """The decision threshold that maximises balanced accuracy (Youden's J = sensitivity + specificity - 1).

    A subject is called positive when ``score >= threshold``; the candidates are the observed scores.
    Among thresholds of equal J the one closest to ``default`` is taken, so J ties never move the threshold
    away from 0.5 needlessly.

    Parameters
    ----------
    y_true : array of {0, 1}
        Labels of the subjects the threshold is chosen on (validation subjects, never test ones).
    score : array of float
        Their predicted probabilities of class 1.
    default : float
        Returned when ``y_true`` holds one class only (J is undefined).

    Returns
    -------
    float
        The threshold.
    """
    y = np.asarray(y_true).astype(int)
    s = np.asarray(score, dtype=float)
    if y.shape != s.shape or y.ndim != 1:
        raise ValueError(f"y_true and score must be 1-D of the same length, got {y.shape} and {s.shape}")
    if not np.isfinite(s).all():
        raise ValueError("scores contain NaN or inf")
    if len(np.unique(y)) < 2:
        return float(default)
    candidates = np.unique(s)
    pos, neg = y == 1, y == 0
    j = np.array([(s[pos] >= t).mean() - (s[neg] >= t).mean() for t in candidates])
    best = np.flatnonzero(np.isclose(j, j.max(), rtol=0.0, atol=1e-12))
    return float(candidates[best[np.argmin(np.abs(candidates[best] - default))]])


def per_group_metrics(y_true: Sequence[int] | np.ndarray, score: Sequence[float] | np.ndarray,
                      groups: Sequence[str] | np.ndarray, threshold: float = 0.5) -> dict[str, dict[str, Any]]:
    """:func:`binary_classification_metrics` per group (e.g. per acquisition site), JSON-ready.

    Parameters
    ----------
    y_true, score : array-like
        Labels in {0, 1} and predicted probabilities of class 1, one entry per prediction.
    groups : array-like of str
        Group of each prediction.
    threshold : float
        Decision threshold on ``score``.

    Returns
    -------
    dict
        ``{group: {"auc", "accuracy", "sensitivity", "specificity", "n", "n_positive"}}`` in sorted group
        order. A metric undefined for a group (the AUC, sensitivity or specificity of a group holding one class)
        is ``None`` (never NaN), and ``"undefined": {metric: reason}`` says why.
    """
    y_true, score, groups = np.asarray(y_true).astype(int), np.asarray(score, dtype=float), np.asarray(groups)
    if not y_true.shape == score.shape == groups.shape or y_true.ndim != 1:
        raise ValueError(f"y_true, score and groups must be 1-D of the same length, got {y_true.shape}, "
                         f"{score.shape} and {groups.shape}")
    out: dict[str, dict[str, Any]] = {}
    for group in sorted({str(g) for g in groups.tolist()}):
        rows = groups.astype(str) == group
        labels = y_true[rows]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UndefinedAUCWarning)
            metrics: dict[str, Any] = binary_classification_metrics(labels, score[rows], threshold)
        n_pos = int(labels.sum())
        reasons = {"auc": f"all {len(labels)} predictions have label {sorted(set(labels.tolist()))}: an AUC needs "
                          "both classes",
                   "sensitivity": "no prediction has label 1", "specificity": "no prediction has label 0"}
        undefined = {k: reason for k, reason in reasons.items() if not np.isfinite(metrics[k])}
        metrics = {k: (None if k in undefined else v) for k, v in metrics.items()}
        out[group] = {**metrics, "n": int(rows.sum()), "n_positive": n_pos}
        if undefined:
            out[group]["undefined"] = undefined
    return out


def roc_points(y_true: Sequence[int] | np.ndarray, score: Sequence[float] | np.ndarray) -> dict[str, list[float]]:
    """False and true positive rates of the ROC curve (for plots)."""
    fpr, tpr, _ = roc_curve(np.asarray(y_true).astype(int), np.asarray(score, dtype=float))
    return {"fpr": fpr.tolist(), "tpr": tpr.tolist()}


def multiclass_metrics(y_true: Sequence[int] | np.ndarray, y_pred: Sequence[int] | np.ndarray,
                       class_names: Sequence[str] | None = None, labels: Sequence[int] | None = None
                       ) -> dict[str, object]:
    """Overall accuracy (OA), average per-class accuracy (AA), Cohen's kappa, per-class accuracy.

    Parameters
    ----------
    y_true, y_pred : array of int
        Class indices.
    class_names : sequence of str, optional
        Names for ``per_class`` (in the order of ``labels``).
    labels : sequence of int, optional
        The classes, default ``0..len(class_names)-1`` or the classes seen.

    Returns
    -------
    dict
        ``oa``, ``aa``, ``kappa`` (floats), ``per_class`` {name: accuracy or NaN when the
        class has no sample}, ``confusion`` (list of lists, rows = true class).
    """
    y_true = np.asarray(y_true).astype(int)
    y_pred = np.asarray(y_pred).astype(int)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true and y_pred differ in shape: {y_true.shape} vs {y_pred.shape}")
    if labels is None:
        labels = list(range(len(class_names))) if class_names is not None else sorted(set(y_true) | set(y_pred))
    labels = list(labels)
    names = list(class_names) if class_names is not None else [str(c) for c in labels]
    if len(names) != len(labels):
        raise ValueError(f"{len(names)} class names for {len(labels)} classes")
    confusion = confusion_matrix(y_true, y_pred, labels=labels)
    support = confusion.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = np.where(support > 0, np.diag(confusion) / np.maximum(support, 1), np.nan)
    return {
        "oa": float(accuracy_score(y_true, y_pred)),
        "aa": float(np.nanmean(per_class)) if np.isfinite(per_class).any() else float("nan"),
        "kappa": float(cohen_kappa_score(y_true, y_pred, labels=labels)),
        "per_class": {name: float(value) for name, value in zip(names, per_class)},
        "confusion": confusion.tolist(),
    }


def retrieval_ranks(similarity: torch.Tensor | np.ndarray) -> np.ndarray:
    """1-based rank of the matching gallery item (the diagonal) for each query row.

    Ties count against the query (the match is ranked after every gallery item scoring at
    least as high), so a constant similarity gives the worst rank, not the best.
    """
    sim = torch.as_tensor(similarity, dtype=torch.float64)
    if sim.dim() != 2 or sim.shape[0] != sim.shape[1]:
        raise ValueError(f"similarity must be a square [queries, gallery] matrix, got {list(sim.shape)}")
    if sim.shape[0] == 0:
        raise ValueError("empty gallery: nothing to retrieve")
    positive = sim.diagonal().unsqueeze(1)
    others = sim.clone()
    others.fill_diagonal_(float("-inf"))
    ranks = (others >= positive).sum(dim=1) + 1
    return ranks.numpy()


def retrieval_metrics(similarity: torch.Tensor | np.ndarray, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Recall@K (fraction of queries whose match ranks within K) and median rank.

    ``similarity[i, j]`` scores query i against gallery item j; item i is the match.
    """
    ranks = retrieval_ranks(similarity)
    out = {f"R@{k}": float((ranks <= k).mean()) for k in ks}
    out["median_rank"] = float(np.median(ranks))
    out["mean_rank"] = float(ranks.mean())
    return out

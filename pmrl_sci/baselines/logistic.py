"""Logistic-regression baseline on vectorised connectivity (scikit-learn).

Features are standardised (statistics of the training subjects only) and an L2 logistic
regression is fitted; its inverse regularisation ``C`` is chosen on the validation split by
AUC, or, without a validation split, by stratified inner cross-validation on the training
subjects (``GridSearchCV``, the scaler refitted inside each fold).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from pmrl_sci.baselines import check_binary_labels, check_splits

__all__ = ["LogisticConfig", "fit_predict_logistic"]


@dataclass
class LogisticConfig:
    """Settings of :func:`fit_predict_logistic`.

    Parameters
    ----------
    c_grid : sequence of float
        Candidate inverse regularisation strengths.
    inner_folds : int
        Folds of the inner cross-validation used when there is no validation split.
    max_iter : int
        Solver iterations.
    refit_on_train_val : bool
        After choosing ``C``, refit on training + validation subjects (default: training only).
    """

    c_grid: Sequence[float] = field(default_factory=lambda: tuple(10.0 ** np.arange(-4, 2)))
    inner_folds: int = 5
    max_iter: int = 2000
    refit_on_train_val: bool = False


def _model(c: float, seed: int, max_iter: int) -> Pipeline:
    return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=max_iter, random_state=seed))


def fit_predict_logistic(features: np.ndarray, labels: np.ndarray, train_idx: np.ndarray,
                         val_idx: np.ndarray | None, test_idx: np.ndarray, seed: int = 0,
                         config: LogisticConfig | None = None, return_info: bool = False
                         ) -> np.ndarray | tuple[np.ndarray, dict]:
    """Fit on the training subjects, choose ``C``, and predict the test subjects.

    Parameters
    ----------
    features : ndarray
        ``[N, P]`` subject features (e.g. :func:`pmrl_sci.baselines.vectorize_connectivity`).
    labels : ndarray
        ``[N]`` binary labels in {0, 1}; only the training (and validation) labels are read.
    train_idx, val_idx, test_idx : ndarray
        Disjoint subject indices; ``val_idx`` may be ``None`` / empty (inner CV is used then).
    seed : int
        Seed of the solver and of the inner CV folds.
    config : LogisticConfig, optional
        Grid and solver settings.
    return_info : bool
        Also return ``{"C": chosen C, "selection": "validation" | "inner_cv", "scores": {C: AUC},
        "val_prob": probabilities of the validation subjects under the final model}`` (for a decision
        threshold chosen on validation).

    Returns
    -------
    ndarray or (ndarray, dict)
        ``[len(test_idx)]`` probabilities of class 1.
    """
    cfg = config or LogisticConfig()
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"features: expected a [subjects, features] matrix, got shape {list(x.shape)}")
    if not np.isfinite(x).all():
        raise ValueError("features: contain NaN or infinite values")
    y = check_binary_labels(labels, x.shape[0])
    split = check_splits(x.shape[0], train_idx=train_idx, val_idx=val_idx, test_idx=test_idx)
    tr, va, te = split["train_idx"], split["val_idx"], split["test_idx"]
    if len(np.unique(y[tr])) < 2:
        raise ValueError("train_idx: the training subjects must contain both classes")
    grid = [float(c) for c in cfg.c_grid]
    if not grid or min(grid) <= 0:
        raise ValueError(f"c_grid: expected positive values, got {grid}")

    if va.size and len(np.unique(y[va])) == 2:
        scores = {}
        for c in grid:
            model = _model(c, seed, cfg.max_iter).fit(x[tr], y[tr])
            scores[c] = float(roc_auc_score(y[va], model.predict_proba(x[va])[:, 1]))
        best_c = max(grid, key=lambda c: (scores[c], -c))  # ties: the stronger regularisation
        selection = "validation"
    else:
        n_folds = min(cfg.inner_folds, int(np.bincount(y[tr]).min()))
        if n_folds < 2:
            raise ValueError("train_idx: inner cross-validation needs at least 2 training subjects per class")
        search = GridSearchCV(_model(grid[0], seed, cfg.max_iter), {"logisticregression__C": grid},
                              scoring="roc_auc", cv=StratifiedKFold(n_folds, shuffle=True, random_state=seed))
        search.fit(x[tr], y[tr])
        scores = {c: float(s) for c, s in zip(grid, search.cv_results_["mean_test_score"])}
        best_c = max(grid, key=lambda c: (scores[c], -c))
        selection = "inner_cv"
    fit_idx = np.concatenate([tr, va]) if cfg.refit_on_train_val and va.size else tr
    model = _model(best_c, seed, cfg.max_iter).fit(x[fit_idx], y[fit_idx])
    prob = model.predict_proba(x[te])[:, 1] if te.size else np.empty(0)
    if return_info:
        val_prob = model.predict_proba(x[va])[:, 1] if va.size else np.empty(0)
        return prob, {"C": best_c, "selection": selection, "scores": scores, "val_prob": val_prob}
    return prob

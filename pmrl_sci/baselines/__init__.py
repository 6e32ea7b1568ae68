"""Non-PMRL baselines of the ABIDE table: logistic regression and a population-graph GCN.

The encoder baselines (BrainNetTF, VanillaTF, BrainNetCNN) live in :mod:`pmrl_sci.encoders`.
Both models here take subject-level feature vectors (e.g. from :func:`vectorize_connectivity`),
binary labels in {0, 1} and index arrays for the train / validation / test splits, and return
probabilities of class 1.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from pmrl_sci.extras import require

if TYPE_CHECKING:  # pragma: no cover
    from pmrl_sci.baselines.logistic import LogisticConfig, fit_predict_logistic
    from pmrl_sci.baselines.population_gcn import (
        PopulationGCNConfig,
        build_population_graph,
        fit_predict_population_gcn,
    )

__all__ = ["LogisticConfig", "PopulationGCNConfig", "build_population_graph", "check_binary_labels",
           "check_splits", "fit_predict_logistic", "fit_predict_population_gcn", "vectorize_connectivity"]

_LAZY = {
    "LogisticConfig": "pmrl_sci.baselines.logistic",
    "fit_predict_logistic": "pmrl_sci.baselines.logistic",
    "PopulationGCNConfig": "pmrl_sci.baselines.population_gcn",
    "build_population_graph": "pmrl_sci.baselines.population_gcn",
    "fit_predict_population_gcn": "pmrl_sci.baselines.population_gcn",
}


def __getattr__(name: str) -> Any:  # lazy: torch_geometric is imported only when the GCN is used
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'pmrl_sci.baselines' has no attribute {name!r}")


def vectorize_connectivity(matrices: np.ndarray) -> np.ndarray:
    """Vectorise symmetric connectivity without the diagonal (nilearn's ``sym_matrix_to_vec``).

    Parameters
    ----------
    matrices : ndarray
        ``[N, R, R]`` or ``[N, C, R, R]`` (channels are vectorised and concatenated).

    Returns
    -------
    ndarray
        ``[N, C * R * (R - 1) / 2]`` float64 features.
    """
    m = np.asarray(matrices, dtype=np.float64)
    if m.ndim not in (3, 4) or m.shape[-1] != m.shape[-2]:
        raise ValueError(f"connectivity: expected [subjects, R, R] or [subjects, channels, R, R] matrices, "
                         f"got shape {list(m.shape)}")
    if not np.isfinite(m).all():
        raise ValueError("connectivity: matrices contain NaN or infinite values (Fisher-z of a correlation of 1? "
                         "set the diagonal to zero before the transform)")
    connectome = require("nilearn.connectome", "neuro", "vectorising connectivity")
    vec = connectome.sym_matrix_to_vec(m, discard_diagonal=True)
    return vec.reshape(m.shape[0], -1)


def check_binary_labels(labels: np.ndarray, n: int) -> np.ndarray:
    """Return ``labels`` as an int64 array of 0/1 of length ``n`` or raise ``ValueError``."""
    y = np.asarray(labels)
    if y.shape != (n,):
        raise ValueError(f"labels: expected shape ({n},) (one per subject), got {y.shape}")
    values = set(np.unique(y).tolist())
    if not values <= {0, 1}:
        raise ValueError(f"labels: expected binary labels in {{0, 1}}, got values {sorted(values)[:10]} "
                         "(map ABIDE DX_GROUP with y = (DX_GROUP == 1) for autism = 1)")
    return y.astype(np.int64)


def check_splits(n: int, **splits: np.ndarray | None) -> dict[str, np.ndarray]:
    """Validate index arrays (in range, disjoint); ``None`` becomes an empty array.

    Parameters
    ----------
    n : int
        Number of subjects.
    **splits
        Named index arrays, e.g. ``train_idx=..., val_idx=..., test_idx=...``.
    """
    out: dict[str, np.ndarray] = {}
    seen: dict[int, str] = {}
    for name, idx in splits.items():
        arr = np.asarray([] if idx is None else idx).astype(np.int64).ravel()
        if arr.size and (arr.min() < 0 or arr.max() >= n):
            raise ValueError(f"{name}: indices must lie in [0, {n}), got range [{arr.min()}, {arr.max()}]")
        if len(np.unique(arr)) != arr.size:
            raise ValueError(f"{name}: contains repeated indices")
        for i in arr.tolist():
            if i in seen:
                raise ValueError(f"{name} and {seen[i]} overlap (subject index {i})")
            seen[i] = name
        out[name] = arr
    return out

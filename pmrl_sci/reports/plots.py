"""Run-folder figures (matplotlib, Agg backend)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from pmrl_sci.runs import RunFolder  # noqa: E402


def plot_roc_curves(run: RunFolder, curves: Sequence[tuple[str, Mapping[str, Any] | None]], name: str = "roc") -> None:
    """ROC curves of the test sets, one line per trial/fold."""
    figure, axis = plt.subplots(figsize=(4.5, 4.5))
    for label, points in curves:
        if points:
            axis.plot(points["fpr"], points["tpr"], lw=1.2, label=label)
    axis.plot([0, 1], [0, 1], ls="--", c="grey", lw=0.8)
    axis.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC (test)", xlim=(0, 1), ylim=(0, 1))
    if len(curves) <= 10:
        axis.legend(fontsize=7, loc="lower right")
    run.save_figure(figure, name)


def plot_singular_values(run: RunFolder, records: Sequence[Mapping[str, Any]], key: str = "val_sigma_mean",
                         name: str = "singular_values") -> None:
    """Mean singular values sigma_1..sigma_k per epoch (validation set), one panel line per value."""
    rows = [r for r in records if r.get(key) is not None]
    figure, axis = plt.subplots(figsize=(5.5, 3.8))
    if rows:
        units = sorted({r.get("unit", "") for r in rows})
        unit = units[0]
        series = [r for r in rows if r.get("unit", "") == unit]
        epochs = [r["epoch"] for r in series]
        values = np.asarray([r[key] for r in series])
        for j in range(values.shape[1]):
            axis.plot(epochs, values[:, j], label=f"sigma_{j + 1}")
        k = values.shape[1]
        axis.axhline(np.sqrt(k), ls="--", c="grey", lw=0.8, label="sqrt(k): full alignment")
        axis.set_title(f"singular values over training ({unit})")
        axis.legend(fontsize=7)
    else:
        axis.text(0.5, 0.5, "fewer than two modalities: no singular values", ha="center", va="center")
    axis.set(xlabel="epoch", ylabel="mean singular value")
    run.save_figure(figure, name)


def plot_recall_heatmap(run: RunFolder, recall: Mapping[str, Mapping[str, float]], modalities: Sequence[str],
                        metric: str = "R@1", name: str = "recall_heatmap") -> Path:
    """A query x gallery heat-map of retrieval ``metric`` (pairs ``"query->gallery"``; diagonal blank), as PNG.

    Parameters
    ----------
    run : RunFolder
        Where ``<name>.png`` goes (written on rank 0 only).
    recall : mapping
        :func:`pmrl_sci.tasks.retrieval_eval.pairwise_recall` (or its mean over seeds).
    modalities : sequence of str
        Row and column order.
    metric : str
        Which recall value to show.
    name : str
        File name without ``.png``.
    """
    k = len(modalities)
    matrix = np.full((k, k), np.nan)
    for i, q in enumerate(modalities):
        for j, g in enumerate(modalities):
            if i != j:
                matrix[i, j] = recall[f"{q}->{g}"][metric]
    figure, axis = plt.subplots(figsize=(1.1 * k + 2, 1.0 * k + 1.5))
    image = axis.imshow(matrix, vmin=0.0, vmax=1.0, cmap="viridis")
    axis.set_xticks(range(k), modalities, rotation=45, ha="right")
    axis.set_yticks(range(k), modalities)
    axis.set_xlabel("gallery")
    axis.set_ylabel("query")
    for i in range(k):
        for j in range(k):
            if i != j:
                axis.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center",
                          color="white" if matrix[i, j] < 0.5 else "black", fontsize=8)
    axis.set_title(f"retrieval {metric}")
    figure.colorbar(image, ax=axis, fraction=0.046)
    return run.save_figure(figure, name)

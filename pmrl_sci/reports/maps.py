"""Figures of a Houston 2013 run: the confusion matrix and the classification map beside the ground truth."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def class_colors(n_classes: int) -> np.ndarray:
    """``[n_classes + 1, 4]`` RGBA colours; row 0 (unlabelled) is white."""
    import matplotlib

    base = matplotlib.colormaps["tab20"](np.linspace(0, 1, 20))
    colors = np.vstack([[1.0, 1.0, 1.0, 1.0], base[np.arange(n_classes) % 20]])
    return colors


def plot_confusion(run: Any, confusion: np.ndarray, class_names: list[str], title: str,
                   name: str = "confusion_matrix") -> Path:
    """Row-normalised confusion matrix (rows = true class) with counts, saved through ``run.save_figure``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    confusion = np.asarray(confusion, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        rates = confusion / confusion.sum(axis=1, keepdims=True)
    n = len(class_names)
    fig, ax = plt.subplots(figsize=(0.55 * n + 3, 0.5 * n + 2))
    image = ax.imshow(np.nan_to_num(rates), cmap="Blues", vmin=0, vmax=1)
    for i in range(n):
        for j in range(n):
            if confusion[i, j]:
                ax.text(j, i, f"{int(confusion[i, j])}", ha="center", va="center", fontsize=6,
                        color="white" if rates[i, j] > 0.5 else "black")
    ax.set_xticks(range(n), class_names, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(n), class_names, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.046, label="fraction of the true class")
    return run.save_figure(fig, name)


def plot_classification_map(run: Any, prediction: np.ndarray, train_labels: np.ndarray, test_labels: np.ndarray,
                            class_names: list[str], title: str, name: str = "classification_map") -> Path:
    """The predicted class of every pixel above the ground truth (training and test pixels)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    n = len(class_names)
    cmap = ListedColormap(class_colors(n))
    ground_truth = np.where(train_labels > 0, train_labels, test_labels)
    rows, cols = prediction.shape
    width = 12.0
    height = max(2.0, 2 * width * rows / cols + 1.5)
    fig, axes = plt.subplots(2, 1, figsize=(width, height))
    for ax, image, label in ((axes[0], prediction + 1, f"prediction ({title})"),
                             (axes[1], ground_truth, "ground truth (training and test pixels)")):
        ax.imshow(image, cmap=cmap, vmin=0, vmax=n, interpolation="nearest")
        ax.set_title(label, fontsize=9)
        ax.set_axis_off()
    handles = [Patch(color=cmap(k + 1), label=class_names[k]) for k in range(n)]
    fig.legend(handles=handles, loc="lower center", ncol=min(n, 8), fontsize=7, frameon=False)
    return run.save_figure(fig, name)

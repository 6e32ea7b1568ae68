"""Seeded noise injection for robustness studies (the paper's Table 10)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np


def add_input_noise(inputs: Mapping[str, np.ndarray], scale: float, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Add Gaussian noise N(0, scale^2) to every modality's (normalised) input features.

    Parameters
    ----------
    inputs : mapping of str to ndarray
        Model inputs per modality (standardised features, Fisher-z connectivity, text embeddings).
    scale : float
        Standard deviation of the noise (>= 0).
    rng : numpy.random.Generator
        Seeded generator (same seed, same noise).
    """
    if scale < 0:
        raise ValueError(f"input noise scale must be >= 0, got {scale}")
    return {name: (value + rng.normal(0.0, scale, size=value.shape)).astype(value.dtype)
            for name, value in inputs.items()}


def flip_labels(labels: np.ndarray, probability: float, rng: np.random.Generator,
                num_classes: int | None = None) -> np.ndarray:
    """Replace each label, with ``probability``, by a different class drawn uniformly.

    For two classes this flips the label. Returns a new array.
    """
    if not 0 <= probability <= 1:
        raise ValueError(f"label-noise probability must be in [0, 1], got {probability}")
    labels = np.asarray(labels).astype(np.int64)
    n_classes = num_classes or int(labels.max()) + 1
    if n_classes < 2:
        return labels.copy()
    flip = rng.random(labels.shape) < probability
    offset = rng.integers(1, n_classes, size=labels.shape)
    return np.where(flip, (labels + offset) % n_classes, labels)

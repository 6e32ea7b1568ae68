"""Small manifests for the retrieval tests: ``*_features`` modalities (.npy files) with labels and splits."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pmrl_sci.data.manifest import write_manifest

FEATURE_MODALITIES = ("a_features", "b_features", "c_features")


def feature_manifest(folder: Path, n_train: int = 48, n_test: int = 16, seed: int = 0,
                     class_weight: float = 0.3, instance_weight: float = 1.0, noise: float = 0.1) -> Path:
    """Three feature modalities, each a fixed linear view of one latent per row plus noise.

    The latent of row i is ``class_weight * centre[i % 4] + instance_weight * N(0, I)``: with the default weights
    the instance part dominates, so each row is recognisable across modalities (an easy retrieval signal).
    """
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((4, 6))
    rows = []
    for i in range(n_train + n_test):
        label = i % 4
        latent = class_weight * centres[label] + instance_weight * rng.standard_normal(6)
        row = {"id": f"r{i}", "label": f"c{label}", "split": "train" if i < n_train else "test"}
        for j, name in enumerate(FEATURE_MODALITIES):
            mixing = np.random.default_rng(100 + j).standard_normal((6, 5 + j))
            path = folder / name / f"{i:03d}.npy"
            path.parent.mkdir(parents=True, exist_ok=True)
            np.save(path, (latent @ mixing + noise * rng.standard_normal(5 + j)).astype(np.float32))
            row[name] = str(path.relative_to(folder))
        rows.append(row)
    return write_manifest(rows, folder / "manifest.jsonl")

"""Standardisation, splits and on-the-fly patch extraction for the Houston 2013 scene.

Patches are cut when a batch is asked for, with reflect padding at the scene border (the same convention as
``numpy.pad(mode="reflect")``: the edge pixel is not repeated); no array of every patch is ever built.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler

from pmrl_sci.data.houston13.readers import Houston13Scene


@dataclass
class BandStats:
    """Per-band mean and standard deviation (float64) fitted on training pixels."""

    hsi_mean: np.ndarray
    hsi_std: np.ndarray
    lidar_mean: np.ndarray
    lidar_std: np.ndarray


def fit_band_stats(scene: Houston13Scene, fit_mask: np.ndarray | None = None) -> BandStats:
    """Fit per-band statistics on the pixels of ``fit_mask`` (default: the training pixels), nodata excluded."""
    mask = (scene.train_labels > 0) if fit_mask is None else np.asarray(fit_mask, dtype=bool)
    mask = mask & ~scene.nodata_mask
    if not mask.any():
        raise ValueError("no valid training pixel to fit the band statistics on (all are nodata)")

    def stats(cube: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        values = cube[:, mask].astype(np.float64)
        std = values.std(axis=1)
        return values.mean(axis=1), np.where(std > 1e-12, std, 1.0)

    hsi_mean, hsi_std = stats(scene.hsi)
    lidar_mean, lidar_std = stats(scene.lidar)
    return BandStats(hsi_mean, hsi_std, lidar_mean, lidar_std)


def standardize_scene(scene: Houston13Scene, stats: BandStats) -> tuple[np.ndarray, np.ndarray]:
    """Standardise both rasters band by band; nodata pixels are set to 0 (the training mean).

    Returns
    -------
    hsi, lidar : np.ndarray
        float32 ``[bands, rows, cols]`` and ``[1, rows, cols]``.
    """

    def apply(cube: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
        out = np.empty(cube.shape, dtype=np.float32)
        for band in range(cube.shape[0]):  # band by band keeps the float64 temporaries small
            out[band] = ((cube[band] - mean[band]) / std[band]).astype(np.float32)
        out[:, scene.nodata_mask] = 0.0
        return out

    return apply(scene.hsi, stats.hsi_mean, stats.hsi_std), apply(scene.lidar, stats.lidar_mean, stats.lidar_std)


def reflect_indices(centres: np.ndarray, half: int, size: int) -> np.ndarray:
    """Indices ``centre - half .. centre + half`` reflected into ``[0, size)`` (``[n, 2 * half + 1]``).

    Matches ``numpy.pad(mode="reflect")``: index ``-1`` maps to ``1`` and ``size`` to ``size - 2``.
    """
    if half >= size:
        raise ValueError(f"patch half-width {half} must be smaller than the scene side {size} for reflect padding")
    idx = np.asarray(centres, dtype=np.int64)[:, None] + np.arange(-half, half + 1)[None, :]
    idx = np.abs(idx)
    return np.where(idx >= size, 2 * (size - 1) - idx, idx)


def extract_patches(cube: np.ndarray, rows: np.ndarray, cols: np.ndarray, patch_size: int) -> np.ndarray:
    """Cut ``[n, bands, patch_size, patch_size]`` patches centred on ``(rows, cols)`` with reflect padding."""
    if patch_size < 1 or patch_size % 2 == 0:
        raise ValueError(f"patch_size must be a positive odd number, got {patch_size}")
    half = patch_size // 2
    r = reflect_indices(rows, half, cube.shape[1])
    c = reflect_indices(cols, half, cube.shape[2])
    patches = cube[:, r[:, :, None], c[:, None, :]]  # [bands, n, p, p]
    return np.ascontiguousarray(np.moveaxis(patches, 0, 1))


class PatchDataset(Dataset):
    """Patches of the standardised scene around chosen pixels, cut on demand.

    ``dataset[i]`` gives one sample and ``dataset[[i, j, ...]]`` a whole batch at once (vectorised); use
    :func:`patch_loader`, which feeds index batches, for speed.

    Parameters
    ----------
    hsi, lidar : np.ndarray
        Standardised ``[bands, rows, cols]`` and ``[1, rows, cols]`` float32.
    rows, cols : np.ndarray
        Pixel coordinates (0-based) of the samples.
    labels : np.ndarray, optional
        Class indices ``0..n-1`` of the samples (omitted for unlabelled inference).
    patch_size : int
        Odd patch side.
    """

    def __init__(self, hsi: np.ndarray, lidar: np.ndarray, rows: np.ndarray, cols: np.ndarray,
                 labels: np.ndarray | None = None, patch_size: int = 11) -> None:
        if hsi.shape[1:] != lidar.shape[1:]:
            raise ValueError(f"HSI grid {hsi.shape[1:]} and LiDAR grid {lidar.shape[1:]} differ")
        self.hsi, self.lidar = hsi, lidar
        self.rows = np.asarray(rows, dtype=np.int64)
        self.cols = np.asarray(cols, dtype=np.int64)
        self.labels = None if labels is None else np.asarray(labels, dtype=np.int64)
        self.patch_size = int(patch_size)
        if patch_size < 1 or patch_size % 2 == 0:
            raise ValueError(f"patch_size must be a positive odd number, got {patch_size}")

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int | Sequence[int] | np.ndarray) -> dict[str, torch.Tensor]:
        single = np.isscalar(index)
        idx = np.atleast_1d(np.asarray(index, dtype=np.int64))
        rows, cols = self.rows[idx], self.cols[idx]
        batch = {
            "hsi": torch.from_numpy(extract_patches(self.hsi, rows, cols, self.patch_size)),
            "lidar": torch.from_numpy(extract_patches(self.lidar, rows, cols, self.patch_size)),
            "index": torch.from_numpy(idx),
        }
        if self.labels is not None:
            batch["target"] = torch.from_numpy(self.labels[idx])
        if single:
            return {key: value[0] for key, value in batch.items()}
        return batch


def patch_loader(dataset: PatchDataset, batch_size: int, shuffle: bool = False,
                 generator: torch.Generator | None = None, drop_last: bool = False) -> DataLoader:
    """A DataLoader handing whole index batches to :class:`PatchDataset` (one vectorised cut per batch)."""
    sampler = RandomSampler(dataset, generator=generator) if shuffle else SequentialSampler(dataset)
    return DataLoader(dataset, sampler=BatchSampler(sampler, batch_size, drop_last=drop_last), batch_size=None)


def labelled_pixels(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(rows, cols, class index 0..n-1)`` of the labelled pixels of a label raster, in row-major order."""
    rows, cols = np.nonzero(labels > 0)
    return rows, cols, labels[rows, cols] - 1


def stratified_validation_split(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split sample indices into (fit, validation) keeping class proportions (scikit-learn).

    Every class keeps at least one fitting sample; classes with a single sample stay out of validation.
    """
    from sklearn.model_selection import train_test_split

    y = np.asarray(y)
    index = np.arange(len(y))
    if fraction <= 0:
        return index, index[:0]
    classes, counts = np.unique(y, return_counts=True)
    rare = np.isin(y, classes[counts < 2])
    fit, val = train_test_split(index[~rare], test_size=fraction, stratify=y[~rare], random_state=seed)
    return np.sort(np.concatenate([fit, index[rare]])), np.sort(val)

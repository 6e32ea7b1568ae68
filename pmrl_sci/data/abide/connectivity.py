"""Functional connectivity from ROI time series: Pearson and partial correlation, Fisher z.

Dead-ROI policy
---------------
In real ABIDE about a quarter of the quality-checked subjects have at least one ROI whose
time series is all zeros (the ROI fell outside the subject's field of view or brain mask).
Its correlation is undefined (0 / 0) and would turn into NaN, and a singular covariance
spoils the partial correlation of every other ROI. The kit's policy:

* a ROI is *dead* when its time series has (numerically) zero variance: all zeros, or
  constant non-zero (reported separately);
* Pearson and partial correlation are computed on the live ROIs only (with nilearn's
  ``ConnectivityMeasure``) and embedded back into the full ``R x R`` matrix;
* dead ROIs get all-zero rows and columns (zero is "no connection" and the mean of the
  Fisher-z distribution under no coupling), and the diagonal is zero for every ROI;
* a subject with fewer than two live ROIs gets all-zero matrices and is flagged.

The result is checked to be finite; counts per subject and in total go in the report.

Estimators: ``"correlation"`` is the exact Pearson correlation (empirical covariance of the
z-scored series); ``"partial correlation"`` uses nilearn's default Ledoit-Wolf shrinkage
covariance of the z-scored series, which stays invertible when time points are fewer than ROIs
(ABIDE has 78..316 time points for 200 ROIs with CC200).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from nilearn.connectome import ConnectivityMeasure
from sklearn.covariance import EmpiricalCovariance, LedoitWolf
from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

KINDS: tuple[str, ...] = ("correlation", "partial correlation")
FISHER_CLIP = 1.0 - 1e-6  # |r| is clipped here before arctanh: |z| <= 7.25
DEAD_ROI_POLICY = ("ROIs with zero variance (all-zero or constant) get zero connectivity rows and columns; "
                   "Pearson and partial correlation are computed on the live ROIs and embedded back; "
                   "diagonal set to zero")


def dead_roi_masks(timeseries: np.ndarray, rtol: float = 1e-10) -> tuple[np.ndarray, np.ndarray]:
    """Boolean masks ``(all_zero, constant_nonzero)`` over the ROI columns of ``[T, R]``.

    A column is constant when its standard deviation is at most ``rtol`` times the largest
    absolute value of the subject's series (scale-free, robust to float noise).
    """
    ts = np.asarray(timeseries, dtype=np.float64)
    if ts.ndim != 2:
        raise ValueError(f"expected a [time, rois] array, got shape {ts.shape}")
    scale = max(float(np.max(np.abs(ts))) if ts.size else 0.0, 1e-300)
    all_zero = np.all(ts == 0, axis=0)
    constant = (ts.std(axis=0) <= rtol * scale) & ~all_zero
    return all_zero, constant


def fisher_z(r: np.ndarray, clip: float = FISHER_CLIP) -> np.ndarray:
    """``arctanh`` of correlations clipped to ``[-clip, clip]`` (finite everywhere)."""
    return np.arctanh(np.clip(r, -clip, clip))


def _measure(kind: str) -> ConnectivityMeasure:
    if kind == "correlation":
        return ConnectivityMeasure(kind="correlation", cov_estimator=EmpiricalCovariance(), standardize=False)
    if kind == "partial correlation":
        return ConnectivityMeasure(kind="partial correlation", cov_estimator=LedoitWolf(store_precision=False),
                                   standardize=False)
    raise ValueError(f"unknown connectivity kind {kind!r}; expected one of {list(KINDS)}")


def _zscore(ts: np.ndarray) -> np.ndarray:
    centred = ts - ts.mean(axis=0)
    return centred / centred.std(axis=0, ddof=1)


def compute_connectivity(timeseries: Sequence[np.ndarray], subject_ids: Sequence[str] | None = None, *,
                         kinds: Sequence[str] = KINDS, fisher: bool = True, progress: bool = False,
                         blas_threads: int | None = 1) -> tuple[np.ndarray, dict[str, Any]]:
    """Per-subject connectivity matrices ``[N, len(kinds), R, R]`` (float32) and a report.

    Parameters
    ----------
    timeseries : sequence of ndarray
        One ``[T_i, R]`` array per subject (``T_i`` may differ, ``R`` may not).
    subject_ids : sequence of str, optional
        Names used in the report (default ``"0"``, ``"1"``, ...).
    kinds : sequence of str
        Channels, in order; from ``"correlation"`` and ``"partial correlation"``.
    fisher : bool
        Apply the Fisher z-transform (:func:`fisher_z`).
    progress : bool
        Show a tqdm bar over subjects.
    blas_threads : int or None
        BLAS threads while computing (1: per-subject matrices are small, and threads
        oversubscribe shared machines; None leaves the setting alone).

    Returns
    -------
    matrices : ndarray
        ``[N, C, R, R]`` float32, symmetric, zero diagonal, finite.
    report : dict
        ``policy``; ``n_subjects``; ``n_subjects_with_zero_rois``; ``zero_roi_counts``
        (subject -> number of all-zero ROIs, only subjects with some); ``total_zero_rois``;
        the same three for constant non-zero ROIs (``constant_*``); ``zero_rois`` (subject ->
        ROI indices); ``too_few_live_rois`` (subjects with fewer than two live ROIs).

    Raises
    ------
    ValueError
        On an unknown kind, a non-2-D series, ROI counts that differ between subjects,
        or fewer than 3 time points.
    """
    kinds = list(kinds)
    for kind in kinds:
        _measure(kind)  # validates the name
    series = [np.asarray(ts, dtype=np.float64) for ts in timeseries]
    ids = [str(s) for s in (subject_ids if subject_ids is not None else range(len(series)))]
    if len(ids) != len(series):
        raise ValueError(f"{len(ids)} subject ids for {len(series)} time series")
    n_rois = None
    for sid, ts in zip(ids, series):
        if ts.ndim != 2:
            raise ValueError(f"subject {sid}: expected a [time, rois] array, got shape {ts.shape}")
        if n_rois is None:
            n_rois = ts.shape[1]
        elif ts.shape[1] != n_rois:
            raise ValueError(f"subject {sid}: {ts.shape[1]} ROIs, expected {n_rois} like the other subjects")
        if ts.shape[0] < 3:
            raise ValueError(f"subject {sid}: {ts.shape[0]} time points, at least 3 needed for correlations")
        if not np.all(np.isfinite(ts)):
            raise ValueError(f"subject {sid}: the time series holds NaN or infinite values")
    n_rois = n_rois or 0
    out = np.zeros((len(series), len(kinds), n_rois, n_rois), dtype=np.float32)
    report: dict[str, Any] = {"policy": DEAD_ROI_POLICY, "n_subjects": len(series), "zero_roi_counts": {},
                              "constant_roi_counts": {}, "zero_rois": {}, "constant_rois": {},
                              "too_few_live_rois": []}
    with threadpool_limits(limits=blas_threads):  # R x R matrices: threads only add overhead and contention
        for i, (sid, ts) in enumerate(tqdm(list(zip(ids, series)), desc="connectivity", unit="subject",
                                           disable=not progress)):
            _subject_connectivity(ts, sid, kinds, fisher, out[i], report)
    if not np.all(np.isfinite(out)):  # pragma: no cover - guarded by the policy above
        raise RuntimeError("connectivity produced non-finite values despite the dead-ROI policy")
    for name in ("zero", "constant"):
        counts = report[f"{name}_roi_counts"]
        report[f"n_subjects_with_{name}_rois"] = len(counts)
        report[f"total_{name}_rois"] = int(sum(counts.values()))
    return out, report


def _subject_connectivity(ts: np.ndarray, sid: str, kinds: list[str], fisher: bool, out: np.ndarray,
                          report: dict[str, Any]) -> None:
    """Fill ``out`` ``[C, R, R]`` for one subject under the dead-ROI policy; record its dead ROIs."""
    zero, constant = dead_roi_masks(ts)
    if zero.any():
        report["zero_roi_counts"][sid] = int(zero.sum())
        report["zero_rois"][sid] = np.flatnonzero(zero).tolist()
    if constant.any():
        report["constant_roi_counts"][sid] = int(constant.sum())
        report["constant_rois"][sid] = np.flatnonzero(constant).tolist()
    live = np.flatnonzero(~(zero | constant))
    if live.size < 2:
        report["too_few_live_rois"].append(sid)
        return
    standardized = _zscore(ts[:, live])
    block = np.ix_(live, live)
    for c, kind in enumerate(kinds):
        matrix = _measure(kind).fit_transform([standardized])[0]  # fresh: live-ROI counts vary
        matrix = 0.5 * (matrix + matrix.T)
        if fisher:
            matrix = fisher_z(matrix)
        np.fill_diagonal(matrix, 0.0)
        out[c][block] = matrix


def window_correlation(timeseries: np.ndarray, start: int, length: int, fisher: bool = True) -> np.ndarray:
    """Pearson connectivity ``[R, R]`` (float32) of the time points ``start .. start + length - 1``.

    The same estimator and dead-ROI policy as the ``"correlation"`` channel of :func:`compute_connectivity`
    (a ROI constant within the window gets a zero row and column), computed directly with NumPy: it is called
    once per training subject and epoch by window-crop augmentation (``--fmri-crop``), where building a
    ``ConnectivityMeasure`` each time would dominate. On the whole series it equals that channel.

    Parameters
    ----------
    timeseries : ndarray
        ``[T, R]`` ROI time series.
    start, length : int
        The window; ``0 <= start`` and ``start + length <= T``, ``length >= 3``.
    fisher : bool
        Apply the Fisher z-transform (:func:`fisher_z`).
    """
    n_time = timeseries.shape[0]
    if length < 3 or start < 0 or start + length > n_time:
        raise ValueError(f"window [{start}, {start + length}) must lie in [0, {n_time}) with at least 3 time points")
    window = np.asarray(timeseries[start:start + length], dtype=np.float64)
    zero, constant = dead_roi_masks(window)
    live = np.flatnonzero(~(zero | constant))
    out = np.zeros((timeseries.shape[1],) * 2, dtype=np.float32)
    if live.size < 2:
        return out
    standardized = _zscore(window[:, live])
    matrix = standardized.T @ standardized / (length - 1)
    matrix = 0.5 * (matrix + matrix.T)
    if fisher:
        matrix = fisher_z(matrix)
    np.fill_diagonal(matrix, 0.0)
    out[np.ix_(live, live)] = matrix
    return out

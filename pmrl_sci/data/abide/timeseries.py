"""ABIDE Preprocessed ROI time series (``<FILE_ID>_rois_<atlas>.1D``): atlases, file discovery, reading.

A ``.1D`` file has a first line starting with ``#`` that holds the ROI labels, then one
tab-separated row per time point (78 to 316 of them in ABIDE, depending on the site).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

#: PCP ROI derivative -> number of ROI columns in its ``.1D`` files (CC400 ships 392 regions,
#: Dosenbach's 160 coordinates come as 161 columns, Harvard-Oxford as 111).
ATLAS_ROIS: dict[str, int] = {
    "aal": 116,
    "cc200": 200,
    "cc400": 392,
    "dosenbach160": 161,
    "ez": 116,
    "ho": 111,
    "tt": 97,
}
PIPELINES: tuple[str, ...] = ("cpac", "css", "dparsf", "niak")
STRATEGIES: tuple[str, ...] = ("filt_global", "filt_noglobal", "nofilt_global", "nofilt_noglobal")
DEFAULT_MIN_TIMEPOINTS = 10


def check_atlas(atlas: str) -> str:
    """Return the atlas key (``"rois_cc200"`` and ``"CC200"`` both give ``"cc200"``).

    Raises
    ------
    ValueError
        For an unknown atlas, listing the known ones.
    """
    key = str(atlas).strip().lower()
    key = key.removeprefix("rois_")
    if key not in ATLAS_ROIS:
        known = ", ".join(f"{name} ({count} ROIs)" for name, count in ATLAS_ROIS.items())
        raise ValueError(f"unknown ABIDE atlas {atlas!r}; known atlases: {known}")
    return key


def roi_filename(file_id: str, atlas: str) -> str:
    """The PCP file name of a subject's ROI time series, ``<FILE_ID>_rois_<atlas>.1D``."""
    return f"{file_id}_rois_{check_atlas(atlas)}.1D"


def strategy_dir_candidates(data_dir: str | os.PathLike[str], pipeline: str = "cpac",
                            strategy: str = "filt_noglobal") -> list[Path]:
    """Folders that may hold the ROI files, most specific first.

    ``<root>/ABIDE_pcp/<pipeline>/<strategy>`` (nilearn), ``<root>/Outputs/<pipeline>/<strategy>``
    (the S3 tree), ``<root>/<pipeline>/<strategy>`` (root is ``ABIDE_pcp``), and ``<root>`` itself
    (root is the strategy folder).
    """
    root = Path(data_dir)
    return [root / "ABIDE_pcp" / pipeline / strategy, root / "Outputs" / pipeline / strategy,
            root / pipeline / strategy, root]


def find_roi_files(data_dir: str | os.PathLike[str], atlas: str, pipeline: str = "cpac",
                   strategy: str = "filt_noglobal") -> dict[str, Path]:
    """Map ``FILE_ID`` -> ``.1D`` path for every subject file found.

    Three layouts are accepted inside the strategy folder (and may be mixed): flat
    (``<FILE_ID>_rois_<atlas>.1D``, nilearn's cache), a ``rois_<atlas>/`` sub-folder (the
    S3 / download-script layout) and one folder per subject (``<SUB_ID>/<FILE_ID>_rois_<atlas>.1D``).

    Parameters
    ----------
    data_dir : path-like
        The root holding ``ABIDE_pcp/<pipeline>/<strategy>/``, or the strategy folder itself.
    atlas : str
        A key of :data:`ATLAS_ROIS`.
    pipeline, strategy : str
        PCP pipeline and noise-removal strategy.

    Returns
    -------
    dict
        Sorted by ``FILE_ID``; empty when the folder exists but holds no file of this atlas.

    Raises
    ------
    FileNotFoundError
        When no candidate folder exists (the message lists where it looked).
    ValueError
        For an unknown atlas, or when two files claim the same ``FILE_ID``.
    """
    atlas = check_atlas(atlas)
    candidates = strategy_dir_candidates(data_dir, pipeline, strategy)
    existing = [c for c in candidates if c.is_dir()]
    if not existing:
        raise FileNotFoundError(f"ABIDE data folder not found: {Path(data_dir)} (looked for "
                                f"{', '.join(str(c) for c in candidates)})")
    suffix = f"_rois_{atlas}.1D"
    for folder in existing:
        found: dict[str, Path] = {}
        patterns = (f"*{suffix}", f"rois_{atlas}/*{suffix}", f"*/*{suffix}")
        for pattern in patterns:
            for path in sorted(folder.glob(pattern)):
                if not path.is_file():
                    continue
                file_id = path.name[: -len(suffix)]
                if not file_id:
                    continue
                if file_id in found and found[file_id] != path:
                    raise ValueError(f"two ROI files for FILE_ID {file_id!r}: {found[file_id]} and {path}; "
                                     "keep one layout per subject")
                found[file_id] = path
        if found:
            return dict(sorted(found.items()))
    return {}


def read_roi_timeseries(path: str | os.PathLike[str], n_rois: int | None = None,
                        min_timepoints: int = DEFAULT_MIN_TIMEPOINTS) -> np.ndarray:
    """Read one ``.1D`` file as ``[T, R]`` float64.

    Parameters
    ----------
    path : path-like
        The file.
    n_rois : int, optional
        Expected number of ROI columns (``ATLAS_ROIS[atlas]``); checked when given.
    min_timepoints : int
        Fewest rows accepted.

    Raises
    ------
    ValueError
        Naming the file (and line) for a row with a different number of values (truncated
        or ragged), a non-numeric or non-finite cell, a ROI count other than ``n_rois``,
        or fewer than ``min_timepoints`` rows.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8", errors="strict")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not a text .1D file ({exc})") from exc
    lines = text.splitlines()
    rows: list[np.ndarray] = []
    width: int | None = None
    for number, line in enumerate(lines, start=1):
        stripped = line.strip()
        if not stripped:
            continue
        if stripped.startswith("#"):  # the ROI-label header (or a comment)
            continue
        cells = stripped.split()
        if width is None:
            width = len(cells)
        elif len(cells) != width:
            raise ValueError(f"{path}: line {number} has {len(cells)} values, expected {width} "
                             "(truncated or ragged row)")
        try:
            values = np.array(cells, dtype=np.float64)
        except ValueError:
            bad = next(cell for cell in cells if not _is_float(cell))
            column = cells.index(bad) + 1
            raise ValueError(f"{path}: line {number}, column {column}: non-numeric value {bad!r}") from None
        if not np.all(np.isfinite(values)):
            column = int(np.flatnonzero(~np.isfinite(values))[0]) + 1
            raise ValueError(f"{path}: line {number}, column {column}: non-finite value {cells[column - 1]!r}")
        rows.append(values)
    if not rows:
        raise ValueError(f"{path}: no time points (an empty or header-only .1D file)")
    data = np.vstack(rows)
    if n_rois is not None and data.shape[1] != n_rois:
        raise ValueError(f"{path}: {data.shape[1]} ROI columns, expected {n_rois} for this atlas "
                         "(wrong atlas or a damaged file)")
    if data.shape[0] < min_timepoints:
        raise ValueError(f"{path}: only {data.shape[0]} time points, at least {min_timepoints} needed")
    return data


def _is_float(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True

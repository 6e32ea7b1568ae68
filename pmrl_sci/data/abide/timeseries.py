"""ABIDE Preprocessed ROI time series (``<FILE_ID>_rois_<atlas>.1D``): atlases, file discovery, reading.

A ``.1D`` file has a first line starting with ``#`` that holds the ROI labels, then one
tab-separated row per time point (78 to 316 of them in ABIDE, depending on the site).
"""

from __future__ import annotations

import filecmp
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pmrl_sci.errors import InputError

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
    InputError
        For an unknown atlas, listing the known ones.
    """
    key = str(atlas).strip().lower()
    key = key.removeprefix("rois_")
    if key not in ATLAS_ROIS:
        known = ", ".join(f"{name} ({count} ROIs)" for name, count in ATLAS_ROIS.items())
        raise InputError(f"unknown ABIDE atlas {atlas!r}; known atlases: {known}")
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


@dataclass
class RoiFileScan:
    """The ROI files of one atlas found under a data folder.

    Attributes
    ----------
    files : dict of str to pathlib.Path
        ``FILE_ID`` -> the file read, sorted by ``FILE_ID``.
    duplicates : dict of str to list of pathlib.Path
        ``FILE_ID`` -> byte-identical copies of ``files[FILE_ID]`` found in another layout (the public
        ABIDE copy has every subject in a ``<SUB_ID>/`` folder and some also flat); they are not read.
    folder : pathlib.Path or None
        The strategy folder the files were found in (None when none held a file).
    """

    files: dict[str, Path]
    duplicates: dict[str, list[Path]] = field(default_factory=dict)
    folder: Path | None = None

    @property
    def n_duplicates(self) -> int:
        """How many identical extra copies were skipped."""
        return sum(len(paths) for paths in self.duplicates.values())


def roi_file_patterns(atlas: str) -> tuple[str, str, str]:
    """Glob patterns, inside a strategy folder, of the three ROI-file layouts in the order they are read: flat,
    ``rois_<atlas>/`` and one folder per subject (``atlas`` may be ``*`` for every atlas)."""
    suffix = f"_rois_{atlas}.1D"
    return f"*{suffix}", f"rois_{atlas}/*{suffix}", f"*/*{suffix}"


def scan_roi_files(data_dir: str | os.PathLike[str], atlas: str, pipeline: str = "cpac",
                   strategy: str = "filt_noglobal") -> RoiFileScan:
    """Find every subject's ``.1D`` file of ``atlas``, keeping one of each set of identical copies.

    Three layouts are accepted inside the strategy folder (and may be mixed): flat
    (``<FILE_ID>_rois_<atlas>.1D``, nilearn's cache), a ``rois_<atlas>/`` sub-folder (the
    S3 / download-script layout) and one folder per subject (``<SUB_ID>/<FILE_ID>_rois_<atlas>.1D``).
    When a ``FILE_ID`` has files in several layouts, byte-identical copies are deduplicated (the
    first in the order flat, ``rois_<atlas>/``, per-subject is read; the others are listed in
    :attr:`RoiFileScan.duplicates`); copies whose contents differ are an error.

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
    RoiFileScan
        ``files`` is empty when the folders exist but hold no file of this atlas.

    Raises
    ------
    FileNotFoundError
        When no candidate folder exists (the message lists where it looked).
    InputError
        For an unknown atlas, or when two files of one ``FILE_ID`` differ (naming both paths).
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
        duplicates: dict[str, list[Path]] = {}
        for pattern in roi_file_patterns(atlas):
            for path in sorted(folder.glob(pattern)):
                file_id = path.name[: -len(suffix)]
                if not file_id or not path.is_file():
                    continue
                kept = found.get(file_id)
                if kept is None:
                    found[file_id] = path
                elif kept != path and path not in duplicates.get(file_id, []):
                    if not filecmp.cmp(kept, path, shallow=False):
                        raise InputError(f"two different ROI files for FILE_ID {file_id!r}: {kept} and {path} "
                                         "(their contents differ); keep the right one and remove the other")
                    duplicates.setdefault(file_id, []).append(path)
        if found:
            return RoiFileScan(dict(sorted(found.items())), dict(sorted(duplicates.items())), folder)
    return RoiFileScan({})


def atlases_found(data_dir: str | os.PathLike[str], pipeline: str = "cpac",
                  strategy: str = "filt_noglobal") -> list[str]:
    """The known atlases (keys of :data:`ATLAS_ROIS`) that have at least one ``.1D`` file in the folders
    :func:`scan_roi_files` searches, in any of its layouts; sorted, empty when none (or no folder) is found."""
    found: set[str] = set()
    for folder in (c for c in strategy_dir_candidates(data_dir, pipeline, strategy) if c.is_dir()):
        for pattern in roi_file_patterns("*"):
            for path in folder.glob(pattern):
                key = path.name.rsplit("_rois_", 1)[1][: -len(".1D")]
                if key in ATLAS_ROIS:
                    found.add(key)
    return sorted(found)


def find_roi_files(data_dir: str | os.PathLike[str], atlas: str, pipeline: str = "cpac",
                   strategy: str = "filt_noglobal") -> dict[str, Path]:
    """Map ``FILE_ID`` -> ``.1D`` path for every subject file found (see :func:`scan_roi_files`).

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
        Sorted by ``FILE_ID``; identical copies in other layouts are left out; empty when the folder
        exists but holds no file of this atlas.

    Raises
    ------
    FileNotFoundError
        When no candidate folder exists.
    InputError
        For an unknown atlas, or when two files claim the same ``FILE_ID`` with different contents.
    """
    return scan_roi_files(data_dir, atlas, pipeline, strategy).files


def read_roi_timeseries(path: str | os.PathLike[str], n_rois: int | None = None,
                        min_timepoints: int = DEFAULT_MIN_TIMEPOINTS) -> np.ndarray:
    """Read one ``.1D`` file as ``[T, R]`` float64.

    A cut file (an interrupted download or copy) is refused: every row must have as many values
    as the ``#`` label header names (as the first row when there is no such header), and the
    last row must end with a newline as every complete ``.1D`` file does, since a file cut inside
    its last number still has the right number of values.

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
    InputError
        Naming the file (and line, column) for an unreadable or non-text file, a row with a different
        number of values than the header or the first row (truncated or ragged), a last row without
        its newline (a cut file), a non-numeric or non-finite cell, a ROI count other than ``n_rois``,
        or fewer than ``min_timepoints`` rows.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8", errors="strict")
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not a text .1D file ({exc})") from exc
    except OSError as exc:
        raise InputError(f"{path}: cannot read the .1D file: {exc.strerror or exc}") from exc
    lines = text.splitlines()
    cells: list[str] = []  # every value, row after row (converted at once: 2x faster than row by row)
    line_numbers: list[int] = []
    width: int | None = None
    width_from = ""
    for number, line in enumerate(lines, start=1):
        row = line.split()
        if not row:
            continue
        if row[0].startswith("#"):  # the ROI-label header (or a comment)
            if width is None and not line_numbers and len(row) > 1 and all(cell.startswith("#") for cell in row):
                width, width_from = len(row), f"the {len(row)} ROI labels of the header"
            continue
        if width is None:
            width, width_from = len(row), f"{len(row)} in the first row"
        elif len(row) != width:
            cut = " (a cut file: the last line is incomplete)" if number == len(lines) else " (a ragged row)"
            raise InputError(f"{path}: line {number} has {len(row)} values, expected {width} as "
                             f"{width_from}{cut}")
        cells.extend(row)
        line_numbers.append(number)
    if not line_numbers:
        raise InputError(f"{path}: no time points (an empty or header-only .1D file)")
    try:
        data = np.array(cells, dtype=np.float64).reshape(len(line_numbers), -1)
    except ValueError:
        at = next(i for i, cell in enumerate(cells) if not _is_float(cell))
        raise InputError(f"{path}: line {line_numbers[at // width]}, column {at % width + 1}: non-numeric value "
                         f"{cells[at]!r}") from None
    finite = np.isfinite(data)
    if not finite.all():
        row_at, column = (int(v[0]) for v in np.nonzero(~finite))
        raise InputError(f"{path}: line {line_numbers[row_at]}, column {column + 1}: non-finite value "
                         f"{cells[row_at * width + column]!r}")
    if line_numbers[-1] == len(lines) and not text.endswith(("\n", "\r")):
        raise InputError(f"{path}: line {line_numbers[-1]} (the last time point) does not end with a newline: the "
                         "file looks cut (an interrupted download or copy); get a complete copy of the file")
    if n_rois is not None and data.shape[1] != n_rois:
        raise InputError(f"{path}: {data.shape[1]} ROI columns, expected {n_rois} for this atlas "
                         "(wrong atlas or a damaged file)")
    if data.shape[0] < min_timepoints:
        raise InputError(f"{path}: only {data.shape[0]} time points, at least {min_timepoints} needed")
    return data


def _is_float(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True

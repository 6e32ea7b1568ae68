"""Readers for the 2013 IEEE GRSS Data Fusion Contest (Houston 2013) release and its common re-packagings.

Accepted forms, looked up in one directory by :func:`find_houston13_files`:

* rasters: ``2013_IEEE_GRSS_DF_Contest_CASI.tif`` (144 bands) and ``2013_IEEE_GRSS_DF_Contest_LiDAR.tif``
  (one band, the DSM), or the MATLAB files ``HSI.mat`` / ``LiDAR.mat``;
* ground truth: the ENVI ASCII ROI exports ``2013_IEEE_GRSS_DF_Contest_Samples_TR.txt`` / ``..._VA.txt``, label
  GeoTIFFs (``..._Samples_TR.tif`` / ``..._VA.tif``, ``TRLabel.tif`` / ``TSLabel.tif``; 0 = unlabelled) or the
  MATLAB files ``TRLabel.mat`` / ``TSLabel.mat``.

Every reader raises an error naming the file, the field and what was expected.
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pmrl_sci.errors import InputError
from pmrl_sci.extras import require

HOUSTON13_CLASSES: tuple[str, ...] = (
    "Healthy grass", "Stressed grass", "Synthetic grass", "Trees", "Soil", "Water", "Residential", "Commercial",
    "Road", "Highway", "Railway", "Parking Lot 1", "Parking Lot 2", "Tennis Court", "Running Track",
)
HOUSTON13_BANDS = 144
HOUSTON13_SHAPE = (349, 1905)
PREFIX = "2013_IEEE_GRSS_DF_Contest_"

PathLike = str | os.PathLike[str]


class Houston13DataError(InputError):
    """Bad or inconsistent Houston 2013 input; the message names the file and the field."""


@dataclass
class Raster:
    """A raster read from disk.

    Attributes
    ----------
    data : np.ndarray
        ``[bands, rows, cols]`` float32.
    nodata_mask : np.ndarray
        ``[rows, cols]`` bool, True where any band is declared nodata.
    path : Path
        The file it came from (for messages).
    """

    data: np.ndarray
    nodata_mask: np.ndarray
    path: Path


@dataclass
class Houston13Files:
    """The files of one Houston 2013 scene."""

    hsi: Path
    lidar: Path
    train: Path
    test: Path


@dataclass
class Houston13Scene:
    """A Houston 2013 scene in memory (raw values; standardise with :func:`standardize_scene`).

    Attributes
    ----------
    hsi : np.ndarray
        ``[bands, rows, cols]`` float32.
    lidar : np.ndarray
        ``[1, rows, cols]`` float32.
    train_labels, test_labels : np.ndarray
        ``[rows, cols]`` int64, 0 = unlabelled, classes ``1..n``.
    class_names : list of str
        Display names, ``class_names[k - 1]`` for label ``k``.
    nodata_mask : np.ndarray
        ``[rows, cols]`` bool, True where the HSI or the DSM declares nodata.
    files : Houston13Files, optional
        Where it was read from.
    """

    hsi: np.ndarray
    lidar: np.ndarray
    train_labels: np.ndarray
    test_labels: np.ndarray
    class_names: list[str]
    nodata_mask: np.ndarray
    files: Houston13Files | None = None
    roi_names: list[str] = field(default_factory=list)

    @property
    def shape(self) -> tuple[int, int]:
        """``(rows, cols)`` of the grid."""
        return int(self.hsi.shape[1]), int(self.hsi.shape[2])

    @property
    def n_classes(self) -> int:
        """Number of classes."""
        return len(self.class_names)


# -- ENVI ASCII ROI ----------------------------------------------------------------------------------------------

_NUM_ROIS = re.compile(r"^;\s*Number of ROIs:\s*(\d+)", re.IGNORECASE)
_ROI_NAME = re.compile(r"^;\s*ROI name:\s*(.*?)\s*$", re.IGNORECASE)
_ROI_NPTS = re.compile(r"^;\s*ROI npts:\s*(\d+)", re.IGNORECASE)
_FILE_DIM = re.compile(r"^;\s*File Dimension:\s*(\d+)\s*x\s*(\d+)", re.IGNORECASE)


def read_envi_roi(path: PathLike, shape: tuple[int, int]) -> tuple[np.ndarray, list[str]]:
    """Read an ENVI ASCII ROI export into a label raster.

    Header lines start with ``;`` (``; Number of ROIs: n``, then per ROI ``; ROI name: <name>`` and
    ``; ROI npts: <n>``); then one block per class of whitespace-separated ``ID X Y`` rows (further columns are
    ignored), blocks separated by blank lines. The class is the block's order; ``X`` (column) and ``Y`` (row) are
    1-based.

    Parameters
    ----------
    path : path-like
        The ``.txt`` export.
    shape : tuple of int
        ``(rows, cols)`` of the raster the ROIs belong to.

    Returns
    -------
    labels : np.ndarray
        ``[rows, cols]`` int64: 0 = unlabelled, ``k`` for the ``k``-th block.
    class_names : list of str
        The ROI names in block order.

    Raises
    ------
    FileNotFoundError
        When ``path`` does not exist.
    Houston13DataError
        On a malformed row, coordinates outside ``shape``, a block count or point count that disagrees with the
        header, a ``File Dimension`` that disagrees with ``shape``, a pixel in two ROIs, or no labelled pixel at
        all (an empty or header-only file).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ROI file not found: {path}")
    rows, cols = int(shape[0]), int(shape[1])
    n_declared: int | None = None
    names: list[str] = []
    npts: list[int] = []
    blocks: list[list[tuple[int, int, int]]] = []
    current: list[tuple[int, int, int]] = []
    with path.open("r", encoding="utf-8", errors="replace") as handle:
        for line_no, raw in enumerate(handle, start=1):
            line = raw.strip()
            if line.startswith(";"):
                if (match := _NUM_ROIS.match(line)) is not None:
                    n_declared = int(match.group(1))
                elif (match := _ROI_NAME.match(line)) is not None:
                    names.append(match.group(1))
                elif (match := _ROI_NPTS.match(line)) is not None:
                    npts.append(int(match.group(1)))
                elif (match := _FILE_DIM.match(line)) is not None:
                    file_cols, file_rows = int(match.group(1)), int(match.group(2))
                    if (file_rows, file_cols) != (rows, cols):
                        raise Houston13DataError(
                            f"{path}: header 'File Dimension: {file_cols} x {file_rows}' (columns x rows) disagrees "
                            f"with the rasters' {cols} x {rows}")
                continue
            if not line:
                if current:
                    blocks.append(current)
                    current = []
                continue
            fields = line.split()
            try:
                point = (int(fields[0]), int(float(fields[1])), int(float(fields[2])))
            except (IndexError, ValueError):
                raise Houston13DataError(f"{path}, line {line_no}: expected 'ID X Y' (integers), "
                                         f"got {line!r}") from None
            current.append(point)
    if current:
        blocks.append(current)
    if not any(blocks):
        declared = f" (the header declares {n_declared} ROIs)" if n_declared else ""
        raise Houston13DataError(f"{path}: no 'ID X Y' rows: an empty or header-only ROI export{declared}; "
                                 "expected one block of labelled pixels per ROI")

    n_blocks = len(blocks)
    if npts and len(npts) == len(names) and sum(npts) == sum(len(b) for b in blocks) and len(npts) != n_blocks:
        # empty ROIs leave no block: split the rows by the declared counts instead
        flat = [p for block in blocks for p in block]
        starts = np.cumsum([0, *npts])
        blocks = [flat[starts[i]:starts[i + 1]] for i in range(len(npts))]
    n_classes = n_declared if n_declared is not None else (len(names) or len(blocks))
    if len(blocks) != n_classes:
        raise Houston13DataError(f"{path}: header 'Number of ROIs: {n_classes}' but the file has {len(blocks)} "
                                 "blocks of 'ID X Y' rows (blocks are separated by blank lines)")
    if names and len(names) != n_classes:
        raise Houston13DataError(f"{path}: {len(names)} 'ROI name' lines for {n_classes} ROIs")
    if npts and len(npts) == n_classes:
        for k, (declared, block) in enumerate(zip(npts, blocks)):
            if declared != len(block):
                raise Houston13DataError(f"{path}: ROI {k + 1} ({names[k] if names else k + 1}) declares "
                                         f"'ROI npts: {declared}' but its block has {len(block)} rows")
    if not names:
        names = [f"class {k + 1}" for k in range(n_classes)]

    labels = np.zeros((rows, cols), dtype=np.int64)
    for k, block in enumerate(blocks, start=1):
        if not block:
            continue
        xy = np.asarray([(x, y) for _, x, y in block], dtype=np.int64)
        x, y = xy[:, 0] - 1, xy[:, 1] - 1
        bad = (x < 0) | (x >= cols) | (y < 0) | (y >= rows)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise Houston13DataError(
                f"{path}: ROI {k} ({names[k - 1]}) has {int(bad.sum())} point(s) outside the {rows} x {cols} raster, "
                f"e.g. ID {block[i][0]} at X={block[i][1]}, Y={block[i][2]} (expected 1 <= X <= {cols}, "
                f"1 <= Y <= {rows}; coordinates are 1-based)")
        taken = labels[y, x]
        if (taken != 0).any():
            i = int(np.flatnonzero(taken != 0)[0])
            raise Houston13DataError(f"{path}: pixel X={x[i] + 1}, Y={y[i] + 1} is in ROI {int(taken[i])} and ROI {k}")
        labels[y, x] = k
    return labels, names


def write_envi_roi(path: PathLike, labels: np.ndarray, class_names: list[str] | tuple[str, ...]) -> None:
    """Write a label raster as an ENVI ASCII ROI export readable by :func:`read_envi_roi`.

    Parameters
    ----------
    path : path-like
        Output ``.txt``.
    labels : np.ndarray
        ``[rows, cols]`` integers, 0 = unlabelled, ``1..len(class_names)``.
    class_names : sequence of str
        One name per class, in label order.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be 2-D [rows, cols], got shape {labels.shape}")
    rows, cols = labels.shape
    lines = ["; ENVI Output of ROIs (pmrl-sci)", f"; Number of ROIs: {len(class_names)}",
             f"; File Dimension: {cols} x {rows}", ";"]
    blocks = []
    for k, name in enumerate(class_names, start=1):
        ys, xs = np.nonzero(labels == k)  # row-major order, as ENVI lists them
        lines += [f"; ROI name: {name}", f"; ROI npts: {len(ys)}"]
        blocks.append([f"{i + 1:6d} {x + 1:5d} {y + 1:5d}" for i, (y, x) in enumerate(zip(ys, xs))])
    lines.append(";    ID     X     Y")
    body = "\n\n".join("\n".join(block) for block in blocks if block)
    Path(path).write_text("\n".join(lines) + "\n" + body + "\n", encoding="utf-8")


# -- rasters -----------------------------------------------------------------------------------------------------

def read_raster(path: PathLike) -> Raster:
    """Read a GeoTIFF (any GDAL raster) with rasterio as float32 ``[bands, rows, cols]``.

    Pixels declared nodata (the file's nodata value or its mask) are recorded in ``nodata_mask``; non-finite
    values that are not declared nodata raise :class:`Houston13DataError`.
    """
    require("rasterio", "geo", "reading GeoTIFF rasters")
    import rasterio
    from rasterio.enums import MaskFlags
    from rasterio.errors import NotGeoreferencedWarning, RasterioError

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"raster not found: {path}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        try:
            with rasterio.open(path) as src:
                data = src.read(out_dtype="float32")
                nodata = src.nodata
                all_valid = all(flags == [MaskFlags.all_valid] for flags in src.mask_flag_enums)
                masked = None if all_valid and nodata is None else src.read_masks() == 0
        except RasterioError as exc:
            raise Houston13DataError(f"{path}: not a readable raster (expected a GeoTIFF; GDAL says: {exc})") from None
    nodata_mask = np.zeros(data.shape[1:], dtype=bool)
    if masked is not None:
        nodata_mask |= masked.any(axis=0)
    if nodata is not None and np.isnan(nodata):
        nodata_mask |= np.isnan(data).any(axis=0)
    _check_finite(data, ~nodata_mask, path)
    return Raster(data, nodata_mask, path)


def read_label_raster(path: PathLike) -> np.ndarray:
    """Read a one-band label raster (GeoTIFF or MATLAB) as int64 ``[rows, cols]``, 0 = unlabelled."""
    path = Path(path)
    if path.suffix.lower() == ".mat":
        values = read_mat_array(path, ("TRLabel", "TSLabel", "TeLabel", "labels", "label", "gt"))
    else:
        raster = read_raster(path)
        if raster.data.shape[0] != 1:
            raise Houston13DataError(f"{path}: a label raster must have one band, got {raster.data.shape[0]}")
        values = np.where(raster.nodata_mask, 0, raster.data[0])
    values = np.squeeze(np.asarray(values))
    if values.ndim != 2:
        raise Houston13DataError(f"{path}: expected a 2-D label array [rows, cols], got shape {values.shape}")
    if not np.isfinite(values).all() or (values < 0).any() or (values != np.round(values)).any():
        raise Houston13DataError(f"{path}: labels must be non-negative integers (0 = unlabelled)")
    return values.astype(np.int64)


def read_mat_array(path: PathLike, names: tuple[str, ...]) -> np.ndarray:
    """Read one array from a MATLAB file (v5 through scipy, v7.3 through h5py).

    The variable is the first of ``names`` present, or the file's only variable.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"MATLAB file not found: {path}")
    require("h5py", "geo", "reading MATLAB v7.3 files")
    import h5py

    if h5py.is_hdf5(path):  # MATLAB v7.3 files are HDF5
        try:
            with h5py.File(path, "r") as handle:
                contents = {k: np.asarray(handle[k]) for k in handle if isinstance(handle[k], h5py.Dataset)}
        except (OSError, KeyError, ValueError) as exc:
            raise Houston13DataError(f"{path}: not a readable MATLAB v7.3 (HDF5) file ({exc})") from None
        transpose = True  # HDF5 holds MATLAB's column-major arrays with the axes reversed
    else:
        from scipy.io import loadmat

        try:
            contents = {k: v for k, v in loadmat(path).items() if not k.startswith("__")}
        except (ValueError, TypeError, OSError) as exc:
            raise Houston13DataError(f"{path}: not a readable MATLAB file ({exc})") from None
        transpose = False
    key = next((n for n in names if n in contents), None)
    if key is None:
        if len(contents) != 1:
            raise Houston13DataError(f"{path}: expected a variable named one of {list(names)} (or a single "
                                     f"variable), found {sorted(contents)}")
        key = next(iter(contents))
    array = np.asarray(contents[key])
    return array.T if transpose else array


def read_hsi(path: PathLike, n_bands: int = HOUSTON13_BANDS) -> Raster:
    """Read the hyperspectral cube (GeoTIFF or ``HSI.mat``) as ``[bands, rows, cols]`` and check its band count."""
    path = Path(path)
    if path.suffix.lower() == ".mat":
        cube = np.asarray(read_mat_array(path, ("HSI", "hsi", "data", "Houston")), dtype=np.float32)
        if cube.ndim != 3:
            raise Houston13DataError(f"{path}: expected a 3-D hyperspectral array, got shape {cube.shape}")
        if cube.shape[-1] == n_bands and cube.shape[0] != n_bands:
            cube = np.ascontiguousarray(np.moveaxis(cube, -1, 0))  # MATLAB stores rows x cols x bands
        nodata = np.zeros(cube.shape[1:], dtype=bool)
        _check_finite(cube, ~nodata, path)
        raster = Raster(cube, nodata, path)
    else:
        raster = read_raster(path)
    if raster.data.shape[0] != n_bands:
        raise Houston13DataError(f"{path}: expected {n_bands} hyperspectral bands, got {raster.data.shape[0]} "
                                 f"(array shape {list(raster.data.shape)}, bands first)")
    return raster


def read_lidar(path: PathLike) -> Raster:
    """Read the LiDAR DSM (GeoTIFF or ``LiDAR.mat``) as ``[1, rows, cols]``."""
    path = Path(path)
    if path.suffix.lower() == ".mat":
        dsm = np.squeeze(np.asarray(read_mat_array(path, ("LiDAR", "lidar", "DSM", "dsm", "data")), np.float32))
        if dsm.ndim != 2:
            raise Houston13DataError(f"{path}: expected a 2-D DSM [rows, cols], got shape {dsm.shape}")
        nodata = np.zeros(dsm.shape, dtype=bool)
        _check_finite(dsm[None], ~nodata, path)
        return Raster(dsm[None], nodata, path)
    raster = read_raster(path)
    if raster.data.shape[0] != 1:
        raise Houston13DataError(f"{path}: expected a one-band DSM, got {raster.data.shape[0]} bands")
    return raster


def _check_finite(data: np.ndarray, valid: np.ndarray, path: Path) -> None:
    finite = np.isfinite(data).all(axis=0)
    bad = valid & ~finite
    if bad.any():
        r, c = (int(v[0]) for v in np.nonzero(bad))
        raise Houston13DataError(f"{path}: {int(bad.sum())} pixel(s) with non-finite values (NaN or inf) that the "
                                 f"file does not declare as nodata, first at row {r}, column {c}")


# -- the scene ---------------------------------------------------------------------------------------------------

_HSI_NAMES = (f"{PREFIX}CASI.tif", f"{PREFIX}CASI.tiff", "HSI.tif", "HSI.mat")
_LIDAR_NAMES = (f"{PREFIX}LiDAR.tif", f"{PREFIX}LiDAR.tiff", "LiDAR.tif", "LiDAR.mat")
_TRAIN_NAMES = (f"{PREFIX}Samples_TR.txt", f"{PREFIX}Samples_TR.tif", "TRLabel.tif", "TRLabel.mat")
_TEST_NAMES = (f"{PREFIX}Samples_VA.txt", f"{PREFIX}Samples_VA.tif", "TSLabel.tif", "TSLabel.mat", "TeLabel.mat")


def find_houston13_files(data_dir: PathLike) -> Houston13Files:
    """Locate the four inputs in ``data_dir`` (first accepted name of each kind wins).

    Raises
    ------
    FileNotFoundError
        Naming the directory, the missing input and the accepted file names.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"Houston 2013 data directory not found: {data_dir}")
    found = {}
    for kind, candidates in (("hyperspectral", _HSI_NAMES), ("LiDAR", _LIDAR_NAMES),
                             ("training labels", _TRAIN_NAMES), ("test labels", _TEST_NAMES)):
        path = next((data_dir / n for n in candidates if (data_dir / n).is_file()), None)
        if path is None:
            raise FileNotFoundError(f"{data_dir}: no {kind} file; expected one of {', '.join(candidates)}")
        found[kind] = path
    return Houston13Files(found["hyperspectral"], found["LiDAR"], found["training labels"], found["test labels"])


def read_labels(path: PathLike, shape: tuple[int, int]) -> tuple[np.ndarray, list[str] | None]:
    """Read ground truth from an ROI export (``.txt``) or a label raster; names are None for rasters."""
    path = Path(path)
    if path.suffix.lower() == ".txt":
        return read_envi_roi(path, shape)
    labels = read_label_raster(path)
    if labels.shape != tuple(shape):
        raise Houston13DataError(f"{path}: label raster is {labels.shape[0]} x {labels.shape[1]} (rows x columns), "
                                 f"expected the rasters' {shape[0]} x {shape[1]}")
    return labels, None


def load_houston13(data_dir: PathLike | None = None, files: Houston13Files | None = None,
                   n_bands: int = HOUSTON13_BANDS) -> Houston13Scene:
    """Read and check a Houston 2013 scene.

    Parameters
    ----------
    data_dir : path-like, optional
        Directory searched by :func:`find_houston13_files`.
    files : Houston13Files, optional
        Explicit paths instead of ``data_dir``.
    n_bands : int
        Expected hyperspectral band count.

    Raises
    ------
    Houston13DataError
        Rasters on different grids, a wrong band count, ROIs outside the raster, training and test ground truth
        with different class counts, non-finite values, overlapping training and test pixels.
    FileNotFoundError
        A missing file.
    """
    if files is None:
        if data_dir is None:
            raise ValueError("pass data_dir or files")
        files = find_houston13_files(data_dir)
    hsi = read_hsi(files.hsi, n_bands)
    lidar = read_lidar(files.lidar)
    if hsi.data.shape[1:] != lidar.data.shape[1:]:
        raise Houston13DataError(
            f"{files.lidar}: the DSM grid is {lidar.data.shape[1]} x {lidar.data.shape[2]} (rows x columns) but the "
            f"hyperspectral raster {files.hsi} is {hsi.data.shape[1]} x {hsi.data.shape[2]}: they must share a grid")
    shape = hsi.data.shape[1:]
    _check_same_georeferencing(files.hsi, files.lidar)
    train, train_names = read_labels(files.train, shape)
    test, test_names = read_labels(files.test, shape)
    if train_names is not None and test_names is not None and len(train_names) != len(test_names):
        raise Houston13DataError(f"{files.test}: {len(test_names)} ROIs but the training file {files.train} has "
                                 f"{len(train_names)}: both must list the same classes in the same order")
    n_classes = max(len(train_names or ()), len(test_names or ()), int(train.max()), int(test.max()))
    if n_classes == 0:
        raise Houston13DataError(f"{files.train}: no labelled pixels")
    missing = [k for k in range(1, n_classes + 1) if not (train == k).any()]
    if missing:
        raise Houston13DataError(f"{files.train}: class(es) {missing} have no training pixel")
    overlap = (train > 0) & (test > 0)
    if overlap.any():
        raise Houston13DataError(f"{files.test}: {int(overlap.sum())} test pixel(s) are also training pixels "
                                 f"in {files.train}")
    roi_names = list(train_names or test_names or [])
    if n_classes == len(HOUSTON13_CLASSES):
        class_names = list(HOUSTON13_CLASSES)
    else:
        class_names = roi_names if len(roi_names) == n_classes else [f"class {k}" for k in range(1, n_classes + 1)]
    return Houston13Scene(hsi.data, lidar.data, train, test, class_names, hsi.nodata_mask | lidar.nodata_mask,
                          files, roi_names)


def _check_same_georeferencing(hsi_path: Path, lidar_path: Path) -> None:
    if hsi_path.suffix.lower() == ".mat" or lidar_path.suffix.lower() == ".mat":
        return
    require("rasterio", "geo", "reading GeoTIFF rasters")
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(hsi_path) as a, rasterio.open(lidar_path) as b:
            if a.crs is not None and b.crs is not None and a.crs != b.crs:
                raise Houston13DataError(f"{lidar_path}: CRS {b.crs} differs from {hsi_path}'s {a.crs}")
            if not a.transform.almost_equals(b.transform):
                raise Houston13DataError(f"{lidar_path}: geotransform {tuple(b.transform)[:6]} differs from "
                                         f"{hsi_path}'s {tuple(a.transform)[:6]}: the rasters are on different grids")

"""A generic multimodal manifest: one row per instance, one column per modality.

Format: JSON Lines (``.jsonl``) or CSV (``.csv``). A modality cell holds a file path (relative to the
manifest's folder, or absolute) or, for text modalities, the text itself. Blank cells (``""``, ``null``,
absent keys) mark a missing modality: the row is kept and the mask says which modalities it has.

Column names give the modality kind (override with ``kinds={column: kind}``):

========================================  ========  ==============================================
column                                    kind      file
========================================  ========  ==============================================
vision, image, rgb, touch, tactile        image     ``.png`` / ``.jpg`` (RGB, resized)
video, frames                             video     a folder of frames, sampled uniformly in time
depth                                     depth     ``.npy`` (metres) or ``.png`` (value / ``depth_png_scale``)
audio                                     audio     ``.wav`` (PCM or float, mono or averaged)
features, *_features, features_*          features  ``.npy`` vector ``[F]`` or sequence ``[T, F]``
text, caption, subtitle, description      text      inline text
========================================  ========  ==============================================

Reserved columns, not modalities: ``id``, ``label`` (a class name, for few-shot sampling and zero-shot
classification) and ``split`` (``train`` / ``test`` / ``val``).
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

KINDS = ("image", "video", "depth", "audio", "features", "text")
RESERVED_COLUMNS = ("id", "label", "split")
_KIND_BY_NAME = {
    "vision": "image", "image": "image", "rgb": "image", "touch": "image", "tactile": "image",
    "video": "video", "frames": "video", "depth": "depth", "audio": "audio", "features": "features",
    "text": "text", "caption": "text", "subtitle": "text", "description": "text",
}
_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}


def modality_kind(column: str, kinds: Mapping[str, str] | None = None, *, source: str = "manifest") -> str:
    """The kind (one of :data:`KINDS`) of a manifest column.

    Raises
    ------
    ValueError
        For a column that names no known modality, naming ``source`` and the accepted names.
    """
    if kinds and column in kinds:
        kind = kinds[column]
        if kind not in KINDS:
            raise ValueError(f"{source}: kind {kind!r} given for column {column!r} is not one of {KINDS}")
        return kind
    if column in _KIND_BY_NAME:
        return _KIND_BY_NAME[column]
    if column.endswith("_features") or column.startswith("features_"):
        return "features"
    raise ValueError(f"{source}: column {column!r} is not a known modality. Modality columns are "
                     f"{sorted(_KIND_BY_NAME)} or '*_features'; reserved columns are {list(RESERVED_COLUMNS)}; "
                     "name the kind of other columns with kinds={column: kind}")


def _is_blank(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and not value.strip()


@dataclass
class Manifest:
    """A parsed manifest.

    Attributes
    ----------
    path : Path
        The manifest file (paths inside are relative to its folder).
    modalities : list of str
        Modality columns, in file order (or the order asked for).
    kinds : dict of str to str
        Kind of each modality.
    values : dict of str to list
        Per modality, one cell per row: an absolute path string, a text, or ``None`` when missing.
    ids, labels, splits : list
        Reserved columns (``None`` where absent).
    """

    path: Path
    modalities: list[str]
    kinds: dict[str, str]
    values: dict[str, list[str | None]]
    ids: list[str]
    labels: list[str | None]
    splits: list[str | None]

    def __len__(self) -> int:
        return len(self.ids)

    def present(self) -> np.ndarray:
        """Bool mask ``[rows, modalities]``: True where the row has the modality."""
        return np.array([[self.values[m][i] is not None for m in self.modalities] for i in range(len(self))],
                        dtype=bool).reshape(len(self), len(self.modalities))

    def missing_counts(self) -> dict[str, int]:
        """Rows lacking each modality, plus ``"rows_with_missing"`` (rows lacking at least one)."""
        present = self.present()
        counts = {m: int((~present[:, j]).sum()) for j, m in enumerate(self.modalities)}
        counts["rows_with_missing"] = int((~present).any(axis=1).sum()) if present.size else 0
        return counts

    def subset(self, indices: Sequence[int]) -> Manifest:
        """Rows ``indices`` as a new manifest."""
        idx = [int(i) for i in indices]
        return Manifest(self.path, list(self.modalities), dict(self.kinds),
                        {m: [v[i] for i in idx] for m, v in self.values.items()},
                        [self.ids[i] for i in idx], [self.labels[i] for i in idx], [self.splits[i] for i in idx])

    def select(self, modalities: Sequence[str]) -> Manifest:
        """The same rows restricted to ``modalities`` (each must be a column)."""
        unknown = [m for m in modalities if m not in self.values]
        if unknown:
            raise ValueError(f"{self.path}: no column for modalities {unknown}; it has {self.modalities}")
        return Manifest(self.path, list(modalities), {m: self.kinds[m] for m in modalities},
                        {m: self.values[m] for m in modalities}, self.ids, self.labels, self.splits)

    def split_indices(self, split: str) -> list[int]:
        """Rows whose ``split`` equals ``split``."""
        return [i for i, s in enumerate(self.splits) if s == split]


def _read_rows(path: Path) -> list[dict[str, Any]]:
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        rows = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}, line {number}: not valid JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}, line {number}: expected a JSON object per line, got {type(row).__name__}")
            rows.append(row)
        return rows
    if suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as handle:
            return [dict(row) for row in csv.DictReader(handle)]
    raise ValueError(f"{path}: manifest must be .jsonl or .csv, got {suffix!r}")


def read_manifest(path: str | os.PathLike[str], modalities: Sequence[str] | None = None,
                  kinds: Mapping[str, str] | None = None, check_files: bool = True) -> Manifest:
    """Read a JSON Lines or CSV manifest.

    Parameters
    ----------
    path : str or path-like
        The manifest.
    modalities : sequence of str, optional
        Modality columns to keep (default: every non-reserved column).
    kinds : mapping, optional
        Kind of columns whose name does not say it.
    check_files : bool
        Fail early, naming the file, row and column, when a path cell points to nothing.

    Raises
    ------
    FileNotFoundError
        The manifest or a file it names does not exist.
    ValueError
        Unknown modality column, a requested modality without a column, an empty manifest.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest {path} does not exist")
    rows = _read_rows(path)
    if not rows:
        raise ValueError(f"{path}: the manifest has no rows")
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    candidates = [c for c in columns if c not in RESERVED_COLUMNS]
    if modalities is None:
        modalities = candidates
    else:
        missing = [m for m in modalities if m not in columns]
        if missing:
            raise ValueError(f"{path}: no column for modalities {missing}; columns are {columns}")
    modalities = list(modalities)
    if not modalities:
        raise ValueError(f"{path}: no modality columns (columns: {columns})")
    resolved_kinds = {m: modality_kind(m, kinds, source=str(path)) for m in modalities}
    root = path.parent
    values: dict[str, list[str | None]] = {m: [] for m in modalities}
    for number, row in enumerate(rows, start=1):
        for m in modalities:
            cell = row.get(m)
            if _is_blank(cell):
                values[m].append(None)
                continue
            cell = str(cell).strip()
            if resolved_kinds[m] != "text":
                file = Path(cell).expanduser()
                file = file if file.is_absolute() else root / file
                if check_files and not file.exists():
                    raise FileNotFoundError(f"{path}, row {number}, column {m!r}: file {file} does not exist")
                cell = str(file)
            values[m].append(cell)
    ids = [str(row["id"]) if not _is_blank(row.get("id")) else str(i) for i, row in enumerate(rows)]
    labels = [None if _is_blank(row.get("label")) else str(row["label"]) for row in rows]
    splits = [None if _is_blank(row.get("split")) else str(row["split"]).strip().lower() for row in rows]
    return Manifest(path, modalities, resolved_kinds, values, ids, labels, splits)


def write_manifest(rows: Iterable[Mapping[str, Any]], path: str | os.PathLike[str]) -> Path:
    """Write rows as JSON Lines (``.jsonl``) or CSV (``.csv``) atomically; ``None`` cells stay blank."""
    from pmrl_sci.io import atomic_open

    path = Path(path)
    rows = [dict(r) for r in rows]
    if path.suffix.lower() == ".csv":
        columns: list[str] = []
        for row in rows:
            columns += [c for c in row if c not in columns]
        with atomic_open(path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns)
            writer.writeheader()
            for row in rows:
                writer.writerow({k: "" if v is None else v for k, v in row.items()})
    elif path.suffix.lower() in (".jsonl", ".ndjson"):
        with atomic_open(path, "w", encoding="utf-8") as handle:
            for row in rows:
                handle.write(json.dumps(row) + "\n")
    else:
        raise ValueError(f"{path}: manifest must end in .jsonl or .csv")
    return path


# -- loading files -------------------------------------------------------------------------------------------------
@dataclass
class LoadOptions:
    """How files become arrays.

    Parameters
    ----------
    image_size : int
        Images, frames and depth maps are resized to ``image_size`` x ``image_size``.
    num_frames : int
        Frames sampled uniformly from a video folder.
    sample_rate : int
        Required sample rate of ``.wav`` files (Hz); another rate is an error.
    num_samples : int, optional
        Clips are cut or zero-padded to this length (default: the length of the first clip).
    depth_png_scale : float
        Depth PNG values are divided by this (1000: millimetre PNGs to metres).
    """

    image_size: int = 32
    num_frames: int = 4
    sample_rate: int = 16000
    num_samples: int | None = None
    depth_png_scale: float = 1000.0


def load_image(path: str | os.PathLike[str], size: int) -> np.ndarray:
    """An RGB image as float32 ``[3, size, size]`` in ``[0, 1]``."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image = image.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
            array = np.asarray(image, dtype=np.float32) / 255.0
    except (OSError, UnidentifiedImageError) as exc:
        raise ValueError(f"cannot read image {path}: {exc}") from None
    return np.ascontiguousarray(array.transpose(2, 0, 1))


def load_video(folder: str | os.PathLike[str], size: int, num_frames: int) -> np.ndarray:
    """``num_frames`` frames sampled uniformly from a folder of images: float32 ``[T, 3, size, size]``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"video {folder}: expected a folder of frame images")
    frames = sorted(p for p in folder.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES)
    if not frames:
        raise ValueError(f"video {folder}: the folder holds no frame images ({sorted(_IMAGE_SUFFIXES)})")
    picks = np.linspace(0, len(frames) - 1, num_frames).round().astype(int)
    return np.stack([load_image(frames[i], size) for i in picks])


def load_depth(path: str | os.PathLike[str], size: int, png_scale: float = 1000.0) -> np.ndarray:
    """A depth map as float32 ``[1, size, size]`` (nearest-neighbour resize, so missing zeros stay zeros)."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if path.suffix.lower() == ".npy":
        try:
            depth = np.load(path).astype(np.float32)
        except (OSError, ValueError) as exc:
            raise ValueError(f"cannot read depth map {path}: {exc}") from None
        depth = np.squeeze(depth)
        if depth.ndim != 2:
            raise ValueError(f"depth map {path}: expected a 2-D array [H, W], got shape {list(np.shape(depth))}")
    else:
        try:
            with Image.open(path) as image:
                depth = np.asarray(image).astype(np.float32)
        except (OSError, UnidentifiedImageError) as exc:
            raise ValueError(f"cannot read depth map {path}: {exc}") from None
        if depth.ndim == 3:
            depth = depth[..., 0]
        depth = depth / png_scale
    image = Image.fromarray(np.ascontiguousarray(depth, dtype=np.float32))
    resized = image.resize((size, size), Image.Resampling.NEAREST)
    return np.asarray(resized, dtype=np.float32)[None]


def load_wav(path: str | os.PathLike[str], sample_rate: int, num_samples: int | None = None) -> np.ndarray:
    """A mono float32 waveform in ``[-1, 1]`` (channels averaged), cut or zero-padded to ``num_samples``.

    Raises
    ------
    ValueError
        Unreadable file, or a sample rate other than ``sample_rate`` (named with the file).
    """
    from scipy.io import wavfile

    try:
        rate, data = wavfile.read(path)
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read audio {path}: {exc}") from None
    if rate != sample_rate:
        raise ValueError(f"audio {path} is sampled at {rate} Hz; the audio encoder takes {sample_rate} Hz "
                         "(resample the file, or set the sample rate to match)")
    if data.dtype == np.uint8:
        wave = (data.astype(np.float32) - 128.0) / 128.0
    elif np.issubdtype(data.dtype, np.integer):
        wave = data.astype(np.float32) / float(np.iinfo(data.dtype).max + 1)
    else:
        wave = data.astype(np.float32)
    if wave.ndim == 2:
        wave = wave.mean(axis=1)
    if num_samples is not None:
        wave = wave[:num_samples]
        if wave.shape[0] < num_samples:
            wave = np.pad(wave, (0, num_samples - wave.shape[0]))
    return np.ascontiguousarray(wave)


def load_features(path: str | os.PathLike[str]) -> np.ndarray:
    """A ``.npy`` feature vector ``[F]`` or sequence ``[T, F]`` as float32."""
    try:
        array = np.load(path).astype(np.float32)
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read features {path}: {exc}") from None
    if array.ndim not in (1, 2):
        raise ValueError(f"features {path}: expected [F] or [T, F], got shape {list(array.shape)}")
    return array


def load_cell(kind: str, value: str, options: LoadOptions, num_samples: int | None = None) -> np.ndarray | str:
    """Load one manifest cell of ``kind`` (text passes through)."""
    if kind == "text":
        return value
    if kind == "image":
        return load_image(value, options.image_size)
    if kind == "video":
        return load_video(value, options.image_size, options.num_frames)
    if kind == "depth":
        return load_depth(value, options.image_size, options.depth_png_scale)
    if kind == "audio":
        return load_wav(value, options.sample_rate, num_samples)
    if kind == "features":
        return load_features(value)
    raise ValueError(f"unknown modality kind {kind!r}; expected one of {KINDS}")


@dataclass
class LoadedData:
    """A manifest loaded into memory.

    Attributes
    ----------
    modalities : list of str
    kinds : dict of str to str
    arrays : dict
        Per modality an array ``[N, ...]`` (zeros where missing) or, for text, a list of strings
        (``""`` where missing).
    mask : numpy.ndarray
        Bool ``[N, k]``, True where present.
    ids, labels, splits : list
    missing : dict of str to int
        :meth:`Manifest.missing_counts`.
    """

    modalities: list[str]
    kinds: dict[str, str]
    arrays: dict[str, Any]
    mask: np.ndarray
    ids: list[str]
    labels: list[str | None]
    splits: list[str | None]
    missing: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)

    def batch(self, indices: Sequence[int] | np.ndarray) -> tuple[dict[str, Any], torch.Tensor]:
        """Batch dict ``{modality: Tensor or list of str}`` and mask ``[B, k]`` for rows ``indices``."""
        idx = np.asarray(indices, dtype=int)
        batch: dict[str, Any] = {}
        for m in self.modalities:
            value = self.arrays[m]
            batch[m] = [value[i] for i in idx] if isinstance(value, list) else torch.from_numpy(value[idx])
        return batch, torch.from_numpy(self.mask[idx])

    def subset(self, indices: Sequence[int] | np.ndarray) -> LoadedData:
        """Rows ``indices`` as a new :class:`LoadedData`."""
        idx = np.asarray(indices, dtype=int)
        arrays = {m: ([v[i] for i in idx] if isinstance(v, list) else v[idx]) for m, v in self.arrays.items()}
        return LoadedData(list(self.modalities), dict(self.kinds), arrays, self.mask[idx],
                          [self.ids[i] for i in idx], [self.labels[i] for i in idx], [self.splits[i] for i in idx],
                          dict(self.missing))


def load_manifest_data(manifest: Manifest, options: LoadOptions | None = None) -> LoadedData:
    """Load every cell of ``manifest`` into memory (small and medium sets).

    Raises
    ------
    ValueError
        Unreadable files, an audio sample rate the options do not take, feature files of different
        widths (each message names the file).
    """
    options = options or LoadOptions()
    present = manifest.present()
    arrays: dict[str, Any] = {}
    for m in manifest.modalities:
        kind = manifest.kinds[m]
        cells = manifest.values[m]
        if kind == "text":
            arrays[m] = [c if c is not None else "" for c in cells]
            continue
        num_samples = options.num_samples
        if kind == "audio" and num_samples is None:
            first = next((c for c in cells if c is not None), None)
            num_samples = len(load_wav(first, options.sample_rate)) if first is not None else options.sample_rate
        loaded: list[np.ndarray | None] = []
        shape = None
        for c in cells:
            if c is None:
                loaded.append(None)
                continue
            value = load_cell(kind, c, options, num_samples)
            if kind == "features" and value.ndim == 2:
                value = value.mean(axis=0)
            if shape is None:
                shape = value.shape
            elif value.shape != shape:
                raise ValueError(f"{c}: modality {m!r} has shape {list(value.shape)}, earlier files have "
                                 f"{list(shape)}; all files of a modality must have the same shape")
            loaded.append(value)
        if shape is None:
            raise ValueError(f"{manifest.path}: modality {m!r} is missing in every row")
        arrays[m] = np.stack([v if v is not None else np.zeros(shape, np.float32) for v in loaded])
    return LoadedData(list(manifest.modalities), dict(manifest.kinds), arrays, present, list(manifest.ids),
                      list(manifest.labels), list(manifest.splits), manifest.missing_counts())

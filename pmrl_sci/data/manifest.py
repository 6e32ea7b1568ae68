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

from pmrl_sci.data.media import (
    KINDS,
    LoadOptions,
    load_cell,
    load_depth,
    load_features,
    load_image,
    load_video,
    load_wav,
)
from pmrl_sci.errors import InputError

__all__ = [
    "KINDS", "RESERVED_COLUMNS", "LoadOptions", "LoadedData", "Manifest", "load_cell", "load_depth",
    "load_features", "load_image", "load_manifest_data", "load_video", "load_wav", "modality_kind",
    "read_manifest", "write_manifest",
]

RESERVED_COLUMNS = ("id", "label", "split")
_KIND_BY_NAME = {
    "vision": "image", "image": "image", "rgb": "image", "touch": "image", "tactile": "image",
    "video": "video", "frames": "video", "depth": "depth", "audio": "audio", "features": "features",
    "text": "text", "caption": "text", "subtitle": "text", "description": "text",
}


def modality_kind(column: str, kinds: Mapping[str, str] | None = None, *, source: str = "manifest") -> str:
    """The kind (one of :data:`KINDS`) of a manifest column.

    Raises
    ------
    InputError
        For a column that names no known modality, naming ``source`` and the accepted names.
    """
    if kinds and column in kinds:
        kind = kinds[column]
        if kind not in KINDS:
            raise InputError(f"{source}: kind {kind!r} given for column {column!r} is not one of {KINDS}")
        return kind
    if column in _KIND_BY_NAME:
        return _KIND_BY_NAME[column]
    if column.endswith("_features") or column.startswith("features_"):
        return "features"
    raise InputError(f"{source}: column {column!r} is not a known modality. Modality columns are "
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
    duplicates : list of list of int
        Groups of rows (0-based) that name the same files and texts in every modality column. Rows of one
        group never sit in different ``split`` parts (:func:`read_manifest` refuses that); a splitter must
        keep each group in one part (:meth:`row_groups`).
    """

    path: Path
    modalities: list[str]
    kinds: dict[str, str]
    values: dict[str, list[str | None]]
    ids: list[str]
    labels: list[str | None]
    splits: list[str | None]
    duplicates: list[list[int]] = field(default_factory=list)

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

    def row_groups(self) -> np.ndarray:
        """Group number per row: repeated rows (:attr:`duplicates`) share one, every other row has its own."""
        groups = np.arange(len(self))
        for group in self.duplicates:
            groups[group] = group[0]
        return groups

    def subset(self, indices: Sequence[int]) -> Manifest:
        """Rows ``indices`` as a new manifest."""
        idx = [int(i) for i in indices]
        values = {m: [v[i] for i in idx] for m, v in self.values.items()}
        return Manifest(self.path, list(self.modalities), dict(self.kinds), values,
                        [self.ids[i] for i in idx], [self.labels[i] for i in idx], [self.splits[i] for i in idx],
                        _duplicate_groups(values, list(self.modalities), self.kinds))

    def select(self, modalities: Sequence[str]) -> Manifest:
        """The same rows restricted to ``modalities`` (each must be a column)."""
        unknown = [m for m in modalities if m not in self.values]
        if unknown:
            raise InputError(f"{self.path}: no column for modalities {unknown}; it has {self.modalities}")
        values = {m: self.values[m] for m in modalities}
        kinds = {m: self.kinds[m] for m in modalities}
        return Manifest(self.path, list(modalities), kinds, values, self.ids, self.labels, self.splits,
                        _duplicate_groups(values, list(modalities), kinds))

    def split_indices(self, split: str) -> list[int]:
        """Rows whose ``split`` equals ``split``."""
        return [i for i, s in enumerate(self.splits) if s == split]


def _read_rows(path: Path) -> list[dict[str, Any]]:
    suffix = path.suffix.lower()
    if suffix not in (".jsonl", ".ndjson", ".csv"):
        raise InputError(f"{path}: manifest must be .jsonl or .csv, got {suffix!r}")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); save the manifest as "
                         "UTF-8") from None
    if suffix in (".jsonl", ".ndjson"):
        rows = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(f"{path}, line {number}: not valid JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise InputError(f"{path}, line {number}: expected a JSON object per line, got {type(row).__name__}")
            rows.append(row)
        return rows
    reader = csv.reader(text.splitlines())
    header = next(reader, None)
    if header is None:
        return []
    header = [cell.strip() for cell in header]
    blank = [i + 1 for i, cell in enumerate(header) if not cell]
    if blank:
        raise InputError(f"{path}, line 1: header cell(s) {blank} are blank; every column needs a name")
    repeated = sorted({c for c in header if header.count(c) > 1})
    if repeated:
        raise InputError(f"{path}, line 1: column(s) {repeated} appear more than once in the header")
    rows = []
    for cells in reader:
        if not any(cell.strip() for cell in cells):
            continue
        if len(cells) != len(header):
            raise InputError(f"{path}, line {reader.line_num}: {len(cells)} cells, the header has {len(header)} "
                             f"({', '.join(header)}); leave a missing modality's cell blank, keeping its comma")
        rows.append(dict(zip(header, cells)))
    return rows


def _duplicate_groups(values: Mapping[str, list[str | None]], modalities: list[str],
                      kinds: Mapping[str, str]) -> list[list[int]]:
    """Rows naming the same files and texts in every modality column (rows without any file are not compared)."""
    files = [m for m in modalities if kinds[m] != "text"]
    n_rows = len(values[modalities[0]]) if modalities else 0
    seen: dict[tuple[str | None, ...], list[int]] = {}
    for i in range(n_rows):
        if all(values[m][i] is None for m in files):
            continue
        seen.setdefault(tuple(values[m][i] for m in modalities), []).append(i)
    return [rows for rows in seen.values() if len(rows) > 1]


def _check_duplicates_in_one_part(path: Path, groups: list[list[int]], splits: list[str | None],
                                  values: Mapping[str, list[str | None]], modalities: list[str]) -> None:
    """Refuse repeated rows in different ``split`` parts: the same instance would be trained on and tested."""
    for group in groups:
        parts = {splits[i] for i in group} - {None}  # rows without a split part are not compared
        if len(parts) > 1:
            first = group[0]
            cells = ", ".join(f"{m}={values[m][first]!r}" for m in modalities if values[m][first] is not None)
            raise InputError(f"{path}: rows {', '.join(str(i + 1) for i in group)} are the same instance ({cells}) "
                             f"but sit in different split parts {sorted(parts)}: a repeated row in both train and "
                             "test leaks the test set; remove the repeats or give them one split")


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

    Returns
    -------
    Manifest
        With :attr:`Manifest.duplicates`, the groups of repeated rows (same files and texts).

    Raises
    ------
    FileNotFoundError
        The manifest does not exist.
    InputError
        A file it names does not exist (naming the row and column), unknown modality column, a requested
        modality without a column, an empty manifest, a CSV row whose cell count differs from the header's,
        or a row repeated (same files and texts) in different ``split`` parts.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest {path} does not exist")
    rows = _read_rows(path)
    if not rows:
        raise InputError(f"{path}: the manifest has no rows")
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    candidates = [c for c in columns if c not in RESERVED_COLUMNS]
    if modalities is None:
        modalities = candidates
    else:
        missing = [m for m in modalities if m not in columns]
        if missing:
            raise InputError(f"{path}: no column for modalities {missing}; columns are {columns}")
    modalities = list(modalities)
    if not modalities:
        raise InputError(f"{path}: no modality columns (columns: {columns})")
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
                    raise InputError(f"{path}, row {number}, column {m!r}: file {file} does not exist")
                cell = str(file)
            values[m].append(cell)
    ids = [str(row["id"]) if not _is_blank(row.get("id")) else str(i) for i, row in enumerate(rows)]
    labels = [None if _is_blank(row.get("label")) else str(row["label"]) for row in rows]
    splits = [None if _is_blank(row.get("split")) else str(row["split"]).strip().lower() for row in rows]
    duplicates = _duplicate_groups(values, modalities, resolved_kinds)
    _check_duplicates_in_one_part(path, duplicates, splits, values, modalities)
    return Manifest(path, modalities, resolved_kinds, values, ids, labels, splits, duplicates)


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
        raise InputError(f"{path}: manifest must end in .jsonl or .csv")
    return path


# -- loading files (the readers are in pmrl_sci.data.media) ---------------------------------------------------------
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
    groups : numpy.ndarray, optional
        Group number per row (:meth:`Manifest.row_groups`): repeated rows share one, and a splitter keeps
        each group in one part. Default: every row its own group.
    """

    modalities: list[str]
    kinds: dict[str, str]
    arrays: dict[str, Any]
    mask: np.ndarray
    ids: list[str]
    labels: list[str | None]
    splits: list[str | None]
    missing: dict[str, int] = field(default_factory=dict)
    groups: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.groups = np.arange(len(self.ids)) if self.groups is None else np.asarray(self.groups, dtype=int)

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
                          dict(self.missing), self.groups[idx])


def load_manifest_data(manifest: Manifest, options: LoadOptions | None = None) -> LoadedData:
    """Load every cell of ``manifest`` into memory (small and medium sets).

    Raises
    ------
    InputError
        Naming the manifest, the row, the column and the file: a missing or unreadable file, an audio
        sample rate the options do not take, an empty audio file, files of one modality with different
        shapes, or a modality missing in every row.
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
        loaded: list[np.ndarray | None] = []
        shape = None
        for row, c in enumerate(cells, start=1):
            if c is None:
                loaded.append(None)
                continue
            try:
                if kind == "audio" and num_samples is None:  # the first clip sets the length
                    num_samples = len(load_wav(c, options.sample_rate))
                value = load_cell(kind, c, options, num_samples)
            except InputError as exc:
                raise InputError(f"{manifest.path}, row {row}, column {m!r}: {exc}") from None
            if kind == "features" and value.ndim == 2:
                value = value.mean(axis=0)
            if shape is None:
                shape = value.shape
            elif value.shape != shape:
                raise InputError(f"{manifest.path}, row {row}, column {m!r}: {c} has shape {list(value.shape)}, "
                                 f"earlier files of {m!r} have {list(shape)}; all files of a modality must have "
                                 "the same shape")
            loaded.append(value)
        if shape is None:
            raise InputError(f"{manifest.path}: modality {m!r} is missing in every row")
        arrays[m] = np.stack([v if v is not None else np.zeros(shape, np.float32) for v in loaded])
    return LoadedData(list(manifest.modalities), dict(manifest.kinds), arrays, present, list(manifest.ids),
                      list(manifest.labels), list(manifest.splits), manifest.missing_counts(), manifest.row_groups())

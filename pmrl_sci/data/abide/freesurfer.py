"""FreeSurfer morphometry: read group tables or per-subject stats files (writers: :mod:`.freesurfer_writers`).

Two on-disk forms give the same feature table (columns ``<table>:<measure>``):

(a) group tables written by ``asegstats2table`` / ``aparcstats2table``: delimited text, one row per
    subject, first header cell ``Measure:volume`` (aseg) or ``<hemi>.<parc>.<measure>`` (aparc,
    e.g. ``lh.aparc.thickness``), the first column holding the subject key;
(b) per-subject FreeSurfer folders ``<subject>/stats/{aseg,lh.aparc,rh.aparc}.stats``.

Naming follows the FreeSurfer tools (``fsutils`` ``AsegStatsParser`` / ``AparcStatsParser``): aseg
structures are named by ``StructName`` (value ``Volume_mm3``) and followed by the global volumes of
the ``# Measure`` lines (``BrainSegVol``, ``EstimatedTotalIntraCranialVol``...); aparc regions become
``<hemi>_<region>_<measure>`` from the ``SurfArea`` / ``GrayVol`` / ``ThickAvg`` columns, with
``<hemi>_WhiteSurfArea_area`` (area table), ``<hemi>_MeanThickness_thickness`` (thickness table) and the
unprefixed ``BrainSegVolNotVent`` and ``eTIV`` in every aparc table.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import re
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pmrl_sci.errors import InputError

logger = logging.getLogger(__name__)

__all__ = [
    "APARC_GLOBALS",
    "APARC_MEASURE_COLUMNS",
    "ASEG_MEASURES",
    "read_aparc_stats",
    "read_aseg_stats",
    "read_freesurfer_dir",
    "read_group_table",
]

#: aparcstats2table's ``--meas`` choices and the ``?h.aparc.stats`` column each one reads.
APARC_MEASURE_COLUMNS: dict[str, str] = {
    "area": "SurfArea", "volume": "GrayVol", "thickness": "ThickAvg", "thicknessstd": "ThickStd",
    "meancurv": "MeanCurv", "gauscurv": "GausCurv", "foldind": "FoldInd", "curvind": "CurvInd",
}
#: The aparc measures read from per-subject folders (one table each per hemisphere).
SUBJECT_APARC_MEASURES: tuple[str, ...] = ("area", "volume", "thickness")

#: ``# Measure <field1>, <field2>, <description>, <value>, <units>`` lines that asegstats2table turns
#: into columns: table column name -> (field1, field2, description, units).
ASEG_MEASURES: dict[str, tuple[str, str, str, str]] = {
    "lhCortexVol": ("lhCortex", "lhCortexVol", "Left hemisphere cortical gray matter volume", "mm^3"),
    "rhCortexVol": ("rhCortex", "rhCortexVol", "Right hemisphere cortical gray matter volume", "mm^3"),
    "CortexVol": ("Cortex", "CortexVol", "Total cortical gray matter volume", "mm^3"),
    "lhCorticalWhiteMatterVol": ("lhCorticalWhiteMatter", "lhCorticalWhiteMatterVol",
                                 "Left hemisphere cortical white matter volume", "mm^3"),
    "rhCorticalWhiteMatterVol": ("rhCorticalWhiteMatter", "rhCorticalWhiteMatterVol",
                                 "Right hemisphere cortical white matter volume", "mm^3"),
    "CorticalWhiteMatterVol": ("CorticalWhiteMatter", "CorticalWhiteMatterVol",
                               "Total cortical white matter volume", "mm^3"),
    "lhCerebralWhiteMatterVol": ("lhCerebralWhiteMatter", "lhCerebralWhiteMatterVol",
                                 "Left hemisphere cerebral white matter volume", "mm^3"),
    "rhCerebralWhiteMatterVol": ("rhCerebralWhiteMatter", "rhCerebralWhiteMatterVol",
                                 "Right hemisphere cerebral white matter volume", "mm^3"),
    "CerebralWhiteMatterVol": ("CerebralWhiteMatter", "CerebralWhiteMatterVol",
                               "Total cerebral white matter volume", "mm^3"),
    "SubCortGrayVol": ("SubCortGray", "SubCortGrayVol", "Subcortical gray matter volume", "mm^3"),
    "TotalGrayVol": ("TotalGray", "TotalGrayVol", "Total gray matter volume", "mm^3"),
    "SuperTentorialVol": ("SuperTentorial", "SuperTentorialVol", "Supratentorial volume", "mm^3"),
    "SupraTentorialVol": ("SupraTentorial", "SupraTentorialVol", "Supratentorial volume", "mm^3"),
    "SupraTentorialVolNotVent": ("SupraTentorialNotVent", "SupraTentorialVolNotVent",
                                 "Supratentorial volume", "mm^3"),
    "SupraTentorialVolNotVentVox": ("SupraTentorialNotVentVox", "SupraTentorialVolNotVentVox",
                                    "Supratentorial volume voxel count", "mm^3"),
    "IntraCranialVol": ("IntraCranialVol", "ICV", "Intracranial Volume", "mm^3"),
    "EstimatedTotalIntraCranialVol": ("EstimatedTotalIntraCranialVol", "eTIV",
                                      "Estimated Total Intracranial Volume", "mm^3"),
    "MaskVol": ("Mask", "MaskVol", "Mask Volume", "mm^3"),
    "BrainVol-to-eTIV": ("BrainVol-to-eTIV", "BrainVol-to-eTIV",
                         "Ratio of BrainSegVol to eTIV", "unitless"),
    "BrainSegVol-to-eTIV": ("BrainSegVol-to-eTIV", "BrainSegVol-to-eTIV",
                            "Ratio of BrainSegVol to eTIV", "unitless"),
    "MaskVol-to-eTIV": ("MaskVol-to-eTIV", "MaskVol-to-eTIV", "Ratio of MaskVol to eTIV", "unitless"),
    "lhSurfaceHoles": ("lhSurfaceHoles", "lhSurfaceHoles",
                       "Number of defect holes in lh surfaces prior to fixing", "unitless"),
    "rhSurfaceHoles": ("rhSurfaceHoles", "rhSurfaceHoles",
                       "Number of defect holes in rh surfaces prior to fixing", "unitless"),
    "SurfaceHoles": ("SurfaceHoles", "SurfaceHoles",
                     "Total number of defect holes in surfaces prior to fixing", "unitless"),
    "BrainSegVol": ("BrainSeg", "BrainSegVol", "Brain Segmentation Volume", "mm^3"),
    "BrainSegVolNotVent": ("BrainSegNotVent", "BrainSegVolNotVent",
                           "Brain Segmentation Volume Without Ventricles", "mm^3"),
    "BrainSegVolNotVentSurf": ("BrainSegNotVentSurf", "BrainSegVolNotVentSurf",
                               "Brain Segmentation Volume Without Ventricles from Surf", "mm^3"),
}
_ASEG_MEASURE_BY_FIELDS: dict[tuple[str, str], str] = {(f1, f2): name for name, (f1, f2, _, _) in
                                                       ASEG_MEASURES.items()}
#: Global ``# Measure`` lines aparcstats2table copies into every aparc table (column name -> fields).
APARC_GLOBALS: dict[str, tuple[str, str]] = {
    "BrainSegVolNotVent": ("BrainSegNotVent", "BrainSegVolNotVent"),
    "eTIV": ("EstimatedTotalIntraCranialVol", "eTIV"),
}
#: The aseg equivalent of each aparc global (same value in a FreeSurfer run).
_APARC_GLOBAL_IN_ASEG: dict[str, str] = {"BrainSegVolNotVent": "BrainSegVolNotVent",
                                         "eTIV": "EstimatedTotalIntraCranialVol"}
#: Per-measure globals of the aparc stats file (aparcstats2table names them ``<hemi>_<name>_<measure>``).
_APARC_CORTEX_MEASURES: dict[str, tuple[str, str, str]] = {
    "area": ("WhiteSurfArea", "White Surface Total Area", "mm^2"),
    "thickness": ("MeanThickness", "Mean Thickness", "mm"),
}

_HEMIS = ("lh", "rh")
_TABLE_SUFFIXES = (".txt", ".tsv", ".csv")
_APARC_HEADER = re.compile(r"^(lh|rh)\.(\S+)\.(" + "|".join(APARC_MEASURE_COLUMNS) + r")$")
_ASEG_HEADER = re.compile(r"^Measure:(\S+)$")


# ----------------------------------------------------------------------------------------------------------------
# Per-subject stats files
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class _StatsFile:
    measures: list[tuple[str, str, float]]  # (field1, field2, value) in file order
    columns: list[str]
    rows: list[list[str]]


def _parse_stats_file(path: Path, required: Iterable[str]) -> _StatsFile:
    """Parse the ``# Measure`` lines, the ``# ColHeaders`` line and the whitespace-separated rows."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise InputError(f"{path}: cannot read the FreeSurfer stats file: {exc}") from exc
    measures: list[tuple[str, str, float]] = []
    columns: list[str] | None = None
    rows: list[list[str]] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped:
            continue
        if stripped.startswith("#"):
            body = stripped[1:].strip()
            if body.startswith("Measure "):
                parts = [p.strip() for p in body[len("Measure "):].split(",")]
                if len(parts) < 4:
                    raise InputError(f"{path}, line {lineno}: a '# Measure' line needs "
                                     f"'<name>, <short name>, <description>, <value>, <units>'; got {line!r}")
                measures.append((parts[0], parts[1], _to_float(parts[3], path, f"line {lineno} (# Measure value)")))
            elif body.startswith("ColHeaders"):
                columns = body.split()[1:]
            continue
        if columns is None:
            raise InputError(f"{path}, line {lineno}: data row before the '# ColHeaders' line; expected the "
                             "FreeSurfer stats layout ('# ColHeaders ...' then whitespace-separated rows)")
        cells = stripped.split()
        if len(cells) != len(columns):
            raise InputError(f"{path}, line {lineno}: {len(cells)} fields, but '# ColHeaders' names "
                             f"{len(columns)} ({' '.join(columns)})")
        rows.append(cells)
    if columns is None:
        raise InputError(f"{path}: no '# ColHeaders' line; expected a FreeSurfer stats file "
                         f"with columns {' '.join(required)}")
    missing = [c for c in required if c not in columns]
    if missing:
        raise InputError(f"{path}: '# ColHeaders' lacks column(s) {missing}; found {columns}")
    if not rows:
        raise InputError(f"{path}: empty table (a '# ColHeaders' line but no data rows)")
    return _StatsFile(measures=measures, columns=columns, rows=rows)


def _table_value(cell: str, path: Path, where: str) -> float:
    """A group-table cell: a finite number, or NaN for a missing value (a blank cell or ``NaN``)."""
    if not cell or cell.lower() == "nan":
        return math.nan
    value = _to_float(cell, path, where)
    if not math.isfinite(value):
        raise InputError(f"{path}, {where}: non-finite cell {cell!r}; expected a number (or a blank cell or NaN "
                         "for a missing value)")
    return value


def _to_float(cell: str, path: Path, where: str) -> float:
    try:
        return float(cell)
    except ValueError:
        raise InputError(f"{path}, {where}: non-numeric cell {cell!r}; expected a number") from None


def _struct_values(stats: _StatsFile, path: Path, column: str) -> dict[str, float]:
    name_at, value_at = stats.columns.index("StructName"), stats.columns.index(column)
    out: dict[str, float] = {}
    for cells in stats.rows:
        name = cells[name_at]
        if name in out:
            raise InputError(f"{path}: structure {name!r} appears twice; expected one row per StructName")
        out[name] = _to_float(cells[value_at], path, f"structure {name!r}, column {column}")
    return out


def read_aseg_stats(path: str | os.PathLike[str]) -> dict[str, float]:
    """Read a subject's ``aseg.stats`` as asegstats2table's volume table does.

    Parameters
    ----------
    path : path-like
        ``<subject>/stats/aseg.stats`` (the ``mri_segstats`` layout).

    Returns
    -------
    dict of str to float
        ``StructName`` -> ``Volume_mm3`` in row order, then the global volumes of the recognised
        ``# Measure`` lines (keys of :data:`ASEG_MEASURES`) in line order.

    Raises
    ------
    InputError
        Naming the file when the ``# ColHeaders`` line, the ``StructName`` / ``Volume_mm3`` columns or
        the data rows are missing, a cell is not a number, or a structure repeats.
    """
    path = Path(path)
    stats = _parse_stats_file(path, ("StructName", "Volume_mm3"))
    out = _struct_values(stats, path, "Volume_mm3")
    for f1, f2, value in stats.measures:
        name = _ASEG_MEASURE_BY_FIELDS.get((f1, f2))
        if name is not None:
            out[name] = value
    return out


def read_aparc_stats(path: str | os.PathLike[str], hemi: str | None = None) -> dict[str, dict[str, float]]:
    """Read a subject's ``?h.aparc.stats`` into aparcstats2table's area / volume / thickness tables.

    Parameters
    ----------
    path : path-like
        ``<subject>/stats/lh.aparc.stats`` (or ``rh``; any parcellation with the same layout).
    hemi : {"lh", "rh"}, optional
        Hemisphere; by default taken from the file name.

    Returns
    -------
    dict
        ``{"<hemi>.aparc.area": {"<hemi>_<region>_area": value, ..., "<hemi>_WhiteSurfArea_area": ...,
        "BrainSegVolNotVent": ..., "eTIV": ...}, "<hemi>.aparc.volume": {...}, "<hemi>.aparc.thickness":
        {..., "<hemi>_MeanThickness_thickness": ...}}``; the parcellation name is taken from the file name.

    Raises
    ------
    InputError
        As :func:`read_aseg_stats`, or when the hemisphere cannot be told from the file name.
    """
    path = Path(path)
    match = re.match(r"^(lh|rh)\.(.+)\.stats$", path.name)
    if hemi is None:
        if match is None:
            raise InputError(f"{path}: cannot tell the hemisphere; expected a file named '<lh|rh>.<parc>.stats'")
        hemi = match.group(1)
    if hemi not in _HEMIS:
        raise InputError(f"{path}: hemi must be 'lh' or 'rh', got {hemi!r}")
    parc = match.group(2) if match is not None else "aparc"
    stats = _parse_stats_file(path, ("StructName", *(APARC_MEASURE_COLUMNS[m] for m in SUBJECT_APARC_MEASURES)))
    tables: dict[str, dict[str, float]] = {}
    for measure in SUBJECT_APARC_MEASURES:
        values = _struct_values(stats, path, APARC_MEASURE_COLUMNS[measure])
        table = {f"{hemi}_{region}_{measure}": value for region, value in values.items()}
        # aparcstats2table appends the '# Measure' globals in file-line order
        for f1, f2, value in stats.measures:
            cortex = _APARC_CORTEX_MEASURES.get(measure)
            if cortex is not None and (f1, f2) == ("Cortex", cortex[0]):
                table[f"{hemi}_{cortex[0]}_{measure}"] = value
            for name, fields in APARC_GLOBALS.items():
                if (f1, f2) == fields:
                    table[name] = value
        tables[f"{hemi}.{parc}.{measure}"] = table
    return tables


# ----------------------------------------------------------------------------------------------------------------
# Group tables
# ----------------------------------------------------------------------------------------------------------------
def _table_name(header: str, path: Path) -> str | None:
    """The table name a group-table header cell stands for, or None when it is not one."""
    if _APARC_HEADER.match(header):
        return header
    match = _ASEG_HEADER.match(header)
    if match is None:
        return None
    base = "wmparc" if path.name.lower().startswith("wmparc") else "aseg"
    return base if match.group(1) == "volume" else f"{base}.{match.group(1)}"


def _split(line: str) -> list[str]:
    for delimiter in ("\t", ",", ";"):
        if delimiter in line:
            return next(csv.reader([line], delimiter=delimiter))
    return line.split()


def read_group_table(path: str | os.PathLike[str]) -> tuple[str, pd.DataFrame]:
    """Read one ``asegstats2table`` / ``aparcstats2table`` table.

    Parameters
    ----------
    path : path-like
        Delimited text (tab, comma, semicolon or space, as the tools' ``-d`` option writes) whose first
        header cell is ``Measure:<measure>`` or ``<hemi>.<parc>.<measure>``.

    Returns
    -------
    name : str
        ``"aseg"`` (``Measure:volume``; ``"aseg.<measure>"`` for other measures, ``"wmparc..."`` when the
        file name starts with ``wmparc``) or the aparc header itself (``"lh.aparc.thickness"``).
    table : pandas.DataFrame
        Index: subject keys as written (str); columns: the header's measures, float64.

    Raises
    ------
    InputError
        Naming the file: unrecognised first header cell, empty table, duplicated column or subject,
        a row with the wrong number of cells, or a non-numeric or infinite cell (with its line, subject
        and column). A blank cell or ``NaN`` is a missing value: NaN in the table (pandas writes a missing
        value as a blank cell, numpy as ``nan``); ``table.attrs["n_missing_values"]`` counts them.
    """
    path = Path(path)
    try:
        numbered = [(n, ln) for n, ln in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1)
                    if ln.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read the table: {exc}") from exc
    lines = [ln for _, ln in numbered]
    if not lines:
        raise InputError(f"{path}: empty file; expected an asegstats2table / aparcstats2table table")
    header = [cell.strip() for cell in _split(lines[0])]
    name = _table_name(header[0], path)
    if name is None:
        raise InputError(f"{path}: first header cell {header[0]!r} is not a FreeSurfer group-table header; "
                         "expected 'Measure:volume' (asegstats2table) or '<lh|rh>.<parc>.<measure>' "
                         "such as 'lh.aparc.thickness' (aparcstats2table)")
    columns = header[1:]
    if not columns:
        raise InputError(f"{path}: the header names no measure column after {header[0]!r}")
    duplicated = sorted({c for c in columns if columns.count(c) > 1})
    if duplicated:
        raise InputError(f"{path}: duplicated column(s) {duplicated}")
    if len(lines) == 1:
        raise InputError(f"{path}: empty table (a header but no subject rows)")
    keys: list[str] = []
    values = np.empty((len(lines) - 1, len(columns)), dtype=np.float64)
    first_line: dict[str, int] = {}
    for row, (lineno, line) in enumerate(numbered[1:]):
        cells = [cell.strip() for cell in _split(line)]
        if len(cells) != len(header):
            raise InputError(f"{path}, line {lineno}: {len(cells)} cells, the header has {len(header)}")
        key = cells[0]
        if key in first_line:
            raise InputError(f"{path}: duplicated subject {key!r} (lines {first_line[key]} and {lineno}); "
                             "expected one row per subject")
        first_line[key] = lineno
        keys.append(key)
        for col, cell in enumerate(cells[1:]):
            values[row, col] = _table_value(cell, path, f"line {lineno}, subject {key!r}, column {columns[col]!r}")
    table = pd.DataFrame(values, index=pd.Index(keys, dtype=object, name="subject"), columns=columns)
    table.attrs["n_missing_values"] = int(np.isnan(values).sum())
    return name, table



# ----------------------------------------------------------------------------------------------------------------
# Folder reader
# ----------------------------------------------------------------------------------------------------------------
class _Collector:
    """Table -> subject -> measures, remembering which file gave each (table, subject)."""

    def __init__(self) -> None:
        self.rows: dict[str, dict[str, dict[str, float]]] = {}
        self.origin: dict[tuple[str, str], str] = {}
        self.files: dict[str, list[str]] = {}

    def add(self, table: str, subject: str, values: Mapping[str, float], source: str) -> None:
        previous = self.origin.get((table, subject))
        if previous is not None:
            raise InputError(f"duplicated subject {subject!r} in table {table!r}: given by {previous} and "
                             f"by {source}; expected each subject once per table")
        self.origin[(table, subject)] = source
        self.rows.setdefault(table, {})[subject] = dict(values)
        files = self.files.setdefault(table, [])
        if source not in files:
            files.append(source)


def _subject_dirs(path: Path) -> list[Path]:
    names = ("aseg.stats", *(f"{h}.aparc.stats" for h in _HEMIS))
    return [d for d in sorted(path.iterdir()) if d.is_dir() and any((d / "stats" / n).is_file() for n in names)]


def read_freesurfer_dir(path: str | os.PathLike[str], strict: bool = False,
                        drop_duplicate_globals: bool = True) -> pd.DataFrame:
    """Read every FreeSurfer table of a folder into one subject x feature table.

    Parameters
    ----------
    path : path-like
        A folder holding (a) group tables (``*.txt``, ``*.tsv``, ``*.csv`` whose first header cell is
        ``Measure:volume`` or ``<hemi>.<parc>.<measure>``), and/or (b) per-subject folders
        ``<subject>/stats/{aseg,lh.aparc,rh.aparc}.stats``. Tables of the same name from several files
        (e.g. one file per site) are stacked; different tables are outer-joined on the subject key.
    strict : bool
        Raise on a ``*.txt/*.tsv/*.csv`` file that is not a FreeSurfer table (by default it is skipped
        and listed in the report).
    drop_duplicate_globals : bool
        aparcstats2table repeats ``BrainSegVolNotVent`` and ``eTIV`` in every aparc table; keep one copy
        (none when the aseg table has ``BrainSegVolNotVent`` / ``EstimatedTotalIntraCranialVol``).

    Returns
    -------
    pandas.DataFrame
        Index ``subject`` (str keys exactly as written: table rows or folder names); columns
        ``<table>:<measure>`` (e.g. ``aseg:Left-Hippocampus``, ``lh.aparc.thickness:lh_bankssts_thickness``),
        float64, tables in sorted order. A subject missing from a table has NaN there (with a
        warning); a blank or ``NaN`` cell of a group table is a missing value (NaN) too. The ABIDE
        loader masks the sMRI of a subject with any NaN and counts it. ``df.attrs["report"]`` holds:
        ``tables`` (files, subjects, features, missing values per table), ``missing_tables`` (subject
        -> tables it lacks), ``missing_values`` (subject -> features with a blank or NaN cell),
        ``skipped_files``, ``unread_subfolders`` (sub-folders holding tables, which are not read: pass
        one as ``path`` to read it), ``dropped_columns``, ``n_subjects`` and ``n_features``.

    Raises
    ------
    FileNotFoundError
        When ``path`` is not a folder.
    InputError
        When nothing readable is found, or naming the file for an unrecognised header (``strict``),
        empty table, non-numeric or infinite cell or duplicated subject.
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"FreeSurfer folder not found: {path}")
    collector = _Collector()
    skipped: list[str] = []
    for file in sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in _TABLE_SUFFIXES):
        try:
            first = next((ln for ln in file.read_text(encoding="utf-8-sig").splitlines() if ln.strip()), "")
        except (OSError, UnicodeDecodeError):
            first = ""
        if not first or _table_name(_split(first)[0].strip(), file) is None:
            if strict:
                raise InputError(f"{file}: no recognised FreeSurfer group-table header; expected the first "
                                 "cell 'Measure:volume' or '<lh|rh>.<parc>.<measure>'")
            skipped.append(str(file))
            continue
        name, table = read_group_table(file)
        for key, row in zip(table.index, table.to_numpy()):
            collector.add(name, str(key), dict(zip(table.columns, row.tolist())), str(file))
    subject_dirs = _subject_dirs(path)
    for subject_dir in subject_dirs:
        subject = subject_dir.name
        stats = subject_dir / "stats"
        if (stats / "aseg.stats").is_file():
            collector.add("aseg", subject, read_aseg_stats(stats / "aseg.stats"), str(stats / "aseg.stats"))
        for hemi in _HEMIS:
            file = stats / f"{hemi}.aparc.stats"
            if file.is_file():
                for name, values in read_aparc_stats(file, hemi).items():
                    collector.add(name, subject, values, str(file))
    if not collector.rows:
        raise InputError(f"{path}: no FreeSurfer data found; expected group tables (*.txt/*.tsv/*.csv whose "
                         "first header cell is 'Measure:volume' or '<lh|rh>.<parc>.<measure>') or per-subject "
                         "folders '<subject>/stats/{aseg,lh.aparc,rh.aparc}.stats'"
                         + (f" (skipped non-table files: {[Path(s).name for s in skipped]})" if skipped else ""))
    unread = sorted(str(d) for d in path.iterdir() if d.is_dir() and d not in subject_dirs
                    and any(f.is_file() and f.suffix.lower() in _TABLE_SUFFIXES for f in d.iterdir()))
    if unread:
        logger.info("%s: tables in sub-folders are not read: %s (pass a sub-folder as the FreeSurfer folder "
                    "to read its tables)", path, unread)
    return _assemble(collector, path, skipped, unread, drop_duplicate_globals)


def _assemble(collector: _Collector, path: Path, skipped: list[str], unread: list[str],
              drop_duplicate_globals: bool) -> pd.DataFrame:
    names = sorted(collector.rows, key=lambda n: (not n.startswith("aseg"), n))
    aseg_columns = set().union(*(row.keys() for row in collector.rows.get("aseg", {}).values()))
    blocks: list[pd.DataFrame] = []
    dropped: list[str] = []
    kept_globals: set[str] = set()
    table_report: dict[str, dict[str, Any]] = {}
    for name in names:
        rows = collector.rows[name]
        columns: dict[str, None] = {}
        for values in rows.values():
            columns.update(dict.fromkeys(values))
        block = pd.DataFrame.from_dict(rows, orient="index", columns=list(columns), dtype=np.float64)
        if drop_duplicate_globals and not name.startswith(("aseg", "wmparc")):
            for column in APARC_GLOBALS:
                if column not in block.columns:
                    continue
                if _APARC_GLOBAL_IN_ASEG[column] in aseg_columns or column in kept_globals:
                    block = block.drop(columns=column)
                    dropped.append(f"{name}:{column}")
                else:
                    kept_globals.add(column)
        table_report[name] = {"files": collector.files[name], "n_subjects": len(rows),
                              "n_features": int(block.shape[1]),
                              "n_missing_values": int(block.isna().to_numpy().sum())}
        block.columns = [f"{name}:{c}" for c in block.columns]
        blocks.append(block)
    df = pd.concat(blocks, axis=1, join="outer")
    subjects = sorted({s for rows in collector.rows.values() for s in rows})
    df = df.reindex(pd.Index(subjects, dtype=object, name="subject")).astype(np.float64)
    missing = {s: [n for n in names if s not in collector.rows[n]] for s in subjects}
    missing = {s: tables for s, tables in missing.items() if tables}
    # missing values inside rows that exist (blank or NaN cells), as opposed to whole missing tables
    in_rows = {s: [f"{n}:{c}" for n in names for c, v in collector.rows[n].get(s, {}).items() if math.isnan(v)]
               for s in subjects}
    missing_values = {s: cells for s, cells in in_rows.items() if cells}
    if missing:
        warnings.warn(f"{path}: {len(missing)} of {len(subjects)} subjects miss at least one FreeSurfer table "
                      f"(their features there are NaN), e.g. {next(iter(missing))!r} misses "
                      f"{next(iter(missing.values()))}; see df.attrs['report']['missing_tables']", stacklevel=3)
    df.attrs["report"] = {
        "path": str(path),
        "tables": table_report,
        "missing_tables": missing,
        "missing_values": missing_values,
        "unread_subfolders": unread,
        "skipped_files": skipped,
        "dropped_columns": dropped,
        "n_subjects": int(df.shape[0]),
        "n_features": int(df.shape[1]),
    }
    return df

"""ABIDE phenotype table (``Phenotypic_V1_0b_preprocessed1.csv``) and nilearn's quality filter.

Conventions of the file: ``DX_GROUP`` 1 = autism, 2 = control; ``SEX`` 1 = male, 2 = female;
``-9999`` (or an empty cell) marks a missing value, most often in ``FIQ``; ``FILE_ID`` is
``"no_filename"`` for subjects without preprocessed functional data.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pmrl_sci.errors import InputError

PHENOTYPE_FILENAME = "Phenotypic_V1_0b_preprocessed1.csv"
REQUIRED_COLUMNS: tuple[str, ...] = ("SUB_ID", "FILE_ID", "SITE_ID", "DX_GROUP", "AGE_AT_SCAN", "SEX")
QC_COLUMNS: tuple[str, ...] = ("qc_rater_1", "qc_anat_rater_2", "qc_func_rater_2", "qc_anat_rater_3",
                               "qc_func_rater_3")
#: nilearn ``fetch_abide_pcp(quality_checked=True)``: a subject is kept when every rater column
#: equals one of these strings exactly (case-sensitive, an empty cell fails).
QC_ACCEPTED: dict[str, tuple[str, ...]] = {
    "qc_rater_1": ("OK",),
    "qc_anat_rater_2": ("OK", "maybe"),
    "qc_func_rater_2": ("OK", "maybe"),
    "qc_anat_rater_3": ("OK",),
    "qc_func_rater_3": ("OK",),
}
MISSING_CODE = -9999
NO_FILENAME = "no_filename"
AUTISM, CONTROL = 1, 2
MALE, FEMALE = 1, 2


def read_phenotype(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read the ABIDE phenotype CSV with checked types.

    Parameters
    ----------
    path : path-like
        ``Phenotypic_V1_0b_preprocessed1.csv``, or a folder holding it.

    Returns
    -------
    pandas.DataFrame
        One row per subject, in file order: ``SUB_ID`` (int), ``FILE_ID`` / ``SITE_ID``
        (str), ``DX_GROUP`` / ``SEX`` (int, 1 or 2), ``AGE_AT_SCAN`` (float), ``FIQ`` (float,
        NaN when missing or when the column is absent), the QC columns as strings (NaN when
        empty) and every other column as read. ``df.attrs["source"]`` holds the path.

    Raises
    ------
    FileNotFoundError
        When the file does not exist.
    InputError
        Naming the file and the missing columns, or the column and rows holding values
        outside their code list.
    """
    path = Path(path)
    if path.is_dir():
        path = path / PHENOTYPE_FILENAME
    if not path.is_file():
        raise FileNotFoundError(f"ABIDE phenotype file not found: {path} (expected {PHENOTYPE_FILENAME})")
    try:
        df = pd.read_csv(path, dtype={"FILE_ID": str, "SITE_ID": str, **{c: str for c in QC_COLUMNS}},
                         keep_default_na=True)
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot parse the phenotype CSV: {exc}") from exc
    df.columns = [str(c).strip() for c in df.columns]
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise InputError(f"{path}: phenotype table lacks required column(s) {missing}; "
                         f"expected at least {list(REQUIRED_COLUMNS)} (ABIDE {PHENOTYPE_FILENAME})")
    if df.empty:
        raise InputError(f"{path}: phenotype table has no rows")
    df = df.reset_index(drop=True)
    df["SUB_ID"] = _integer_column(df, "SUB_ID", path)
    df["FILE_ID"] = df["FILE_ID"].astype(str).str.strip()
    df["SITE_ID"] = df["SITE_ID"].astype(str).str.strip()
    df["DX_GROUP"] = _coded_column(df, "DX_GROUP", (AUTISM, CONTROL), path, "1 = autism, 2 = control")
    df["SEX"] = _coded_column(df, "SEX", (MALE, FEMALE), path, "1 = male, 2 = female")
    df["AGE_AT_SCAN"] = _numeric_column(df, "AGE_AT_SCAN", path)
    bad_age = df.index[~(df["AGE_AT_SCAN"] > 0)].tolist()
    if bad_age:
        raise InputError(f"{path}: column 'AGE_AT_SCAN' must be a positive age in years; "
                         f"missing or invalid in rows {_rows(bad_age)}")
    df["FIQ"] = _numeric_column(df, "FIQ", path) if "FIQ" in df.columns else np.nan
    for column in QC_COLUMNS:
        if column in df.columns:
            df[column] = df[column].astype(object).where(df[column].notna(), np.nan)
    duplicated = df.loc[(df["FILE_ID"] != NO_FILENAME) & df["FILE_ID"].duplicated(keep=False), "FILE_ID"]
    if not duplicated.empty:
        raise InputError(f"{path}: column 'FILE_ID' has duplicated values {sorted(set(duplicated))[:5]}; "
                         "each subject must appear once")
    duplicated_sub = df.loc[df["SUB_ID"].duplicated(keep=False), "SUB_ID"]
    if not duplicated_sub.empty:
        raise InputError(f"{path}: column 'SUB_ID' has duplicated values {sorted(set(duplicated_sub))[:5]}")
    df.attrs["source"] = str(path)
    return df


def quality_filter(df: pd.DataFrame, quality_checked: bool = True) -> tuple[pd.DataFrame, list[dict[str, Any]]]:
    """Keep the subjects nilearn's ``fetch_abide_pcp`` keeps, with a reason for every other one.

    nilearn first drops rows whose ``FILE_ID`` is ``"no_filename"``, then (with
    ``quality_checked=True``) keeps rows where ``qc_rater_1 == "OK"``, ``qc_anat_rater_2`` and
    ``qc_func_rater_2`` are ``"OK"`` or ``"maybe"``, and ``qc_anat_rater_3 == "OK"`` and
    ``qc_func_rater_3 == "OK"`` (exact string comparison, so an empty cell fails).

    Parameters
    ----------
    df : pandas.DataFrame
        From :func:`read_phenotype`.
    quality_checked : bool
        Apply the rater rule; ``False`` only drops the ``no_filename`` rows.

    Returns
    -------
    kept : pandas.DataFrame
        The kept rows, original order and index.
    excluded : list of dict
        One entry per dropped subject: ``sub_id``, ``file_id``, ``site`` and ``reason``.

    Raises
    ------
    InputError
        When ``quality_checked`` and QC columns are missing (naming them and the file).
    """
    source = df.attrs.get("source", "phenotype table")
    excluded: list[dict[str, Any]] = []
    no_file = df["FILE_ID"].astype(str) == NO_FILENAME
    for _, row in df[no_file].iterrows():
        excluded.append(_exclusion(row, "FILE_ID is 'no_filename': no preprocessed functional data"))
    keep = ~no_file
    if quality_checked:
        missing = [c for c in QC_COLUMNS if c not in df.columns]
        if missing:
            raise InputError(f"{source}: the quality filter needs the rater column(s) {missing}; "
                             "pass quality_checked=False to skip it")
        passed = pd.Series(True, index=df.index)
        for column, accepted in QC_ACCEPTED.items():
            passed &= df[column].isin(accepted)
        for _, row in df[keep & ~passed].iterrows():
            failed = [f"{c}={_qc_value(row[c])}" for c, accepted in QC_ACCEPTED.items() if row[c] not in accepted]
            excluded.append(_exclusion(row, "failed quality check (nilearn rule): " + ", ".join(failed)))
        keep &= passed
    kept = df[keep].copy()
    kept.attrs = dict(df.attrs)
    return kept, excluded


def _exclusion(row: pd.Series, reason: str) -> dict[str, Any]:
    return {"sub_id": int(row["SUB_ID"]), "file_id": str(row["FILE_ID"]), "site": str(row["SITE_ID"]),
            "reason": reason}


def _qc_value(value: Any) -> str:
    return "empty" if value is None or (isinstance(value, float) and np.isnan(value)) else repr(value)


def _rows(index: list[int], limit: int = 5) -> str:
    shown = ", ".join(str(i + 2) for i in index[:limit])  # +2: header line and 1-based lines
    return f"{shown}{' ...' if len(index) > limit else ''} (file lines)"


def _numeric_column(df: pd.DataFrame, column: str, path: Path) -> pd.Series:
    values = pd.to_numeric(df[column], errors="coerce")
    text = df[column].astype(str).str.strip()
    bad = df.index[values.isna() & df[column].notna() & (text != "")].tolist()
    if bad:
        raise InputError(f"{path}: column {column!r} must be numeric; non-numeric values "
                         f"{df.loc[bad[:3], column].tolist()} in rows {_rows(bad)}")
    values = values.astype(float)
    return values.where(values != MISSING_CODE, np.nan)


def _integer_column(df: pd.DataFrame, column: str, path: Path) -> pd.Series:
    values = _numeric_column(df, column, path)
    bad = df.index[values.isna() | (values != np.round(values))].tolist()
    if bad:
        raise InputError(f"{path}: column {column!r} must hold integers; missing or invalid in rows {_rows(bad)}")
    return values.astype(np.int64)


def _coded_column(df: pd.DataFrame, column: str, codes: tuple[int, ...], path: Path, meaning: str) -> pd.Series:
    values = _numeric_column(df, column, path)
    bad = df.index[~values.isin(codes)].tolist()
    if bad:
        raise InputError(f"{path}: column {column!r} must be one of {list(codes)} ({meaning}); got "
                         f"{df.loc[bad[:3], column].tolist()} in rows {_rows(bad)}")
    return values.astype(np.int64)

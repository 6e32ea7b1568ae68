"""Load an ABIDE cohort (real or simulated) into arrays: fMRI connectivity, sMRI features, text.

``load_abide_cohort`` reads the phenotype, applies nilearn's quality filter, matches subjects to
their ROI time series and FreeSurfer rows (by FILE_ID or SUB_ID), computes connectivity, builds
the phenotype texts ("age: <age>, gender: <gender>" by default; the fields are chosen from
:data:`~pmrl_sci.data.abide.text_fields.TEXT_FIELDS`, never a diagnosis-derived one) and their embeddings, and
caches the result keyed by the input files' fingerprints and the settings.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from pmrl_sci.data.abide.connectivity import KINDS, compute_connectivity
from pmrl_sci.data.abide.phenotype import PHENOTYPE_FILENAME, quality_filter, read_phenotype
from pmrl_sci.data.abide.text_fields import (
    DEFAULT_TEXT_FIELDS,
    EXCLUDED_FIELDS,
    check_text_fields,
    phenotype_texts,
    phenotype_values,
)
from pmrl_sci.data.abide.timeseries import (
    ATLAS_ROIS,
    DEFAULT_MIN_TIMEPOINTS,
    atlases_found,
    check_atlas,
    read_roi_timeseries,
    scan_roi_files,
)
from pmrl_sci.errors import InputError
from pmrl_sci.io import atomic_save_npz, file_fingerprint, stable_hash

logger = logging.getLogger(__name__)

MODALITIES: tuple[str, ...] = ("fmri", "smri", "text")
COHORT_CACHE_VERSION = 4  # 4: the ROI time series are kept (fmri_series)
_FS_TABLE_SUFFIXES = (".txt", ".tsv", ".csv")
NO_FREESURFER_ROW = "no FreeSurfer row"


@dataclass
class AbideCohort:
    """Subjects with their labels, covariates and modality arrays (row ``i`` is one subject).

    Attributes
    ----------
    subject_ids : list of str
        ``FILE_ID`` per subject.
    sub_ids : ndarray of int
        ``SUB_ID``.
    sites : ndarray of str
        ``SITE_ID``.
    labels : ndarray of int
        1 = autism, 0 = control.
    age : ndarray of float
        Years.
    sex : ndarray of int
        1 = male, 2 = female (ABIDE coding).
    fiq : ndarray of float
        Full-scale IQ, NaN when missing.
    fmri : ndarray or None
        ``[N, 2, R, R]`` float32: Fisher-z Pearson (channel 0) and partial (channel 1)
        correlation; zeros where ``mask["fmri"]`` is False.
    fmri_series : ndarray or None
        The ROI time series behind ``fmri``, all subjects' ``[T_i, R]`` float32 arrays stacked along time
        (``[sum T_i, R]``); subject ``i`` is ``fmri_series[fmri_offsets[i]:fmri_offsets[i + 1]]`` (empty where
        ``mask["fmri"]`` is False). See :meth:`timeseries`.
    fmri_offsets : ndarray or None
        ``[N + 1]`` int64 row offsets into ``fmri_series``.
    smri : ndarray or None
        ``[N, F]`` float32 raw FreeSurfer measures (not harmonised); zeros where masked.
    smri_features : list of str
        Column names of ``smri``.
    text : list of str or None
        The phenotype text ("age: <age>, gender: <gender>" with the default fields).
    text_embeddings : ndarray or None
        ``[N, H]`` float32 frozen sentence embeddings of ``text``.
    mask : dict of str to ndarray of bool
        Which subjects have each requested modality.
    phenotype : dict of str to ndarray of float
        The text fields as numbers (NaN = not stated; see
        :func:`~pmrl_sci.data.abide.text_fields.phenotype_values`), whether or not text is a modality.
    report : dict
        What was read, excluded (with reasons) and cached.
    """

    subject_ids: list[str]
    sub_ids: np.ndarray
    sites: np.ndarray
    labels: np.ndarray
    age: np.ndarray
    sex: np.ndarray
    fiq: np.ndarray
    fmri: np.ndarray | None = None
    fmri_series: np.ndarray | None = None
    fmri_offsets: np.ndarray | None = None
    smri: np.ndarray | None = None
    smri_features: list[str] = field(default_factory=list)
    text: list[str] | None = None
    text_embeddings: np.ndarray | None = None
    mask: dict[str, np.ndarray] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)
    phenotype: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.subject_ids)

    @property
    def modalities(self) -> list[str]:
        """The modalities loaded, in the kit's order."""
        return [m for m in MODALITIES if m in self.mask]

    def timeseries(self, i: int) -> np.ndarray:
        """Subject ``i``'s ROI time series ``[T_i, R]`` (``T_i = 0`` without fMRI)."""
        if self.fmri_series is None or self.fmri_offsets is None:
            raise ValueError("this cohort holds no ROI time series (fmri was not loaded)")
        return self.fmri_series[self.fmri_offsets[i]:self.fmri_offsets[i + 1]]

    def subset(self, indices: Sequence[int] | np.ndarray) -> AbideCohort:
        """A cohort of the rows ``indices`` (the report is shared, not copied)."""
        idx = np.asarray(indices, dtype=int)
        series = offsets = None
        if self.fmri_series is not None:
            series, offsets = pack_series([self.timeseries(i) for i in idx], self.fmri_series.shape[1])
        return AbideCohort(fmri_series=series, fmri_offsets=offsets,
            subject_ids=[self.subject_ids[i] for i in idx], sub_ids=self.sub_ids[idx], sites=self.sites[idx],
            labels=self.labels[idx], age=self.age[idx], sex=self.sex[idx], fiq=self.fiq[idx],
            fmri=None if self.fmri is None else self.fmri[idx], smri=None if self.smri is None else self.smri[idx],
            smri_features=list(self.smri_features), text=None if self.text is None else [self.text[i] for i in idx],
            text_embeddings=None if self.text_embeddings is None else self.text_embeddings[idx],
            mask={m: v[idx] for m, v in self.mask.items()}, report=self.report,
            phenotype={f: v[idx] for f, v in self.phenotype.items()})


def pack_series(series: Sequence[np.ndarray | None], n_rois: int) -> tuple[np.ndarray, np.ndarray]:
    """Stack per-subject ``[T_i, R]`` series (None: no fMRI, ``T_i = 0``) into ``(rows, offsets)``."""
    arrays = [np.zeros((0, n_rois), np.float32) if ts is None else np.asarray(ts, np.float32) for ts in series]
    offsets = np.zeros(len(arrays) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(a) for a in arrays])
    stacked = np.concatenate(arrays, axis=0) if arrays else np.zeros((0, n_rois), np.float32)
    return stacked, offsets


def format_age(age: float) -> str:
    """Age in years with at most one decimal ("12.7", "24"); "unknown" when missing."""
    if age is None or not np.isfinite(age):
        return "unknown"
    text = f"{float(age):.1f}"
    return text[:-2] if text.endswith(".0") else text


def subject_text(age: float, sex: int) -> str:
    """The text modality: ``"age: <age>, gender: <male|female>"``."""
    gender = {1: "male", 2: "female"}.get(int(sex), "unknown")
    return f"age: {format_age(age)}, gender: {gender}"


def find_phenotype(data_dir: str | os.PathLike[str]) -> Path:
    """Locate ``Phenotypic_V1_0b_preprocessed1.csv`` in ``data_dir`` or ``data_dir/ABIDE_pcp``."""
    root = Path(data_dir)
    # the root, nilearn's ABIDE_pcp folder, or ABIDE_pcp above a strategy folder given as the root
    folders = [root, root / "ABIDE_pcp", root.parent.parent]
    for folder in folders:
        if (folder / PHENOTYPE_FILENAME).is_file():
            return folder / PHENOTYPE_FILENAME
    raise FileNotFoundError(f"ABIDE phenotype {PHENOTYPE_FILENAME} not found (looked in "
                            f"{', '.join(str(f) for f in folders)}); pass phenotype_path")


def load_abide_cohort(data_dir: str | os.PathLike[str], *, atlas: str = "cc200", pipeline: str = "cpac",
                      strategy: str = "filt_noglobal", freesurfer_dir: str | os.PathLike[str] | None = None,
                      modalities: Sequence[str] = MODALITIES, quality_checked: bool = True,
                      text_model: str | None = None, cache_dir: str | os.PathLike[str] | None = None,
                      progress: bool = True, strict: bool = False,
                      phenotype_path: str | os.PathLike[str] | None = None,
                      min_timepoints: int = DEFAULT_MIN_TIMEPOINTS,
                      text_fields: Sequence[str] = DEFAULT_TEXT_FIELDS) -> AbideCohort:
    """Read an ABIDE(-like) cohort into an :class:`AbideCohort`.

    Parameters
    ----------
    data_dir : path-like
        Root holding ``ABIDE_pcp/<pipeline>/<strategy>/`` (any of the three layouts of
        :func:`~pmrl_sci.data.abide.timeseries.find_roi_files`) and the phenotype CSV
        (in the root or in ``ABIDE_pcp/``).
    atlas, pipeline, strategy : str
        Which ROI time series.
    freesurfer_dir : path-like, optional
        FreeSurfer group tables or per-subject stats folders; default ``<data_dir>/freesurfer``.
    modalities : sequence of str
        From ``("fmri", "smri", "text")``.
    quality_checked : bool
        Apply nilearn's rater quality filter.
    text_model : str, optional
        Text model for the embeddings (default the shipped MiniLM).
    cache_dir : path-like, optional
        Where to cache the preprocessed arrays and text embeddings.
    progress : bool
        tqdm bars over subjects.
    strict : bool
        Raise on a bad ``.1D`` file instead of marking the subject's fMRI missing.
    phenotype_path : path-like, optional
        The phenotype CSV, when not in ``data_dir``.
    min_timepoints : int
        Fewest time points accepted per subject.
    text_fields : sequence of str
        Phenotype fields of the text (from ``TEXT_FIELDS``; default age and sex); a diagnosis-derived field
        is refused.

    Returns
    -------
    AbideCohort
        Subjects with at least one requested modality. Missing modalities are zero-filled
        and ``False`` in ``mask``; subjects with none are excluded. ``report`` holds
        ``n_phenotype``, ``excluded`` (sub_id, file_id, site, reason), ``connectivity``
        (zero-ROI counts), ``sites``, ``n_per_class``, ``missing_modalities``,
        ``bad_files``, ``duplicate_roi_files`` (FILE_ID -> identical copies not read),
        ``smri_notes`` (FILE_ID -> why its sMRI is missing), ``settings``, ``cache``
        (``"hit"`` or ``"miss"``) and ``counts``: subjects, duplicate_roi_files, bad_roi_files,
        subjects_with_zero_rois, zero_rois, no_freesurfer_row, incomplete_freesurfer_row
        (a missing value in the subject's FreeSurfer row: its sMRI is masked), fiq_missing
        and excluded; ``text_fields`` and ``excluded_fields`` (never in the text).

    Raises
    ------
    InputError
        Unknown modality or atlas, a data file / FreeSurfer row whose key matches no
        phenotype subject, a requested modality with no data for any subject, or (with
        ``strict``) a bad ``.1D`` file.
    FileNotFoundError
        Missing phenotype, ROI folder or FreeSurfer folder.
    """
    modalities = _check_modalities(modalities)
    text_fields = check_text_fields(text_fields, option="text_fields")
    atlas = check_atlas(atlas)
    data_dir = Path(data_dir)
    pheno_path = Path(phenotype_path) if phenotype_path is not None else find_phenotype(data_dir)
    phenotype = read_phenotype(pheno_path)
    kept, excluded = quality_filter(phenotype, quality_checked=quality_checked)
    file_ids = set(phenotype["FILE_ID"])
    settings = {"atlas": atlas, "pipeline": pipeline, "strategy": strategy, "modalities": modalities,
                "quality_checked": quality_checked, "strict": strict, "min_timepoints": min_timepoints,
                "text_model": text_model, "kinds": list(KINDS), "text_fields": text_fields}

    roi_files: dict[str, Path] = {}
    duplicate_roi_files: dict[str, list[str]] = {}
    if "fmri" in modalities:
        scan = scan_roi_files(data_dir, atlas, pipeline, strategy)
        roi_files = scan.files
        duplicate_roi_files = {f: [str(p) for p in paths] for f, paths in scan.duplicates.items()}
        if duplicate_roi_files:
            logger.info("ABIDE: %d identical extra copies of ROI files in a second layout were skipped",
                        scan.n_duplicates)
        if not roi_files:
            present = atlases_found(data_dir, pipeline, strategy)
            hint = (f"this folder has files of atlas {', '.join(present)}: pass --atlas {present[0]}"
                    if present else "check --atlas and the data folder")
            raise InputError(f"modality 'fmri' requested but no '*_rois_{atlas}.1D' file was found under "
                             f"{data_dir} (pipeline {pipeline!r}, strategy {strategy!r}); {hint}, or drop fmri "
                             "from the modalities")
        unmatched = sorted(set(roi_files) - file_ids)
        if unmatched:
            raise InputError(f"{len(unmatched)} ROI file(s) have a FILE_ID that matches no subject of {pheno_path}: "
                             f"{[str(roi_files[f]) for f in unmatched[:5]]}; is it the phenotype of this data?")
    fs_dir: Path | None = None
    if "smri" in modalities:
        fs_dir = Path(freesurfer_dir) if freesurfer_dir is not None else data_dir / "freesurfer"
        if not fs_dir.is_dir():
            raise FileNotFoundError(f"modality 'smri' requested but the FreeSurfer folder {fs_dir} does not exist; "
                                    "pass freesurfer_dir (--freesurfer-dir) or drop smri from the modalities")

    cache_path: Path | None = None
    if cache_dir is not None:
        inputs = [file_fingerprint(pheno_path), [file_fingerprint(roi_files[f]) for f in sorted(roi_files)],
                  [file_fingerprint(p) for p in _freesurfer_files(fs_dir)] if fs_dir is not None else []]
        key = stable_hash("abide-cohort", COHORT_CACHE_VERSION, settings, inputs)
        cache_path = Path(cache_dir) / f"abide_cohort_{key}.npz"
        if cache_path.is_file():
            cohort = _load_cache(cache_path)
            cohort.report["cache"] = "hit"
            cohort.report["cache_file"] = str(cache_path)
            logger.info("ABIDE cohort: reusing cached arrays %s", cache_path)
            return cohort

    rows = kept.reset_index(drop=True)
    n = len(rows)
    bad_files: dict[str, str] = {}
    available: dict[str, np.ndarray] = {}
    fmri_full = conn_report = None
    if "fmri" in modalities:
        series: list[np.ndarray] = []
        row_series: list[np.ndarray | None] = [None] * n
        have = np.zeros(n, dtype=bool)
        for i, file_id in enumerate(tqdm(rows["FILE_ID"], desc="reading ROI time series", unit="subject",
                                         disable=not progress)):
            path = roi_files.get(file_id)
            if path is None:
                continue
            try:
                series.append(read_roi_timeseries(path, ATLAS_ROIS[atlas], min_timepoints=min_timepoints))
                row_series[i] = series[-1]
            except ValueError as exc:
                if strict:
                    raise
                bad_files[file_id] = str(exc)
                logger.warning("skipping fMRI of %s: %s", file_id, exc)
                continue
            have[i] = True
        if not have.any():
            raise InputError(f"modality 'fmri': none of the {n} selected subjects has a readable ROI file under "
                             f"{data_dir} ({len(bad_files)} bad file(s): {list(bad_files.values())[:3]})")
        matrices, conn_report = compute_connectivity(series, list(rows.loc[have, "FILE_ID"]), progress=progress)
        fmri_full = np.zeros((n, *matrices.shape[1:]), dtype=np.float32)
        fmri_full[have] = matrices
        available["fmri"] = have
    smri_full = None
    smri_features: list[str] = []
    smri_notes: dict[str, str] = {}
    if "smri" in modalities:
        smri_full, have, smri_features, smri_notes = _read_smri(fs_dir, phenotype, rows)
        if not have.any():
            raise InputError(f"modality 'smri': the FreeSurfer data in {fs_dir} covers none of the {n} selected "
                             "subjects (matched by FILE_ID or SUB_ID)")
        available["smri"] = have
    if "text" in modalities:
        available["text"] = np.ones(n, dtype=bool)

    any_data = np.zeros(n, dtype=bool)
    for have in available.values():
        any_data |= have
    missing_modalities: dict[str, list[str]] = {}
    for i, file_id in enumerate(rows["FILE_ID"]):
        missing = [m for m in modalities if not available[m][i]]
        if missing:
            missing_modalities[file_id] = missing
        if not any_data[i]:
            reasons = [_missing_reason(m, file_id, roi_files, bad_files, smri_notes) for m in missing]
            excluded.append({"sub_id": int(rows.at[i, "SUB_ID"]), "file_id": file_id,
                             "site": str(rows.at[i, "SITE_ID"]),
                             "reason": "no data for any requested modality: " + "; ".join(reasons)})
    keep = np.flatnonzero(any_data)
    rows = rows.iloc[keep].reset_index(drop=True)
    texts = phenotype_texts(rows, text_fields)
    text_embeddings = None
    if "text" in modalities:
        from pmrl_sci.data.text import embed_texts

        text_cache = Path(cache_dir) / "text" if cache_dir is not None else None
        text_embeddings = np.asarray(embed_texts(texts, text_model, cache_dir=text_cache), dtype=np.float32)
    labels = (rows["DX_GROUP"].to_numpy() == 1).astype(np.int64)
    sites = np.array(rows["SITE_ID"].astype(str).tolist(), dtype=str)
    report: dict[str, Any] = {
        "data_dir": str(data_dir), "phenotype": str(pheno_path), "freesurfer_dir": str(fs_dir) if fs_dir else None,
        "settings": settings, "n_phenotype": int(len(phenotype)), "n_after_quality_filter": int(n),
        "n_subjects": int(len(rows)), "excluded": excluded,
        "n_excluded": len(excluded), "sites": dict(sorted(Counter(sites.tolist()).items())),
        "n_per_class": {"autism": int(labels.sum()), "control": int(len(labels) - labels.sum())},
        "missing_modalities": {k: v for k, v in missing_modalities.items() if k in set(rows["FILE_ID"])},
        "n_missing": {m: int(len(rows) - available[m][keep].sum()) for m in modalities},
        "bad_files": bad_files, "smri_notes": smri_notes, "connectivity": conn_report,
        "n_fiq_missing": int(rows["FIQ"].isna().sum()),
        "duplicate_roi_files": duplicate_roi_files,
        "text_fields": text_fields, "excluded_fields": list(EXCLUDED_FIELDS),
    }
    report["counts"] = _report_counts(report, list(rows["FILE_ID"]))
    kept_series = kept_offsets = None
    if fmri_full is not None:
        kept_series, kept_offsets = pack_series([row_series[i] for i in keep], fmri_full.shape[-1])
    cohort = AbideCohort(
        subject_ids=rows["FILE_ID"].astype(str).tolist(), sub_ids=rows["SUB_ID"].to_numpy(np.int64), sites=sites,
        labels=labels, age=rows["AGE_AT_SCAN"].to_numpy(np.float64), sex=rows["SEX"].to_numpy(np.int64),
        fiq=rows["FIQ"].to_numpy(np.float64), fmri=None if fmri_full is None else fmri_full[keep],
        fmri_series=kept_series, fmri_offsets=kept_offsets,
        smri=None if smri_full is None else smri_full[keep], smri_features=smri_features,
        text=texts if "text" in modalities else None, text_embeddings=text_embeddings,
        mask={m: available[m][keep] for m in modalities}, report=report,
        phenotype=phenotype_values(rows, text_fields))
    cohort.report["cache"] = "miss" if cache_path is not None else "disabled"
    if cache_path is not None:
        _save_cache(cache_path, cohort)
        cohort.report["cache_file"] = str(cache_path)
    return cohort


def _report_counts(report: dict[str, Any], file_ids: list[str]) -> dict[str, int]:
    """The data report's summary: how many subjects (of the cohort) each data problem touched."""
    notes = report["smri_notes"]
    conn = report["connectivity"] or {}
    return {
        "subjects": report["n_subjects"],
        "duplicate_roi_files": sum(len(paths) for paths in report["duplicate_roi_files"].values()),
        "bad_roi_files": len(report["bad_files"]),
        "subjects_with_zero_rois": int(conn.get("n_subjects_with_zero_rois", 0)),
        "zero_rois": int(conn.get("total_zero_rois", 0)),
        "no_freesurfer_row": sum(notes.get(f) == NO_FREESURFER_ROW for f in file_ids),
        "incomplete_freesurfer_row": sum(f in notes and notes[f] != NO_FREESURFER_ROW for f in file_ids),
        "fiq_missing": report["n_fiq_missing"],
        "excluded": report["n_excluded"],
    }


def _check_modalities(modalities: Sequence[str]) -> list[str]:
    if isinstance(modalities, str):
        modalities = [modalities]
    chosen = list(dict.fromkeys(str(m).lower() for m in modalities))
    unknown = [m for m in chosen if m not in MODALITIES]
    if unknown or not chosen:
        raise InputError(f"unknown or no ABIDE modalities {unknown or chosen}; choose from {list(MODALITIES)}")
    return [m for m in MODALITIES if m in chosen]


def _freesurfer_files(fs_dir: Path) -> list[Path]:
    files = [p for p in fs_dir.iterdir() if p.is_file() and p.suffix.lower() in _FS_TABLE_SUFFIXES]
    files += list(fs_dir.glob("*/stats/*.stats"))
    return sorted(files)


def _read_smri(fs_dir: Path, phenotype: pd.DataFrame, rows: pd.DataFrame
               ) -> tuple[np.ndarray, np.ndarray, list[str], dict[str, str]]:
    """FreeSurfer features aligned to ``rows``; keys matched by FILE_ID, then SUB_ID."""
    from pmrl_sci.data.abide.freesurfer import read_freesurfer_dir

    table = read_freesurfer_dir(fs_dir)
    by_file = {f: f for f in phenotype["FILE_ID"] if f != "no_filename"}
    by_sub = dict(zip(phenotype["SUB_ID"].astype(int), phenotype["FILE_ID"]))
    sub_of_file = dict(zip(phenotype["FILE_ID"], phenotype["SUB_ID"].astype(int)))
    matched: dict[str, str] = {}  # phenotype key (FILE_ID, or "sub:<SUB_ID>") -> table key
    unmatched: list[str] = []
    for key in table.index.astype(str):
        target = None
        if key in by_file:
            target = key
        elif key.strip().isdigit() and int(key) in by_sub:
            target = f"sub:{int(key)}"
        if target is None:
            unmatched.append(key)
            continue
        sub = sub_of_file[target] if not target.startswith("sub:") else int(target[4:])
        canonical = f"sub:{sub}"
        if canonical in matched:
            raise InputError(f"{fs_dir}: FreeSurfer subjects {matched[canonical]!r} and {key!r} are the same "
                             f"phenotype subject (SUB_ID {sub})")
        matched[canonical] = key
    if unmatched:
        raise InputError(f"{fs_dir}: {len(unmatched)} FreeSurfer subject key(s) match no FILE_ID or SUB_ID of the "
                         f"phenotype: {unmatched[:5]}; is it the FreeSurfer output of this cohort?")
    features = [str(c) for c in table.columns]
    values = np.zeros((len(rows), len(features)), dtype=np.float32)
    have = np.zeros(len(rows), dtype=bool)
    notes: dict[str, str] = {}
    numeric = table.to_numpy(dtype=np.float64)
    position = {key: i for i, key in enumerate(table.index.astype(str))}
    for i, (file_id, sub) in enumerate(zip(rows["FILE_ID"], rows["SUB_ID"].astype(int))):
        key = matched.get(f"sub:{sub}")
        if key is None:
            notes[file_id] = NO_FREESURFER_ROW
            continue
        row = numeric[position[key]]
        if not np.all(np.isfinite(row)):
            lacking = [features[j] for j in np.flatnonzero(~np.isfinite(row))]
            notes[file_id] = f"incomplete FreeSurfer data ({len(lacking)} missing features, e.g. {lacking[:3]})"
            continue
        values[i] = row
        have[i] = True
    return values, have, features, notes


def _missing_reason(modality: str, file_id: str, roi_files: dict[str, Path], bad_files: dict[str, str],
                    smri_notes: dict[str, str]) -> str:
    if modality == "fmri":
        if file_id in bad_files:
            return f"fmri: bad ROI file ({bad_files[file_id]})"
        return "fmri: no ROI file"
    if modality == "smri":
        return f"smri: {smri_notes.get(file_id, NO_FREESURFER_ROW)}"
    return f"{modality}: missing"


def _save_cache(path: Path, cohort: AbideCohort) -> None:
    arrays: dict[str, np.ndarray] = {
        "subject_ids": np.array(cohort.subject_ids, dtype=str), "sub_ids": cohort.sub_ids,
        "sites": np.asarray(cohort.sites, dtype=str),
        "labels": cohort.labels, "age": cohort.age, "sex": cohort.sex, "fiq": cohort.fiq,
        "smri_features": np.array(cohort.smri_features, dtype=str),
        "modalities": np.array(cohort.modalities, dtype=str),
        "report": np.array(json.dumps(cohort.report, default=_json_default)),
    }
    for name in ("fmri", "fmri_series", "fmri_offsets", "smri", "text_embeddings"):
        value = getattr(cohort, name)
        if value is not None:
            arrays[name] = value
    if cohort.text is not None:
        arrays["text"] = np.array(cohort.text, dtype=str)
    for modality, mask in cohort.mask.items():
        arrays[f"mask_{modality}"] = mask
    for name, values in cohort.phenotype.items():
        arrays[f"phenotype_{name}"] = values
    atomic_save_npz(path, **arrays)


def _load_cache(path: Path) -> AbideCohort:
    with np.load(path, allow_pickle=False) as data:
        modalities = [str(m) for m in data["modalities"]]
        return AbideCohort(
            subject_ids=[str(s) for s in data["subject_ids"]], sub_ids=data["sub_ids"], sites=data["sites"].astype(str),
            labels=data["labels"], age=data["age"], sex=data["sex"], fiq=data["fiq"],
            fmri=data["fmri"] if "fmri" in data else None,
            fmri_series=data["fmri_series"] if "fmri_series" in data else None,
            fmri_offsets=data["fmri_offsets"] if "fmri_offsets" in data else None,
            smri=data["smri"] if "smri" in data else None,
            smri_features=[str(s) for s in data["smri_features"]],
            text=[str(s) for s in data["text"]] if "text" in data else None,
            text_embeddings=data["text_embeddings"] if "text_embeddings" in data else None,
            mask={m: data[f"mask_{m}"] for m in modalities}, report=json.loads(str(data["report"])),
            phenotype={k[len("phenotype_"):]: data[k] for k in data.files if k.startswith("phenotype_")})


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, (np.ndarray, Path)):
        return obj.tolist() if isinstance(obj, np.ndarray) else str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def fetch_abide(data_dir: str | os.PathLike[str], atlas: str = "cc200", *, pipeline: str = "cpac",
                strategy: str = "filt_noglobal", quality_checked: bool = True, n_subjects: int | None = None,
                verbose: int = 1) -> Path:
    """Download ABIDE Preprocessed ROI time series and the phenotype with nilearn (network access).

    Calls ``nilearn.datasets.fetch_abide_pcp(derivatives=["rois_<atlas>"], ...)``, which stores
    the files under ``<data_dir>/ABIDE_pcp/<pipeline>/<strategy>/`` (the flat layout) and the
    phenotype under ``<data_dir>/ABIDE_pcp/``; only called when asked (``--download``).

    Parameters
    ----------
    data_dir : path-like
        Download root.
    atlas, pipeline, strategy : str
        What to fetch; ``strategy`` is ``[no]filt_[no]global``.
    quality_checked : bool
        Fetch only subjects passing nilearn's rater filter.
    n_subjects : int, optional
        Fetch the first ``n_subjects`` only.
    verbose : int
        nilearn's verbosity.

    Returns
    -------
    pathlib.Path
        ``data_dir``, ready for :func:`load_abide_cohort`.
    """
    from nilearn.datasets import fetch_abide_pcp

    atlas = check_atlas(atlas)
    parts = strategy.split("_")
    if len(parts) != 2 or parts[0] not in ("filt", "nofilt") or parts[1] not in ("global", "noglobal"):
        raise InputError(f"strategy must be one of filt_global, filt_noglobal, nofilt_global, nofilt_noglobal; "
                         f"got {strategy!r}")
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    fetch_abide_pcp(data_dir=str(data_dir), n_subjects=n_subjects, pipeline=pipeline,
                    band_pass_filtering=parts[0] == "filt", global_signal_regression=parts[1] == "global",
                    derivatives=[f"rois_{atlas}"], quality_checked=quality_checked, verbose=verbose)
    return data_dir

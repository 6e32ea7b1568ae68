"""FreeSurfer writers: per-subject stats files and group tables in FreeSurfer 6's layout.

Only the simulated-cohort generator (:mod:`pmrl_sci.data.abide.generator`) and the tests write FreeSurfer
files; the readers live in :mod:`pmrl_sci.data.abide.freesurfer`. What is written here reads back through
those readers to the same feature table (``write_subject_stats`` + ``group_tables_from_subjects`` +
``write_group_tables`` give the two on-disk forms of the same subjects).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pmrl_sci.data.abide.freesurfer import (
    _APARC_CORTEX_MEASURES,
    _APARC_GLOBAL_IN_ASEG,
    _HEMIS,
    ASEG_MEASURES,
    SUBJECT_APARC_MEASURES,
    _table_name,
)
from pmrl_sci.io import atomic_write_text

__all__ = ["ASEG_STRUCTURES", "DK_REGIONS", "SubjectMorphometry", "group_tables_from_subjects", "write_group_tables",
           "write_subject_stats"]

#: aseg structures (FreeSurfer 6 names) with their ``SegId`` in FreeSurferColorLUT.txt.
ASEG_STRUCTURES: dict[str, int] = {
    "Left-Lateral-Ventricle": 4, "Left-Inf-Lat-Vent": 5, "Left-Cerebellum-White-Matter": 7,
    "Left-Cerebellum-Cortex": 8, "Left-Thalamus-Proper": 10, "Left-Caudate": 11, "Left-Putamen": 12,
    "Left-Pallidum": 13, "3rd-Ventricle": 14, "4th-Ventricle": 15, "Brain-Stem": 16, "Left-Hippocampus": 17,
    "Left-Amygdala": 18, "CSF": 24, "Left-Accumbens-area": 26, "Left-VentralDC": 28, "Left-vessel": 30,
    "Left-choroid-plexus": 31, "Right-Lateral-Ventricle": 43, "Right-Inf-Lat-Vent": 44,
    "Right-Cerebellum-White-Matter": 46, "Right-Cerebellum-Cortex": 47, "Right-Thalamus-Proper": 49,
    "Right-Caudate": 50, "Right-Putamen": 51, "Right-Pallidum": 52, "Right-Hippocampus": 53,
    "Right-Amygdala": 54, "Right-Accumbens-area": 58, "Right-VentralDC": 60, "Right-vessel": 62,
    "Right-choroid-plexus": 63, "5th-Ventricle": 72, "WM-hypointensities": 77, "non-WM-hypointensities": 80,
    "Optic-Chiasm": 85, "CC_Posterior": 251, "CC_Mid_Posterior": 252, "CC_Central": 253,
    "CC_Mid_Anterior": 254, "CC_Anterior": 255,
}
#: Desikan-Killiany regions of ``?h.aparc.stats`` in FreeSurfer's order.
DK_REGIONS: tuple[str, ...] = (
    "bankssts", "caudalanteriorcingulate", "caudalmiddlefrontal", "cuneus", "entorhinal", "fusiform",
    "inferiorparietal", "inferiortemporal", "isthmuscingulate", "lateraloccipital", "lateralorbitofrontal",
    "lingual", "medialorbitofrontal", "middletemporal", "parahippocampal", "paracentral", "parsopercularis",
    "parsorbitalis", "parstriangularis", "pericalcarine", "postcentral", "posteriorcingulate", "precentral",
    "precuneus", "rostralanteriorcingulate", "rostralmiddlefrontal", "superiorfrontal", "superiorparietal",
    "superiortemporal", "supramarginal", "frontalpole", "temporalpole", "transversetemporal", "insula",
)

_ASEG_COLUMNS = ("Index", "SegId", "NVoxels", "Volume_mm3", "StructName", "normMean", "normStdDev", "normMin",
                 "normMax", "normRange")
_APARC_COLUMNS = ("StructName", "NumVert", "SurfArea", "GrayVol", "ThickAvg", "ThickStd", "MeanCurv", "GausCurv",
                  "FoldInd", "CurvInd")


@dataclass
@dataclass
class SubjectMorphometry:
    """FreeSurfer measures of one subject, as the writers take them.

    Attributes
    ----------
    aseg : dict of str to float
        ``StructName`` -> ``Volume_mm3`` (mm^3).
    aparc : dict
        ``{"lh": {region: {"area": mm^2, "volume": mm^3, "thickness": mm}}, "rh": {...}}``.
    measures : dict of str to float
        Global measures by their asegstats2table name (keys of :data:`ASEG_MEASURES`, e.g.
        ``"EstimatedTotalIntraCranialVol"``, ``"BrainSegVolNotVent"``).
    """

    aseg: dict[str, float]
    aparc: dict[str, dict[str, dict[str, float]]]
    measures: dict[str, float] = field(default_factory=dict)


def _format_value(value: Any) -> str:
    return repr(float(value))


def write_group_tables(out_dir: str | os.PathLike[str], tables: Mapping[str, pd.DataFrame]) -> list[Path]:
    """Write tables tab-separated, as ``asegstats2table`` / ``aparcstats2table`` write them.

    Parameters
    ----------
    out_dir : path-like
        Folder (created when missing).
    tables : mapping of str to pandas.DataFrame
        File name -> table whose FIRST column is the header column (named ``Measure:volume`` or
        ``<hemi>.<parc>.<measure>``) holding the subject keys, the other columns numeric.

    Returns
    -------
    list of pathlib.Path
        The files written, in the mapping's order.

    Raises
    ------
    ValueError
        Naming the file name when the first column is not a recognised header, a value is not a finite
        number, subjects repeat or the table is empty.
    """
    out_dir = Path(out_dir)
    written: list[Path] = []
    for file_name, table in tables.items():
        path = out_dir / file_name
        if table.shape[1] < 2 or table.shape[0] == 0:
            raise ValueError(f"{file_name}: expected a non-empty table with the header column and at least "
                             f"one measure; got shape {table.shape}")
        header = [str(c) for c in table.columns]
        if _table_name(header[0], path) is None:
            raise ValueError(f"{file_name}: first column {header[0]!r} is not 'Measure:<measure>' or "
                             "'<lh|rh>.<parc>.<measure>'")
        keys = table.iloc[:, 0].astype(str).tolist()
        if len(set(keys)) != len(keys):
            raise ValueError(f"{file_name}: duplicated subject keys in column {header[0]!r}")
        data = table.iloc[:, 1:].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
        if not np.isfinite(data).all():
            bad = [header[1 + j] for j in np.flatnonzero(~np.isfinite(data).all(axis=0))]
            raise ValueError(f"{file_name}: non-numeric or non-finite values in column(s) {bad[:5]}")
        lines = ["\t".join(header)]
        lines += ["\t".join([key, *(_format_value(v) for v in row)]) for key, row in zip(keys, data)]
        atomic_write_text(path, "\n".join(lines) + "\n")
        written.append(path)
    return written


# ----------------------------------------------------------------------------------------------------------------
# Writers of per-subject stats files
# ----------------------------------------------------------------------------------------------------------------
def _round_aseg(volume: float) -> float:
    return float(f"{volume:.1f}")


def _round_aparc(measure: str, value: float) -> float:
    return float(f"{value:.3f}") if measure == "thickness" else float(round(value))


def _cortex_measures(regions: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """WhiteSurfArea (sum of region areas) and MeanThickness (area-weighted mean thickness), as written."""
    area = sum(float(r["area"]) for r in regions.values())
    thick = sum(float(r["area"]) * float(r["thickness"]) for r in regions.values()) / area if area > 0 else 0.0
    return {"area": float(f"{area:.6f}"), "thickness": float(f"{thick:.6f}")}


def _check_subject(aseg: Mapping[str, float], aparc: Mapping[str, Mapping[str, Mapping[str, float]]],
                   measures: Mapping[str, float], where: str) -> None:
    unknown = sorted(set(measures) - set(ASEG_MEASURES))
    if unknown:
        raise ValueError(f"{where}: unknown global measure(s) {unknown}; expected keys of ASEG_MEASURES "
                         "such as 'EstimatedTotalIntraCranialVol'")
    for name, value in {**aseg, **measures}.items():
        if not math.isfinite(float(value)):
            raise ValueError(f"{where}: value of {name!r} is not finite ({value!r})")
        if any(ch.isspace() for ch in name):
            raise ValueError(f"{where}: structure name {name!r} contains whitespace")
    for hemi, regions in aparc.items():
        if hemi not in _HEMIS:
            raise ValueError(f"{where}: aparc hemisphere must be 'lh' or 'rh', got {hemi!r}")
        for region, values in regions.items():
            missing = [m for m in SUBJECT_APARC_MEASURES if m not in values]
            if missing:
                raise ValueError(f"{where}: aparc[{hemi!r}][{region!r}] lacks {missing}; expected "
                                 f"{list(SUBJECT_APARC_MEASURES)}")
            if not all(math.isfinite(float(values[m])) for m in SUBJECT_APARC_MEASURES):
                raise ValueError(f"{where}: aparc[{hemi!r}][{region!r}] has a non-finite value")


def _measure_line(name: str, value: float) -> str:
    f1, f2, description, units = ASEG_MEASURES[name]
    return f"# Measure {f1}, {f2}, {description}, {value:.6f}, {units}"


def _aseg_stats_text(subject: str, aseg: Mapping[str, float], measures: Mapping[str, float]) -> str:
    lines = [
        "# Title Segmentation Statistics ",
        "# ",
        "# generating_program mri_segstats",
        "# cvs_version $Id: mri_segstats.c,v 1.121 2016/05/31 17:27:11 greve Exp $",
        "# cmdline mri_segstats --seg mri/aseg.mgz --sum stats/aseg.stats --pv mri/norm.mgz --empty "
        "--brainmask mri/brainmask.mgz --brain-vol-from-seg --excludeid 0 --excl-ctxgmwm --supratent "
        "--subcortgray --in mri/norm.mgz --in-intensity-name norm --in-intensity-units MR --etiv "
        "--surf-wm-vol --surf-ctx-vol --totalgray --euler --ctab $FREESURFER_HOME/ASegStatsLUT.txt "
        f"--subject {subject} ",
        "# sysname  Linux",
        "# hostname pmrl-sci",
        "# machine  x86_64",
        "# user     pmrl-sci",
        "# anatomy_type volume",
        "# ",
        "# SUBJECTS_DIR /subjects",
        f"# subjectname {subject}",
    ]
    lines += [_measure_line(name, float(value)) for name, value in measures.items()]
    lines += [
        "# SegVolFile mri/aseg.mgz ",
        "# ColorTable $FREESURFER_HOME/ASegStatsLUT.txt ",
        "# InVolFile  mri/norm.mgz ",
        "# Excluding Cortical Gray and White Matter",
        "# ExcludeSegId 0 2 3 41 42 ",
        "# VoxelVolume_mm3 1 ",
        "# TableCol  1 ColHeader Index ",
        "# TableCol  2 ColHeader SegId ",
        "# TableCol  3 ColHeader NVoxels ",
        "# TableCol  4 ColHeader Volume_mm3 ",
        "# TableCol  5 ColHeader StructName ",
        f"# NRows {len(aseg)} ",
        f"# NTableCols {len(_ASEG_COLUMNS)} ",
        "# ColHeaders  " + " ".join(_ASEG_COLUMNS),
    ]
    next_id = 1000
    for index, (name, volume) in enumerate(aseg.items(), start=1):
        seg_id = ASEG_STRUCTURES.get(name)
        if seg_id is None:
            seg_id, next_id = next_id, next_id + 1
        volume = _round_aseg(float(volume))
        mean = 60.0 + (seg_id % 50)
        lines.append(f"{index:3d} {seg_id:4d} {round(volume):9d} {volume:10.1f}  {name:<32s} "
                     f"{mean:9.4f} {8.0:9.4f} {mean - 30:9.4f} {mean + 40:9.4f} {70.0:9.4f} ")
    return "\n".join(lines) + "\n"


def _aparc_stats_text(subject: str, hemi: str, regions: Mapping[str, Mapping[str, float]],
                      measures: Mapping[str, float]) -> str:
    cortex = _cortex_measures(regions)
    n_vert = sum(round(float(r["area"]) * 1.45) for r in regions.values())
    lines = [
        "# Table of FreeSurfer cortical parcellation anatomical statistics ",
        "# ",
        "# CreationTime 2017/01/01-00:00:00-GMT",
        "# generating_program mris_anatomical_stats",
        "# cvs_version $Id: mris_anatomical_stats.c,v 1.79 2016/03/14 15:15:34 greve Exp $",
        f"# cmdline mris_anatomical_stats -th3 -mgz -cortex ../label/{hemi}.cortex.label -f "
        f"../stats/{hemi}.aparc.stats -b -a ../label/{hemi}.aparc.annot -c ../label/aparc.annot.ctab "
        f"{subject} {hemi} white ",
        "# sysname  Linux",
        "# hostname pmrl-sci",
        "# machine  x86_64",
        "# user     pmrl-sci",
        "# ",
        "# SUBJECTS_DIR /subjects",
        "# anatomy_type surface",
        f"# subjectname {subject}",
        f"# hemi {hemi}",
        f"# AnnotationFile ../label/{hemi}.aparc.annot",
        "# AnnotationFileTimeStamp 2017/01/01 00:00:00",
        f"# Measure Cortex, NumVert, Number of Vertices, {n_vert}, unitless",
        f"# Measure Cortex, WhiteSurfArea, White Surface Total Area, {cortex['area']:.6f}, mm^2",
        f"# Measure Cortex, MeanThickness, Mean Thickness, {cortex['thickness']:.6f}, mm",
    ]
    lines += [_measure_line(name, float(measures[name]))
              for name in ("BrainSegVol", "BrainSegVolNotVent", "BrainSegVolNotVentSurf", "CortexVol",
                           "SupraTentorialVol", "SupraTentorialVolNotVent", "EstimatedTotalIntraCranialVol")
              if name in measures]
    lines.append(f"# NTableCols {len(_APARC_COLUMNS)}")
    for i, col in enumerate(_APARC_COLUMNS, start=1):
        lines.append(f"# TableCol {i:2d} ColHeader {col}")
    lines.append("# ColHeaders " + " ".join(_APARC_COLUMNS))
    for region, values in regions.items():
        area = _round_aparc("area", float(values["area"]))
        volume = _round_aparc("volume", float(values["volume"]))
        thickness = _round_aparc("thickness", float(values["thickness"]))
        lines.append(f"{region:<40s} {round(area * 1.45):6d} {int(area):6d} {int(volume):6d} {thickness:5.3f} "
                     f"{0.5:5.3f} {0.124:9.3f} {0.025:9.3f} {max(1, int(area / 100)):5d} {1.4:6.1f}")
    return "\n".join(lines) + "\n"


def write_subject_stats(subject_dir: str | os.PathLike[str], aseg: Mapping[str, float],
                        aparc: Mapping[str, Mapping[str, Mapping[str, float]]],
                        measures: Mapping[str, float] | None = None) -> list[Path]:
    """Write ``stats/aseg.stats`` and ``stats/?h.aparc.stats`` in FreeSurfer's layout.

    Values are written with FreeSurfer's precision: ``Volume_mm3`` to 0.1 mm^3, ``SurfArea`` and
    ``GrayVol`` as integers, ``ThickAvg`` to 0.001 mm, ``# Measure`` values with 6 decimals.
    ``WhiteSurfArea`` is the sum of the region areas and ``MeanThickness`` the area-weighted mean
    region thickness (FreeSurfer computes both on the surface; the regions tile the cortex).

    Parameters
    ----------
    subject_dir : path-like
        The subject's folder (its name is the subject key); ``stats/`` is created inside.
    aseg : mapping of str to float
        ``StructName`` -> volume (mm^3); names without whitespace.
    aparc : mapping
        ``{"lh": {region: {"area": .., "volume": .., "thickness": ..}}, "rh": {...}}``; a missing
        hemisphere writes no file for it.
    measures : mapping of str to float, optional
        Global measures keyed as in :data:`ASEG_MEASURES`; written as ``# Measure`` lines of
        ``aseg.stats`` (and, for the ones FreeSurfer repeats there, of ``?h.aparc.stats``).

    Returns
    -------
    list of pathlib.Path
        The files written.

    Raises
    ------
    ValueError
        Naming the subject folder and the offending entry for unknown measures, non-finite values, a
        wrong hemisphere or a region lacking area / volume / thickness.
    """
    subject_dir = Path(subject_dir)
    measures = dict(measures or {})
    _check_subject(aseg, aparc, measures, str(subject_dir))
    stats_dir = subject_dir / "stats"
    subject = subject_dir.name
    written: list[Path] = []
    if aseg or measures:
        if not aseg:
            raise ValueError(f"{subject_dir}: aseg.stats needs at least one structure volume")
        path = stats_dir / "aseg.stats"
        atomic_write_text(path, _aseg_stats_text(subject, aseg, measures))
        written.append(path)
    for hemi in _HEMIS:
        regions = aparc.get(hemi)
        if regions:
            path = stats_dir / f"{hemi}.aparc.stats"
            atomic_write_text(path, _aparc_stats_text(subject, hemi, regions, measures))
            written.append(path)
    return written


def group_tables_from_subjects(subjects: Mapping[str, SubjectMorphometry]) -> dict[str, pd.DataFrame]:
    """Build what asegstats2table / aparcstats2table would output for subjects written by
    :func:`write_subject_stats` (same rounding, same extra columns).

    Parameters
    ----------
    subjects : mapping of str to SubjectMorphometry
        Subject key -> measures.

    Returns
    -------
    dict of str to pandas.DataFrame
        ``"aseg_stats.txt"`` and ``"<hemi>.aparc.<measure>.txt"`` (area, volume, thickness) -> tables
        ready for :func:`write_group_tables`. A subject without aseg (or a hemisphere) is absent from
        those tables.
    """
    aseg_rows: list[dict[str, Any]] = []
    aparc_rows: dict[str, list[dict[str, Any]]] = {}
    for key, subject in subjects.items():
        measures = dict(subject.measures)
        _check_subject(subject.aseg, subject.aparc, measures, f"subject {key!r}")
        if subject.aseg:
            row: dict[str, Any] = {"Measure:volume": key}
            row.update({name: _round_aseg(float(v)) for name, v in subject.aseg.items()})
            row.update({name: float(f"{float(v):.6f}") for name, v in measures.items()})
            aseg_rows.append(row)
        for hemi in _HEMIS:
            regions = subject.aparc.get(hemi)
            if not regions:
                continue
            cortex = _cortex_measures(regions)
            for measure in SUBJECT_APARC_MEASURES:
                header = f"{hemi}.aparc.{measure}"
                row = {header: key}
                row.update({f"{hemi}_{region}_{measure}": _round_aparc(measure, float(values[measure]))
                            for region, values in regions.items()})
                if measure in _APARC_CORTEX_MEASURES:
                    row[f"{hemi}_{_APARC_CORTEX_MEASURES[measure][0]}_{measure}"] = cortex[measure]
                for name, aseg_name in _APARC_GLOBAL_IN_ASEG.items():
                    if aseg_name in measures:
                        row[name] = float(f"{float(measures[aseg_name]):.6f}")
                aparc_rows.setdefault(header, []).append(row)
    tables: dict[str, pd.DataFrame] = {}
    if aseg_rows:
        tables["aseg_stats.txt"] = pd.DataFrame(aseg_rows)
    for header, rows in aparc_rows.items():
        tables[f"{header}.txt"] = pd.DataFrame(rows)
    return tables


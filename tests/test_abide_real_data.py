"""The real ABIDE development files (../shared/data/abide-dev.tar.xz) read as they come.

Skipped, with the reason, when ../shared/data is absent (see the ``abide_dev`` fixture in conftest.py).
Numbers checked here come from the data's README (466 subjects after nilearn's quality filter, 10 sites,
Harvard-Oxford with 111 ROIs, 78 to 316 time points) and from the archive's layout (every subject in a
``<SUB_ID>/`` folder, 196 of them also as a byte-identical flat file).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest

from pmrl_sci.data.abide.cohort import load_abide_cohort
from pmrl_sci.data.abide.freesurfer import read_freesurfer_dir, read_group_table
from pmrl_sci.data.abide.phenotype import PHENOTYPE_FILENAME, quality_filter, read_phenotype
from pmrl_sci.data.abide.timeseries import ATLAS_ROIS, read_roi_timeseries, scan_roi_files

DEV_SITES = ("CALTECH", "CMU", "KKI", "LEUVEN_1", "LEUVEN_2", "NYU", "SDSU", "UCLA_1", "UCLA_2", "USM")
N_QUALITY_CHECKED = 466
N_FLAT_COPIES = 196


def _strategy(tree: Path) -> Path:
    return tree / "ABIDE_pcp" / "cpac" / "filt_noglobal"


def test_real_layout_is_read_and_identical_copies_are_deduplicated(abide_dev: Path) -> None:
    scan = scan_roi_files(abide_dev, "ho")
    strategy = _strategy(abide_dev)
    assert scan.folder == strategy
    assert len(scan.files) == N_QUALITY_CHECKED and scan.n_duplicates == N_FLAT_COPIES
    for file_id, copies in scan.duplicates.items():  # the flat file is read, its folder copy is the duplicate
        assert scan.files[file_id].parent == strategy and len(copies) == 1
        assert copies[0].parent.parent == strategy and copies[0].name == scan.files[file_id].name
        assert copies[0].read_bytes() == scan.files[file_id].read_bytes()
    per_subject = [path for path in scan.files.values() if path.parent != strategy]
    assert len(per_subject) == N_QUALITY_CHECKED - N_FLAT_COPIES
    assert all(path.parent.name.isdigit() for path in per_subject)  # <SUB_ID>/<FILE_ID>_rois_ho.1D


def test_real_phenotype_and_quality_filter(abide_dev: Path) -> None:
    path = abide_dev / "ABIDE_pcp" / PHENOTYPE_FILENAME
    with path.open(newline="") as handle:
        raw_fiq = [row["FIQ"].strip() for row in csv.DictReader(handle)]
    assert "" in raw_fiq and "-9999" in raw_fiq  # both spellings of a missing FIQ occur in the real file
    phenotype = read_phenotype(path)
    missing = [value in ("", "-9999") for value in raw_fiq]
    assert phenotype["FIQ"].isna().tolist() == missing
    assert sorted(phenotype["SITE_ID"].unique()) == sorted(DEV_SITES)
    kept, excluded = quality_filter(phenotype)
    assert len(kept) == N_QUALITY_CHECKED and len(excluded) == len(phenotype) - N_QUALITY_CHECKED
    assert set(kept["FILE_ID"]) == set(scan_roi_files(abide_dev, "ho").files)  # one ROI file per kept subject


def test_real_roi_files_parse(abide_dev: Path) -> None:
    files = scan_roi_files(abide_dev, "ho").files
    lengths = set()
    zero_roi_subjects = 0
    for path in files.values():
        series = read_roi_timeseries(path, ATLAS_ROIS["ho"])
        lengths.add(series.shape[0])
        zero_roi_subjects += bool(np.all(series == 0, axis=0).any())
    assert 78 <= min(lengths) and max(lengths) <= 316 and len(lengths) > 5  # per-site lengths
    assert 0.15 < zero_roi_subjects / len(files) < 0.3  # "about a quarter" have an all-zero ROI


def test_real_freesurfer6_tables_parse_keyed_by_file_id(abide_dev: Path) -> None:
    folder = abide_dev / "freesurfer"
    file_ids = set(read_phenotype(abide_dev / "ABIDE_pcp" / PHENOTYPE_FILENAME)["FILE_ID"])
    table = read_freesurfer_dir(folder)
    report = table.attrs["report"]
    assert set(report["tables"]) == {"aseg", *(f"{h}.aparc.{m}" for h in ("lh", "rh")
                                               for m in ("area", "thickness", "volume"))}
    assert set(table.index) <= file_ids and table.notna().all().all()
    assert report["unread_subfolders"] == [str(folder / "aparc.a2009s")]
    a2009s = read_freesurfer_dir(folder / "aparc.a2009s")
    assert set(a2009s.index) == set(table.index)
    for path in sorted((folder / "aparc.a2009s").glob("*.tsv")):
        name, one = read_group_table(path)
        assert name.startswith(("lh.aparc.a2009s.", "rh.aparc.a2009s.")) and one.notna().all().all()


def _site_subset(tree: Path, out: Path, sites: tuple[str, ...]) -> Path:
    """A data folder of links: the real phenotype and FreeSurfer tables, the ROI files (both layouts) of ``sites``."""
    strategy = _strategy(tree)
    subset = _strategy(out)
    subset.mkdir(parents=True)
    os.symlink(tree / "ABIDE_pcp" / PHENOTYPE_FILENAME, out / "ABIDE_pcp" / PHENOTYPE_FILENAME)
    prefixes = tuple(f"{site}_" for site in sites)
    for entry in strategy.iterdir():
        if entry.is_dir() and any(p.name.lower().startswith(prefixes) for p in entry.iterdir()):
            os.symlink(entry, subset / entry.name)
        elif entry.is_file() and entry.name.lower().startswith(prefixes):
            os.symlink(entry, subset / entry.name)
    return out


def test_real_cohort_loads_with_ho_and_freesurfer(abide_dev: Path, tmp_path: Path) -> None:
    """Two small sites (CALTECH: folders only; CMU: folders and flat copies), the full phenotype and FreeSurfer."""
    data = _site_subset(abide_dev, tmp_path / "data", ("caltech", "cmu"))
    cohort = load_abide_cohort(data, atlas="ho", freesurfer_dir=abide_dev / "freesurfer",
                               modalities=("fmri", "smri"), progress=False)
    counts = cohort.report["counts"]
    assert counts["subjects"] == len(cohort) == N_QUALITY_CHECKED  # text-free: sMRI keeps every subject
    have_fmri = [s for s, present in zip(cohort.subject_ids, cohort.mask["fmri"]) if present]
    assert len(have_fmri) == 26 and {s.split("_")[0] for s in have_fmri} == {"Caltech", "CMU"}
    assert counts["duplicate_roi_files"] == 11 and counts["bad_roi_files"] == 0
    assert counts["no_freesurfer_row"] == 0 and counts["incomplete_freesurfer_row"] == 0
    assert cohort.mask["smri"].all() and np.isfinite(cohort.smri).all()
    assert counts["fiq_missing"] == int(np.isnan(cohort.fiq).sum()) > 0
    assert cohort.fmri.shape[1:] == (2, 111, 111) and np.isfinite(cohort.fmri).all()
    assert counts["subjects_with_zero_rois"] == cohort.report["connectivity"]["n_subjects_with_zero_rois"]


@pytest.mark.slow
def test_real_cohort_full_data_report(abide_dev: Path) -> None:
    """All 466 subjects (about half a minute: connectivity of every subject); run with ``-m slow``."""
    cohort = load_abide_cohort(abide_dev, atlas="ho", freesurfer_dir=abide_dev / "freesurfer",
                               modalities=("fmri", "smri"), progress=False)
    counts = cohort.report["counts"]
    assert counts["subjects"] == N_QUALITY_CHECKED and counts["duplicate_roi_files"] == N_FLAT_COPIES
    assert counts["bad_roi_files"] == 0 and counts["no_freesurfer_row"] == 0
    assert counts["subjects_with_zero_rois"] == 91 and counts["fiq_missing"] == 29
    assert cohort.mask["fmri"].all() and cohort.mask["smri"].all()
    assert sorted(cohort.report["sites"]) == sorted(DEV_SITES)

"""The ABIDE data report (data_report.json): duplicate ROI copies, zero-ROI subjects, missing FreeSurfer values."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from pmrl_sci.data.abide.cohort import load_abide_cohort
from pmrl_sci.data.abide.generator import generate_abide_like
from pmrl_sci.data.abide.timeseries import find_roi_files


@pytest.fixture(scope="module")
def small_cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_abide_like(tmp_path_factory.mktemp("abide") / "data", n_subjects=20, n_sites=2, atlas="tt",
                               seed=11)


def _blank_cell(table: Path, file_id: str, column: int, text: str) -> None:
    """Replace cell ``column`` (1 = first measure) of ``file_id``'s row with ``text``."""
    lines = table.read_text().splitlines()
    for i, line in enumerate(lines):
        cells = line.split("\t")
        if cells[0] == file_id:
            cells[column] = text
            lines[i] = "\t".join(cells)
    table.write_text("\n".join(lines) + "\n")


def test_report_counts_duplicates_zero_rois_and_missing_freesurfer(small_cohort: Path, tmp_path: Path) -> None:
    data = Path(shutil.copytree(small_cohort, tmp_path / "data"))
    files = find_roi_files(data, "tt")
    ids = sorted(files)
    # the public copy's mixed layout: byte-identical copies in per-subject folders
    for file_id in ids[:3]:
        (files[file_id].parent / file_id).mkdir()
        shutil.copy(files[file_id], files[file_id].parent / file_id / files[file_id].name)
    # a blank cell and a NaN cell in the FreeSurfer aseg table: both missing values, masked and counted
    first = load_abide_cohort(data, atlas="tt", modalities=("fmri", "smri"), progress=False)
    kept = [s for s, present in zip(first.subject_ids, first.mask["smri"]) if present]  # with a full row
    base = first.report["counts"]
    aseg = data / "freesurfer" / "aseg_stats.txt"
    _blank_cell(aseg, kept[0], 2, "")
    _blank_cell(aseg, kept[1], 3, "NaN")
    cohort = load_abide_cohort(data, atlas="tt", modalities=("fmri", "smri"), progress=False)
    counts = cohort.report["counts"]
    assert counts["duplicate_roi_files"] == 3 and len(cohort.report["duplicate_roi_files"]) == 3
    assert counts["incomplete_freesurfer_row"] == base["incomplete_freesurfer_row"] + 2
    for file_id in kept[:2]:
        i = cohort.subject_ids.index(file_id)
        assert not cohort.mask["smri"][i] and np.all(cohort.smri[i] == 0) and cohort.mask["fmri"][i]
        assert "incomplete FreeSurfer data (1 missing features" in cohort.report["smri_notes"][file_id]
    assert counts["subjects_with_zero_rois"] == cohort.report["connectivity"]["n_subjects_with_zero_rois"]
    assert counts["no_freesurfer_row"] == base["no_freesurfer_row"] and counts["subjects"] == len(cohort)
    # a subject in no FreeSurfer table is counted apart from the incomplete ones
    for table in (data / "freesurfer").iterdir():
        lines = table.read_text().splitlines()
        table.write_text("\n".join(line for line in lines if not line.startswith(kept[2] + "\t")) + "\n")
    cohort = load_abide_cohort(data, atlas="tt", modalities=("fmri", "smri"), progress=False)
    assert cohort.report["counts"]["no_freesurfer_row"] == base["no_freesurfer_row"] + 1
    assert cohort.report["counts"]["incomplete_freesurfer_row"] == base["incomplete_freesurfer_row"] + 2
    assert cohort.report["smri_notes"][kept[2]] == "no FreeSurfer row"

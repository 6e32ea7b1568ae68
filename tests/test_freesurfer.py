"""FreeSurfer readers and writers: real formats, both on-disk forms agreeing, and clear errors."""

from __future__ import annotations

import numpy as np
import pytest

from pmrl_sci.data.abide import freesurfer as fs
from pmrl_sci.data.abide import freesurfer_writers as fsw
from pmrl_sci.errors import InputError

# Excerpts in the layout FreeSurfer 6 writes (mri_segstats / mris_anatomical_stats / aparcstats2table).
ASEG_STATS = """\
# Title Segmentation Statistics
#
# generating_program mri_segstats
# subjectname 0050003
# Measure BrainSeg, BrainSegVol, Brain Segmentation Volume, 1243340.000000, mm^3
# Measure BrainSegNotVent, BrainSegVolNotVent, Brain Segmentation Volume Without Ventricles, 1222586.000000, mm^3
# Measure Cortex, CortexVol, Total cortical gray matter volume, 470154.213446, mm^3
# Measure EulerNumber, lhEulerNumber, Left hemisphere Euler number, -20, unitless
# Measure EstimatedTotalIntraCranialVol, eTIV, Estimated Total Intracranial Volume, 1689546.371713, mm^3
# VoxelVolume_mm3 1
# NRows 3
# NTableCols 10
# ColHeaders  Index SegId NVoxels Volume_mm3 StructName normMean normStdDev normMin normMax normRange
  1   4     6563     6563.0  Left-Lateral-Ventricle            33.1597    10.8565    14.0000    82.0000    68.0000
  2  17     4282     4172.6  Left-Hippocampus                  75.9411     8.8201    36.0000   104.0000    68.0000
  3  53     4317     4229.9  Right-Hippocampus                 76.4125     9.0040    40.0000   106.0000    66.0000
"""

LH_APARC_STATS = """\
# Table of FreeSurfer cortical parcellation anatomical statistics
# generating_program mris_anatomical_stats
# hemi lh
# Measure Cortex, NumVert, Number of Vertices, 130576, unitless
# Measure Cortex, WhiteSurfArea, White Surface Total Area, 89735.5, mm^2
# Measure Cortex, MeanThickness, Mean Thickness, 2.49727, mm
# Measure BrainSeg, BrainSegVol, Brain Segmentation Volume, 1243340.000000, mm^3
# Measure BrainSegNotVent, BrainSegVolNotVent, Brain Segmentation Volume Without Ventricles, 1222586.000000, mm^3
# Measure EstimatedTotalIntraCranialVol, eTIV, Estimated Total Intracranial Volume, 1689546.371713, mm^3
# NTableCols 10
# ColHeaders StructName NumVert SurfArea GrayVol ThickAvg ThickStd MeanCurv GausCurv FoldInd CurvInd
bankssts                                 1532    1033   2566  2.671 0.416     0.102     0.018        9     1.1
caudalanteriorcingulate                  1126     753   2126  2.658 0.708     0.126     0.019       12     0.9
"""


def _subjects(n: int = 4, seed: int = 0) -> dict[str, fsw.SubjectMorphometry]:
    rng = np.random.default_rng(seed)
    out = {}
    for i in range(n):
        aseg = {name: float(rng.uniform(300, 9000)) for name in list(fsw.ASEG_STRUCTURES)[:8]}
        aparc = {hemi: {region: {"area": float(rng.uniform(300, 5000)), "volume": float(rng.uniform(900, 20000)),
                                 "thickness": float(rng.uniform(1.4, 3.9))} for region in fsw.DK_REGIONS}
                 for hemi in ("lh", "rh")}
        measures = {"BrainSegVol": float(rng.uniform(1.0e6, 1.3e6)), "BrainSegVolNotVent": float(rng.uniform(9e5, 1e6)),
                    "EstimatedTotalIntraCranialVol": float(rng.uniform(1.3e6, 1.8e6))}
        out[f"00500{i:02d}"] = fsw.SubjectMorphometry(aseg, aparc, measures)
    return out


def test_real_aseg_and_aparc_stats_are_parsed_like_the_freesurfer_tools(tmp_path):
    # FreeSurfer pads many lines with a trailing space
    (tmp_path / "aseg.stats").write_text(ASEG_STATS.replace("\n", " \n"))
    (tmp_path / "lh.aparc.stats").write_text(LH_APARC_STATS.replace("\n", " \n"))
    aseg = fs.read_aseg_stats(tmp_path / "aseg.stats")
    assert list(aseg) == ["Left-Lateral-Ventricle", "Left-Hippocampus", "Right-Hippocampus", "BrainSegVol",
                          "BrainSegVolNotVent", "CortexVol", "EstimatedTotalIntraCranialVol"]  # no lhEulerNumber
    assert aseg["Left-Hippocampus"] == 4172.6 and aseg["EstimatedTotalIntraCranialVol"] == 1689546.371713
    aparc = fs.read_aparc_stats(tmp_path / "lh.aparc.stats")
    assert list(aparc) == ["lh.aparc.area", "lh.aparc.volume", "lh.aparc.thickness"]
    assert aparc["lh.aparc.area"] == {"lh_bankssts_area": 1033.0, "lh_caudalanteriorcingulate_area": 753.0,
                                      "lh_WhiteSurfArea_area": 89735.5, "BrainSegVolNotVent": 1222586.0,
                                      "eTIV": 1689546.371713}
    assert aparc["lh.aparc.volume"]["lh_caudalanteriorcingulate_volume"] == 2126.0
    assert "lh_WhiteSurfArea_volume" not in aparc["lh.aparc.volume"]
    assert aparc["lh.aparc.thickness"]["lh_bankssts_thickness"] == 2.671
    assert aparc["lh.aparc.thickness"]["lh_MeanThickness_thickness"] == 2.49727


def test_group_tables_and_subject_folders_give_the_same_features(tmp_path):
    subjects = _subjects()
    for key, subject in subjects.items():
        fsw.write_subject_stats(tmp_path / "subjects" / key, subject.aseg, subject.aparc, subject.measures)
    written = fsw.write_group_tables(tmp_path / "tables", fsw.group_tables_from_subjects(subjects))
    assert sorted(p.name for p in written) == sorted(["aseg_stats.txt"] + [
        f"{h}.aparc.{m}.txt" for h in ("lh", "rh") for m in ("area", "volume", "thickness")])
    header = (tmp_path / "tables" / "lh.aparc.thickness.txt").read_text().splitlines()[0].split("\t")
    assert header[:2] == ["lh.aparc.thickness", "lh_bankssts_thickness"]
    assert header[-3:] == ["lh_MeanThickness_thickness", "BrainSegVolNotVent", "eTIV"]

    from_dirs = fs.read_freesurfer_dir(tmp_path / "subjects")
    from_tables = fs.read_freesurfer_dir(tmp_path / "tables")
    assert list(from_dirs.index) == list(from_tables.index) == sorted(subjects)  # keys as written ("0050000")
    assert list(from_dirs.columns) == list(from_tables.columns)
    np.testing.assert_allclose(from_dirs.to_numpy(), from_tables.to_numpy(), rtol=1e-12)
    assert (from_dirs.dtypes == np.float64).all()
    n_features = 8 + 3 + 2 * (3 * 34 + 2)  # aseg structures + globals; per hemi 3x34 regions + area/thickness
    assert from_dirs.shape == (4, n_features)
    # the values are the written ones, at FreeSurfer's precision
    first = subjects["0050000"]
    row = from_tables.loc["0050000"]
    assert row["aseg:Left-Putamen"] == pytest.approx(first.aseg["Left-Putamen"], abs=0.05)
    assert row["lh.aparc.thickness:lh_insula_thickness"] == pytest.approx(
        first.aparc["lh"]["insula"]["thickness"], abs=5e-4)
    assert row["aseg:EstimatedTotalIntraCranialVol"] == pytest.approx(
        first.measures["EstimatedTotalIntraCranialVol"], abs=1e-6)
    # eTIV / BrainSegVolNotVent repeated by aparcstats2table are dropped (aseg has them)
    globals_ = [c for c in from_tables.columns if c.endswith((":eTIV", ":BrainSegVolNotVent"))]
    assert globals_ == ["aseg:BrainSegVolNotVent"]
    assert "rh.aparc.area:eTIV" in from_tables.attrs["report"]["dropped_columns"]
    kept = fs.read_freesurfer_dir(tmp_path / "tables", drop_duplicate_globals=False)
    assert kept.shape[1] == n_features + 6 * 2


def test_missing_tables_give_nan_and_are_reported(tmp_path):
    subjects = _subjects(3)
    for key, subject in subjects.items():
        aparc = {"lh": subject.aparc["lh"]} if key == "0050001" else subject.aparc
        fsw.write_subject_stats(tmp_path / key, subject.aseg, aparc, subject.measures)
    with pytest.warns(UserWarning, match="1 of 3 subjects miss"):
        df = fs.read_freesurfer_dir(tmp_path)
    rh = [c for c in df.columns if c.startswith("rh.")]
    assert df.loc["0050001", rh].isna().all() and df.drop(index="0050001")[rh].notna().all().all()
    assert df.attrs["report"]["missing_tables"] == {
        "0050001": ["rh.aparc.area", "rh.aparc.thickness", "rh.aparc.volume"]}


def test_tables_split_by_site_are_stacked_and_csv_is_read(tmp_path):
    tables = fsw.group_tables_from_subjects(_subjects(4))
    aseg = tables["aseg_stats.txt"]
    fsw.write_group_tables(tmp_path, {"Pitt_aseg.txt": aseg.iloc[:2], "NYU_aseg.txt": aseg.iloc[2:]})
    comma = tables["lh.aparc.area.txt"]
    comma.to_csv(tmp_path / "lh_area.csv", index=False)  # aparcstats2table -d comma
    (tmp_path / "README.txt").write_text("not a table\n")
    df = fs.read_freesurfer_dir(tmp_path)
    assert df.shape[0] == 4 and df.notna().all().all()
    report = df.attrs["report"]
    assert report["tables"]["aseg"]["n_subjects"] == 4 and len(report["tables"]["aseg"]["files"]) == 2
    assert report["skipped_files"] == [str(tmp_path / "README.txt")]
    with pytest.raises(ValueError, match="README.txt.*no recognised FreeSurfer group-table header"):
        fs.read_freesurfer_dir(tmp_path, strict=True)


def test_without_aseg_one_copy_of_the_aparc_globals_is_kept(tmp_path):
    tables = fsw.group_tables_from_subjects(_subjects(2))
    fsw.write_group_tables(tmp_path, {k: v for k, v in tables.items() if k != "aseg_stats.txt"})
    df = fs.read_freesurfer_dir(tmp_path)
    assert [c for c in df.columns if c.endswith(":eTIV")] == ["lh.aparc.area:eTIV"]


def test_group_table_errors_name_the_file_and_the_problem(tmp_path):
    header = "lh.aparc.thickness\tlh_bankssts_thickness\tlh_cuneus_thickness\n"
    bad = tmp_path / "bad.txt"
    bad.write_text(header + "sub1\t2.5\t2.1\nsub2\t2.4\tn/a\n")
    with pytest.raises(ValueError, match=r"bad.txt.*subject 'sub2', column 'lh_cuneus_thickness'.*'n/a'"):
        fs.read_group_table(bad)
    bad.write_text(header + "sub1\t2.5\t2.1\nsub1\t2.4\t2.2\n")
    with pytest.raises(ValueError, match=r"bad.txt: duplicated subject 'sub1' \(lines 2 and 3\)"):
        fs.read_group_table(bad)
    bad.write_text(header)
    with pytest.raises(ValueError, match="bad.txt: empty table"):
        fs.read_group_table(bad)
    bad.write_text("subject\tlh_bankssts_thickness\nsub1\t2.5\n")
    with pytest.raises(ValueError, match="bad.txt: first header cell 'subject'.*Measure:volume"):
        fs.read_group_table(bad)
    bad.write_text(header + "sub1\t2.5\n")
    with pytest.raises(ValueError, match="bad.txt, line 2: 2 cells, the header has 3"):
        fs.read_group_table(bad)


def test_duplicated_subject_across_files_and_bad_stats_files(tmp_path):
    tables = fsw.group_tables_from_subjects(_subjects(2))
    fsw.write_group_tables(tmp_path / "dup", {"a.txt": tables["aseg_stats.txt"], "b.txt": tables["aseg_stats.txt"]})
    with pytest.raises(ValueError, match=r"duplicated subject '0050000' in table 'aseg'.*a.txt.*b.txt"):
        fs.read_freesurfer_dir(tmp_path / "dup")
    stats = tmp_path / "subj" / "s1" / "stats"
    stats.mkdir(parents=True)
    (stats / "aseg.stats").write_text("# Title Segmentation Statistics\n  1  17  4282  4172.6  Left-Hippocampus\n")
    with pytest.raises(ValueError, match=r"aseg.stats, line 2: data row before the '# ColHeaders' line"):
        fs.read_freesurfer_dir(tmp_path / "subj")
    (stats / "aseg.stats").write_text(ASEG_STATS.replace("4172.6", "41x2.6"))
    with pytest.raises(ValueError, match=r"aseg.stats, structure 'Left-Hippocampus', column Volume_mm3.*'41x2.6'"):
        fs.read_aseg_stats(stats / "aseg.stats")
    (stats / "aseg.stats").write_text(ASEG_STATS.split("  1   4")[0])
    with pytest.raises(ValueError, match="aseg.stats: empty table"):
        fs.read_aseg_stats(stats / "aseg.stats")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no FreeSurfer data found"):
        fs.read_freesurfer_dir(tmp_path / "empty")


def test_writers_reject_bad_input(tmp_path):
    subject = _subjects(1)["0050000"]
    with pytest.raises(ValueError, match="unknown global measure.*'ICVx'"):
        fsw.write_subject_stats(tmp_path / "s", subject.aseg, subject.aparc, {"ICVx": 1.0})
    with pytest.raises(ValueError, match=r"aparc\['lh'\]\['bankssts'\] lacks \['thickness'\]"):
        fsw.write_subject_stats(tmp_path / "s", subject.aseg, {"lh": {"bankssts": {"area": 1.0, "volume": 2.0}}})
    table = fsw.group_tables_from_subjects({"a": subject})["aseg_stats.txt"].rename(columns={"Measure:volume": "id"})
    with pytest.raises(ValueError, match="aseg.txt: first column 'id'"):
        fsw.write_group_tables(tmp_path, {"aseg.txt": table})


def test_blank_and_nan_cells_are_both_missing_values(tmp_path):
    """pandas writes a missing value as a blank cell, numpy as nan: both read as NaN, counted and reported."""
    header = "lh.aparc.thickness\tlh_bankssts_thickness\tlh_cuneus_thickness\n"
    table = tmp_path / "lh.aparc.thickness.txt"
    table.write_text(header + "sub1\t2.5\t2.1\nsub2\t\t2.2\nsub3\t2.4\tNaN\nsub4\tnan\t\n")
    name, df = fs.read_group_table(table)
    assert name == "lh.aparc.thickness" and df.attrs["n_missing_values"] == 4
    assert df.isna().to_numpy().tolist() == [[False, False], [True, False], [False, True], [True, True]]
    merged = fs.read_freesurfer_dir(tmp_path)
    report = merged.attrs["report"]
    assert report["tables"]["lh.aparc.thickness"]["n_missing_values"] == 4
    assert report["missing_values"] == {
        "sub2": ["lh.aparc.thickness:lh_bankssts_thickness"], "sub3": ["lh.aparc.thickness:lh_cuneus_thickness"],
        "sub4": ["lh.aparc.thickness:lh_bankssts_thickness", "lh.aparc.thickness:lh_cuneus_thickness"]}
    table.write_text(header + "sub1\t2.5\tinf\n")
    with pytest.raises(InputError, match=r"line 2, subject 'sub1', column 'lh_cuneus_thickness': non-finite cell "
                                         "'inf'"):
        fs.read_group_table(table)


def test_sub_folders_with_tables_are_reported_not_read(tmp_path):
    tables = fsw.group_tables_from_subjects(_subjects(2))
    fsw.write_group_tables(tmp_path, {"aseg_stats.txt": tables["aseg_stats.txt"]})
    fsw.write_group_tables(tmp_path / "aparc.a2009s", {"lh.aparc.area.txt": tables["lh.aparc.area.txt"]})
    df = fs.read_freesurfer_dir(tmp_path)
    assert all(c.startswith("aseg:") for c in df.columns)
    assert df.attrs["report"]["unread_subfolders"] == [str(tmp_path / "aparc.a2009s")]

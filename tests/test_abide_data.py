"""ABIDE data pipeline: phenotype, .1D readers and layouts, connectivity policy, generator + loader, cache."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from pmrl_sci.data.abide.cohort import load_abide_cohort, subject_text
from pmrl_sci.data.abide.connectivity import compute_connectivity, fisher_z, window_correlation
from pmrl_sci.data.abide.generator import generate_abide_like
from pmrl_sci.data.abide.phenotype import PHENOTYPE_FILENAME, QC_COLUMNS, quality_filter, read_phenotype
from pmrl_sci.data.abide.timeseries import (
    ATLAS_ROIS,
    atlases_found,
    check_atlas,
    find_roi_files,
    read_roi_timeseries,
    scan_roi_files,
)
from pmrl_sci.errors import InputError

torch.set_num_threads(1)


# ----------------------------------------------------------------------------------------------------------------
# phenotype
# ----------------------------------------------------------------------------------------------------------------
def _phenotype_rows() -> list[dict[str, object]]:
    ok = dict.fromkeys(QC_COLUMNS, "OK")
    return [
        {"SUB_ID": 50001, "FILE_ID": "NYU_0050001", "SITE_ID": "NYU", "DX_GROUP": 1, "AGE_AT_SCAN": 12.5, "SEX": 1,
         "FIQ": 101, **ok, "qc_notes_rater_1": "fine, no notes"},
        {"SUB_ID": 50002, "FILE_ID": "NYU_0050002", "SITE_ID": "NYU", "DX_GROUP": 2, "AGE_AT_SCAN": 24.0, "SEX": 2,
         "FIQ": -9999, **ok, "qc_func_rater_2": "maybe", "qc_anat_rater_2": "maybe"},
        {"SUB_ID": 50003, "FILE_ID": "NYU_0050003", "SITE_ID": "NYU", "DX_GROUP": 1, "AGE_AT_SCAN": 9.1, "SEX": 1,
         "FIQ": "", **ok, "qc_rater_1": "fail", "qc_notes_rater_1": "motion, dropout"},
        {"SUB_ID": 50004, "FILE_ID": "UM_1_0050004", "SITE_ID": "UM_1", "DX_GROUP": 2, "AGE_AT_SCAN": 15.0,
         "SEX": 1, "FIQ": 99, **ok, "qc_func_rater_3": ""},
        {"SUB_ID": 50005, "FILE_ID": "no_filename", "SITE_ID": "UM_1", "DX_GROUP": 1, "AGE_AT_SCAN": 14.0, "SEX": 1,
         "FIQ": 120, **ok},
        {"SUB_ID": 50006, "FILE_ID": "UM_1_0050006", "SITE_ID": "UM_1", "DX_GROUP": 2, "AGE_AT_SCAN": 13.0,
         "SEX": 2, "FIQ": 111, **ok, "qc_anat_rater_3": "maybe"},
    ]


def _write_phenotype(folder: Path, rows: list[dict[str, object]] | None = None) -> Path:
    path = folder / PHENOTYPE_FILENAME
    pd.DataFrame(rows or _phenotype_rows()).to_csv(path, index=False)
    return path


def test_read_phenotype_types_and_missing_fiq(tmp_path: Path) -> None:
    df = read_phenotype(_write_phenotype(tmp_path))
    assert df["SUB_ID"].tolist() == [50001, 50002, 50003, 50004, 50005, 50006]
    assert df["FIQ"].isna().tolist() == [False, True, True, False, False, False]  # -9999 and empty are missing
    assert df.loc[2, "qc_notes_rater_1"] == "motion, dropout"  # quoted comma kept in one cell
    assert read_phenotype(tmp_path)["FILE_ID"].tolist() == df["FILE_ID"].tolist()  # a folder works too


def test_quality_filter_matches_nilearn(tmp_path: Path) -> None:
    from nilearn.datasets._utils import filter_columns

    df = read_phenotype(_write_phenotype(tmp_path))
    kept, excluded = quality_filter(df)
    assert kept["SUB_ID"].tolist() == [50001, 50002]
    reasons = {e["sub_id"]: e["reason"] for e in excluded}
    assert set(reasons) == {50003, 50004, 50005, 50006}
    assert "no_filename" in reasons[50005]
    assert "qc_rater_1='fail'" in reasons[50003] and "qc_func_rater_3=empty" in reasons[50004]
    assert "qc_anat_rater_3='maybe'" in reasons[50006]  # "maybe" is accepted only from rater 2
    # the same rule, evaluated by nilearn's own filter (as fetch_abide_pcp sets it up)
    raw = pd.read_csv(tmp_path / PHENOTYPE_FILENAME)
    raw = raw[raw["FILE_ID"] != "no_filename"]
    nilearn_rule = {"qc_rater_1": "OK", "qc_anat_rater_2": ["OK", "maybe"], "qc_func_rater_2": ["OK", "maybe"],
                    "qc_anat_rater_3": "OK", "qc_func_rater_3": "OK"}
    assert raw[filter_columns(raw, nilearn_rule)]["SUB_ID"].tolist() == kept["SUB_ID"].tolist()
    unfiltered, dropped = quality_filter(df, quality_checked=False)
    assert len(unfiltered) == 5 and [e["sub_id"] for e in dropped] == [50005]


def test_phenotype_bad_input(tmp_path: Path) -> None:
    rows = _phenotype_rows()
    path = _write_phenotype(tmp_path, [{k: v for k, v in r.items() if k not in ("DX_GROUP", "SEX")} for r in rows])
    with pytest.raises(InputError, match=r"Phenotypic_V1_0b_preprocessed1\.csv.*\['DX_GROUP', 'SEX'\]"):
        read_phenotype(path)
    rows[1]["DX_GROUP"] = 3
    with pytest.raises(InputError, match="'DX_GROUP' must be one of"):
        read_phenotype(_write_phenotype(tmp_path, rows))
    with pytest.raises(FileNotFoundError, match="phenotype"):
        read_phenotype(tmp_path / "nope.csv")
    no_qc = read_phenotype(_write_phenotype(tmp_path, [{k: v for k, v in r.items() if k != "qc_rater_1"}
                                                       for r in _phenotype_rows()]))
    with pytest.raises(InputError, match="qc_rater_1"):
        quality_filter(no_qc)


# ----------------------------------------------------------------------------------------------------------------
# .1D files
# ----------------------------------------------------------------------------------------------------------------
def _write_1d(path: Path, data: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    header = "\t".join(f"#{i + 1}" for i in range(data.shape[1]))
    body = "\n".join("\t".join(f"{v:.6f}" for v in row) for row in data)
    path.write_text(f"{header}\n{body}\n")
    return path


def test_unknown_atlas_lists_known() -> None:
    assert check_atlas("rois_CC200") == "cc200"
    with pytest.raises(InputError, match=r"unknown ABIDE atlas 'cc300'.*cc200 \(200 ROIs\).*tt \(97 ROIs\)"):
        check_atlas("cc300")


@pytest.mark.parametrize("layout", ["flat", "rois_subfolder", "per_subject", "strategy_as_root"])
def test_find_roi_files_layouts(tmp_path: Path, layout: str) -> None:
    strategy = tmp_path / "ABIDE_pcp" / "cpac" / "filt_noglobal"
    data = np.random.default_rng(0).standard_normal((20, 97))
    expected = {}
    for sub_id, file_id in ((50001, "NYU_0050001"), (50002, "NYU_0050002")):
        name = f"{file_id}_rois_tt.1D"
        folder = {"flat": strategy, "strategy_as_root": strategy, "rois_subfolder": strategy / "rois_tt",
                  "per_subject": strategy / str(sub_id)}[layout]
        expected[file_id] = _write_1d(folder / name, data)
    _write_1d(strategy / "NYU_0050001_rois_aal.1D", np.zeros((20, 116)))  # another atlas is ignored
    root = strategy if layout == "strategy_as_root" else tmp_path
    found = find_roi_files(root, "tt")
    assert found == expected
    assert read_roi_timeseries(found["NYU_0050001"], ATLAS_ROIS["tt"]).shape == (20, 97)


def test_find_roi_files_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="ABIDE data folder not found"):
        find_roi_files(tmp_path / "missing", "tt")
    strategy = tmp_path / "ABIDE_pcp" / "cpac" / "filt_noglobal"
    flat = _write_1d(strategy / "A_1_rois_tt.1D", np.ones((12, 97)))
    other = _write_1d(strategy / "rois_tt" / "A_1_rois_tt.1D", np.full((12, 97), 2.0))
    with pytest.raises(InputError, match=f"two different ROI files for FILE_ID 'A_1': {flat} and {other}"):
        find_roi_files(tmp_path, "tt")


def test_identical_copies_in_two_layouts_are_deduplicated(tmp_path: Path) -> None:
    """The public ABIDE copy: every subject in a <SUB_ID>/ folder, some also flat, byte-identical."""
    strategy = tmp_path / "ABIDE_pcp" / "cpac" / "filt_noglobal"
    rng = np.random.default_rng(3)
    for sub_id in (50001, 50002, 50003):
        data = rng.standard_normal((15, 97))
        _write_1d(strategy / str(sub_id) / f"NYU_00{sub_id}_rois_tt.1D", data)
        if sub_id != 50002:
            _write_1d(strategy / f"NYU_00{sub_id}_rois_tt.1D", data)
    scan = scan_roi_files(tmp_path, "tt")
    assert scan.files == {"NYU_0050001": strategy / "NYU_0050001_rois_tt.1D",
                          "NYU_0050002": strategy / "50002" / "NYU_0050002_rois_tt.1D",
                          "NYU_0050003": strategy / "NYU_0050003_rois_tt.1D"}
    assert scan.duplicates == {"NYU_0050001": [strategy / "50001" / "NYU_0050001_rois_tt.1D"],
                               "NYU_0050003": [strategy / "50003" / "NYU_0050003_rois_tt.1D"]}
    assert scan.n_duplicates == 2
    assert find_roi_files(tmp_path, "tt") == scan.files


def test_read_roi_timeseries_bad_files(tmp_path: Path) -> None:
    good = np.random.default_rng(1).standard_normal((30, 97))
    path = _write_1d(tmp_path / "s_rois_tt.1D", good)
    np.testing.assert_allclose(read_roi_timeseries(path, 97), good, atol=1e-6)
    lines = path.read_text().splitlines()
    truncated = tmp_path / "truncated_rois_tt.1D"
    truncated.write_text("\n".join(lines[:-1] + [lines[-1][: len(lines[-1]) // 2]]))
    with pytest.raises(InputError, match=r"truncated_rois_tt\.1D: line 31 has \d+ values, expected 97"):
        read_roi_timeseries(truncated, 97)
    text = tmp_path / "text_rois_tt.1D"
    text.write_text("\n".join(lines[:5] + ["\t".join(["0.1"] * 50 + ["abc"] + ["0.2"] * 46)] + lines[6:]))
    with pytest.raises(InputError, match=r"text_rois_tt\.1D: line 6, column 51: non-numeric value 'abc'"):
        read_roi_timeseries(text, 97)
    with pytest.raises(InputError, match=r"s_rois_tt\.1D: 97 ROI columns, expected 200"):
        read_roi_timeseries(path, 200)
    short = _write_1d(tmp_path / "short_rois_tt.1D", good[:5])
    with pytest.raises(InputError, match=r"short_rois_tt\.1D: only 5 time points, at least 10"):
        read_roi_timeseries(short, 97)
    empty = tmp_path / "empty_rois_tt.1D"
    empty.write_text(lines[0] + "\n")
    with pytest.raises(InputError, match="no time points"):
        read_roi_timeseries(empty, 97)


def test_read_roi_timeseries_refuses_cut_files(tmp_path: Path) -> None:
    good = np.random.default_rng(2).standard_normal((30, 97))
    text = _write_1d(tmp_path / "s_rois_tt.1D", good).read_bytes()
    # cut inside the last number of the last row: all 97 values are there, but the newline is not
    cut = tmp_path / "cut_rois_tt.1D"
    cut.write_bytes(text[:-3])
    assert len(cut.read_text().splitlines()[-1].split()) == 97
    with pytest.raises(InputError, match=r"cut_rois_tt\.1D: line 31 \(the last time point\) does not end with a "
                                         "newline: the file looks cut"):
        read_roi_timeseries(cut, 97)
    # cut inside the first row: the header's 97 labels give the width, the one row has fewer values
    first = tmp_path / "first_rois_tt.1D"
    first.write_bytes(text[: text.index(b"\n") + 200])
    with pytest.raises(InputError, match=r"first_rois_tt\.1D: line 2 has \d+ values, expected 97 as the 97 ROI "
                                         r"labels of the header \(a cut file"):
        read_roi_timeseries(first)
    # Windows line ends (the real PCP files have them) and a last line with its newline are fine
    crlf = tmp_path / "crlf_rois_tt.1D"
    crlf.write_bytes(text.replace(b"\n", b"\r\n"))
    np.testing.assert_allclose(read_roi_timeseries(crlf, 97), good, atol=1e-6)


# ----------------------------------------------------------------------------------------------------------------
# connectivity
# ----------------------------------------------------------------------------------------------------------------
def test_connectivity_zero_and_constant_rois() -> None:
    from nilearn.connectome import ConnectivityMeasure

    rng = np.random.default_rng(2)
    healthy = rng.standard_normal((60, 12)) + rng.standard_normal((60, 1))
    broken = healthy.copy()
    broken[:, [3, 7]] = 0.0  # all-zero ROIs
    broken[:, 10] = 4.2  # a constant, non-zero ROI
    matrices, report = compute_connectivity([healthy, broken], ["ok", "broken"])
    assert matrices.shape == (2, 2, 12, 12) and matrices.dtype == np.float32
    assert np.isfinite(matrices).all()
    assert report["zero_roi_counts"] == {"broken": 2} and report["total_zero_rois"] == 2
    assert report["n_subjects_with_zero_rois"] == 1
    assert report["constant_roi_counts"] == {"broken": 1} and report["total_constant_rois"] == 1
    dead = [3, 7, 10]
    live = [i for i in range(12) if i not in dead]
    for channel in range(2):
        assert np.all(matrices[1, channel][dead] == 0) and np.all(matrices[1, channel][:, dead] == 0)
        assert np.all(np.diagonal(matrices[:, channel], axis1=1, axis2=2) == 0)
        np.testing.assert_allclose(matrices[:, channel], np.transpose(matrices[:, channel], (0, 2, 1)), atol=1e-6)
    pearson = fisher_z(np.corrcoef(healthy[:, live].T))
    np.fill_diagonal(pearson, 0)
    np.testing.assert_allclose(matrices[1, 0][np.ix_(live, live)], pearson, atol=1e-5)
    # the partial correlation of the live ROIs is nilearn's (Ledoit-Wolf) on those ROIs alone
    partial = ConnectivityMeasure(kind="partial correlation", standardize=False).fit_transform(
        [(healthy[:, live] - healthy[:, live].mean(0)) / healthy[:, live].std(0, ddof=1)])[0]
    partial = fisher_z(partial)
    np.fill_diagonal(partial, 0)
    np.testing.assert_allclose(matrices[1, 1][np.ix_(live, live)], partial, atol=1e-5)
    assert not np.allclose(matrices[0, 1][np.ix_(live, live)], matrices[1, 1][np.ix_(live, live)])


def test_window_correlation_matches_the_pearson_channel_and_its_dead_roi_policy() -> None:
    rng = np.random.default_rng(3)
    ts = rng.normal(size=(60, 8))
    ts[:, 2] = 0.0  # dead everywhere
    ts[:30, 5] = 1.5  # constant in the first half only
    whole, _ = compute_connectivity([ts])
    np.testing.assert_allclose(window_correlation(ts, 0, 60), whole[0, 0], atol=1e-6)
    first, _ = compute_connectivity([ts[:30]])
    window = window_correlation(ts, 0, 30)
    np.testing.assert_allclose(window, first[0, 0], atol=1e-6)
    assert not window[5].any() and not window[:, 2].any() and np.isfinite(window).all()
    np.testing.assert_allclose(window_correlation(ts, 20, 25), compute_connectivity([ts[20:45]])[0][0, 0],
                               atol=1e-6)
    for start, length in ((0, 2), (-1, 10), (50, 11)):
        with pytest.raises(ValueError, match="window"):
            window_correlation(ts, start, length)


def test_connectivity_bad_input() -> None:
    with pytest.raises(ValueError, match="subject b: 5 ROIs, expected 4"):
        compute_connectivity([np.ones((10, 4)), np.ones((10, 5))], ["a", "b"])
    with pytest.raises(ValueError, match="unknown connectivity kind"):
        compute_connectivity([np.ones((10, 4))], kinds=["tangent"])


# ----------------------------------------------------------------------------------------------------------------
# generator + loader
# ----------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_abide_like(tmp_path_factory.mktemp("abide") / "data", n_subjects=24, n_sites=3, atlas="tt",
                               seed=5)


def _copy(src: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(src, tmp_path / "data"))


def test_wrong_atlas_names_the_atlases_present(tiny_cohort: Path) -> None:
    """A user who forgets --atlas (default cc200) on data of another atlas is told which one the folder has."""
    assert atlases_found(tiny_cohort) == ["tt"]
    with pytest.raises(InputError, match=r"no '\*_rois_cc200\.1D' file was found under .*this folder has files of "
                                         r"atlas tt: pass --atlas tt"):
        load_abide_cohort(tiny_cohort, atlas="cc200", modalities=["fmri"])


def test_generator_formats_and_determinism(tiny_cohort: Path, tmp_path: Path) -> None:
    pheno = read_phenotype(tiny_cohort / PHENOTYPE_FILENAME)
    assert len(pheno) == 24 and pheno["SITE_ID"].nunique() == 3
    assert pheno["FIQ"].isna().any() and (pheno["FILE_ID"] == "no_filename").sum() >= 1
    kept, excluded = quality_filter(pheno)
    assert any("failed quality check" in e["reason"] for e in excluded)
    files = find_roi_files(tiny_cohort, "tt")
    assert set(files) == set(pheno.loc[pheno["FILE_ID"] != "no_filename", "FILE_ID"])
    lengths = {read_roi_timeseries(files[f], 97).shape[0] for f in files}
    assert len(lengths) == 3 and min(lengths) >= 78 and max(lengths) <= 316  # one length per site
    assert sorted(p.name for p in (tiny_cohort / "freesurfer").iterdir())[:2] == ["aseg_stats.txt",
                                                                                  "lh.aparc.area.txt"]
    stamp = (tiny_cohort / PHENOTYPE_FILENAME).stat().st_mtime_ns
    generate_abide_like(tiny_cohort, n_subjects=24, n_sites=3, atlas="tt", seed=5)  # same parameters: reused
    assert (tiny_cohort / PHENOTYPE_FILENAME).stat().st_mtime_ns == stamp
    again = generate_abide_like(tmp_path / "again", n_subjects=24, n_sites=3, atlas="tt", seed=5)
    some = next(iter(files))
    assert (again / PHENOTYPE_FILENAME).read_bytes() == (tiny_cohort / PHENOTYPE_FILENAME).read_bytes()
    assert find_roi_files(again, "tt")[some].read_bytes() == files[some].read_bytes()
    with pytest.raises(InputError, match="unknown ABIDE atlas"):
        generate_abide_like(tmp_path / "bad", n_subjects=24, n_sites=3, atlas="xx")


def test_round_trip_and_cache(tiny_cohort: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cohort = load_abide_cohort(tiny_cohort, atlas="tt", cache_dir=cache, progress=False)
    pheno = read_phenotype(tiny_cohort / PHENOTYPE_FILENAME)
    kept, excluded = quality_filter(pheno)
    assert cohort.subject_ids == kept["FILE_ID"].tolist()  # every QC'd subject has fMRI, so none is dropped
    n = len(cohort)
    assert cohort.fmri.shape == (n, 2, 97, 97) and cohort.fmri.dtype == np.float32 and np.isfinite(cohort.fmri).all()
    assert cohort.smri.shape[0] == n and cohort.smri.shape[1] == len(cohort.smri_features) > 40
    assert cohort.text_embeddings.shape == (n, 384)
    assert cohort.mask["fmri"].all() and cohort.mask["text"].all()
    assert 0 < (~cohort.mask["smri"]).sum() <= 2  # the generator leaves a subject without FreeSurfer data
    missing_smri = [s for s, m in zip(cohort.subject_ids, cohort.mask["smri"]) if not m]
    assert np.all(cohort.smri[~cohort.mask["smri"]] == 0)
    assert all(cohort.report["missing_modalities"][s] == ["smri"] for s in missing_smri)
    np.testing.assert_array_equal(cohort.labels, (kept["DX_GROUP"].to_numpy() == 1).astype(int))
    assert cohort.text[0] == subject_text(kept["AGE_AT_SCAN"].iloc[0], kept["SEX"].iloc[0])
    assert cohort.text[0].startswith("age: ") and cohort.text[0].endswith(("gender: male", "gender: female"))
    report = cohort.report
    assert report["n_phenotype"] == 24 and len(report["excluded"]) == len(excluded)
    assert sum(report["sites"].values()) == n and sum(report["n_per_class"].values()) == n
    zero_counts = {}
    for file_id in cohort.subject_ids:  # the report counts exactly the all-zero columns in the files
        ts = read_roi_timeseries(find_roi_files(tiny_cohort, "tt")[file_id], 97)
        if np.all(ts == 0, axis=0).any():
            zero_counts[file_id] = int(np.all(ts == 0, axis=0).sum())
    assert report["connectivity"]["zero_roi_counts"] == zero_counts
    assert report["cache"] == "miss"
    again = load_abide_cohort(tiny_cohort, atlas="tt", cache_dir=cache, progress=False)
    assert again.report["cache"] == "hit"
    np.testing.assert_array_equal(again.fmri, cohort.fmri)
    np.testing.assert_array_equal(again.smri, cohort.smri)
    np.testing.assert_array_equal(again.text_embeddings, cohort.text_embeddings)
    assert again.subject_ids == cohort.subject_ids and again.text == cohort.text
    assert all(np.array_equal(again.mask[m], cohort.mask[m]) for m in cohort.mask)
    sub = cohort.subset([0, 2])
    assert sub.subject_ids == [cohort.subject_ids[0], cohort.subject_ids[2]] and sub.fmri.shape[0] == 2
    files = find_roi_files(tiny_cohort, "tt")
    for i in (0, 2, n - 1):  # the ROI time series are kept, through the cache and subsets
        ts = read_roi_timeseries(files[cohort.subject_ids[i]], 97).astype(np.float32)
        np.testing.assert_array_equal(cohort.timeseries(i), ts)
        np.testing.assert_array_equal(again.timeseries(i), ts)
    np.testing.assert_array_equal(sub.timeseries(1), cohort.timeseries(2))
    whole = window_correlation(cohort.timeseries(3), 0, len(cohort.timeseries(3)))
    np.testing.assert_allclose(whole, cohort.fmri[3, 0], atol=1e-5)  # the whole window is the Pearson channel


def test_loader_bad_files_and_modalities(tiny_cohort: Path, tmp_path: Path) -> None:
    data = _copy(tiny_cohort, tmp_path)
    files = find_roi_files(data, "tt")
    kept, _ = quality_filter(read_phenotype(data / PHENOTYPE_FILENAME))
    victim = kept["FILE_ID"].iloc[0]
    lines = files[victim].read_text().splitlines()
    files[victim].write_text("\n".join(lines[:-1] + [lines[-1].split("\t", 1)[0]]) + "\n")  # truncated last row
    cohort = load_abide_cohort(data, atlas="tt", modalities=("fmri", "smri"), progress=False)
    assert victim in cohort.report["bad_files"] and "expected 97" in cohort.report["bad_files"][victim]
    if victim in cohort.subject_ids:  # kept with its sMRI, fMRI masked out
        i = cohort.subject_ids.index(victim)
        assert not cohort.mask["fmri"][i] and cohort.mask["smri"][i] and np.all(cohort.fmri[i] == 0)
    else:
        assert any(e["file_id"] == victim and "bad ROI file" in e["reason"] for e in cohort.report["excluded"])
    with pytest.raises(InputError, match=rf"{victim}_rois_tt\.1D: line \d+ has 1 values"):
        load_abide_cohort(data, atlas="tt", modalities=("fmri",), progress=False, strict=True)
    with pytest.raises(InputError, match="unknown or no ABIDE modalities"):
        load_abide_cohort(data, atlas="tt", modalities=("eeg",), progress=False)


@pytest.mark.filterwarnings("ignore:.*miss at least one FreeSurfer table")
def test_loader_unmatched_ids_and_missing_data(tiny_cohort: Path, tmp_path: Path) -> None:
    data = _copy(tiny_cohort, tmp_path)
    with pytest.raises(InputError, match=r"modality 'fmri' requested but no '\*_rois_aal\.1D'"):
        load_abide_cohort(data, atlas="aal", modalities=("fmri",), progress=False)
    with pytest.raises(FileNotFoundError, match="FreeSurfer folder .* does not exist"):
        load_abide_cohort(data, atlas="tt", modalities=("smri",), freesurfer_dir=tmp_path / "none", progress=False)
    aseg = data / "freesurfer" / "aseg_stats.txt"
    table = aseg.read_text().splitlines()
    stranger = "\n".join([table[0], "XYZ_0099999" + table[1][table[1].index("\t"):], *table[2:]]) + "\n"
    aseg.write_text(stranger)
    with pytest.raises(InputError, match=r"match no FILE_ID or SUB_ID.*XYZ_0099999"):
        load_abide_cohort(data, atlas="tt", modalities=("smri",), progress=False)
    roi = find_roi_files(data, "tt")
    first = sorted(roi)[0]
    roi[first].rename(roi[first].with_name("NOBODY_0000001_rois_tt.1D"))
    with pytest.raises(InputError, match=r"FILE_ID that matches no subject.*NOBODY_0000001_rois_tt\.1D"):
        load_abide_cohort(data, atlas="tt", modalities=("fmri",), progress=False)


def test_window_crop_dataset_draws_windows_of_the_training_series(tiny_cohort: Path, tmp_path: Path) -> None:
    from pmrl_sci.tasks.abide_data import SplitArrays, WindowCropDataset

    cohort = load_abide_cohort(tiny_cohort, atlas="tt", modalities=("fmri",), cache_dir=tmp_path, progress=False)
    index = np.array([1, 4, 6])
    arrays = SplitArrays({"fmri": cohort.fmri[index, 0]}, {"fmri": cohort.mask["fmri"][index]},
                         cohort.labels[index], index)
    dataset = WindowCropDataset(arrays, cohort, fraction=0.5)
    torch.manual_seed(0)
    first = [dataset[i][0]["fmri"] for i in range(3)]
    second = [dataset[i][0]["fmri"] for i in range(3)]
    torch.manual_seed(0)
    replay = [dataset[i][0]["fmri"] for i in range(3)]
    for i, row in enumerate(index):
        series = cohort.timeseries(row)
        length = round(0.5 * len(series))
        windows = [window_correlation(series, s, length) for s in range(len(series) - length + 1)]
        assert any(np.allclose(first[i].numpy(), w) for w in windows)  # one of the subject's own windows
        assert not np.allclose(first[i].numpy(), cohort.fmri[row, 0], atol=1e-3)  # not the whole series
        assert not torch.equal(first[i], second[i])  # a new window at each draw
        assert torch.equal(first[i], replay[i])  # drawn from torch's generator: reproducible, resumable
    assert int(dataset[0][2]) == int(cohort.labels[1])
    mean, std = np.full((97, 97), 0.1, np.float32), np.full((97, 97), 2.0, np.float32)
    scaled = WindowCropDataset(arrays, cohort, fraction=0.5, standardize=(mean, std))
    torch.manual_seed(0)
    for i in range(3):  # the same windows, standardised like the other fMRI inputs
        torch.testing.assert_close(scaled[i][0]["fmri"], (first[i] - 0.1) / 2.0)


def test_standardize_connectivity_uses_training_subjects_only() -> None:
    from pmrl_sci.tasks.abide_data import standardize_connectivity

    rng = np.random.default_rng(0)
    fmri = rng.normal(2.0, 3.0, size=(10, 4, 4)).astype(np.float32)
    fmri[:, range(4), range(4)] = 0.0
    has = np.ones(10, dtype=bool)
    has[9] = False
    fmri[9] = 0.0
    train = np.array([0, 1, 2, 3, 4, 9])
    out, (mean, std) = standardize_connectivity(fmri, has, train)
    np.testing.assert_allclose(out[:5].mean(axis=0), 0.0, atol=1e-5)  # the 5 training subjects with fMRI
    np.testing.assert_allclose(out[:5].std(axis=0)[0, 1], 1.0, atol=1e-5)
    np.testing.assert_allclose(mean, fmri[:5].mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(out[7], (fmri[7] - mean) / std, rtol=1e-5)  # others: training statistics
    assert not out[9].any() and not out[:, 0, 0].any()  # masked subject and constant diagonal stay zero
    with pytest.raises(InputError, match="--no-fmri-standardize"):
        standardize_connectivity(fmri, has, np.array([0, 9]))

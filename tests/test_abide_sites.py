"""Sites as domains on the ABIDE front end: leave-one-site-out, --test-sites, per-site results, ComBat on
unseen sites (tiny generated cohort with 4 sites)."""

import json

import numpy as np
import pytest

from pmrl_sci.abide import main

SITES = ["NYU", "OHSU", "UCLA_1", "UM_1"]  # the embedded cohort's first 4 sites
TINY = ["--default-subjects", "40", "--default-sites", "4", "--atlas", "tt", "--epochs", "1", "--batch-size", "8",
        "--embed-dim", "16", "--modalities", "fmri", "smri", "--no-progress"]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("abide_sites_cache")


def _run(out, cache_dir, *extra):
    return main([*TINY, "--cache-dir", str(cache_dir), "--out", str(out), *extra])


def _check_site_entry(entry):
    for key in ("auc", "accuracy", "sensitivity", "specificity"):
        value = entry[key]
        assert (value is None and key in entry["undefined"]) or 0.0 <= value <= 1.0, (key, entry)
    assert entry["n"] >= 1


def test_loso_writes_per_site_results_and_states_the_unlabelled_combat_estimation(tmp_path, cache_dir, capsys):
    out = tmp_path / "loso"
    results = _run(out, cache_dir, "--split", "loso", "--combat-unseen", "estimate")
    assert [u["unit"] for u in results["units"]] == [f"seed0-site-{s}" for s in SITES]
    assert all(u["unseen_sites"] == [s] for u, s in zip(results["units"], SITES))
    assert results["split"] == "loso" and results["unseen_sites"] == SITES
    written = json.loads((out / "results.json").read_text())
    assert list(written["per_site"]) == SITES
    for entry in written["per_site"].values():
        _check_site_entry(entry)
        assert entry["unseen_in_training"] is True
    # each subject tested once in the seed
    assert sum(e["n"] for e in written["per_site"].values()) == results["n_subjects"]
    assert sorted(written["combat_unseen"]["estimated_from_unlabelled_test_subjects"]) == sorted(
        u["unit"] for u in results["units"])
    report = json.loads((out / "data_report.json").read_text())["sites_as_domains"]
    assert report["combat_unseen"] == "estimate" and "WITHOUT their diagnosis labels" in report["note"]
    done = json.loads((out / "done" / "seed0-site-NYU.json").read_text())
    assert "NYU" in done["prep"]["combat"]["unlabelled_estimation"]
    assert set(done["predictions"]["site"]) == {"NYU"}
    assert "site UM_1: auc" in capsys.readouterr().out


def test_test_sites_trains_on_the_rest_and_bnt_and_folds_report_per_site_too(tmp_path, cache_dir):
    out = tmp_path / "held"
    results = _run(out, cache_dir, "--test-sites", "UM_1,NYU")
    assert [u["unit"] for u in results["units"]] == ["seed0-test-NYU+UM_1"]
    assert results["test_sites"] == ["NYU", "UM_1"] and results["unseen_sites"] == ["NYU", "UM_1"]
    assert json.loads((out / "config.json").read_text())["test_sites"] == "NYU,UM_1"  # recorded canonically
    assert list(results["per_site"]) == ["NYU", "UM_1"]
    assert results["combat_unseen"] == {"mode": "passthrough", "estimated_from_unlabelled_test_subjects": {}}
    assert "passthrough" in json.loads((out / "data_report.json").read_text())["sites_as_domains"]["note"]
    done = json.loads((out / "done" / "seed0-test-NYU+UM_1.json").read_text())
    assert done["prep"]["combat"]["unseen_sites"] and "unlabelled_estimation" not in done["prep"]["combat"]
    bnt = _run(tmp_path / "bnt", cache_dir, "--split", "bnt")  # one stratified split: every site seen in training
    assert bnt["unseen_sites"] == [] and bnt["split"] == "bnt"
    assert sum(e["n"] for e in bnt["per_site"].values()) == bnt["units"][0]["n_test"]
    for entry in bnt["per_site"].values():
        _check_site_entry(entry)
        assert entry["unseen_in_training"] is False
    assert all(not isinstance(v, float) or np.isfinite(v) for e in bnt["per_site"].values() for v in e.values())
    folds = _run(tmp_path / "folds", cache_dir)  # the default: 5 folds, every subject tested once
    assert folds["split"] == "folds" and [u["unit"] for u in folds["units"]] == [f"seed0-fold{f}" for f in range(5)]
    assert sum(u["n_test"] for u in folds["units"]) == sum(e["n"] for e in folds["per_site"].values())
    assert folds["unseen_sites"] == []


@pytest.mark.parametrize("bad, expected", [
    (["--test-sites", "NYU,CALTECH"], "--test-sites: unknown site(s) ['CALTECH']; the sites available are "
                                      "NYU, OHSU, UCLA_1, UM_1"),
    (["--test-sites", ",".join(SITES)], "leaves no site for training"),
    (["--test-sites", "NYU,"], "--test-sites expects SITE[,SITE...]"),
    (["--split", "loso", "--folds", "2"], "--split loso and --folds are different splits"),
    (["--test-sites", "NYU", "--split", "loso"], "--split loso and --test-sites are different splits"),
    (["--split", "bnt", "--folds", "5"], "--split bnt and --folds are different splits"),
    (["--combat-unseen", "guess"], "--combat-unseen"),
])
def test_bad_site_options_exit_2_with_a_message(tmp_path, cache_dir, capsys, bad, expected):
    with pytest.raises(SystemExit) as info:
        _run(tmp_path / "bad", cache_dir, *bad)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err
    assert not (tmp_path / "bad" / "config.json").exists()

"""Same-run comparison (issue 11): paired differences, the validation threshold, the text fields, logistic-all."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from pmrl_sci.abide import main as abide_main
from pmrl_sci.data.abide.cohort import load_abide_cohort, subject_text
from pmrl_sci.data.abide.generator import generate_abide_like
from pmrl_sci.data.abide.text_fields import (
    EXCLUDED_FIELDS,
    check_text_fields,
    phenotype_texts,
    phenotype_values,
)
from pmrl_sci.errors import InputError
from pmrl_sci.metrics import youden_threshold
from pmrl_sci.reports.compare import format_difference, interval_note, paired_difference, unit_size_ratio
from pmrl_sci.tasks.abide import AbideConfig
from pmrl_sci.tasks.abide_fit import logistic_all_features, thresholded_metrics

torch.set_num_threads(1)
EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


# ----------------------------------------------------------------------------------------------------------------
# paired differences


def test_paired_difference_on_known_numbers():
    reference = {"s0-f0": 0.70, "s0-f1": 0.80, "s1-f0": 0.60, "only-ref": 0.1}
    other = {"s0-f0": 0.75, "s0-f1": 0.90, "s1-f0": 0.60, "only-other": 0.9}
    diff = paired_difference(reference, other)
    # differences 0.05, 0.10, 0.00: mean 0.05, sd 0.05, t_{0.975, 2} = 4.302653
    half = 4.302653 * 0.05 / math.sqrt(3)
    assert diff["n"] == 3
    assert diff["mean"] == pytest.approx(0.05)
    assert diff["low"] == pytest.approx(0.05 - half, abs=1e-6) and diff["high"] == pytest.approx(0.05 + half, abs=1e-6)
    assert paired_difference(reference, reference)["mean"] == 0.0
    one = paired_difference({"a": 0.5, "b": float("nan")}, {"a": 0.7, "b": 0.9})  # the NaN unit is not paired
    assert one["n"] == 1 and one["mean"] == pytest.approx(0.2) and math.isnan(one["low"])
    assert paired_difference({"a": 1.0}, {"b": 1.0})["n"] == 0
    assert format_difference(0.05, -0.02, 0.12) == "+5.0 [-2.0, +12.0]"
    with pytest.raises(ValueError, match="confidence"):
        paired_difference(reference, other, confidence=1.0)


def test_corrected_interval_widens_by_the_nadeau_bengio_factor():
    reference = {"s0-f0": 0.70, "s0-f1": 0.80, "s1-f0": 0.60}
    other = {"s0-f0": 0.75, "s0-f1": 0.90, "s1-f0": 0.60}
    plain = paired_difference(reference, other)
    corrected = paired_difference(reference, other, test_train_ratio=0.25)
    # same mean; half-width t * sd * sqrt(1/n + n_test/n_train) = plain half-width * sqrt(1 + n * ratio)
    half = 4.302653 * 0.05 * math.sqrt(1 / 3 + 0.25)
    assert corrected["mean"] == pytest.approx(plain["mean"]) and corrected["test_train_ratio"] == 0.25
    assert corrected["high"] - corrected["mean"] == pytest.approx(half, abs=1e-6)
    assert (corrected["high"] - corrected["low"]) / (plain["high"] - plain["low"]) == pytest.approx(
        math.sqrt(1 + 3 * 0.25))
    assert plain["test_train_ratio"] is None
    for bad in (0.0, -0.1, float("nan")):
        with pytest.raises(ValueError, match="test_train_ratio"):
            paired_difference(reference, other, test_train_ratio=bad)


def test_unit_size_ratio_reads_the_units_sizes():
    units = [{"unit": "a", "n_train": 300, "n_test": 100}, {"unit": "b", "n_train": 200, "n_test": 100}]
    assert unit_size_ratio({"units": units}) == pytest.approx((1 / 3 + 1 / 2) / 2)
    assert unit_size_ratio({"units": [*units, {"unit": "c", "n_test": 5}]}) is None  # an older unit without sizes
    assert unit_size_ratio({"units": []}) is None
    assert "corrected" in interval_note(0.285) and "0.285" in interval_note(0.285)
    assert "not corrected" in interval_note(None)


# ----------------------------------------------------------------------------------------------------------------
# decision threshold chosen on validation


def test_youden_threshold_on_known_scores():
    y = [0, 0, 1, 1, 0, 1]
    s = [0.10, 0.40, 0.35, 0.80, 0.20, 0.70]
    # J(0.35) = 1 - 1/3 and J(0.70) = 2/3 - 0: equal; 0.35 is closer to 0.5
    assert youden_threshold(y, s) == pytest.approx(0.35)
    assert youden_threshold([0, 1, 1], [0.2, 0.9, 0.95]) == pytest.approx(0.9)  # perfectly separated
    assert youden_threshold([1, 1], [0.2, 0.9]) == 0.5  # one class: J undefined, 0.5
    with pytest.raises(ValueError):
        youden_threshold([0, 1], [0.1, float("nan")])


def test_threshold_never_reads_test_labels():
    rng = np.random.default_rng(0)
    val_y, val_p = rng.integers(0, 2, 20), rng.random(20)
    test_p = rng.random(30)
    chosen = {thresholded_metrics("val", val_y, val_p, labels, test_p)["threshold"]
              for labels in (rng.integers(0, 2, 30), np.zeros(30, int) | (np.arange(30) % 2), 1 - (np.arange(30) % 2))}
    assert chosen == {youden_threshold(val_y, val_p)}
    m = thresholded_metrics("val", [0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4], [0, 1, 1], [0.25, 0.29, 0.31])
    assert m["threshold"] == pytest.approx(0.3) and m["sensitivity"] == 0.5 and m["specificity"] == 1.0
    assert thresholded_metrics("0.5", [0, 1], [0.9, 0.1], [0, 1], [0.4, 0.6])["threshold"] == 0.5


# ----------------------------------------------------------------------------------------------------------------
# text fields


def test_text_fields_refuse_diagnosis_derived_and_unknown():
    assert check_text_fields(["FIQ", "age"]) == ["age", "fiq"]
    with pytest.raises(InputError, match=r"--text-fields: \['ados_total', 'dx_group'\] derive from the diagnosis"):
        check_text_fields(["age", "ADOS_TOTAL", "DX_GROUP"])
    with pytest.raises(InputError, match="srs_raw_total"):
        check_text_fields(["srs_raw_total"])
    with pytest.raises(InputError, match="unknown or no field"):
        check_text_fields(["shoe_size"])
    assert {"DX_GROUP", "DSM_IV_TR", "ADOS_TOTAL", "ADI_R_SOCIAL_TOTAL_A", "SRS_RAW_TOTAL"} <= set(EXCLUDED_FIELDS)


def test_phenotype_texts_and_values():
    rows = pd.DataFrame({"AGE_AT_SCAN": [12.0, 24.55], "SEX": [1, 2], "HANDEDNESS_CATEGORY": ["L", "-9999"],
                         "FIQ": [112.0, -9999.0], "ADOS_TOTAL": [14, 3]})
    assert phenotype_texts(rows) == [subject_text(12.0, 1), subject_text(24.55, 2)] == [
        "age: 12, gender: male", "age: 24.6, gender: female"]
    texts = phenotype_texts(rows, ["age", "sex", "handedness", "fiq", "viq"])
    assert texts[0] == "age: 12, gender: male, handedness: left, full-scale IQ: 112, verbal IQ: not stated"
    assert texts[1] == "age: 24.6, gender: female, handedness: not stated, full-scale IQ: not stated, " \
                       "verbal IQ: not stated"
    assert not any("14" in t or "ADOS" in t for t in texts)
    values = phenotype_values(rows, ["sex", "handedness", "fiq"])
    np.testing.assert_array_equal(values["sex"], [1.0, 0.0])
    np.testing.assert_array_equal(values["handedness"], [-1.0, np.nan])
    np.testing.assert_array_equal(values["fiq"], [112.0, np.nan])


@pytest.fixture(scope="module")
def tiny_cohort(tmp_path_factory):
    return generate_abide_like(tmp_path_factory.mktemp("abide") / "data", n_subjects=24, n_sites=3, atlas="tt",
                               seed=5)


def test_cohort_reports_text_fields_and_carries_them(tiny_cohort):
    cohort = load_abide_cohort(tiny_cohort, atlas="tt", modalities=["fmri", "smri"], progress=False,
                               text_fields=["age", "sex", "handedness", "fiq"])
    assert cohort.report["text_fields"] == ["age", "sex", "handedness", "fiq"]
    assert cohort.report["excluded_fields"] == list(EXCLUDED_FIELDS)
    assert set(cohort.phenotype) == {"age", "sex", "handedness", "fiq"}
    np.testing.assert_allclose(cohort.phenotype["age"], cohort.age)
    np.testing.assert_array_equal(np.isnan(cohort.phenotype["fiq"]), np.isnan(cohort.fiq))
    with pytest.raises(InputError, match="text_fields"):
        load_abide_cohort(tiny_cohort, atlas="tt", modalities=["fmri"], progress=False, text_fields=["ados_total"])


def test_front_end_refuses_a_diagnosis_field(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        abide_main(["--text-fields", "age", "dx_group", "--out", str(tmp_path / "r"), "--no-progress"])
    assert info.value.code == 2
    assert "--text-fields: ['dx_group'] derive from the diagnosis" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
    for bad, expected in ((["--model", "logistic-all", "--modalities", "smri", "text"], "needs fmri in --modalities"),
                          (["--model", "logistic-all", "--input-noise", "0.1"], "--input-noise is not applied"),
                          (["--threshold", "0.3"], "--threshold"), (["--fusion", "mean"], "--fusion")):
        with pytest.raises(SystemExit) as info:
            abide_main([*bad, "--out", str(tmp_path / "r"), "--no-progress"])
        assert info.value.code == 2 and expected in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------------------
# logistic regression on every input


def test_logistic_all_features_use_training_statistics_only(tiny_cohort):
    cohort = load_abide_cohort(tiny_cohort, atlas="tt", modalities=["fmri", "smri"], progress=False,
                               text_fields=["age", "sex", "fiq"])
    config = AbideConfig(modalities=["fmri", "smri", "text"], text_fields=["age", "sex", "fiq"])
    rows = np.arange(len(cohort))
    train = np.arange(16)
    features, names = logistic_all_features(cohort, config, rows, train)
    n_conn = 97 * 96 // 2
    assert names[0] == f"fmri[{n_conn}]" and names[1] == f"smri[{cohort.smri.shape[1]}]"
    assert {"age", "sex", "fiq"} <= set(names) and np.isfinite(features).all()
    assert features.shape == (len(cohort), n_conn + cohort.smri.shape[1] + len(names) - 2)
    # changing a test subject's sMRI and IQ leaves every training subject's features unchanged
    changed = cohort.subset(rows)
    test_row = next(i for i in range(16, len(cohort)) if cohort.mask["smri"][i])
    changed.smri = cohort.smri.copy()
    changed.smri[test_row] += 1000.0
    changed.phenotype = {k: v.copy() for k, v in cohort.phenotype.items()}
    changed.phenotype["fiq"][test_row] = 250.0
    again, _ = logistic_all_features(changed, config, rows, train)
    np.testing.assert_allclose(again[train], features[train], rtol=1e-6, atol=1e-6)
    assert not np.allclose(again[test_row], features[test_row])


def _script(name):
    spec = importlib.util.spec_from_file_location(f"experiments_{name}", EXPERIMENTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quick_comparison_writes_paired_table(tmp_path):
    out = tmp_path / "compare"
    argv = ["--quick", "--seeds", "1", "--folds", "2", "--methods", "multimodal", "logistic-all", "--threshold", "val",
            "--out", str(out), "--cache-dir", str(tmp_path / "cache"), "--no-progress"]
    assert _script("abide_compare").main(argv) == 0
    table = pd.read_csv(out / "compare.csv")
    assert list(table["method"]) == ["Multimodal (default command)", "Logistic regression (all inputs)"]
    ref, other = (json.loads((out / name / "results.json").read_text()) for name in ("multimodal", "logistic-all"))
    assert [u["unit"] for u in ref["units"]] == [u["unit"] for u in other["units"]] == ["seed0-fold0", "seed0-fold1"]
    diffs = [o["auc"] - r["auc"] for r, o in zip(ref["units"], other["units"])]
    row = table.iloc[1]
    assert row["diff_auc"] == pytest.approx(np.mean(diffs)) and row["diff_n"] == 2
    assert table.iloc[0]["diff_auc"] == 0.0
    assert all(0.0 <= u["threshold"] <= 1.0 for u in ref["units"] + other["units"])
    assert len(ref["units"][0]["val_sigma"]) == 3 and other["units"][0]["val_sigma"] is None
    assert isinstance(table.iloc[0]["val_sigma"], str) and pd.isna(table.iloc[1]["val_sigma"])
    # the interval is the corrected resampled one, with the reference units' n_test / n_train
    ratio = np.mean([u["n_test"] / u["n_train"] for u in ref["units"]])
    assert row["test_train_ratio"] == pytest.approx(ratio)
    from scipy import stats

    half = stats.t.ppf(0.975, 1) * np.std(diffs, ddof=1) * np.sqrt(1 / 2 + ratio)
    assert row["diff_auc_high"] - row["diff_auc"] == pytest.approx(half)
    text = (out / "compare.md").read_text()
    assert "Reference: Multimodal (default command)" in text and "corrected resampled t interval" in text
    assert f"n_test/n_train = {ratio:.3f}" in text
    assert "Multimodal (default command) (reference)" in text


# ----------------------------------------------------------------------------------------------------------------
# late fusion with logistic regression (--fusion logistic)


def test_fusion_averages_the_trained_model_with_logistic_regression_on_the_same_units(tmp_path):
    tiny = ["--default-subjects", "36", "--default-sites", "2", "--atlas", "tt", "--epochs", "2", "--batch-size", "8",
            "--embed-dim", "32", "--folds", "2", "--no-progress", "--cache-dir", str(tmp_path / "cache")]
    runs = {name: tmp_path / name for name in ("deep", "linear", "fused")}
    abide_main([*tiny, "--fusion", "none", "--out", str(runs["deep"])])
    abide_main([*tiny, "--model", "logistic-all", "--out", str(runs["linear"])])
    fused = abide_main([*tiny, "--out", str(runs["fused"])])  # the default: --fusion logistic
    for unit in ("seed0-fold0", "seed0-fold1"):
        deep, linear, both = (json.loads((runs[n] / "done" / f"{unit}.json").read_text()) for n in runs)
        assert both["predictions"]["subject"] == deep["predictions"]["subject"] == linear["predictions"]["subject"]
        expected = (np.asarray(deep["predictions"]["prob"]) + np.asarray(linear["predictions"]["prob"])) / 2
        np.testing.assert_allclose(both["predictions"]["prob"], expected, rtol=1e-6)
        labels = np.asarray(both["predictions"]["label"])
        assert both["auc"] == pytest.approx(binary_auc(labels, expected))
        # each model alone is kept beside the fused result: the same numbers as the runs of each model
        assert both["fusion"]["deep_auc"] == pytest.approx(deep["auc"])
        assert both["fusion"]["linear_auc"] == pytest.approx(linear["auc"])
        assert both["fusion"]["deep"]["threshold"] == pytest.approx(deep["threshold"])
        assert both["fusion"]["weight"] == 0.5 and both["fusion"]["trained_model_only"] == 0
        assert both["val_sigma"] == deep["val_sigma"]  # the trained model's spectra are still reported
    # with --ensemble the members' averaged probabilities are fused (member 1 = the run at --init-offset 1)
    abide_main([*tiny, "--fusion", "none", "--init-offset", "1", "--out", str(tmp_path / "deep1")])
    abide_main([*tiny, "--ensemble", "2", "--out", str(tmp_path / "ensemble")])
    for unit in ("seed0-fold0", "seed0-fold1"):
        members = [json.loads((tmp_path / n / "done" / f"{unit}.json").read_text())["predictions"]["prob"]
                   for n in ("deep", "deep1")]
        linear = json.loads((runs["linear"] / "done" / f"{unit}.json").read_text())["predictions"]["prob"]
        both = json.loads((tmp_path / "ensemble" / "done" / f"{unit}.json").read_text())
        np.testing.assert_allclose(both["predictions"]["prob"], (np.mean(members, axis=0) + linear) / 2, rtol=1e-6)
    assert fused["fusion"]["mode"] == "logistic"
    assert fused["fusion"]["deep_auc"]["values"] == pytest.approx([u["auc"] for u in json.loads(
        (runs["deep"] / "results.json").read_text())["units"]])
    # a fitted baseline has nothing to fuse: the option resolves to none, and the record says so
    abide_main([*tiny, "--model", "logistic", "--fusion", "logistic", "--out", str(tmp_path / "lr")])
    assert json.loads((tmp_path / "lr" / "config.json").read_text())["fusion"] == "none"
    # a run folder of one fusion is not resumed under the other
    with pytest.raises(SystemExit) as info:
        abide_main([*tiny, "--out", str(runs["deep"]), "--fusion", "logistic"])
    assert info.value.code == 2


def test_fusion_select_fused_selects_the_epoch_on_the_fused_validation_auc(tmp_path):
    tiny = ["--default-subjects", "80", "--default-sites", "2", "--atlas", "tt", "--epochs", "4", "--batch-size", "8",
            "--embed-dim", "32", "--folds", "2", "--no-progress", "--cache-dir", str(tmp_path / "cache")]
    abide_main([*tiny, "--model", "logistic-all", "--out", str(tmp_path / "linear")])
    abide_main([*tiny, "--fusion-select", "fused", "--out", str(tmp_path / "fused")])
    records = [json.loads(line) for line in (tmp_path / "fused" / "metrics.jsonl").read_text().splitlines()]
    for unit in ("seed0-fold0", "seed0-fold1"):
        epochs = [r for r in records if r.get("unit") == unit and "val_fused_auc" in r]
        assert len(epochs) == 4  # every epoch's validation probabilities fused with the logistic regression
        done = json.loads((tmp_path / "fused" / "done" / f"{unit}.json").read_text())
        linear = json.loads((tmp_path / "linear" / "done" / f"{unit}.json").read_text())
        best = max(r["val_fused_auc"] for r in epochs)
        assert done["best_val"] == pytest.approx(best)  # the epoch is the one with the best fused validation AUC
        assert epochs[done["best_epoch"]]["val_fused_auc"] == pytest.approx(best)
        # the partner fitted before training is --model logistic-all's fit on the same unit
        assert done["fusion"]["linear_auc"] == pytest.approx(linear["auc"])
        assert done["fusion"]["select"] == "fused"
    config = json.loads((tmp_path / "fused" / "config.json").read_text())
    assert config["fusion_select"] == "fused"
    for bad in (["--fusion", "none"], ["--fusion-select", "trained"]):  # needs the fusion; not resumed as the other
        with pytest.raises(SystemExit) as info:
            abide_main([*tiny, "--fusion-select", "fused", "--out", str(tmp_path / "fused"), *bad])
        assert info.value.code == 2


def binary_auc(labels, prob):
    from sklearn.metrics import roc_auc_score

    return roc_auc_score(labels, prob)


def test_fusion_keeps_the_trained_model_for_a_subject_without_fmri(tiny_cohort):
    from pmrl_sci.tasks.abide_fit import baseline_inputs, baseline_probabilities, fuse_with_logistic

    cohort = load_abide_cohort(tiny_cohort, atlas="tt", modalities=["fmri", "smri"], progress=False,
                               text_fields=["age", "sex"])
    labels = cohort.labels.astype(int)
    order = np.argsort(labels, kind="stable")  # alternate the classes over the parts: both in each
    rows = np.concatenate([order[labels[order] == 0], order[labels[order] == 1]])
    parts = {"train": rows[0::2], "val": rows[1::4], "test": rows[3::4]}
    config = AbideConfig(modalities=["fmri", "smri"], text_fields=["age", "sex"], fusion="logistic")
    no_fmri = int(parts["test"][0])
    cohort.mask["fmri"] = cohort.mask["fmri"].copy()
    cohort.mask["fmri"][no_fmri] = False
    rng = np.random.default_rng(0)
    deep = {p: {"subject": parts[p], "label": labels[parts[p]], "prob": rng.uniform(size=len(parts[p]))}
            for p in ("val", "test")}
    result = fuse_with_logistic(config, cohort, parts, 0, deep["val"], deep["test"])
    inputs = baseline_inputs(config, cohort, parts, 0, every_input=True)
    _, linear_test, _ = baseline_probabilities(inputs.features, inputs.labels, inputs.local, 0)
    assert no_fmri not in inputs.subjects and inputs.excluded_no_fmri == 1
    linear = dict(zip(inputs.subjects[inputs.local["test"]].tolist(), linear_test))
    prob = np.asarray(result["predictions"]["prob"])
    assert prob[0] == pytest.approx(deep["test"]["prob"][0])  # no fMRI: the trained model's probability
    np.testing.assert_allclose(prob[1:], (deep["test"]["prob"][1:] + [linear[s] for s in parts["test"][1:]]) / 2)
    assert result["fusion"]["trained_model_only"] == 1
    assert result["fusion"]["linear_auc"] == pytest.approx(binary_auc(labels[parts["test"][1:]], linear_test))

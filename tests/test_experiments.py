"""Experiments and analysis: noise injection statistics, the table writer, the analysis figures, quick runs."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from pmrl_sci.noise import add_input_noise, flip_labels
from pmrl_sci.reports.spectral_analysis import (
    analyse_runs,
    epoch_series,
    load_run,
    modality_contribution,
    pooled_test_sigma,
)
from pmrl_sci.reports.tables import (
    TableRow,
    check_same_units,
    collect_table,
    format_mean_std,
    markdown_table,
    write_table,
)
from pmrl_sci.tasks.abide_methods import (
    Method,
    run_methods,
)

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def _script(name):
    spec = importlib.util.spec_from_file_location(f"experiments_{name}", EXPERIMENTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ----------------------------------------------------------------------------------------
# noise injection (pmrl_sci.noise)


def test_input_noise_scale_mean_and_determinism():
    inputs = {"fmri": np.zeros((300, 400), dtype=np.float32), "smri": np.ones((300, 50), dtype=np.float32)}
    noisy = add_input_noise(inputs, 0.4, np.random.default_rng(7))
    diff = noisy["fmri"] - inputs["fmri"]
    assert abs(diff.std() - 0.4) < 0.005 and abs(diff.mean()) < 0.005
    assert abs((noisy["smri"] - 1.0).std() - 0.4) < 0.01
    assert noisy["fmri"].dtype == np.float32 and noisy["fmri"].shape == (300, 400)
    again = add_input_noise(inputs, 0.4, np.random.default_rng(7))
    assert all(np.array_equal(noisy[m], again[m]) for m in inputs)
    other = add_input_noise(inputs, 0.4, np.random.default_rng(8))
    assert not np.array_equal(noisy["fmri"], other["fmri"])
    assert np.array_equal(add_input_noise(inputs, 0.0, np.random.default_rng(7))["fmri"], inputs["fmri"])
    with pytest.raises(ValueError, match="scale"):
        add_input_noise(inputs, -0.1, np.random.default_rng(0))


def test_label_flip_rate_and_determinism():
    labels = np.random.default_rng(0).integers(0, 2, 20000)
    flipped = flip_labels(labels, 0.3, np.random.default_rng(3))
    assert abs((flipped != labels).mean() - 0.3) < 0.015
    assert set(np.unique(flipped)) <= {0, 1}
    assert np.array_equal(flipped, flip_labels(labels, 0.3, np.random.default_rng(3)))
    assert not np.array_equal(flipped, flip_labels(labels, 0.3, np.random.default_rng(4)))
    assert np.array_equal(flip_labels(labels, 0.0, np.random.default_rng(3)), labels)
    assert np.array_equal(flip_labels(labels, 1.0, np.random.default_rng(3)), 1 - labels)
    three = np.random.default_rng(1).integers(0, 3, 30000)
    noisy = flip_labels(three, 0.5, np.random.default_rng(2), num_classes=3)
    changed = noisy != three
    assert abs(changed.mean() - 0.5) < 0.015
    # a flipped label is a different class, drawn uniformly among the other two
    assert abs(((noisy - three) % 3 == 1)[changed].mean() - 0.5) < 0.02
    with pytest.raises(ValueError, match="probability"):
        flip_labels(labels, 1.5, np.random.default_rng(0))


# ----------------------------------------------------------------------------------------
# tables on synthetic run folders


def _results(path, auc, acc, seeds=(0, 1, 2), n_test=20, simulated=False):
    path.mkdir(parents=True, exist_ok=True)
    summary = {}
    for key, values in (("auc", auc), ("accuracy", acc), ("sensitivity", acc), ("specificity", acc)):
        values = np.asarray(values, dtype=float)
        std = float(values.std(ddof=1 if len(values) > 1 else 0))
        summary[key] = {"mean": float(values.mean()), "std": std, "values": values.tolist(), "n": len(values)}
    summary["simulated_data"] = simulated
    summary["units"] = [{"unit": f"seed{s}", "seed": s, "n_train": 70, "n_val": 10, "n_test": n_test} for s in seeds]
    (path / "results.json").write_text(json.dumps(summary))
    return path


def test_table_mean_std_markdown_and_csv(tmp_path):
    rows = [TableRow("VAST", _results(tmp_path / "vast", [0.70, 0.72, 0.74], [0.6, 0.62, 0.64])),
            TableRow("PMRL", _results(tmp_path / "pmrl", [0.80, 0.80, 0.83], [0.7, 0.72, 0.71], simulated=True))]
    table = collect_table(rows)
    assert list(table["method"]) == ["VAST", "PMRL"]
    assert table.loc[0, "auc_mean"] == pytest.approx(0.72) and table.loc[0, "auc_std"] == pytest.approx(0.02)
    assert table.loc[1, "auc_mean"] == pytest.approx(0.81) and int(table.loc[1, "n"]) == 3
    text = markdown_table(table, reference={"PMRL": {"AUC": "80.5", "ACC": "73.2"}})
    lines = text.splitlines()
    assert lines[0] == "| method | AUC (%) | ACC (%) | SEN (%) | SPE (%) | trials | paper AUC | paper ACC |"
    assert lines[2].startswith("| VAST | 72.0 ± 2.0 | 62.0 ± 2.0 |") and lines[2].endswith("| 3 |  |  |")
    assert "| PMRL | 81.0 ± 1.7 |" in lines[3] and lines[3].endswith("| 80.5 | 73.2 |")
    assert "Rows PMRL ran on the generated" in text
    md, csv = write_table(table, tmp_path / "out", "t4", title="ABIDE", notes=["GCN: skipped (no --model)"])
    assert md.read_text().startswith("## ABIDE\n\n| method |") and "- GCN: skipped" in md.read_text()
    back = pd.read_csv(csv)
    assert np.allclose(back["accuracy_mean"], table["accuracy_mean"]) and list(back["method"]) == ["VAST", "PMRL"]
    assert not list((tmp_path / "out").glob(".*tmp"))  # atomic writes leave no temporary files


def test_table_reference_per_condition_and_split_check(tmp_path):
    rows = [TableRow("PMRL", _results(tmp_path / "a", [0.8, 0.9], [0.7, 0.8], seeds=(0, 1)), {"noise": "input"}),
            TableRow("PMRL", _results(tmp_path / "b", [0.6, 0.7], [0.5, 0.6], seeds=(0, 1)), {"noise": "label"})]
    text = markdown_table(collect_table(rows, ["auc"]), ["auc"], extra=["noise"],
                          reference={("PMRL", "input"): {"AUC": "79.2"}, ("PMRL", "label"): {"AUC": "77.2"}})
    assert "| PMRL | input | 85.0 ± 7.1 | 2 | 79.2 |" in text and "| PMRL | label | 65.0 ± 7.1 | 2 | 77.2 |" in text
    single = TableRow("GRAM", _results(tmp_path / "d", [0.55], [0.5], seeds=(0,)))
    assert "| GRAM | 55.0 | 1 |" in markdown_table(collect_table([single], ["auc"]), ["auc"])
    assert check_same_units(rows) == []
    other = TableRow("GRAM", _results(tmp_path / "c", [0.5, 0.5], [0.5, 0.5], seeds=(0, 2)))
    problems = check_same_units([*rows, other])
    assert len(problems) == 1 and "GRAM" in problems[0]
    assert format_mean_std(float("nan"), 0.1) == "n/a" and format_mean_std(0.5, float("nan")) == "50.0"


def test_table_bad_input_names_file_and_field(tmp_path):
    with pytest.raises(FileNotFoundError, match="results.json"):
        collect_table([TableRow("X", tmp_path / "missing")])
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "results.json").write_text(json.dumps({"auc": 0.7}))
    with pytest.raises(ValueError, match=r"bad/results.json: field 'auc'"):
        collect_table([TableRow("X", bad)])
    with pytest.raises(ValueError, match="no rows"):
        collect_table([])
    with pytest.raises(ValueError, match="relative folder name"):
        Method("../up", "Up")


# ----------------------------------------------------------------------------------------
# analysis on synthetic records (exact numbers)


def _synthetic_run(path, k=3, sigma_done=True):
    path.mkdir(parents=True)
    records = []
    for unit, epochs in (("seed0", 3), ("seed1", 2)):
        for epoch in range(epochs):
            offset = 0.1 * epoch + (0.0 if unit == "seed0" else 0.2)
            records.append({"unit": unit, "epoch": epoch, "val_sigma_mean": [1.2 + offset, 0.9, 0.5 - offset][:k],
                            "val_u1_cosine": 0.5 - offset, "val_v_abs_mean": (np.eye(k) * (0.5 + offset)).tolist()})
    (path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    (path / "done").mkdir()
    for unit, scale in (("seed0", 1.0), ("seed1", 1.1)):
        payload = {"unit": unit, "test_sigma": (np.full((4, k), scale) * [1.5, 0.5, 0.2][:k]).tolist()
                   if sigma_done else None}
        (path / "done" / f"{unit}.json").write_text(json.dumps(payload))
    (path / "results.json").write_text(json.dumps({"modalities": ["fmri", "smri", "text"][:k]}))
    return path


def test_epoch_series_and_contribution_exact(tmp_path):
    run = load_run(_synthetic_run(tmp_path / "pmrl"), "PMRL")
    epochs, mean, count = epoch_series(run.records, "val_sigma_mean")
    assert epochs.tolist() == [0, 1, 2] and count.tolist() == [2, 2, 1]
    assert mean[0].tolist() == pytest.approx([1.3, 0.9, 0.4])  # units at offsets 0 and 0.2
    assert mean[2].tolist() == pytest.approx([1.4, 0.9, 0.3])  # only seed0 reached epoch 2
    sigma = pooled_test_sigma(run)
    assert sigma.shape == (8, 3) and sigma[:, 0].mean() == pytest.approx(1.5 * 1.05)
    v, source = modality_contribution(run)  # no test_v_abs_mean: each unit's last validation epoch
    assert source.startswith("validation") and v[0, 0] == pytest.approx((0.7 + 0.5 + 0.1 + 0.2) / 2)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_run(tmp_path / "nope")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="neither metrics.jsonl"):
        load_run(empty)


def test_analyse_runs_writes_figures_and_summary(tmp_path):
    runs = {"PMRL": _synthetic_run(tmp_path / "pmrl"), "GRAM": _synthetic_run(tmp_path / "gram"),
            "baseline": _synthetic_run(tmp_path / "base", sigma_done=False)}
    report = analyse_runs(runs, tmp_path / "figures")
    assert report.missing == {}
    for path in report.figures.values():
        assert path.is_file() and path.read_bytes()[:4] == b"\x89PNG"
    saved = json.loads((tmp_path / "figures" / "analysis.json").read_text())
    assert saved["runs"]["PMRL"]["test_sigma1"]["n"] == 8 and "test_sigma1" not in saved["runs"]["baseline"]
    assert saved["runs"]["GRAM"]["val_u1_cosine_last_epoch"] == pytest.approx(0.3)
    # a run with no modality matrix at all (single-modality baseline) gives no figures, and says why
    lone = tmp_path / "lone"
    (lone / "done").mkdir(parents=True)
    (lone / "done" / "seed0.json").write_text(json.dumps({"unit": "seed0", "test_sigma": None}))
    report = analyse_runs({"lone": lone}, tmp_path / "lone_figures")
    assert set(report.missing) == set(report.figures) and all(v is None for v in report.figures.values())


# ----------------------------------------------------------------------------------------
# real runs of the ABIDE front end (tiny generated cohort)


@pytest.fixture(scope="module")
def table_run(tmp_path_factory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("table4")
    cache = tmp_path_factory.mktemp("abide_cache")
    argv = ["--quick", "--seeds", "1", "--methods", "logistic", "gram", "pmrl", "--out", str(out),
            "--cache-dir", str(cache), "--no-progress"]
    status = _script("abide_table").main(argv)
    return out, cache, argv, status


def test_quick_table_experiment(table_run):
    out, _, _, status = table_run
    assert status == 0
    lines = (out / "table.md").read_text().splitlines()
    assert [line.split(" | ")[0] for line in lines if line.startswith("| ") and "method" not in line] == [
        "| Logistic regression", "| GRAM", "| PMRL (paper L_M)"]
    table = pd.read_csv(out / "table.csv")
    for name in ("logistic", "gram", "pmrl"):
        results = json.loads((out / name / "results.json").read_text())
        row = table[table["path"] == str(out / name)].iloc[0]
        assert row["auc_mean"] == pytest.approx(results["auc"]["mean"])
        assert results["units"][0]["seed"] == 0
    assert json.loads((out / "logistic" / "results.json").read_text())["modalities"] == ["fmri"]


def test_analysis_from_real_runs(table_run, tmp_path):
    out, _, _, _ = table_run
    analysis = _script("analysis")
    assert analysis.main([f"GRAM={out / 'gram'}", f"PMRL={out / 'pmrl'}", "--out", str(tmp_path)]) == 0
    saved = json.loads((tmp_path / "analysis.json").read_text())
    assert saved["missing"] == {}
    for name in ("singular_values_by_method", "sigma1_distribution", "u1_cosine", "modality_contribution"):
        assert (tmp_path / f"{name}.png").is_file()
    for method in ("gram", "pmrl"):
        done = json.loads((out / method / "done" / "seed0.json").read_text())
        sigma = np.asarray(done["test_sigma"])
        # three unit-length modality embeddings per instance: sigma_1^2 + sigma_2^2 + sigma_3^2 = 3
        assert np.allclose((sigma ** 2).sum(axis=1), 3.0, atol=1e-3)
        summary = saved["runs"][method.upper()]
        assert summary["test_sigma1"]["mean"] == pytest.approx(sigma[:, 0].mean())
        assert np.asarray(summary["v_abs_mean"]).shape == (3, 3)
        assert -1.0 <= summary["val_u1_cosine_last_epoch"] <= 1.0
    figures = json.loads((out / "figures" / "analysis.json").read_text())
    assert set(figures["runs"]) == {"Logistic regression", "GRAM", "PMRL (paper L_M)"} and figures["missing"] == {}
    with pytest.raises(SystemExit):
        analysis.main(["A=x", "A=y", "--out", str(tmp_path)])


def test_quick_table_resumes_and_refuses_other_options(table_run, capsys):
    out, _, argv, _ = table_run
    stamp = (out / "pmrl" / "done" / "seed0.json").stat().st_mtime_ns
    assert _script("abide_table").main(argv) == 0
    assert (out / "pmrl" / "done" / "seed0.json").stat().st_mtime_ns == stamp  # resumed, not retrained
    capsys.readouterr()
    assert _script("abide_table").main([*argv, "--epochs", "3"]) == 1
    printed = capsys.readouterr().out
    assert "holds a run with other options (epochs: stored 2, asked 3)" in printed
    assert (out / "pmrl" / "done" / "seed0.json").stat().st_mtime_ns == stamp


@pytest.mark.parametrize("script", ["abide_table", "noise_table", "ablation_table"])
def test_every_pmrl_row_names_its_form(script):
    module = _script(script)
    if script == "noise_table":
        methods = [m for kind, level in (("input", 0.4), ("label", 0.3))
                   for m in module.condition_methods(kind, level, list(module.OBJECTIVES))]
    else:
        methods = module.METHODS
    pmrl_rows = [m for m in methods if "pmrl" in m.args]
    # every run starts from the paper's setting (sign_aware False), so the sign-aware rows must ask for it
    assert {"--sign-aware" in m.args for m in pmrl_rows} == {True, False}  # both forms are run
    for method in pmrl_rows:
        paper = "--sign-aware" not in method.args
        assert ("paper L_M" in method.label) == paper and ("sign-aware L_M" in method.label) == (not paper), method
        if "--rank" in method.args:
            assert paper  # rank 2 is defined for the paper's form


def test_method_needing_a_missing_option_is_skipped(tmp_path):
    outcomes = run_methods([Method("future", "Future", ["--objective", "pmrl"], ("--no-such-option",))], tmp_path,
                           ["--quick"])
    assert outcomes[0].status == "skipped" and "--no-such-option" in outcomes[0].message
    assert not (tmp_path / "future").exists()


def test_quick_noise_experiment_with_levels(table_run, tmp_path):
    _, cache, _, _ = table_run
    noise = _script("noise_table")
    status = noise.main(["--quick", "--seeds", "1", "--methods", "pmrl", "--levels", "--input-levels", "0", "0.4",
                         "--label-levels", "0.3", "--out", str(tmp_path), "--cache-dir", str(cache), "--no-progress"])
    assert status == 0
    text = (tmp_path / "table.md").read_text()
    assert "| PMRL (paper L_M) | input | 0.4 |" in text and "| PMRL (paper L_M) | label | 0.3 |" in text
    assert "| 79.2 | 66.2 |" in text
    config = json.loads((tmp_path / "input-0.4" / "pmrl" / "config.json").read_text())
    assert config["sign_aware"] is False  # the paper's numbers are for the paper's L_M
    assert config["setting"] == "paper" and config["fmri_encoder"] == "brainnettf" and config["instance_term"]
    sweep = pd.read_csv(tmp_path / "sweep.csv")
    assert sorted(zip(sweep["noise"], sweep["level"])) == [("input", 0.0), ("input", 0.4), ("label", 0.3)]
    assert (tmp_path / "noise_curves.png").is_file()
    config = json.loads((tmp_path / "label-0.3" / "pmrl" / "config.json").read_text())
    assert config["label_noise"] == pytest.approx(0.3) and config["input_noise"] == 0.0
    done = json.loads((tmp_path / "label-0.3" / "pmrl" / "done" / "seed0.json").read_text())
    assert 0 < done["prep"]["label_noise_flipped"] < done["n_train"]  # 23 training labels at P = 0.3
    assert json.loads((tmp_path / "input-0.4" / "pmrl" / "config.json").read_text())["input_noise"] == 0.4


def test_quick_site_shift_table_has_every_site_before_and_after_adaptation(tmp_path):
    site_shift = _script("site_shift")
    out = tmp_path / "shift"
    argv = ["--quick", "--seeds", "1", "--methods", "pmrl", "logistic", "--epochs", "1", "--out", str(out),
            "--cache-dir", str(tmp_path / "cache"), "--no-progress"]
    assert site_shift.main(argv) == 0
    table = pd.read_csv(out / "site_shift.csv", index_col=0)
    source = json.loads((out / "pmrl" / "results.json").read_text())
    adapted = json.loads((out / "pmrl-align" / "results.json").read_text())
    sites = sorted(source["per_site"])
    assert list(table.index) == [*sites, "mean over sites"] and len(sites) == 2  # --quick: 2 sites
    label = "Multimodal, PMRL (default model)"
    for site in sites:  # the before column is the source model on the same subjects
        assert table.loc[site, f"{label}: before"] == pytest.approx(source["per_site"][site]["auc"])
        assert table.loc[site, f"{label}: after align"] == pytest.approx(
            adapted["adaptation"]["per_site"]["after"][site]["auc"])
    assert table.loc["mean over sites", label] == pytest.approx(np.mean([source["per_site"][s]["auc"] for s in sites]))
    assert json.loads((out / "pmrl-align" / "config.json").read_text())["adapt"] == "align"
    assert "Logistic regression (connectivity)" in table.columns and (out / "site_shift.png").is_file()


def test_methods_resume_when_the_front_end_resolved_options_itself(tmp_path):
    # --epochs left unset (its default depends on the data) and --model logistic (which fixes the objective to
    # none) are recorded resolved; a rerun with the same command must resume, not be refused
    shared = ["--default-subjects", "36", "--default-sites", "2", "--atlas", "tt", "--no-progress", "--cache-dir",
              str(tmp_path / "cache")]
    methods = [Method("logistic", "Logistic regression", ["--model", "logistic"])]
    assert run_methods(methods, tmp_path, shared)[0].status == "done"
    again = run_methods(methods, tmp_path, shared)[0]
    assert again.status == "done", again.message
    changed = run_methods(methods, tmp_path, [*shared, "--epochs", "3"])[0]
    assert changed.status == "failed" and "epochs: stored 30, asked 3" in changed.message


def test_quick_init_study_pairs_every_initialisation_and_their_ensemble_with_logistic_regression(tmp_path):
    study = _script("abide_init")
    out = tmp_path / "init"
    argv = ["--quick", "--seeds", "1", "--inits", "2", "--epochs", "1", "--split", "bnt",
            "--out", str(out), "--cache-dir", str(tmp_path / "cache"), "--no-progress"]
    assert study.main(argv) == 0
    table = pd.read_csv(out / "init.csv", index_col=0)
    assert list(table.index) == [
        "PMRL, --init-offset 0", "PMRL, --init-offset 1", "PMRL, ensemble of 2 initialisations",
        "Cross-entropy alone, --init-offset 0", "Cross-entropy alone, --init-offset 1",
        "Cross-entropy alone, ensemble of 2 initialisations",
        "PMRL + logistic regression, --init-offset 0", "PMRL + logistic regression, --init-offset 1",
        "PMRL + logistic regression, ensemble of 2 initialisations",
        "Cross-entropy alone + logistic regression, --init-offset 0",
        "Cross-entropy alone + logistic regression, --init-offset 1",
        "Cross-entropy alone + logistic regression, ensemble of 2 initialisations",
        "Logistic regression, all inputs"]
    assert json.loads((out / "pmrl-init1" / "config.json").read_text())["init_offset"] == 1
    assert json.loads((out / "pmrl-init1" / "config.json").read_text())["fusion"] == "none"
    runs = [study.unit_predictions(out / f"pmrl-init{i}") for i in range(2)]
    (subjects, labels, first), second = runs[0]["seed0"], runs[1]["seed0"][2]
    assert runs[1]["seed0"][0] == subjects and not np.array_equal(first, second)  # same subjects, other models
    from sklearn.metrics import roc_auc_score

    assert study.ensemble_auc(runs)["seed0"] == pytest.approx(roc_auc_score(labels, (first + second) / 2))
    linear = study.unit_predictions(out / "logistic-all")
    assert linear["seed0"][0] == subjects
    fused = ((first + second) / 2 + linear["seed0"][2]) / 2  # the late fusion: equal weights, fixed beforehand
    assert study.ensemble_auc(runs, linear)["seed0"] == pytest.approx(roc_auc_score(labels, fused))
    assert table.loc["PMRL + logistic regression, ensemble of 2 initialisations", "AUC"] == (
        f"{100 * roc_auc_score(labels, fused):.1f} ± 0.0")
    assert table.loc["PMRL, --init-offset 1", "AUC"] == (
        f"{100 * json.loads((out / 'pmrl-init1' / 'done' / 'seed0.json').read_text())['auc']:.1f} ± 0.0")
    assert "| Logistic regression, all inputs | 1 |" in (out / "init.md").read_text()
    assert "corrected resampled t interval" in (out / "init.md").read_text()
    partner = table["ΔAUC vs the same initialisation(s) of cross-entropy alone [95% CI]"]
    ce = json.loads((out / "ce-init1" / "done" / "seed0.json").read_text())["auc"]
    pmrl = json.loads((out / "pmrl-init1" / "done" / "seed0.json").read_text())["auc"]
    assert partner["PMRL, --init-offset 1"].startswith(f"{100 * (pmrl - ce):+.1f}")
    assert partner["Cross-entropy alone, --init-offset 1"] == "—"
    assert partner["PMRL + logistic regression, --init-offset 1"] != "—"
    runs[1]["seed0"] = (subjects[::-1], labels, second)
    with pytest.raises(ValueError, match="different subjects"):
        study.ensemble_auc(runs)


def test_connectivity_study_fits_on_training_subjects_and_pairs_every_row_with_pearson(tmp_path):
    study = _script("abide_connectivity")
    out = tmp_path / "connectivity"
    argv = ["--seeds", "1", "--folds", "2", "--default-subjects", "36", "--default-sites", "2", "--atlas", "tt",
            "--out", str(out), "--cache-dir", str(tmp_path / "cache")]
    assert study.main(argv) == 0
    table = pd.read_csv(out / "connectivity.csv", index_col=0)
    assert list(table.index) == list(study.ROWS) and list(table["units"]) == [2, 2, 2]
    assert table.loc[study.ROWS[0], f"ΔAUC vs {study.ROWS[0]} [95% CI]"] == "—"
    assert "corrected resampled t interval" in (out / "connectivity.md").read_text()
    # the tangent reference point depends on the training subjects only: a change of a test subject's series
    # leaves the training subjects' features alone
    rng = np.random.default_rng(0)
    series = [rng.standard_normal((40, 6)) for _ in range(8)]
    series[7][:, 2] = 0.0  # a dead ROI stays finite
    first = study.tangent_features(series, np.arange(5))
    series[6] = rng.standard_normal((40, 6))
    second = study.tangent_features(series, np.arange(5))
    assert np.isfinite(first).all() and first.shape == (8, 15)
    np.testing.assert_allclose(first[:6], second[:6])
    assert not np.allclose(first[6], second[6])
    # ComBat too: fitted on the training rows only, it removes a site offset, and a site it never saw passes through
    n = 30
    sites = np.array(["A"] * 12 + ["B"] * 12 + ["C"] * 6)
    covariates = pd.DataFrame({"age": rng.uniform(8, 40, n), "sex": rng.integers(1, 3, n)})
    features = rng.standard_normal((n, 4)) + np.where(sites == "B", 3.0, 0.0)[:, None]
    train = np.r_[0:9, 12:21]
    harmonised = study.combat_features(features, sites, covariates, train)
    assert abs(harmonised[sites == "A"].mean() - harmonised[sites == "B"].mean()) < 0.5
    np.testing.assert_allclose(harmonised[sites == "C"], features[sites == "C"])
    changed = features.copy()
    changed[9:12] += 10.0  # site A's test subjects
    again = study.combat_features(changed, sites, covariates, train)
    np.testing.assert_allclose(again[train], harmonised[train])


def test_init_study_lists_and_runs_only_the_methods_asked_for(tmp_path, capsys):
    study = _script("abide_init")
    out = tmp_path / "init"
    assert study.main(["--list", "--inits", "2", "--out", str(out)]) == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert listed == ["pmrl-init0", "pmrl-init1", "ce-init0", "ce-init1", "logistic-all"]
    assert not out.exists()  # --list runs nothing
    argv = ["--quick", "--seeds", "1", "--inits", "2", "--epochs", "1", "--split", "bnt", "--methods", "logistic-all",
            "--out", str(out), "--cache-dir", str(tmp_path / "cache"), "--no-progress"]
    assert study.main(argv) == 0
    assert sorted(p.name for p in out.iterdir()) == ["logistic-all"]
    assert "no table: it needs every method" in capsys.readouterr().out
    assert not (out / "init.csv").exists()
    with pytest.raises(SystemExit) as exc:
        study.main(["--list", "--methods", "pmrl-init5"])
    assert exc.value.code == 2

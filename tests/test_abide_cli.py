"""End-to-end runs of ``python -m pmrl_sci.abide`` (``main(argv)``) on a tiny generated cohort."""

import dataclasses
import json

import numpy as np
import pytest

from pmrl_sci.abide import main
from pmrl_sci.tasks.abide import AbideConfig

TINY = ["--default-subjects", "36", "--default-sites", "2", "--atlas", "tt", "--epochs", "2", "--batch-size", "8",
        "--embed-dim", "32", "--no-progress"]
#: most tests train one unit: one BrainNetTF split instead of the default 5 folds
BNT = [*TINY, "--split", "bnt"]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("abide_cache")


def _run(tmp_path, cache_dir, *extra):
    out = tmp_path / "run"
    return out, main([*BNT, "--cache-dir", str(cache_dir), "--out", str(out), *extra])


def test_three_modalities_end_to_end_and_resume(tmp_path, cache_dir, capsys):
    out, results = _run(tmp_path, cache_dir, "--modalities", "fmri", "smri", "text", "--fmri-channels", "both")
    unit = json.loads((out / "done" / "seed0.json").read_text())
    for key in ("auc", "accuracy", "sensitivity", "specificity"):  # the summary is the finished unit's test metric
        assert results[key]["values"] == [unit[key]] and results[key]["n"] == 1
    assert unit["n_test"] > 0 and 0 <= unit["best_epoch"] < 2
    for name in ("config.yaml", "config.json", "data_report.json", "metrics.jsonl", "results.json", "roc.png",
                 "singular_values.png", "checkpoints/seed0.pt", "done/seed0.json"):
        assert (out / name).is_file(), name
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 2 and len(records[0]["val_sigma_mean"]) == 3
    assert "train_align_alignment" in records[0] and "train_ce" in records[0]
    report = json.loads((out / "data_report.json").read_text())
    assert report and json.loads((out / "results.json").read_text())["auc"] == results["auc"]
    done_time = (out / "done" / "seed0.json").stat().st_mtime_ns
    capsys.readouterr()
    _, again = _run(tmp_path, cache_dir, "--modalities", "fmri", "smri", "text", "--fmri-channels", "both")
    assert again["auc"] == results["auc"]
    assert (out / "done" / "seed0.json").stat().st_mtime_ns == done_time  # resumed, not retrained
    assert "reusing cached preprocessed data" in capsys.readouterr().out


def test_single_modality_folds_and_config_file(tmp_path, cache_dir):
    config = tmp_path / "config.yaml"
    config.write_text("objective: vast\nfolds: 2\nepochs: 1\n")
    out = tmp_path / "run"
    results = main([*TINY, "--cache-dir", str(cache_dir), "--out", str(out), "-c", str(config), "--modalities", "smri",
                    "--epochs", "2"])
    assert results["modalities"] == ["smri"] and results["auc"]["n"] == 2
    assert results["objective"] == "none"  # one modality: nothing to align
    resolved = (out / "config.yaml").read_text()
    assert "epochs: 2" in resolved and "folds: 2" in resolved and "objective: none" in resolved


def test_combat_paper_is_marked_leaky(tmp_path, cache_dir):
    out, results = _run(tmp_path, cache_dir, "--modalities", "smri", "text", "--objective", "gram",
                        "--combat", "paper")
    assert results["leaky"] is True and (out / "LEAKY.txt").is_file()


def test_bad_command_lines(tmp_path, cache_dir, capsys):
    with pytest.raises(SystemExit):
        main(["--modalities", "eeg"])
    with pytest.raises(SystemExit) as info:
        main(["--data-dir", str(tmp_path / "missing"), "--out", str(tmp_path / "r"), "--no-progress"])
    assert info.value.code == 2
    assert "does not exist" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("epoch: 3\n")
    with pytest.raises(SystemExit):
        main(["-c", str(bad)])
    assert "did you mean epochs" in capsys.readouterr().err


def test_abide_under_torchrun_two_cpu_ranks(tmp_path, cache_dir):
    import os
    import socket
    import subprocess
    import sys
    from pathlib import Path

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
               "--master-port", str(port), "-m", "pmrl_sci.abide", *BNT, "--modalities", "fmri", "smri", "text",
               "--objective", "gram", "--device", "cpu", "--cache-dir", str(cache_dir), "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(command, cwd=Path(__file__).resolve().parents[1], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["distributed"]["world_size"] == 2
    assert results["auc"]["values"] == [json.loads((out / "done" / "seed0.json").read_text())["auc"]]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [0, 1]  # written by rank 0 alone
    assert done.stdout.count("[pmrl_sci.abide] gram") == 1
    assert (out / "roc.png").is_file() and (out / "done" / "seed0.json").is_file()


def test_alignment_first_ignores_labels_and_is_never_selected(tmp_path, cache_dir, monkeypatch):
    import numpy as np

    from pmrl_sci.tasks import abide as abide_task

    args = ["--modalities", "fmri", "smri", "text", "--align-epochs", "2", "--epochs", "1", "--patience", "0"]
    out, _ = _run(tmp_path, cache_dir, *args)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [0, 1, 2]
    assert [("train_ce" in r) for r in records] == [False, False, True]  # no cross-entropy while aligning
    assert all("train_align_loss" in r for r in records)
    assert json.loads((out / "done" / "seed0.json").read_text())["best_epoch"] == 2  # only fine-tuning epochs

    # the alignment-only epochs read no label: with every training label flipped, the weights after them match
    states = {}
    original = abide_task.prepare_split_arrays
    for flip in (False, True):
        def prepared(*a, flip=flip, **k):
            arrays, info = original(*a, **k)
            if flip:
                arrays["train"].labels = 1 - np.asarray(arrays["train"].labels)
            return arrays, info
        monkeypatch.setattr(abide_task, "prepare_split_arrays", prepared)
        run = tmp_path / f"flip{flip}"
        main([*BNT, "--cache-dir", str(cache_dir), "--out", str(run), "--modalities", "fmri", "smri", "text",
              "--align-epochs", "2", "--epochs", "1", "--device", "cpu"])
        records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        states[flip] = records
    aligned = [[r["train_align_loss"] for r in states[flip][:2]] for flip in (False, True)]
    assert aligned[0] == aligned[1]  # identical alignment phase
    assert states[False][2]["train_ce"] != states[True][2]["train_ce"]  # the labels do matter afterwards


def test_same_seed_same_run_on_cpu(tmp_path, cache_dir):
    runs = []
    for name in ("a", "b"):
        out = tmp_path / name
        main([*BNT, "--cache-dir", str(cache_dir), "--out", str(out), "--modalities", "fmri", "smri", "text",
              "--device", "cpu"])
        runs.append([json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()])
    losses = [[record["train_loss"] for record in run] for run in runs]
    assert losses[0] == losses[1]
    assert [r["val_auc"] for r in runs[0]] == [r["val_auc"] for r in runs[1]]


def test_rerun_with_other_options_is_refused(tmp_path, cache_dir, capsys):
    out, first = _run(tmp_path, cache_dir, "--modalities", "fmri", "smri", "text", "--epochs", "1", "--seed", "3")
    assert [u["unit"] for u in first["units"]] == ["seed3"]
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        _run(tmp_path, cache_dir, "--objective", "vast", "--modalities", "fmri", "smri", "--epochs", "3", "--seed", "3")
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    assert "--objective 'pmrl' (recorded) vs 'vast' (now)" in err and "--epochs 1 (recorded) vs 3 (now)" in err
    assert json.loads((out / "results.json").read_text())["objective"] == "pmrl"  # not relabelled
    _, again = _run(tmp_path, cache_dir, "--modalities", "fmri", "smri", "text", "--epochs", "1", "--seed", "3",
                    "--device", "cpu")  # result-neutral options may change
    assert again["auc"] == first["auc"]


@pytest.mark.parametrize("bad, expected", [
    (["--epochs", "0"], "--epochs must be >= 1"),
    (["--lambda1", "nan"], "--lambda1 must be a finite number"),
    (["--rank", "4"], "--rank must be between 1 and the number of modalities (3)"),
    (["--patience", "-1"], "--patience must be >= 0"),
    (["--align-epochs", "2", "--objective", "none"], "--align-epochs needs the multimodal model"),
    (["--align-epochs", "-1"], "--align-epochs must be >= 0"),
    (["--fmri-crop", "1.0"], "--fmri-crop must be 0 (off) or a fraction in (0, 1)"),
    (["--fmri-crop", "0.5", "--fmri-channels", "both"], "--fmri-crop recomputes Pearson connectivity only"),
    (["--fmri-crop", "0.5", "--input-noise", "0.1"], "--fmri-crop and --input-noise"),
    (["--fmri-crop", "0.5", "--modalities", "smri", "text"], "--fmri-crop augments the fMRI connectivity"),
    (["--ema-decay", "1"], "--ema-decay must be 0 (off) or in (0, 1)"),
    (["--mixup", "-0.2"], "--mixup must be 0 (off) or a Beta concentration > 0"),
    (["--mixup", "0.4", "--model", "logistic"], "--mixup must be 0 (off) or a Beta concentration > 0 for a trained"),
])
def test_bad_options_are_refused_before_anything_is_written(tmp_path, cache_dir, capsys, bad, expected):
    with pytest.raises(SystemExit) as info:
        _run(tmp_path, cache_dir, *bad)
    assert info.value.code == 2
    assert expected in capsys.readouterr().err
    assert not (tmp_path / "run" / "done").exists()


def test_tensorboard_needs_its_package(tmp_path, cache_dir, capsys):
    import importlib.util

    if importlib.util.find_spec("tensorboard") is not None:
        out, _ = _run(tmp_path, cache_dir, "--modalities", "smri", "text", "--tensorboard")
        assert any((out / "tensorboard" / "seed0").iterdir())
        return
    with pytest.raises(SystemExit) as info:
        _run(tmp_path, cache_dir, "--modalities", "smri", "text", "--tensorboard")
    assert info.value.code == 2 and "needs the 'tensorboard' package" in capsys.readouterr().err


def test_killed_run_resumes_inside_the_unit(tmp_path, cache_dir):
    from pmrl_sci.training import epoch_callback

    class Killed(Exception):
        pass

    def kill(unit, epoch, metrics, max_epochs):
        if epoch == 1:  # epoch 1 is logged, its checkpoint not yet written
            raise Killed

    args = [*BNT, "--cache-dir", str(cache_dir), "--modalities", "fmri", "smri", "text", "--epochs", "3",
            "--fmri-crop", "0.6", "--mixup", "0.4"]  # window crops and mixes draw from the RNG the checkpoint restores
    whole = main([*args, "--out", str(tmp_path / "whole")])
    out = tmp_path / "killed"
    with epoch_callback(kill), pytest.raises(Killed):
        main([*args, "--out", str(out)])
    assert (out / "checkpoints" / "seed0.resume.pt").is_file() and not (out / "done").exists()
    resumed = main([*args, "--out", str(out)])
    assert resumed["units"] == whole["units"]  # same best epoch and test metrics
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    reference = [json.loads(line) for line in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [0, 1, 2]
    assert [r["train_loss"] for r in records] == [r["train_loss"] for r in reference]
    assert not (out / "checkpoints" / "seed0.resume.pt").exists()  # removed once the unit is done


def test_paper_setting_is_one_flag_away_and_flags_still_win(tmp_path):
    from pmrl_sci.abide import build_parser
    from pmrl_sci.config import parse_dataclass_config
    from pmrl_sci.tasks.abide import PAPER_SETTING, SETTINGS, AbideConfig

    def parse(*argv):
        return parse_dataclass_config(build_parser(), AbideConfig, list(argv), presets=SETTINGS)

    default, paper = parse(), parse("--setting", "paper")
    assert any(getattr(default, key) != value for key, value in PAPER_SETTING.items())  # a different recipe
    assert {key: getattr(paper, key) for key in PAPER_SETTING} == PAPER_SETTING
    assert paper.setting == "paper" and paper.sign_aware is False and paper.fmri_encoder == "brainnettf"
    assert parse("--setting", "paper", "--tau1", "0.2").tau1 == 0.2  # a flag overrides the preset
    config = tmp_path / "run.yaml"
    config.write_text("setting: paper\nthreshold: val\n")
    from_file = parse("-c", str(config))
    assert from_file.fmri_encoder == "brainnettf" and from_file.threshold == "val"  # the file's value wins


def test_records_of_older_versions_are_read_in_todays_options():
    from pmrl_sci.tasks.abide import upgrade_recorded_config
    from pmrl_sci.tasks.abide_sites import IMPLIED_BY_OLDER_ABIDE_RUNS

    # K folds were recorded as split "bnt" with folds K; an option a run did not record did not exist yet: no
    # --ema-decay meant no weight average, no --ensemble one model per unit, no --text-fields the text "age, gender"
    # at threshold 0.5, no --sign-aware the paper's L_M
    old = upgrade_recorded_config({"split": "bnt", "folds": 5, "seed_offset": 2})
    assert old == {**IMPLIED_BY_OLDER_ABIDE_RUNS, "split": "folds", "folds": 5, "seed": 2}
    assert old["ema_decay"] == 0.0 and old["ensemble"] == 1 and old["text_fields"] == ["age", "sex"]
    assert old["threshold"] == "0.5" and old["sign_aware"] is False and old["fmri_crop"] == 0.0
    recorded = {**IMPLIED_BY_OLDER_ABIDE_RUNS, "split": "bnt", "folds": None, "ema_decay": 0.99, "ensemble": 3,
                "text_fields": ["age"], "seed": 1}
    assert upgrade_recorded_config(recorded) == recorded  # what a run recorded stays as it is
    assert upgrade_recorded_config({"split": "loso", "folds": None})["split"] == "loso"
    # every implied option is an option of today's config
    fields = {f.name for f in dataclasses.fields(AbideConfig)}
    assert set(IMPLIED_BY_OLDER_ABIDE_RUNS) <= fields


def test_a_run_from_before_the_text_fields_resumes_only_with_its_text_and_threshold(tmp_path, cache_dir, capsys):
    old = tmp_path / "old"
    _run(old, cache_dir, "--modalities", "text", "--epochs", "1", "--text-fields", "age", "sex", "--threshold", "0.5")
    config = json.loads((old / "run" / "config.json").read_text())
    for key in ("text_fields", "threshold", "fmri_crop", "sign_aware"):
        del config[key]  # as written before those options existed
    (old / "run" / "config.json").write_text(json.dumps(config))
    with pytest.raises(SystemExit) as info:  # today's defaults (six fields, threshold val) would mix its units
        _run(old, cache_dir, "--modalities", "text", "--epochs", "1")
    err = capsys.readouterr().err
    assert info.value.code == 2 and "--text-fields ['age', 'sex'] (recorded)" in err and "--threshold '0.5'" in err
    _run(old, cache_dir, "--modalities", "text", "--epochs", "1", "--text-fields", "age", "sex", "--threshold", "0.5",
         "--no-sign-aware")  # its own options resume it


def test_weight_averaging_is_part_of_a_run_and_older_runs_had_none(tmp_path, cache_dir, capsys):
    old = tmp_path / "old"
    _run(old, cache_dir, "--modalities", "smri", "--epochs", "1")
    config = json.loads((old / "run" / "config.json").read_text())
    assert config["ema_decay"] == 0.0  # no weight average by default
    del config["ema_decay"]  # as written before --ema-decay existed
    (old / "run" / "config.json").write_text(json.dumps(config))
    with pytest.raises(SystemExit) as info:
        _run(old, cache_dir, "--modalities", "smri", "--epochs", "1", "--ema-decay", "0.99")
    assert info.value.code == 2 and "--ema-decay 0.0 (recorded) vs 0.99 (now)" in capsys.readouterr().err
    _run(old, cache_dir, "--modalities", "smri", "--epochs", "1")  # the default resumes it

    averaged = tmp_path / "averaged"  # a run with an average is not resumed without it
    _run(averaged, cache_dir, "--modalities", "smri", "--epochs", "1", "--ema-decay", "0.99")
    with pytest.raises(SystemExit) as info:
        _run(averaged, cache_dir, "--modalities", "smri", "--epochs", "1")
    assert info.value.code == 2 and "--ema-decay 0.99 (recorded) vs 0.0 (now)" in capsys.readouterr().err


def test_init_offset_keeps_the_split_and_changes_the_initialisation(tmp_path, cache_dir, capsys):
    base_out, base = _run(tmp_path / "base", cache_dir, "--modalities", "smri", "--epochs", "2")
    other_out, other = _run(tmp_path / "other", cache_dir, "--modalities", "smri", "--epochs", "2",
                            "--init-offset", "1")
    first, second = (json.loads((out / "done" / "seed0.json").read_text()) for out in (base_out, other_out))
    assert first["predictions"]["subject"] == second["predictions"]["subject"]  # the same test subjects
    assert first["predictions"]["prob"] != second["predictions"]["prob"]  # from another initialisation
    assert json.loads((other_out / "config.json").read_text())["init_offset"] == 1
    with pytest.raises(SystemExit) as info:  # never mixed with the units of another initialisation
        _run(tmp_path / "other", cache_dir, "--modalities", "smri", "--epochs", "2")
    assert info.value.code == 2 and "--init-offset 1 (recorded) vs 0 (now)" in capsys.readouterr().err


def test_ensemble_averages_the_members_that_init_offsets_train_alone(tmp_path, cache_dir, capsys):
    from sklearn.metrics import roc_auc_score

    common = ("--modalities", "smri", "text", "--epochs", "2")
    ensemble_out, _ = _run(tmp_path / "ensemble", cache_dir, *common, "--ensemble", "2")
    singles = [_run(tmp_path / f"offset{i}", cache_dir, *common, "--init-offset", str(i))[0] for i in (0, 1)]
    done = json.loads((ensemble_out / "done" / "seed0.json").read_text())
    members = [json.loads((out / "done" / "seed0.json").read_text()) for out in singles]
    mean = np.mean([m["predictions"]["prob"] for m in members], axis=0)
    np.testing.assert_allclose(done["predictions"]["prob"], mean, rtol=1e-6)
    assert done["auc"] == pytest.approx(roc_auc_score(done["predictions"]["label"], mean))
    assert done["ensemble"] == {"members": 2, "init_offsets": [0, 1],
                                "best_epochs": [m["best_epoch"] for m in members],
                                "member_auc": [m["auc"] for m in members]}
    assert done["best_epoch"] == members[0]["best_epoch"]
    checkpoints = ensemble_out / "checkpoints"
    assert (checkpoints / "seed0-member1.pt").is_file() and not list(checkpoints.glob("*.resume.pt"))
    from pmrl_sci.training import epoch_callback

    class Killed(Exception):
        pass

    def kill_member_1(unit, epoch, metrics, max_epochs):
        if unit == "seed0-member1" and epoch == 1:
            raise Killed

    with epoch_callback(kill_member_1), pytest.raises(Killed):
        _run(tmp_path / "killed", cache_dir, *common, "--ensemble", "2")
    assert (tmp_path / "killed" / "run" / "checkpoints" / "seed0-member1.resume.pt").is_file()
    _run(tmp_path / "killed", cache_dir, *common, "--ensemble", "2")  # resumes inside member 1
    assert json.loads((tmp_path / "killed" / "run" / "done" / "seed0.json").read_text())["predictions"] == (
        done["predictions"])
    with pytest.raises(SystemExit) as info:  # never mixed with single-model units
        _run(tmp_path / "ensemble", cache_dir, *common)
    assert info.value.code == 2 and "--ensemble 2 (recorded) vs 1 (now)" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        _run(tmp_path / "bad", cache_dir, *common, "--ensemble", "0")
    assert info.value.code == 2 and "--ensemble must be an integer >= 1" in capsys.readouterr().err

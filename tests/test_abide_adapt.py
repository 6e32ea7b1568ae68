"""ABIDE runs started from a finished run: --init-from, --adapt {none,align,finetune}, --adapt-labels, and a new
modality trained into the aligned model (tiny generated cohort with 4 sites, 1-2 epochs)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from pmrl_sci.abide import main

SITES = ["NYU", "OHSU", "UCLA_1", "UM_1"]
TINY = ["--default-subjects", "40", "--default-sites", "4", "--atlas", "tt", "--epochs", "1", "--batch-size", "8",
        "--embed-dim", "16", "--no-progress"]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("abide_adapt_cache")


@pytest.fixture(scope="module")
def source(tmp_path_factory, cache_dir):
    """A finished leave-one-site-out run on fMRI + sMRI, the trained model alone (its reported predictions are the
    model's, which an adaptation starts from): the source of every test here."""
    out = tmp_path_factory.mktemp("source") / "run"
    _run(out, cache_dir, "--split", "loso", "--fusion", "none")
    return out


def _run(out, cache_dir, *extra, modalities=("fmri", "smri")):
    return main([*TINY, "--modalities", *modalities, "--cache-dir", str(cache_dir), "--out", str(out), *extra])


def _done(out, unit):
    return json.loads((out / "done" / f"{unit}.json").read_text())


def _state(out, unit):
    return torch.load(out / "checkpoints" / f"{unit}.pt", weights_only=True)


def _same(a, b, prefix=""):
    keys = [k for k in a if k.startswith(prefix)]
    assert keys, prefix
    return all(torch.equal(a[k], b[k]) for k in keys)


def test_adapt_none_tests_the_source_model_on_the_same_subjects(tmp_path, cache_dir, source, capsys):
    out = tmp_path / "none"
    results = _run(out, cache_dir, "--split", "loso", "--init-from", str(source))
    adaptation = results["adaptation"]
    assert adaptation["mode"] == "none" and adaptation["source_units"] == {f"seed0-site-{s}": f"seed0-site-{s}"
                                                                          for s in SITES}
    assert adaptation["trained"] == [] and adaptation["frozen"] == ["model", "alignment"]
    for site in SITES:
        unit = f"seed0-site-{site}"
        done, src = _done(out, unit), _done(source, unit)
        before = done["adaptation"]["before_predictions"]
        assert before["subject"] == src["predictions"]["subject"] == done["predictions"]["subject"]
        np.testing.assert_allclose(before["prob"], src["predictions"]["prob"], rtol=1e-6)  # the source's predictions
        assert done["adaptation"]["before"] == done["adaptation"]["after"]
        assert done["auc"] == src["auc"] and done["best_epoch"] == -1 and done["n_train"] == 0
        assert _same(_state(out, unit)["model"], _state(source, unit)["model"])
    assert adaptation["delta"]["auc"]["values"] == [0.0] * 4
    assert adaptation["per_site"]["before"] == adaptation["per_site"]["after"] == results["per_site"]
    assert "AUC before" in capsys.readouterr().out
    report = json.loads((out / "data_report.json").read_text())["adaptation"]
    assert "same training subjects as the source model's" in report["preprocessing"]
    with pytest.raises(SystemExit) as info:  # resume refuses another adaptation in the same folder
        _run(out, cache_dir, "--split", "loso", "--init-from", str(source), "--adapt", "align")
    assert info.value.code == 2 and "--adapt 'none' (recorded) vs 'align' (now)" in capsys.readouterr().err


def test_adapting_a_fused_source_starts_from_its_trained_model(tmp_path, cache_dir, source):
    """A source run of the default command reports its model fused with logistic regression; an adaptation adapts
    and reports the trained model alone, so its 'before' is the source's trained model alone (``fusion.deep``)."""
    fused_source = tmp_path / "fused"
    _run(fused_source, cache_dir, "--test-sites", "NYU")
    src = _done(fused_source, "seed0-test-NYU")
    assert json.loads((fused_source / "config.json").read_text())["fusion"] == "logistic" and "fusion" in src
    out = tmp_path / "none"
    _run(out, cache_dir, "--test-sites", "NYU", "--init-from", str(fused_source))
    assert json.loads((out / "config.json").read_text())["fusion"] == "none"
    done = _done(out, "seed0-test-NYU")
    assert done["adaptation"]["before"]["auc"] == pytest.approx(src["fusion"]["deep_auc"])
    assert "fusion" not in done


def test_adapt_align_trains_alignment_only_without_the_target_labels(tmp_path, cache_dir, source, monkeypatch):
    args = ("--test-sites", "NYU", "--init-from", str(source), "--adapt", "align", "--epochs", "2",
            "--patience", "0")
    first = _run(tmp_path / "a", cache_dir, *args)
    import pmrl_sci.tasks.abide as abide_task

    prepare = abide_task.prepare_split_arrays

    def shuffled_target_labels(*a, **k):  # the same run with the target (test) subjects' labels permuted
        arrays, info = prepare(*a, **k)
        for part in ("test", "target"):
            arrays[part].labels = np.random.default_rng(1).permutation(1 - arrays[part].labels)
        return arrays, info

    monkeypatch.setattr(abide_task, "prepare_split_arrays", shuffled_target_labels)
    second = _run(tmp_path / "b", cache_dir, *args)
    unit = "seed0-test-NYU"
    a, b, src = _state(tmp_path / "a", unit), _state(tmp_path / "b", unit), _state(source, "seed0-site-NYU")
    assert _same(a["model"], b["model"])  # the labels changed nothing the model learnt
    assert first["adaptation"]["before"] != second["adaptation"]["before"]  # ... though they changed the metrics
    assert _same(a["model"], src["model"], "classifier.")  # the classifier is frozen
    assert not _same(a["model"], src["model"], "backbone.")  # the encoders trained
    adaptation = first["adaptation"]
    assert adaptation["source_units"] == {unit: "seed0-site-NYU"} and adaptation["transductive"] is True
    assert adaptation["frozen"] == ["model.classifier"] and adaptation["trained"] == ["model.backbone"]
    assert "label-free" in adaptation["selection"]
    done = _done(tmp_path / "a", unit)
    records = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["target_align_loss"] for r in records]
    assert "train_ce" not in records[0] and done["best_epoch"] == int(np.argmin(losses))
    assert done["adaptation"]["n_training_subjects"] == done["n_test"] == len(done["predictions"]["subject"])
    assert done["adaptation"]["before_predictions"]["subject"] == done["predictions"]["subject"]
    note = json.loads((tmp_path / "a" / "data_report.json").read_text())["adaptation"]["note"]
    assert "WITHOUT their diagnosis labels" in note and "transductive" in note


def test_adapt_finetune_trains_on_labelled_target_subjects_removed_from_the_test_set(tmp_path, cache_dir, source):
    out = tmp_path / "finetune"
    results = _run(out, cache_dir, "--test-sites", "NYU", "--init-from", str(source), "--adapt", "finetune",
                   "--adapt-labels", "2")
    done, src = _done(out, "seed0-test-NYU"), _done(source, "seed0-site-NYU")
    labelled = done["adaptation"]["labelled_subjects"]
    src_subjects = src["predictions"]["subject"]
    labels = dict(zip(src_subjects, src["predictions"]["label"]))
    assert len(labelled) == 4 and sorted(labels[s] for s in labelled) == [0, 0, 1, 1]
    assert set(labelled) <= set(src_subjects) and not set(labelled) & set(done["predictions"]["subject"])
    assert done["predictions"]["subject"] == done["adaptation"]["before_predictions"]["subject"]
    assert done["n_test"] == len(src_subjects) - 4 and done["n_train"] == 4
    kept = [src_subjects.index(s) for s in done["predictions"]["subject"]]  # before: the source on the rest
    np.testing.assert_allclose(done["adaptation"]["before_predictions"]["prob"],
                               np.asarray(src["predictions"]["prob"])[kept], rtol=1e-6)
    assert results["adaptation"]["trained"] == ["model"] and results["adaptation"]["frozen"] == []
    assert not _same(_state(out, "seed0-test-NYU")["model"], _state(source, "seed0-site-NYU")["model"], "classifier.")
    assert results["adaptation"]["labelled_target_subjects"] == {"seed0-test-NYU": 4}
    assert "removed from its test set" in json.loads((out / "data_report.json").read_text())["adaptation"]["note"]


def test_a_new_modality_trains_only_its_encoder(tmp_path, cache_dir, source):
    unit, src_unit = "seed0-test-NYU", "seed0-site-NYU"
    src = _state(source, src_unit)
    states = []
    for lr in ("1e-4", "1e-2"):
        out = tmp_path / f"lr{lr}"
        results = _run(out, cache_dir, "--test-sites", "NYU", "--init-from", str(source), "--epochs", "2",
                       "--patience", "0", "--lr", lr, modalities=("fmri", "smri", "text"))
        adaptation = results["adaptation"]
        assert adaptation["new_modality"] == "text" and adaptation["trained"] == ["model.backbone.encoders.text"]
        assert adaptation["frozen"] == ["model.backbone.encoders.fmri", "model.backbone.encoders.smri",
                                        "model.classifier"]
        state = _state(out, unit)
        for part in ("backbone.encoders.fmri.", "backbone.encoders.smri.", "classifier."):  # buffers included
            assert _same(state["model"], src["model"], part), part
        done = _done(out, unit)
        np.testing.assert_allclose(done["adaptation"]["before_predictions"]["prob"],
                                   _done(source, src_unit)["predictions"]["prob"], rtol=1e-6)
        assert done["adaptation"]["init"]["kept_initial"] == ["model.backbone.encoders.text"]
        assert done["n_train"] == _done(source, src_unit)["n_train"]  # the source unit's training subjects
        states.append(state["model"])
    # the new encoder starts from the same (seeded) initialisation in both runs: it differs only by training
    assert not _same(states[0], states[1], "backbone.encoders.text.")


def test_adapt_align_with_fmri_crop_trains_on_windows_of_the_target_subjects(tmp_path, cache_dir, source,
                                                                             monkeypatch):
    import pmrl_sci.tasks.abide as abide_task

    drawn = []
    real = abide_task.WindowCropDataset

    class Recording(real):  # the real dataset, recording which subjects it serves
        def __init__(self, arrays, *a, **k):
            super().__init__(arrays, *a, **k)
            drawn.append((np.asarray(arrays.index).copy(), np.asarray(arrays.labels).copy()))

    monkeypatch.setattr(abide_task, "WindowCropDataset", Recording)
    args = ("--test-sites", "NYU", "--init-from", str(source), "--adapt", "align", "--epochs", "1", "--patience", "0")
    _run(tmp_path / "whole", cache_dir, *args)
    assert drawn == []  # no crops unless asked
    _run(tmp_path / "crop", cache_dir, *args, "--fmri-crop", "0.5")
    unit = "seed0-test-NYU"
    (index, labels), = drawn
    done = _done(tmp_path / "crop", unit)
    assert len(index) == done["n_test"] == done["adaptation"]["n_training_subjects"]  # the target subjects...
    assert set(done["predictions"]["site"]) == {"NYU"} and (labels == 0).all()  # ... of NYU, labels blanked
    whole, crop = _state(tmp_path / "whole", unit)["model"], _state(tmp_path / "crop", unit)["model"]
    assert _same(whole, crop, "classifier.") and not _same(whole, crop, "backbone.encoders.fmri.")


@pytest.mark.parametrize("extra, modalities, expected", [
    (["--test-sites", "NYU"], ("fmri", "text"), "modalities ['fmri', 'smri'] (source) vs ['fmri', 'text'] (this run)"),
    (["--test-sites", "NYU", "--embed-dim", "8"], None, "config.json: embed_dim: 16 (source) vs 8 (this run)"),
    (["--test-sites", "NYU", "--atlas", "cc200"], None, "atlas: 'tt' (source) vs 'cc200' (this run)"),
    (["--test-sites", "NYU", "--seed", "1"], None, "no unit of the source run"),
    (["--folds", "2"], None, "no unit of the source run"),
    (["--test-sites", "NYU", "--adapt", "finetune", "--adapt-labels", "50"], None, "more than 50 are needed"),
    (["--test-sites", "NYU", "--adapt", "finetune"], None, "--adapt finetune needs --adapt-labels N >= 1"),
    (["--test-sites", "NYU", "--adapt", "align", "--adapt-labels", "2"], None, "--adapt-labels is used by --adapt "
                                                                                "finetune only"),
    (["--test-sites", "NYU", "--adapt", "align", "--objective", "none"], None, "--adapt align trains the alignment "
                                                                              "objective alone"),
    (["--test-sites", "NYU", "--model", "logistic"], None, "--model logistic is a fitted baseline"),
    (["--test-sites", "NYU", "--adapt", "finetune", "--adapt-labels", "2", "--align-epochs", "2"], None,
     "--align-epochs 2 is a phase of training from scratch"),
])
def test_bad_sources_and_options_exit_2_naming_the_field(tmp_path, cache_dir, source, capsys, extra, modalities,
                                                         expected):
    with pytest.raises(SystemExit) as info:
        _run(tmp_path / "bad", cache_dir, "--init-from", str(source), *extra,
             modalities=modalities or ("fmri", "smri"))
    err = capsys.readouterr().err
    assert info.value.code == 2 and expected in err and "Traceback" not in err, err
    assert not (tmp_path / "bad" / "config.json").exists()  # refused before the run folder was written


def test_missing_source_files_and_adapt_without_a_source(tmp_path, cache_dir, source, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(source, broken)
    (broken / "checkpoints" / "seed0-site-NYU.pt").unlink()
    cases = [(["--init-from", str(broken)], "the selected model of unit seed0-site-NYU is missing"),
             (["--init-from", str(tmp_path / "nowhere")], "no such run folder"),
             (["--init-from", str(tmp_path)], "config.json is missing"),
             (["--adapt", "align"], "--adapt align needs --init-from RUN_DIR")]
    for extra, expected in cases:
        with pytest.raises(SystemExit) as info:
            _run(tmp_path / "bad", cache_dir, "--test-sites", "NYU", *extra)
        err = capsys.readouterr().err
        assert info.value.code == 2 and expected in err, err

"""Houston 2013 on the training engine: the config and options, the model helpers, the task, the front end.

The data layer (readers, synthetic scene, patches, splits) is tested in ``tests/test_houston13_data.py``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from pmrl_sci.data.houston13 import Houston13Scene, PatchDataset, fit_band_stats, standardize_scene
from pmrl_sci.errors import InputError
from pmrl_sci.runs import RunFolder
from pmrl_sci.tasks.houston13 import (
    Houston13Config,
    SceneInputs,
    build_alignment,
    train_houston13_unit,
    train_settings,
)
from pmrl_sci.tasks.houston13_model import LabelInputs, build_models, predict_pixels, predict_scene

torch.set_num_threads(1)

CPU = torch.device("cpu")


def _stripe_scene(n_classes: int = 3, rows: int = 12, cols: int = 18, bands: int = 6, seed: int = 0
                  ) -> Houston13Scene:
    """An easy scene: vertical class stripes, each class with its own spectrum and height (plus a little noise).

    Every pixel is labelled; a random half is training, the other half test.
    """
    rng = np.random.default_rng(seed)
    classes = (np.arange(cols) * n_classes // cols)[None, :].repeat(rows, axis=0) + 1  # 1..n
    spectra = rng.normal(size=(n_classes, bands)) * 3.0
    hsi = spectra[classes - 1].transpose(2, 0, 1) + 0.1 * rng.normal(size=(bands, rows, cols))
    lidar = 2.0 * classes[None].astype(float) + 0.1 * rng.normal(size=(1, rows, cols))
    train = rng.random((rows, cols)) < 0.5
    return Houston13Scene(hsi.astype(np.float32), lidar.astype(np.float32), np.where(train, classes, 0),
                          np.where(train, 0, classes), [f"class {k}" for k in range(n_classes)],
                          np.zeros((rows, cols), dtype=bool))


def _scene_inputs(scene: Houston13Scene) -> SceneInputs:
    hsi, lidar = standardize_scene(scene, fit_band_stats(scene))
    return SceneInputs(scene, hsi, lidar, LabelInputs(None), None)


def _small_config(**changes: Any) -> Houston13Config:
    values: dict[str, Any] = {"patch_size": 3, "embed_dim": 64, "batch_size": 8, "epochs": 6, "patience": 0,
                              "lr": 3e-3, "val_fraction": 0.2, "progress": False}
    return Houston13Config(**(values | changes))


# -- config and options ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("changes, option", [
    ({"patch_size": 4}, "--patch-size"),
    ({"head": "knn"}, "--head"),
    ({"objective": "clip"}, "--objective"),
    ({"anchor": "text"}, "--anchor"),
    ({"val_fraction": 1.0}, "--val-fraction"),
    ({"classification_weight": float("nan")}, "--classification-weight"),
    ({"epochs": 0}, "--epochs"),
    ({"patience": -1}, "--patience"),
    ({"warmup_ratio": 1.5}, "--warmup-ratio"),
    ({"grad_clip": -1.0}, "--grad-clip"),
    ({"rank": 4}, "--rank"),
    ({"tau2": 0.0}, "--tau2"),
])
def test_config_refuses_bad_values_naming_the_option(changes: dict[str, Any], option: str) -> None:
    with pytest.raises(InputError, match=option):
        Houston13Config(**changes)


def test_train_settings_are_houstons_optimiser() -> None:
    settings = train_settings(Houston13Config(lr=2e-3, weight_decay=0.05, warmup_ratio=0.2, grad_clip=1.5,
                                              epochs=7, patience=3))
    assert (settings.optimizer, tuple(settings.betas), settings.schedule) == ("adamw", (0.9, 0.98), "cosine")
    assert (settings.lr, settings.weight_decay, settings.warmup_ratio, settings.grad_clip) == (2e-3, 0.05, 0.2, 1.5)
    assert (settings.epochs, settings.patience) == (7, 3)


def test_alignment_objective_follows_the_options() -> None:
    pmrl = build_alignment(Houston13Config(tau1=0.2, tau2=0.3, lambda1=0.5))
    assert (pmrl.tau1, pmrl.tau2, pmrl.lambda1) == (0.2, 0.3, 0.5)
    assert Houston13Config().tau2 == 0.1  # Houston's default, not ABIDE's 0.4
    vast = build_alignment(Houston13Config(objective="vast", label_smoothing=0.2))
    assert vast.anchor == "label" and vast.label_smoothing == 0.2
    gram = build_alignment(Houston13Config(objective="gram", anchor="hsi", gram_contrastive=False))
    assert gram.anchor == "hsi" and not gram.contrastive


# -- model helpers -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("head_name", ["retrieval", "mlp"])
def test_dense_scene_prediction_equals_per_patch_prediction(head_name: str) -> None:
    torch.manual_seed(0)
    scene = _stripe_scene(rows=7, cols=9)
    inputs = _scene_inputs(scene)
    cfg = _small_config()
    model, head = build_models(cfg, inputs.hsi.shape[0], scene.n_classes, None)
    with torch.no_grad():  # spread the class embeddings so that ties are impossible
        model.encoders["label"].table.weight.mul_(3.0)
    dense = predict_scene(model, head, inputs.hsi, inputs.lidar, head_name, inputs.label_inputs, scene.n_classes,
                          cfg.patch_size, CPU, tile_rows=3)  # strips of 3 rows: the last strip is partial
    rows, cols = np.nonzero(np.ones(scene.shape, dtype=bool))
    every = PatchDataset(inputs.hsi, inputs.lidar, rows, cols, None, cfg.patch_size)
    per_patch = predict_pixels(model, head, every, (head_name,), inputs.label_inputs, scene.n_classes, CPU)
    assert dense.shape == scene.shape
    np.testing.assert_array_equal(dense.ravel(), per_patch[head_name])


# -- the task on the engine --------------------------------------------------------------------------------------

def _read_records(folder: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def test_task_learns_an_easy_scene_with_both_heads(tmp_path: Path) -> None:
    scene = _stripe_scene()
    result = train_houston13_unit(_small_config(), _scene_inputs(scene), 0, RunFolder(tmp_path), CPU)
    chance = 1.0 / scene.n_classes
    for head in ("retrieval", "mlp"):
        assert result["heads"][head]["oa"] > 0.85 > 2.5 * chance, (head, result["heads"][head]["oa"])
        assert result["best_val"][head] > 0.85
    records = _read_records(tmp_path)
    assert [r["epoch"] for r in records] == list(range(6))
    assert records[-1]["train_loss"] < records[0]["train_loss"]
    assert records[-1]["train_loss"] == pytest.approx(records[-1]["train_align"] + records[-1]["train_ce"])
    n_test = int((scene.test_labels > 0).sum())
    assert sum(map(sum, result["heads"]["mlp"]["confusion"])) == n_test  # every test pixel, once
    for head in ("retrieval", "mlp"):  # one selected state per head, saved with its epoch
        saved = torch.load(tmp_path / "checkpoints" / f"seed0-{head}.pt", weights_only=True)
        assert saved["epoch"] == result["best_epoch"][head] and set(saved) == {"model", "objective", "head", "epoch"}


def test_classification_weight_zero_leaves_the_mlp_head_untrained(tmp_path: Path) -> None:
    cfg = _small_config(epochs=2, classification_weight=0.0, weight_decay=0.0)
    inputs = _scene_inputs(_stripe_scene())
    torch.manual_seed(0)  # the engine seeds with the unit's seed before building: the same initial head
    _, initial_head = build_models(cfg, inputs.hsi.shape[0], inputs.scene.n_classes, None)
    train_houston13_unit(cfg, inputs, 0, RunFolder(tmp_path), CPU)
    trained = torch.load(tmp_path / "checkpoints" / "seed0-mlp.pt", weights_only=True)["head"]
    for name, value in initial_head.state_dict().items():
        torch.testing.assert_close(trained[name], value)
    assert all(r["train_loss"] == pytest.approx(r["train_align"]) for r in _read_records(tmp_path))


def test_single_head_runs_one_selection(tmp_path: Path) -> None:
    cfg = _small_config(epochs=2, head="retrieval")
    result = train_houston13_unit(cfg, _scene_inputs(_stripe_scene()), 3, RunFolder(tmp_path), CPU)
    assert list(result["heads"]) == ["retrieval"] and result["seed"] == 3
    assert (tmp_path / "checkpoints" / "seed3.pt").is_file()
    assert "train_ce" not in _read_records(tmp_path)[0]  # no MLP head, no cross-entropy


# -- the front end -----------------------------------------------------------------------------------------------

TINY = ["--synthetic-rows", "24", "--synthetic-cols", "48", "--patch-size", "5", "--embed-dim", "16",
        "--batch-size", "32", "--no-progress", "--threads", "1", "--epochs", "3", "--objective", "vast"]


class _Killed(Exception):
    """Stands for the process being killed in the middle of a unit."""


def _kill_at(unit: str, epoch: int):  # noqa: ANN202 - a context manager
    from pmrl_sci.training import epoch_callback

    def callback(name: str, at: int, metrics: Any, max_epochs: int) -> None:
        if (name, at) == (unit, epoch):
            raise _Killed(f"{name} killed after logging epoch {at}")

    return epoch_callback(callback)


def test_front_end_runs_resumes_after_a_kill_and_refuses_other_options(tmp_path: Path, capsys) -> None:
    from pmrl_sci.houston13 import main

    whole = tmp_path / "whole"
    results = main([*TINY, "--seeds", "2", "--out", str(whole)])
    saved = json.loads((whole / "results.json").read_text())
    assert saved["seeds"] == [0, 1] and saved["primary_head"] == "retrieval" and set(saved["heads"]) == {
        "retrieval", "mlp"}
    assert results["oa"]["values"] == saved["oa"]["values"] and len(saved["oa"]["values"]) == 2
    assert saved["validation"]["metric"] == "oa" and saved["validation"]["head"] == "retrieval"
    for name in ("confusion_matrix.png", "classification_map.png", "checkpoints/seed0-retrieval.pt",
                 "checkpoints/seed1-mlp.pt", "done/seed0.json", "done/seed1.json"):
        assert (whole / name).is_file(), name
    assert not list((whole / "checkpoints").glob("*.resume.pt"))  # finished units keep no resume state
    config = json.loads((whole / "config.json").read_text())
    assert config["classification_weight"] == 1.0 and "ce_weight" not in config
    assert config["dataset"]["source"] == "synthetic" and config["tau2"] == 0.1
    records = _read_records(whole)
    assert [(r["unit"], r["epoch"]) for r in records] == [(f"seed{s}", e) for s in (0, 1) for e in range(3)]
    assert all(r["val_oa"] == r["val_oa_retrieval"] for r in records)  # the sweep prunes on val_oa
    assert "Houston 2013 (synthetic, vast, retrieval head)" in capsys.readouterr().out

    # killed in seed 1 after its epoch-1 record was logged but before that epoch's resume checkpoint
    killed = tmp_path / "killed"
    with _kill_at("seed1", 1), pytest.raises(_Killed):
        main([*TINY, "--seeds", "2", "--out", str(killed)])
    assert (killed / "done" / "seed0.json").is_file() and not (killed / "done" / "seed1.json").exists()
    assert (killed / "checkpoints" / "seed1.resume.pt").is_file()

    with pytest.raises(SystemExit) as exit_info:  # other result-defining options: refused, nothing overwritten
        main([*TINY, "--seeds", "2", "--lr", "0.01", "--out", str(killed)])
    assert exit_info.value.code == 2
    assert "--lr 0.001 (recorded) vs 0.01 (now)" in capsys.readouterr().err

    resumed = main([*TINY, "--seeds", "2", "--out", str(killed)])
    def without_time(per_seed: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{k: v for k, v in seed.items() if k != "unit_seconds"} for seed in per_seed]

    assert without_time(resumed["per_seed"]) == without_time(results["per_seed"])
    assert resumed["heads"] == results["heads"]
    assert _read_records(killed) == records  # the killed attempt's epoch-1 record was replaced, not duplicated
    done = {folder: json.loads((folder / "done" / "seed1.json").read_text()) for folder in (whole, killed)}
    assert done[whole]["resumed_from"] is None and done[killed]["resumed_from"] == 0  # continued, not restarted


def test_a_run_from_before_sign_aware_and_the_weight_rename_resumes_only_under_its_options(tmp_path: Path,
                                                                                          capsys) -> None:
    from pmrl_sci.houston13 import main

    out = tmp_path / "old"
    args = [*TINY, "--objective", "pmrl", "--epochs", "1", "--out", str(out)]
    main([*args, "--no-sign-aware", "--classification-weight", "0.5"])
    config = json.loads((out / "config.json").read_text())
    del config["sign_aware"]  # as written before --sign-aware existed, with the weight's former name
    config["ce_weight"] = config.pop("classification_weight")
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(SystemExit) as exit_info:  # today's default, sign-aware, would mix its units
        main([*args, "--classification-weight", "0.5"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "--sign-aware False (recorded) vs True (now)" in err
    with pytest.raises(SystemExit):
        main([*args, "--no-sign-aware"])  # the renamed weight is compared too
    assert "--classification-weight 0.5 (recorded) vs 1.0 (now)" in capsys.readouterr().err
    main([*args, "--no-sign-aware", "--classification-weight", "0.5"])  # its own options resume it


def test_front_end_is_deterministic_and_reads_a_config_file(tmp_path: Path) -> None:
    from pmrl_sci.houston13 import main

    (tmp_path / "c.yaml").write_text("objective: gram\nhead: mlp\nepochs: 1\nclassification_weight: 0.5\n")
    runs = [main([*TINY[:-4], "-c", str(tmp_path / "c.yaml"), "--out", str(tmp_path / f"r{i}")]) for i in range(2)]
    assert runs[0]["objective"] == "gram" and list(runs[0]["heads"]) == ["mlp"]
    assert runs[0]["heads"] == runs[1]["heads"]
    assert _read_records(tmp_path / "r0") == _read_records(tmp_path / "r1")
    assert json.loads((tmp_path / "r0" / "config.json").read_text())["classification_weight"] == 0.5


@pytest.mark.parametrize("argv, message", [
    (["--patch-size", "4"], "--patch-size must be a positive odd number"),
    (["--ce-weight", "1"], "unrecognized arguments: --ce-weight"),
    (["--classification-weight", "nan"], "--classification-weight must be a finite number"),
    (["--epochs", "0"], "--epochs must be >= 1"),
    (["--data-dir", "{tmp}/no_such_dir"], "no_such_dir"),
])
def test_front_end_bad_input_exits_2_with_a_message(tmp_path: Path, capsys, argv: list[str], message: str) -> None:
    from pmrl_sci.houston13 import main

    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--out", str(tmp_path / "x"), "--no-progress"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "error:" in err and message in err and "Traceback" not in err


def test_help_lists_the_shared_options(capsys) -> None:
    from pmrl_sci.houston13 import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for option in ("--seed ", "--seeds", "--no-progress", "--out", "--config", "--epochs", "--patience", "--lr",
                   "--objective", "--tau1", "--tau2", "--temperature", "--classification-weight", "--tensorboard",
                   "--head", "--val-fraction"):
        assert option in text, option


def test_front_end_text_label_embedding(tmp_path: Path) -> None:
    from pmrl_sci.houston13 import main

    results = main([*TINY[:-4], "--epochs", "1", "--objective", "vast", "--label-embedding", "text",
                    "--head", "retrieval", "--out", str(tmp_path / "t")])
    assert results["label_embedding"] == "text" and results["seeds"] == [0]
    assert list((tmp_path / "t" / "cache").glob("text_*.npz"))

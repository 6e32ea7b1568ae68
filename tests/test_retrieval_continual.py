"""A new modality trained into an aligned retrieval model: ``python -m pmrl_sci.retrieval --init-from RUN_DIR``."""

from __future__ import annotations

import json

import pytest
import torch
from retrieval_manifests import feature_manifest

from pmrl_sci.retrieval import main

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    return feature_manifest(tmp_path_factory.mktemp("features"), n_train=40, n_test=16)


def _args(manifest, out, *extra, modalities=("a_features", "b_features", "c_features")):
    return ["--manifest", str(manifest), "--modalities", *modalities, "--embed-dim", "8", "--batch-size", "12",
            "--epochs", "2", "--lr", "3e-3", "--device", "cpu", "--threads", "1", "--no-progress", "--objective",
            "gram", "--out", str(out), *extra]


@pytest.fixture(scope="module")
def source(manifest, tmp_path_factory):
    out = tmp_path_factory.mktemp("source") / "run"
    main(_args(manifest, out, modalities=("a_features", "b_features")))
    return out


def _state(out, unit="seed0"):
    return torch.load(out / "checkpoints" / f"{unit}.pt", weights_only=True)


def _equal(a, b, prefix):
    keys = [k for k in a if k.startswith(prefix)]
    return bool(keys) and all(torch.equal(a[k], b[k]) for k in keys)


def test_only_the_new_encoder_trains_and_the_source_pairs_keep_their_recall(manifest, source, tmp_path):
    src, src_done = _state(source), json.loads((source / "done" / "seed0.json").read_text())
    new_encoders = []
    for lr in ("3e-3", "3e-2"):
        out = tmp_path / f"lr{lr}"
        results = main(_args(manifest, out, "--init-from", str(source), "--lr", lr))
        continual = results["continual"]
        assert continual["new_modality"] == "c_features" and continual["source_units"] == {"seed0": "seed0"}
        assert continual["frozen"] == ["model.encoders.a_features", "model.encoders.b_features"]
        assert continual["trained"] == ["model.encoders.c_features", "objective", "matching"]
        state = _state(out)
        for name in ("a_features", "b_features"):  # frozen: exactly the source's weights
            assert _equal(state["model"], src["model"], f"encoders.{name}."), name
        # same objective and anchor: the temperature was loaded, then trained
        assert not torch.equal(state["objective"]["temperature.log_scale"], src["objective"]["temperature.log_scale"])
        unit = results["units"][0]["continual"]
        assert unit["init"]["loaded"] == ["model", "objective"]
        for pair in ("a_features->b_features", "b_features->a_features"):  # frozen encoders: same test recall
            assert unit["after_source_pairs"][pair] == src_done["recall"][pair] == unit["before"]["recall"][pair]
        assert "c_features->a_features" in results["recall"]
        new_encoders.append(state["model"])
    # the new encoder starts from the same seeded initialisation in both runs: it differs only by training
    assert not _equal(new_encoders[0], new_encoders[1], "encoders.c_features.")


@pytest.mark.parametrize("extra, modalities, expected", [
    ([], ("a_features", "b_features"), "retrieval --init-from trains exactly one new modality"),
    (["--embed-dim", "16"], None, "embed_dim: 8 (source) vs 16 (this run)"),
    (["--val-fraction", "0.2"], None, "val_fraction: 0.1 (source) vs 0.2 (this run)"),
    (["--seeds", "2"], None, "unit seed1 of the source run is not finished"),
])
def test_mismatched_sources_are_refused(manifest, source, tmp_path, capsys, extra, modalities, expected):
    with pytest.raises(SystemExit) as info:
        main(_args(manifest, tmp_path / "bad", "--init-from", str(source), *extra,
                   modalities=modalities or ("a_features", "b_features", "c_features")))
    err = capsys.readouterr().err
    assert info.value.code == 2 and expected in err, err
    assert not (tmp_path / "bad" / "config.json").exists()

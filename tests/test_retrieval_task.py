"""Retrieval on the training engine (``pmrl_sci.tasks.retrieval``): config checks, engine settings, batch order,
learning, determinism, resume after a kill, refusal to mix options. Small feature manifests keep these fast."""

from __future__ import annotations

import dataclasses
import json
import logging

import numpy as np
import pytest
import torch
from retrieval_manifests import feature_manifest

from pmrl_sci.distributed import GlobalBatchSampler
from pmrl_sci.errors import InputError
from pmrl_sci.tasks.retrieval import (
    SAMPLER_EPOCH_OFFSET,
    RetrievalConfig,
    RowBatches,
    ShiftedEpochBatches,
    run_retrieval,
    train_settings,
)
from pmrl_sci.training import epoch_callback

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    return feature_manifest(tmp_path_factory.mktemp("features"), n_train=40, n_test=16)


def _config(manifest, out, **changes) -> RetrievalConfig:
    base = RetrievalConfig(manifest=str(manifest), embed_dim=8, batch_size=12, epochs=3, lr=3e-3, device="cpu",
                           threads=1, progress=False, out=str(out))
    return dataclasses.replace(base, **changes)


def _records(out) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _comparable(results: dict) -> dict:
    return {k: v for k, v in results.items() if k not in ("seconds", "run_dir", "heatmap")}


@pytest.mark.parametrize("changes, option", [
    ({"val_fraction": 1.0}, "--val-fraction"), ({"lambda2": -0.1}, "--lambda2"), ({"objective": "none"}, "--objective"),
    ({"modalities": ["a", "b"], "rank": 3}, "--rank"), ({"patience": -1}, "--patience"), ({"epochs": 0}, "--epochs"),
    ({"few_shot": 0}, "--few-shot"), ({"modalities": ["a"]}, "--modalities"), ({"eval_every": -1}, "--eval-every"),
    ({"lr": float("nan")}, "--lr"),
])
def test_config_refuses_bad_options(changes, option) -> None:
    with pytest.raises(InputError, match=option):
        RetrievalConfig(**changes)


def test_train_settings_reproduce_the_retrieval_schedule() -> None:
    cfg = RetrievalConfig(epochs=7, eval_every=2, patience=3, lr=2e-3, weight_decay=0.05, warmup_ratio=0.2,
                          grad_clip=1.5)
    settings = train_settings(cfg)
    assert (settings.optimizer, settings.betas, settings.schedule) == ("adamw", (0.9, 0.98), "cosine")
    assert (settings.lr, settings.weight_decay, settings.warmup_ratio, settings.grad_clip) == (2e-3, 0.05, 0.2, 1.5)
    assert (settings.epochs, settings.validate_every, settings.patience) == (7, 2, 3)
    assert train_settings(dataclasses.replace(cfg, eval_every=0)).validate_every == 7  # after the last epoch only
    no_validation = train_settings(cfg, has_validation=False)
    assert (no_validation.validate_every, no_validation.patience) == (7, 0)  # nothing to stop on: all epochs


def test_batches_follow_the_sampler_permutation_of_epoch_plus_offset() -> None:
    from pmrl_sci.data.manifest import LoadedData

    n = 10
    data = LoadedData(["a"], {"a": "features"}, {"a": np.arange(2 * n, dtype=np.float32).reshape(n, 2)},
                      np.ones((n, 1), bool), [str(i) for i in range(n)], [None] * n, [None] * n)
    rows = np.arange(3, n)  # positions 0..6 are rows 3..9
    sampler = GlobalBatchSampler(len(rows), 3, num_replicas=1, rank=0, seed=5, drop_last=True)
    loader = ShiftedEpochBatches(RowBatches(data, rows), sampler, SAMPLER_EPOCH_OFFSET)
    reference = GlobalBatchSampler(len(rows), 3, num_replicas=1, rank=0, seed=5, drop_last=True)
    for epoch in (0, 4):
        sampler.set_epoch(epoch)
        reference.set_epoch(epoch + SAMPLER_EPOCH_OFFSET)
        batches = list(loader)
        assert sampler.epoch == epoch and len(batches) == len(loader) == 2  # 7 rows, batch 3, last one dropped
        for (batch, mask), positions in zip(batches, reference, strict=True):
            assert batch["a"][:, 0].tolist() == [2.0 * rows[p] for p in positions] and mask.all()


def test_learns_above_chance_on_an_easy_signal(tmp_path) -> None:
    manifest = feature_manifest(tmp_path / "data", n_train=80, n_test=16)
    results = run_retrieval(_config(manifest, tmp_path / "run", epochs=20, lr=1e-2, batch_size=16, embed_dim=16))
    chance = 1 / results["n_test"]  # R@1 of a random ranking; R@10 is 10 / 16
    assert results["mean_R@1"]["mean"] > 3 * chance  # about 0.29 (untrained: 0.01 to 0.08)
    assert results["mean_R@10"]["mean"] > 10 * chance + 0.25  # about 0.98
    records = _records(tmp_path / "run")
    assert np.mean([r["train_loss"] for r in records[-5:]]) < np.mean([r["train_loss"] for r in records[:5]])


def test_rerun_resume_after_kill_and_option_mismatch(manifest, tmp_path, caplog) -> None:
    reference = run_retrieval(_config(manifest, tmp_path / "a", seeds=2))
    again = run_retrieval(_config(manifest, tmp_path / "b", seeds=2))
    assert _comparable(again) == _comparable(reference)  # same seeds, same everything
    assert _records(tmp_path / "b") == _records(tmp_path / "a")
    units = reference["units"]
    assert [u["seed"] for u in units] == [0, 1] and units[0]["recall"] != units[1]["recall"]
    assert reference["mean_R@1"]["values"] == [u["mean_R@1"] for u in units]
    for unit in units:  # the tested epoch is the best validated one, and its checkpoint holds that epoch
        scores = [r["val_mean_R@1"] for r in _records(tmp_path / "a") if r["unit"] == unit["unit"]]
        assert unit["best_val"] == max(scores) and unit["best_epoch"] == scores.index(max(scores))
        saved = torch.load(tmp_path / "a" / "checkpoints" / f"{unit['unit']}.pt", weights_only=True)
        assert saved["epoch"] == unit["best_epoch"] and {"model", "objective", "matching"} <= set(saved)

    class Killed(Exception):
        pass

    def kill(unit: str, epoch: int, metrics, max_epochs) -> None:
        if (unit, epoch) == ("seed1", 1):
            raise Killed  # after epoch 1 of seed1 was logged, before its checkpoint
    killed = tmp_path / "killed"
    with epoch_callback(kill), pytest.raises(Killed):
        run_retrieval(_config(manifest, killed, seeds=2))
    assert (killed / "done" / "seed0.json").is_file() and not (killed / "done" / "seed1.json").exists()
    assert (killed / "checkpoints" / "seed1.resume.pt").is_file()
    with pytest.raises(InputError, match=r"--lr 0\.003 \(recorded\) vs 0\.002 \(now\)"):
        run_retrieval(_config(manifest, killed, seeds=2, lr=2e-3))
    done_time = (killed / "done" / "seed0.json").stat().st_mtime_ns
    with caplog.at_level(logging.INFO):
        resumed = run_retrieval(_config(manifest, killed, seeds=2))
    assert "seed1: resuming after epoch 0" in caplog.text
    assert (killed / "done" / "seed0.json").stat().st_mtime_ns == done_time  # reused, not retrained
    assert _comparable(resumed) == _comparable(reference)
    assert _records(killed) == _records(tmp_path / "a")  # the killed attempt's epoch-1 record was replaced
    assert not (killed / "checkpoints" / "seed1.resume.pt").exists()


def test_without_validation_rows_the_last_epoch_is_tested(manifest, tmp_path) -> None:
    results = run_retrieval(_config(manifest, tmp_path / "run", val_fraction=0.0, epochs=2, patience=1))
    unit = results["units"][0]
    assert results["n_val"] == 0 and unit["best_epoch"] == 1 and unit["epochs_run"] == 2
    assert np.isnan(unit["best_val"]) and results["validation"]["n"] == 0
    records = _records(tmp_path / "run")
    assert [r["epoch"] for r in records] == [0, 1] and "val_mean_R@1" not in records[0]

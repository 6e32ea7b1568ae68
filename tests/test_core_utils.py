"""Run folders, config parsing, early stopping and metrics."""

import argparse

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from pmrl_sci.config import parse_args_with_config
from pmrl_sci.metrics import binary_classification_metrics, multiclass_metrics, retrieval_metrics
from pmrl_sci.runs import RunFolder, summarize
from pmrl_sci.training import EarlyStopping, epoch_callback, fuse_mean, report_epoch


def test_early_stopping_with_tiebreak_and_patience():
    stopper = EarlyStopping(patience=2, mode="max")
    assert stopper.step(0.7, 0, tiebreak=0.9)
    assert stopper.step(0.7, 1, tiebreak=0.5)  # same AUC, lower loss: better
    assert not stopper.step(0.7, 2, tiebreak=0.8)
    assert not stopper.step(0.6, 3)
    assert stopper.should_stop and stopper.best_epoch == 1
    assert not EarlyStopping().step(float("nan"), 0)


def test_config_file_values_are_overridden_by_flags(tmp_path):
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--objective", choices=["pmrl", "vast"], default="pmrl")
    config = tmp_path / "c.yaml"
    config.write_text("epochs: 7\nobjective: vast\n")
    args = parse_args_with_config(parser, ["-c", str(config), "--epochs", "9"])
    assert args.epochs == 9 and args.objective == "vast"
    config.write_text("objective: gram\n")
    with pytest.raises(SystemExit):
        parse_args_with_config(parser, ["-c", str(config)])


def test_run_folder_writes_and_loads_safely(tmp_path):
    run = RunFolder(tmp_path / "run")
    run.write_config({"a": 1, "path": tmp_path, "t": (1, 2)})
    run.log_metrics({"epoch": 0, "loss": torch.tensor(1.5)})
    (run.path / "metrics.jsonl").open("a").write('{"epoch": 1, "lo')  # a crash mid-line
    assert run.read_metrics() == [{"epoch": 0, "loss": 1.5}]
    run.write_results({"auc": summarize([0.5, 0.7])})
    assert run.read_json("results.json")["auc"]["mean"] == pytest.approx(0.6)
    run.save_checkpoint("m.pt", {"w": torch.ones(2), "epoch": 3})
    assert run.load_checkpoint("m.pt")["epoch"] == 3
    run.mark_done("seed0", {"auc": 0.6})
    assert run.is_done("seed0") and not run.is_done("seed1")
    assert not list(run.path.rglob("*.tmp"))
    assert summarize([0.5])["std"] == 0.0


def test_binary_and_multiclass_metrics_against_sklearn():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    score = np.clip(y * 0.3 + rng.random(200) * 0.7, 0, 1)
    metrics = binary_classification_metrics(y, score)
    assert metrics["auc"] == pytest.approx(roc_auc_score(y, score))
    pred = score >= 0.5
    assert metrics["sensitivity"] == pytest.approx(pred[y == 1].mean())
    assert metrics["specificity"] == pytest.approx((~pred)[y == 0].mean())
    out = multiclass_metrics([0, 0, 1, 2], [0, 1, 1, 1], class_names=["a", "b", "c", "d"])
    assert out["oa"] == pytest.approx(0.5) and out["per_class"]["a"] == pytest.approx(0.5)
    assert np.isnan(out["per_class"]["d"]) and out["aa"] == pytest.approx(0.5)


def test_retrieval_metrics_count_ties_against_the_query():
    sim = torch.eye(4) * 2
    assert retrieval_metrics(sim)["R@1"] == 1.0
    assert retrieval_metrics(torch.ones(4, 4))["R@1"] == 0.0
    with pytest.raises(ValueError, match="empty gallery"):
        retrieval_metrics(torch.zeros(0, 0))


def test_epoch_callback_and_fusion():
    seen = []
    with epoch_callback(lambda unit, epoch, metrics, max_epochs: seen.append((unit, epoch, metrics["val_auc"],
                                                                              max_epochs))):
        report_epoch("seed0", 3, {"val_auc": 0.8}, 10)
    report_epoch("seed0", 4, {"val_auc": 0.9}, 10)  # no callback outside the context
    assert seen == [("seed0", 3, 0.8, 10)]
    fused = fuse_mean({"a": torch.tensor([[3.0, 4.0]]), "b": torch.tensor([[0.0, 2.0]])},
                      {"a": torch.tensor([True]), "b": torch.tensor([False])})
    assert torch.allclose(fused, torch.tensor([[0.6, 0.8]]))

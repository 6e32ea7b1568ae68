"""The training engine on a tiny synthetic regression task: selection, early stopping, resume, run folders."""

from __future__ import annotations

import json
import logging
import os
import warnings

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from pmrl_sci.engine import (
    Selection,
    Step,
    Task,
    TrainData,
    TrainSettings,
    UnitModules,
    lr_factor,
    open_run,
    resume_checkpoint_name,
    run_units,
    train_unit,
)
from pmrl_sci.errors import InputError
from pmrl_sci.io import read_jsonl
from pmrl_sci.runs import RunFolder
from pmrl_sci.training import epoch_callback

#: the device the engine tests train on: CPU here and in CI; PMRL_SCI_TEST_DEVICE=cuda runs them on a GPU
#: (resume after a kill must be bit-identical there too: the CUDA RNG state is checkpointed)
CPU = torch.device(os.environ.get("PMRL_SCI_TEST_DEVICE", "cpu"))


class Killed(Exception):
    """Stands in for a kill (SIGKILL, preemption) at a chosen point of the loop."""


class TinyRegression(Task):
    """y = x w + noise with dropout (draws from the global RNG) and shuffled batches (the loader generator).

    ``scores`` scripts the validation score per epoch (else the validation MSE, lower is better);
    ``weights_at`` records the weights seen by every validation, so tests can check what was selected.
    """

    def __init__(self, scores: list[float] | None = None, mode: str = "min") -> None:
        gen = torch.Generator().manual_seed(123)
        self.x = torch.randn(40, 5, generator=gen)
        self.y = self.x @ torch.arange(1.0, 6.0) + 0.1 * torch.randn(40, generator=gen)
        self.scores = scores
        self.selections = (Selection("val_score", mode=mode),)  # type: ignore[assignment]
        self.weights_at: dict[int, torch.Tensor] = {}

    def build(self, device: torch.device) -> UnitModules:
        self.device = device
        self.x, self.y = self.x.to(device), self.y.to(device)
        self.model = nn.Sequential(nn.Dropout(0.2), nn.Linear(5, 1)).to(device)
        self.scale = nn.Linear(1, 1, bias=False).to(device)  # a second trained module outside DDP
        nn.init.ones_(self.scale.weight)
        return UnitModules({"model": self.model, "scale": self.scale}, ddp=("model",))

    def train_data(self) -> TrainData:
        return TrainData(TensorDataset(self.x[:30].cpu(), self.y[:30].cpu()), batch_size=8)

    def batch_loss(self, batch, step: Step):
        x, y = (t.to(self.device) for t in batch)
        pred = self.scale(step.forward["model"](x)).squeeze(-1)
        mse = nn.functional.mse_loss(pred, y)
        return {"mse": mse.detach(), "loss": mse, "weight": len(y)}

    def validate(self, epoch: int) -> dict:
        with torch.no_grad():
            mse = float(nn.functional.mse_loss(self.scale(self.model(self.x[30:])).squeeze(-1), self.y[30:]))
        self.weights_at[epoch] = self.model[1].weight.detach().clone()
        score = self.scores[epoch] if self.scores is not None else mse
        return {"val_score": score, "val_mse": mse, "val_list": [1.0, 2.0]}

    def test(self, selection: Selection) -> dict:
        return {"weight": self.model[1].weight.detach().flatten().tolist(),
                "scale": float(self.scale.weight.detach())}


def _settings(**kwargs) -> TrainSettings:
    return TrainSettings(**({"epochs": 6, "lr": 0.05, "progress": False} | kwargs))


def test_selection_and_early_stopping(tmp_path):
    task = TinyRegression(scores=[0.5, 0.7, 0.6, 0.6, 0.9, 0.95], mode="max")
    outcome = train_unit(task, _settings(patience=2), unit="u", seed=0, run=RunFolder(tmp_path), device=CPU)
    assert outcome.epochs_run == 4  # epochs 2 and 3 did not improve on epoch 1: stop after epoch 3
    assert outcome.best.epoch == 1 and outcome.best.score == 0.7
    assert outcome.best.test["weight"] == task.weights_at[1].flatten().tolist()  # the selected state was tested
    records = RunFolder(tmp_path).read_metrics()
    assert [r["epoch"] for r in records] == [0, 1, 2, 3]
    assert {"unit", "seed", "train_mse", "train_loss", "val_score", "val_list", "lr"} <= set(records[0])
    assert "train_weight" not in records[0]

    off = TinyRegression(scores=[0.5, 0.7, 0.6, 0.6, 0.9, 0.95], mode="max")
    outcome = train_unit(off, _settings(patience=0), unit="v", seed=0, run=RunFolder(tmp_path / "b"), device=CPU)
    assert outcome.epochs_run == 6 and outcome.best.epoch == 5  # patience 0: no early stopping


def test_epochs_before_select_from_are_never_selected_and_patience_counts_after_them(tmp_path):
    # epoch 0 scores best, but it lies in the unselectable first phase (e.g. alignment before fine-tuning)
    task = TinyRegression(scores=[0.99, 0.5, 0.7, 0.6, 0.6, 0.9], mode="max")
    outcome = train_unit(task, _settings(patience=2, select_from=1), unit="u", seed=0, run=RunFolder(tmp_path),
                         device=CPU)
    assert outcome.best.epoch == 2 and outcome.best.score == 0.7
    assert outcome.epochs_run == 5  # epochs 3 and 4 did not improve on epoch 2
    records = RunFolder(tmp_path).read_metrics()
    assert records[0]["val_score"] == 0.99  # the first phase is still validated and logged
    with pytest.raises(InputError, match="select_from"):
        _settings(select_from=6)


def test_tiebreak_and_fallback_select_epochs():
    selection = Selection("val_auc", tiebreak="val_loss", fallback="val_accuracy")
    assert selection.score({"val_auc": float("nan"), "val_accuracy": 0.6, "val_loss": 0.3}) == (0.6, 0.3)
    with pytest.raises(KeyError, match="val_auc"):
        Selection("val_auc").score({"val_loss": 1.0})


def test_settings_and_schedule_checks():
    for bad in ({"epochs": 0}, {"patience": -1}, {"lr": float("nan")}, {"grad_clip": -1.0}, {"warmup_ratio": 1.0}):
        with pytest.raises(InputError):
            _settings(**bad)
    warm = lr_factor(10, 0.2, "cosine")
    assert [warm(0), warm(1)] == [0.5, 1.0] and warm(9) < 0.1
    assert [lr_factor(10, 0.0, "constant")(s) for s in (0, 5, 9)] == [1.0, 1.0, 1.0]


def test_resume_after_kill_matches_uninterrupted_run(tmp_path):
    whole = train_unit(TinyRegression(), _settings(), unit="seed0", seed=0, run=RunFolder(tmp_path / "whole"),
                       device=CPU)
    run = RunFolder(tmp_path / "killed")

    def kill_at_epoch_3(unit, epoch, metrics, max_epochs):
        if epoch == 3:  # after epoch 3 was logged, before its checkpoint was saved
            raise Killed

    with epoch_callback(kill_at_epoch_3), pytest.raises(Killed):
        train_unit(TinyRegression(), _settings(), unit="seed0", seed=0, run=run, device=CPU)
    assert [r["epoch"] for r in run.read_metrics()] == [0, 1, 2, 3]
    with (run.path / "metrics.jsonl").open("a") as handle:
        handle.write('{"unit": "seed0", "epoch": 4, "train_')  # a line cut short by the kill
    resumed = train_unit(TinyRegression(), _settings(), unit="seed0", seed=0, run=run, device=CPU)
    assert resumed.resumed_from == 2
    assert resumed.best.epoch == whole.best.epoch and resumed.best.score == whole.best.score
    assert resumed.best.test == whole.best.test  # bit-identical weights: RNG and loader order restored
    records = run.read_metrics()
    assert [r["epoch"] for r in records] == list(range(6))  # no duplicate of epoch 3, no truncated line
    reference = RunFolder(tmp_path / "whole").read_metrics()
    assert [r["train_loss"] for r in records] == [r["train_loss"] for r in reference]


def test_checkpoints_load_with_weights_only(tmp_path):
    run = RunFolder(tmp_path)
    train_unit(TinyRegression(), _settings(epochs=2), unit="seed0", seed=0, run=run, device=CPU)
    resume = torch.load(tmp_path / "checkpoints" / resume_checkpoint_name("seed0"), weights_only=True)
    assert resume["epoch"] == 1 and set(resume["modules"]) == {"model", "scale"}
    selected = torch.load(tmp_path / "checkpoints" / "seed0.pt", weights_only=True)
    assert set(selected) == {"model", "scale", "epoch"}


def test_open_run_refuses_other_options(tmp_path):
    run = RunFolder(tmp_path)
    options = {"objective": "pmrl", "modalities": ["fmri", "smri", "text"], "epochs": 1, "out": "a",
               "progress": True}
    open_run(run, options)
    run_units(run, [("seed0", lambda: {"best_epoch": 0, "auc": 0.5})], show_progress=False)
    open_run(run, options | {"out": "b", "progress": False, "device": "cpu"})  # result-neutral: accepted
    with pytest.raises(InputError) as info:
        open_run(run, options | {"objective": "vast", "modalities": ["fmri", "smri"], "epochs": 3})
    message = str(info.value)
    assert "--objective 'pmrl' (recorded) vs 'vast' (now)" in message and "--epochs 1" in message
    assert "--modalities" in message and str(tmp_path) in message


def test_open_run_removes_orphan_temporaries_and_units_need_results(tmp_path):
    run = RunFolder(tmp_path)
    (tmp_path / "checkpoints").mkdir()
    orphan = tmp_path / "checkpoints" / ".seed0.resume.pt.abc123.tmp"
    orphan.write_bytes(b"half a checkpoint")
    open_run(run, {"epochs": 1})
    assert not orphan.exists()
    with pytest.raises(RuntimeError, match="no result"):
        run_units(run, [("seed0", lambda: {"best_epoch": None})], show_progress=False)
    assert not run.is_done("seed0")
    (tmp_path / "done").mkdir(exist_ok=True)
    (tmp_path / "done" / "seed1.json").write_text(json.dumps({"best_val": None, "best_epoch": None}))
    calls = []
    run_units(run, [("seed1", lambda: calls.append(1) or {"best_epoch": 0})], show_progress=False)
    assert calls == [1]  # an incomplete recorded result is not reused


def test_read_jsonl_warns_on_a_damaged_middle_line(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"a": 1}\n{"a": 2\n{"a": 3}\n')
    with pytest.warns(UserWarning, match="line 2"):
        assert read_jsonl(path) == [{"a": 1}, {"a": 3}]
    path.write_text('{"a": 1}\n{"a": 2')
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_jsonl(path) == [{"a": 1}]  # a truncated last line is expected after a kill


def test_a_unit_killed_after_early_stopping_does_not_train_again(tmp_path):
    scores = [0.5, 0.7, 0.6, 0.6, 0.9, 0.95]
    reference = train_unit(TinyRegression(scores, mode="max"), _settings(patience=2), unit="u", seed=0,
                           run=RunFolder(tmp_path / "ref"), device=CPU)

    class KilledDuringTest(TinyRegression):
        def test(self, selection):
            raise Killed

    run = RunFolder(tmp_path / "killed")
    with pytest.raises(Killed):
        train_unit(KilledDuringTest(scores, mode="max"), _settings(patience=2), unit="u", seed=0, run=run,
                   device=CPU)
    resumed = train_unit(TinyRegression(scores, mode="max"), _settings(patience=2), unit="u", seed=0, run=run,
                         device=CPU)
    assert resumed.resumed_from == 3 and resumed.epochs_run == reference.epochs_run == 4
    assert resumed.best.epoch == 1 and resumed.best.test == reference.best.test
    assert [r["epoch"] for r in run.read_metrics()] == [0, 1, 2, 3]


def test_weight_average_follows_the_ema_update_and_lends_its_weights():
    from pmrl_sci.engine.averaging import WeightAverage

    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    start = {k: v.clone() for k, v in model.state_dict().items()}
    average = WeightAverage({"m": model}, decay=0.9)
    expected = start["0.weight"].clone()
    for step in range(1, 100):
        with torch.no_grad():
            model[0].weight.add_(1.0)
        model[1].num_batches_tracked += 1
        decay = min(0.9, (1 + step) / (10 + step))  # the warm-up form, then the target decay
        expected = decay * expected + (1 - decay) * model[0].weight
        average.update({"m": model})
    torch.testing.assert_close(average.shadow["m"]["0.weight"], expected)
    assert average.current_decay() == 0.9
    assert int(average.shadow["m"]["1.num_batches_tracked"]) == 99  # integer buffers are copied
    own = model[0].weight.detach().clone()
    with average.swapped_in({"m": model}):
        torch.testing.assert_close(model[0].weight.detach(), expected)
    torch.testing.assert_close(model[0].weight.detach(), own)  # put back
    with pytest.raises(ValueError, match="decay"):
        WeightAverage({"m": model}, decay=1.0)
    with pytest.raises(InputError, match="ema-decay"):
        _settings(ema_decay=1.5)


def test_ema_weights_are_validated_selected_tested_and_resumed(tmp_path):
    raw = train_unit(TinyRegression(), _settings(), unit="u", seed=0, run=RunFolder(tmp_path / "raw"), device=CPU)
    task = TinyRegression()
    whole = train_unit(task, _settings(ema_decay=0.8), unit="u", seed=0, run=RunFolder(tmp_path / "ema"),
                       device=CPU)
    assert whole.best.test["weight"] != raw.best.test["weight"]  # the averaged weights were tested
    assert whole.best.test["weight"] == task.weights_at[whole.best.epoch].flatten().tolist()  # as validated
    selected = torch.load(tmp_path / "ema" / "checkpoints" / "u.pt", weights_only=True)
    assert selected["model"]["1.weight"].flatten().tolist() == whole.best.test["weight"]

    run = RunFolder(tmp_path / "killed")

    def kill_at_epoch_3(unit, epoch, metrics, max_epochs):
        if epoch == 3:
            raise Killed

    with epoch_callback(kill_at_epoch_3), pytest.raises(Killed):
        train_unit(TinyRegression(), _settings(ema_decay=0.8), unit="u", seed=0, run=run, device=CPU)
    resumed = train_unit(TinyRegression(), _settings(ema_decay=0.8), unit="u", seed=0, run=run, device=CPU)
    assert resumed.resumed_from == 2
    assert resumed.best.epoch == whole.best.epoch and resumed.best.test == whole.best.test


def test_open_run_compares_an_upgraded_record(tmp_path):
    run = RunFolder(tmp_path)
    open_run(run, {"lr": 0.1, "split": "bnt", "folds": 5})
    train_unit(TinyRegression(), _settings(epochs=1), unit="u", seed=0, run=run, device=CPU)

    def upgrade(recorded):
        return {**recorded, "split": "folds"} if recorded.get("folds") else dict(recorded)

    with pytest.raises(InputError, match="--split 'bnt'"):
        open_run(run, {"lr": 0.1, "split": "folds", "folds": 5})
    open_run(run, {"lr": 0.1, "split": "folds", "folds": 5}, upgrade=upgrade)  # the same run, recorded the old way


def test_open_run_warns_about_options_an_older_record_does_not_hold(tmp_path, caplog):
    run = RunFolder(tmp_path)
    open_run(run, {"lr": 0.1, "out": "a"})
    train_unit(TinyRegression(), _settings(epochs=1), unit="u", seed=0, run=run, device=CPU)
    with caplog.at_level(logging.WARNING, logger="pmrl_sci.engine.units"):
        open_run(run, {"lr": 0.1, "out": "b", "mixup": 0.4, "ema_decay": 0.0})  # ema_decay: implied for older runs
    warned = [r.getMessage() for r in caplog.records if "did not record" in r.getMessage()]
    assert len(warned) == 1
    named = warned[0].split("did not record")[1].split(":")[0]
    assert named.strip() == "--mixup"  # not the implied --ema-decay, not the result-neutral --out
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="pmrl_sci.engine.units"):
        open_run(run, {"lr": 0.1, "out": "b", "mixup": 0.4, "ema_decay": 0.0})  # now recorded: nothing to say
    assert not [r for r in caplog.records if "did not record" in r.getMessage()]


def test_init_offset_trains_another_initialisation_of_the_same_data(tmp_path):
    """``--init-offset N`` is the unit trained with seed + 1000 N: same task data, other weights; 0 is the unit's
    seed itself; records keep the unit's seed."""
    base = train_unit(TinyRegression(), _settings(), unit="u", seed=3, run=RunFolder(tmp_path / "a"), device=CPU)
    same = train_unit(TinyRegression(), _settings(init_offset=0), unit="u", seed=3, run=RunFolder(tmp_path / "b"),
                      device=CPU)
    other_task = TinyRegression()
    other_run = RunFolder(tmp_path / "c")
    other = train_unit(other_task, _settings(init_offset=2), unit="u", seed=3, run=other_run, device=CPU)
    shifted = train_unit(TinyRegression(), _settings(), unit="u", seed=2003, run=RunFolder(tmp_path / "d"),
                         device=CPU)
    assert same.best.test == base.best.test
    assert other.best.test != base.best.test  # another initialisation and batch order
    assert other.best.test == shifted.best.test  # exactly the engine seed 3 + 1000 * 2
    assert {r["seed"] for r in other_run.read_metrics()} == {3}
    for bad in (-1, 1.5, True):
        with pytest.raises(InputError, match="init-offset"):
            _settings(init_offset=bad)


@pytest.mark.parametrize(("key", "flag", "default", "other"), [("init_offset", "--init-offset", 0, 1),
                                                             ("ema_decay", "--ema-decay", 0.0, 0.99)])
def test_a_run_recorded_before_an_engine_option_resumes_only_under_its_old_behaviour(tmp_path, key, flag, default,
                                                                                      other):
    run = RunFolder(tmp_path)
    open_run(run, {"lr": 0.1})  # recorded without the option, as older versions did
    train_unit(TinyRegression(), _settings(epochs=1), unit="u", seed=0, run=run, device=CPU)
    with pytest.raises(InputError, match=f"{flag} {default} .recorded. vs {other}"):
        open_run(run, {"lr": 0.1, key: other})
    assert key not in run.read_json("config.json")  # the refused run wrote nothing
    open_run(run, {"lr": 0.1, key: default})

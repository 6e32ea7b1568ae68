"""Starting a unit from a finished run (engine/transfer.py) and frozen submodules (UnitModules.frozen)."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from pmrl_sci.engine import (
    Selection,
    SourceRun,
    Step,
    Task,
    TrainData,
    TrainSettings,
    UnitModules,
    load_initial_states,
    train_unit,
)
from pmrl_sci.errors import InputError
from pmrl_sci.runs import RunFolder
from pmrl_sci.training import seed_everything


class TwoBranches(Task):
    """Two 'encoders' (one with dropout and BatchNorm), summed; ``frozen`` and ``init`` come from the test."""

    selections = (Selection("val_mse", mode="min"),)

    def __init__(self, frozen=(), init=None, new=(), width=3) -> None:
        gen = torch.Generator().manual_seed(0)
        self.x = torch.randn(32, width, generator=gen)
        self.y = self.x.sum(1, keepdim=True)
        self.frozen, self.init, self.new, self.width = frozen, init, new, width

    def build(self, device):
        self.model = nn.ModuleDict({
            "a": nn.Sequential(nn.Linear(self.width, 4), nn.BatchNorm1d(4), nn.Dropout(0.5)),
            "b": nn.Linear(self.width, 4), "head": nn.Linear(4, 1)})
        modules = {"model": self.model}
        if self.init is not None:
            self.report = load_initial_states(modules, self.init, ["model"], new=self.new)
        self.modes_seen: list[tuple[bool, bool]] = []
        return UnitModules(modules, frozen=self.frozen)

    def train_data(self):
        return TrainData(TensorDataset(self.x, self.y), batch_size=8)

    def batch_loss(self, batch, step: Step):
        x, y = batch
        self.modes_seen.append((self.model["a"].training, self.model["b"].training))
        pred = step.forward["model"]["head"](step.forward["model"]["a"](x) + step.forward["model"]["b"](x))
        loss = nn.functional.mse_loss(pred, y)
        return {"loss": loss}

    def validate(self, epoch):
        with torch.no_grad():
            pred = self.model["head"](self.model["a"](self.x) + self.model["b"](self.x))
        return {"val_mse": float(nn.functional.mse_loss(pred, self.y))}

    def test(self, selection):
        return {}


def _train(task, path, **settings):
    return train_unit(task, TrainSettings(**({"epochs": 2, "lr": 0.05, "weight_decay": 0.1, "progress": False}
                                             | settings)),
                      unit="u", seed=0, run=RunFolder(path), device=torch.device("cpu"))


def test_frozen_submodules_do_not_change_and_stay_in_eval_mode(tmp_path):
    seed_everything(0)  # as train_unit does before build: the state training starts from
    built = TwoBranches(frozen=("model.a", "model.head")).build(torch.device("cpu"))
    start = {k: v.clone() for k, v in built.modules["model"].state_dict().items()}
    task = TwoBranches(frozen=("model.a", "model.head"))
    _train(task, tmp_path)
    after = task.model.state_dict()
    for key, value in after.items():  # weight decay and BatchNorm statistics included
        if key.startswith(("a.", "head.")):
            assert torch.equal(value, start[key]), key
    assert not torch.equal(after["b.weight"], start["b.weight"])
    assert set(task.modes_seen) == {(False, True)}  # the frozen branch ran in eval mode during training
    report = UnitModules({"model": task.model}, frozen=task.frozen).parameter_report()
    assert report["frozen"] == ["model.a", "model.head"] and report["trained"] == ["model.b"]
    assert report["n_trained_parameters"] == 3 * 4 + 4


def test_everything_frozen_and_unknown_paths_are_refused(tmp_path):
    with pytest.raises(ValueError, match="nothing to train"):
        _train(TwoBranches(frozen=("model",)), tmp_path)
    with pytest.raises(ValueError, match="no submodule 'c'"):
        UnitModules({"model": nn.ModuleDict({"a": nn.Linear(1, 1)})}, frozen=("model.c",))
    with pytest.raises(ValueError, match="names no module"):
        UnitModules({"model": nn.Linear(1, 1)}, frozen=("other",))


def test_source_run_and_initial_states(tmp_path):
    source = tmp_path / "source"
    _train(TwoBranches(), source)
    (source / "config.json").write_text(json.dumps({"width": 3, "modalities": ["a", "b"]}))
    (source / "done").mkdir()
    (source / "done" / "u.json").write_text(json.dumps({"best_epoch": 1}))
    run = SourceRun(source)
    assert run.unit_result("u") == {"best_epoch": 1}
    state = run.checkpoint("u")
    assert state["__path__"].endswith("checkpoints/u.pt") and "epoch" in state
    run.require_same({"width": 3, "modalities": ("a", "b")}, ["width", "modalities"])  # tuples compare as lists
    with pytest.raises(InputError, match=r"config\.json: width: 3 \(source\) vs 5 \(this run\)"):
        run.require_same({"width": 5, "modalities": ["a", "b"]}, ["width", "modalities"])
    with pytest.raises(InputError, match="unit v of the source run is not finished"):
        run.unit_result("v")
    with pytest.raises(InputError, match=r"selected model of unit v is missing .*checkpoints/v\.pt"):
        run.checkpoint("v")
    with pytest.raises(InputError, match="no such run folder"):
        SourceRun(tmp_path / "nowhere")
    with pytest.raises(InputError, match="config.json is missing"):
        SourceRun(tmp_path)

    task = TwoBranches(init=state)
    task.build(torch.device("cpu"))
    assert all(torch.equal(v, state["model"][k]) for k, v in task.model.state_dict().items())
    assert task.report["loaded"] == ["model"]
    # a branch the source lacks keeps its fresh initialisation; one the source has is refused as "new"
    partial = {"model": {k: v for k, v in state["model"].items() if not k.startswith("b.")}, "__path__": "src.pt"}
    task = TwoBranches(init=partial, new=("model.b",))
    task.build(torch.device("cpu"))
    assert torch.equal(task.model["a"][0].weight, state["model"]["a.0.weight"])
    with pytest.raises(InputError, match=r"src\.pt: module 'model' does not fit.*missing 2 entr\(ies\).*model\.b\."):
        TwoBranches(init=partial).build(torch.device("cpu"))
    with pytest.raises(InputError, match="should be new"):
        TwoBranches(init=state, new=("model.b",)).build(torch.device("cpu"))
    with pytest.raises(InputError, match=r"model\.a\.0\.weight has shape \[4, 3\] in the checkpoint but \[4, 5\]"):
        TwoBranches(init=state, width=5).build(torch.device("cpu"))

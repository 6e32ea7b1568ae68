"""ABIDE runs started from a finished run (``--init-from RUN_DIR``): adaptation to the test sites and new modalities.

The source run folder gives its resolved options (``config.json``), its finished units (``done/<unit>.json``) and
each unit's selected model (``checkpoints/<unit>.pt``, loaded with ``weights_only=True``). This run must read
the same cohort into the same inputs and build the same model (else refused, naming the field of the source's
``config.json``); it may add exactly one modality (the continual setting).

Units. Each unit of this run starts from the source unit of the same seed that tested exactly the same subjects
and trained and validated on the same ones: with ``--split loso`` the unit of a site starts from the source
unit that held that site out (``seed<s>-site-<SITE>`` of a leave-one-site-out source, or ``seed<s>-test-<SITE>``
of a ``--test-sites SITE`` source); with ``--test-sites`` from the source unit that held out the same sites;
with the BrainNetTF split or ``--folds`` from the source unit of the same name. The parts are recomputed from the
source's split options and compared: a source unit that tested the same subjects but trained on others (another
``--seed``, another cohort) is refused. So every unit is preprocessed exactly as its source unit was: ComBat and
the standardisation statistics are fitted on the source unit's training subjects.

``--adapt`` (the test subjects of a unit are its *target* subjects):

* ``none``: no adaptation. With the source's modalities nothing is trained: the source model is tested (after =
  before, ``best_epoch`` -1). With one new modality: the new encoder is trained on the source unit's training
  subjects with the run's loss (cross-entropy + alignment), selected on validation AUC as usual.
* ``align``: the alignment objective alone (no cross-entropy) on the target subjects, whose diagnosis labels are
  blanked before they reach the training data (transductive unsupervised adaptation). The classifier is frozen;
  the encoders (and the objective's own parameters) train. Selection (and early stopping with ``--patience``):
  the lowest alignment loss of the target subjects in eval mode (fixed batches of ``--batch-size``), a
  label-free criterion.
* ``finetune``: ``--adapt-labels N`` labelled target subjects per class (drawn with the unit's seed) are trained
  on with cross-entropy + alignment and removed from the test set; selection on the source unit's validation
  part (validation AUC, as the source), the only labelled subjects not used for training.

With a new modality the source's encoders and the classifier are frozen (no gradient, eval mode) in every mode:
only the new encoder (and the objective's own parameters, e.g. a GRAM/VAST temperature) trains, against the
frozen encoders through the alignment objective (and the cross-entropy through the frozen classifier when its
weight is not 0).

Before = the source model (its modalities) on the unit's final test subjects; after = the adapted model on the
same subjects; both at the ``--threshold`` chosen on the source unit's validation part.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from pmrl_sci.data.abide.cohort import AbideCohort
from pmrl_sci.engine import Selection, SourceRun, TrainData, UnitModules, load_initial_states
from pmrl_sci.engine import train_unit as engine_train_unit
from pmrl_sci.errors import InputError
from pmrl_sci.runs import RunFolder, summarize
from pmrl_sci.tasks.abide import (
    FIT_BASELINES,
    AbideConfig,
    AbideTask,
    per_site_results,
    train_settings,
    upgrade_recorded_config,
)
from pmrl_sci.tasks.abide_data import CohortDataset, SplitArrays, unit_splits
from pmrl_sci.tasks.abide_fit import probability_result
from pmrl_sci.tasks.abide_model import evaluate
from pmrl_sci.training import seed_everything

if TYPE_CHECKING:  # pragma: no cover
    from pmrl_sci.distributed import DistInfo

logger = logging.getLogger(__name__)

ADAPT_MODES = ("none", "align", "finetune")
#: source options that must equal this run's: they define the model's shapes and the inputs it sees
SAME_MODEL = ("model", "fmri_encoder", "embed_dim")
SAME_INPUTS = ("atlas", "pipeline", "strategy", "quality_checked", "fmri_channels", "text_model", "text_fields",
               "combat", "input_noise", "simulated_data")
#: which cohort: the generator's size for the embedded cohort, the folders for real data
SAME_SIMULATED = ("default_subjects", "default_sites")
SAME_REAL = ("data_root", "freesurfer_resolved")
METRICS = ("auc", "accuracy", "sensitivity", "specificity")
CLASS_NAMES = {0: "control", 1: "autism"}
#: second entry of the seed sequence of the --adapt-labels draw (the first is the unit's seed)
LABEL_DRAW_STREAM = 104729
SELECTION = {
    "none": "no training: the source unit's selected model is tested",
    "continual": "validation AUC on the source unit's validation part (validation cross-entropy breaks ties)",
    "align": "lowest alignment loss of the target subjects (eval mode, no labels): label-free",
    "finetune": "validation AUC on the source unit's validation part (validation cross-entropy breaks ties)",
}


def check_adapt_options(config: AbideConfig) -> None:
    """``--init-from``, ``--adapt`` and ``--adapt-labels`` on their own (the source is checked when the run opens)."""
    if config.adapt not in ADAPT_MODES:
        raise InputError(f"--adapt must be one of {list(ADAPT_MODES)}, got {config.adapt!r}")
    if config.init_from is None:
        if config.adapt != "none":
            raise InputError(f"--adapt {config.adapt} needs --init-from RUN_DIR (the finished run to adapt)")
        if config.adapt_labels is not None:
            raise InputError("--adapt-labels needs --init-from RUN_DIR and --adapt finetune")
        return
    if config.adapt == "finetune":
        if config.adapt_labels is None or config.adapt_labels < 1:
            raise InputError(f"--adapt finetune needs --adapt-labels N >= 1 (labelled target subjects per class), "
                             f"got {config.adapt_labels}")
    elif config.adapt_labels is not None:
        raise InputError(f"--adapt-labels is used by --adapt finetune only (got --adapt {config.adapt})")
    if config.align_epochs:
        raise InputError(f"--align-epochs {config.align_epochs} is a phase of training from scratch; adapting a run "
                         "(--init-from) starts from the source's trained model: use --align-epochs 0 (--adapt "
                         "align is the alignment-only adaptation)")
    if config.model in FIT_BASELINES:
        raise InputError(f"--init-from starts from a trained network; --model {config.model} is a fitted baseline "
                         "(use the multimodal model or an fMRI encoder baseline)")


@dataclass
class UnitPlan:
    """What one unit of this run starts from and works on."""

    source_unit: str
    parts: dict[str, np.ndarray]  # train, val (the source unit's), test (target minus labelled), target (all)
    labelled: np.ndarray  # --adapt finetune: the labelled target subjects (empty otherwise)


class Adaptation:
    """``--init-from``: the checked source run, the unit mapping, each unit's training and the summary.

    Use :func:`open_adaptation`, then :meth:`plan_units` (before the run folder is written), then
    :meth:`run_unit` per unit and :meth:`summary`.
    """

    def __init__(self, config: AbideConfig, source: SourceRun, cohort: AbideCohort, new_modality: str | None,
                 left_out: int) -> None:
        self.config, self.source, self.cohort = config, source, cohort
        self.new_modality, self.left_out = new_modality, left_out
        self.source_modalities = [m for m in config.modalities if m != new_modality]
        self.plans: dict[str, UnitPlan] = {}

    @property
    def kind(self) -> str:
        """The selection rule's key: the ``--adapt`` mode, or ``continual`` for ``none`` with a new modality."""
        return "continual" if self.config.adapt == "none" and self.new_modality else self.config.adapt

    def plan_units(self, splits: list[tuple[str, int, dict[str, np.ndarray]]]) -> None:
        """Map every unit of this run to its source unit (see the module docstring); refuse what does not match."""
        src = self.source
        recorded = upgrade_recorded_config({"split": src.get("split", "bnt"), "folds": src.get("folds")})
        src_config = dataclasses.replace(
            self.config, split=recorded["split"], folds=recorded["folds"], test_sites=src.get("test_sites"),
            seed=int(src.require("seed")), seeds=int(src.require("seeds")), init_from=None, adapt="none",
            adapt_labels=None)
        source_units = unit_splits(self.cohort, src_config)
        for unit, seed, parts in splits:
            test = set(parts["test"].tolist())
            found = [(name, p) for name, s, p in source_units if s == seed and set(p["test"].tolist()) == test]
            if not found:
                sites = sorted(set(self.cohort.sites[parts["test"]].tolist()))
                raise InputError(
                    f"--init-from {src.path}: no unit of the source run (units {[u for u, _, _ in source_units]}) "
                    f"tested the subjects of this run's unit {unit} (seed {seed}, test site(s) {', '.join(sites)}); "
                    "use the source's split and seeds (a leave-one-site-out source also serves --test-sites SITE)")
            name, source_parts = found[0]
            for part in ("train", "val"):
                if not np.array_equal(np.sort(source_parts[part]), np.sort(parts[part])):
                    raise InputError(f"--init-from {src.path}: source unit {name} tested the subjects of unit {unit} "
                                     f"but its {part} part differs (another --seed or cohort?)")
            recorded = src.unit_result(name).get("predictions")
            if recorded and sorted(recorded["subject"]) != sorted(test):
                raise InputError(f"--init-from {src.path}: {src.path / 'done' / (name + '.json')} predictions are "
                                 f"of other subjects than unit {unit} tests: another cohort (--data-dir, "
                                 "--default-subjects, --modalities)?")
            src.require_checkpoint(name)
            labelled = self._labelled(unit, seed, parts["test"])
            self.plans[unit] = UnitPlan(name, {"train": parts["train"], "val": parts["val"],
                                               "test": np.setdiff1d(parts["test"], labelled),
                                               "target": parts["test"]}, labelled)

    def _labelled(self, unit: str, seed: int, target: np.ndarray) -> np.ndarray:
        """``--adapt finetune``: ``--adapt-labels`` target subjects per class, drawn with the unit's seed."""
        n = self.config.adapt_labels
        if self.config.adapt != "finetune" or n is None:
            return np.array([], dtype=int)
        rng = np.random.default_rng([seed, LABEL_DRAW_STREAM])
        chosen = []
        for label in (0, 1):
            rows = target[self.cohort.labels[target] == label]
            if rows.size <= n:
                raise InputError(f"--adapt-labels {n}: the target (test) subjects of unit {unit} include "
                                 f"{rows.size} {CLASS_NAMES[label]} subject(s); more than {n} are needed so that "
                                 "some stay for testing")
            chosen.append(rng.choice(rows, size=n, replace=False))
        return np.sort(np.concatenate(chosen))

    def report(self) -> dict[str, Any]:
        """What ``data_report.json`` says about the source, the preprocessing and the use of target subjects."""
        out: dict[str, Any] = {
            "init_from": str(self.source.path), "adapt": self.config.adapt, "new_modality": self.new_modality,
            "source_units": {u: p.source_unit for u, p in self.plans.items()},
            "preprocessing": "each unit uses exactly its source unit's training, validation and test subjects "
                             "(checked), so ComBat and the standardisation statistics are fitted on the same "
                             "training subjects as the source model's; --combat-unseen of this run applies to the "
                             "sites without training subjects"}
        if self.config.adapt == "align":
            out["note"] = ("--adapt align (transductive unsupervised adaptation): the target (test) subjects' inputs "
                           f"({', '.join(self.config.modalities)}) were used WITHOUT their diagnosis labels (blanked "
                           "before training) to train the alignment objective, and the model was selected by their "
                           "alignment loss; their labels were used only for the before/after test metrics")
        elif self.config.adapt == "finetune":
            out["note"] = (f"--adapt finetune: {self.config.adapt_labels} labelled target (test) subject(s) per class "
                           "of each unit were trained on and removed from its test set (done/<unit>.json "
                           "adaptation.labelled_subjects); selection on the source unit's validation part")
        if self.new_modality:
            out["continual"] = (f"new modality {self.new_modality}: subjects with none of the source's modalities "
                                f"({self.left_out}) were left out, so that the cohort is the source run's")
        return out

    def run_unit(self, unit: str, seed: int, run: RunFolder, device: torch.device,
                 dist_info: DistInfo | None = None) -> dict[str, Any]:
        """Adapt (or test) one unit; its result has the after metrics and ``adaptation`` (before, after, delta)."""
        plan = self.plans[unit]
        checkpoint = self.source.checkpoint(plan.source_unit)
        load_alignment = self.source.get("objective") == self.config.objective and "alignment" in checkpoint
        task = AdaptedAbideTask(self.config, self.cohort, plan, seed, checkpoint, self.source_modalities,
                                self.new_modality, load_alignment)
        if self.kind == "none":
            seed_everything(seed)
            built = task.build(device)
            built.freeze()
            for module in built.modules.values():
                module.eval()
            after = task.test(task.selections[0])
            run.save_checkpoint(f"{unit}.pt", {**{n: m.state_dict() for n, m in built.modules.items()},
                                               "epoch": -1})
            best_epoch, epochs_run, score = -1, 0, None
        else:
            outcome = engine_train_unit(task, train_settings(self.config), unit=unit, seed=seed, run=run,
                                        device=device, dist_info=dist_info)
            after, best_epoch, epochs_run = outcome.best.test, outcome.best.epoch, outcome.epochs_run
            score, built = outcome.best.score, task.built
        before = task.before
        n_train = {"none": 0, "continual": len(plan.parts["train"]), "align": len(plan.parts["target"]),
                   "finetune": len(plan.labelled)}[self.kind]
        adaptation = {
            "mode": self.config.adapt, "source_unit": plan.source_unit, "source_epoch": checkpoint.get("epoch"),
            "new_modality": self.new_modality, "selection": SELECTION[self.kind],
            "selection_score": score, "epochs_run": epochs_run,
            "n_training_subjects": n_train, "n_source_train": len(plan.parts["train"]),
            "labelled_subjects": plan.labelled.tolist(), "init": task.init_report, **built.parameter_report(),
            "before": {k: before[k] for k in (*METRICS, "threshold")},
            "after": {k: after[k] for k in (*METRICS, "threshold")},
            "delta": {k: float(after[k]) - float(before[k]) for k in METRICS},
            "before_predictions": before["predictions"],
        }
        return {"unit": unit, "seed": seed, "best_epoch": best_epoch, "best_val": after["val_auc"],
                "n_train": n_train, "n_val": len(plan.parts["val"]), "n_test": len(plan.parts["test"]),
                **after, "prep": task.info, "adaptation": adaptation}

    def summary(self, results: list[dict[str, Any]], unseen: Mapping[str, list[str]]) -> dict[str, Any]:
        """``results.json`` ``adaptation``: before, after and their difference over units, per site too."""
        units = [r["adaptation"] for r in results]
        before = per_site_results([{"unit": r["unit"], "predictions": r["adaptation"]["before_predictions"]}
                                   for r in results], unseen)["per_site"]
        after = per_site_results(results, unseen)["per_site"]
        return {
            "mode": self.config.adapt, "init_from": str(self.source.path), "new_modality": self.new_modality,
            "transductive": self.config.adapt == "align", "selection": SELECTION[self.kind],
            "source_units": {r["unit"]: a["source_unit"] for r, a in zip(results, units)},
            "frozen": units[0]["frozen"] if units else [], "trained": units[0]["trained"] if units else [],
            **{part: {k: summarize([a[part][k] for a in units]) for k in METRICS}
               for part in ("before", "after", "delta")},
            "per_site": {"before": before, "after": after},
            "labelled_target_subjects": {r["unit"]: len(a["labelled_subjects"]) for r, a in zip(results, units)},
        }


def open_adaptation(config: AbideConfig, cohort: AbideCohort, resolved: Mapping[str, Any]) -> Adaptation:
    """Check ``--init-from``'s source run against this run (options, modalities) and restrict the cohort to the
    source's subjects when a modality is new. Raises :class:`InputError` naming the file and the field."""
    source = SourceRun(config.init_from or "")
    model = source.require("model")
    if model in FIT_BASELINES:
        raise InputError(f"--init-from {source.path}: {source.config_file} model {model!r} is a fitted baseline "
                         "with no network to start from")
    same = (*SAME_MODEL, *SAME_INPUTS, *(SAME_SIMULATED if resolved.get("simulated_data") else SAME_REAL))
    source.require_same(resolved, same, why="A run started from another must read the same cohort into the same "
                                            "inputs and build the same model")
    mods, src_mods = list(config.modalities), list(source.require("modalities"))
    new = [m for m in mods if m not in src_mods]
    if not (set(src_mods) <= set(mods) and len(new) <= 1):
        raise InputError(f"--init-from {source.path}: {source.config_file} modalities {src_mods} (source) vs {mods} "
                         "(this run): a run started from another has the same modalities, or exactly one more (a "
                         "new modality trained into the aligned model)")
    new_modality = new[0] if new else None
    if config.adapt == "align" and (config.objective == "none" or len(mods) < 2):
        raise InputError("--adapt align trains the alignment objective alone: it needs an --objective (pmrl, gram, "
                         f"vast) and at least two --modalities (this run: {config.objective}, {mods})")
    left_out = 0
    if new_modality is not None:
        if config.input_noise > 0 or config.label_noise > 0:
            raise InputError(f"--init-from with a new modality ({new_modality}): --input-noise and --label-noise "
                             "would draw other noise than the source run's; leave them out")
        keep = np.zeros(len(cohort), dtype=bool)
        for m in src_mods:  # the source cohort: subjects with at least one of its modalities
            keep |= cohort.mask[m]
        left_out = int((~keep).sum())
        cohort = cohort.subset(np.flatnonzero(keep)) if left_out else cohort
    results = source.path / "results.json"
    try:
        n_source = json.loads(results.read_text(encoding="utf-8")).get("n_subjects") if results.is_file() else None
    except (OSError, ValueError, AttributeError):
        n_source = None  # an unreadable summary: the per-unit checks still compare the test subjects
    if n_source is not None and n_source != len(cohort):
        raise InputError(f"--init-from {source.path}: {results} n_subjects {n_source} (source) vs {len(cohort)} "
                         "(this run): another cohort")
    return Adaptation(config, source, cohort, new_modality, left_out)


class AdaptedAbideTask(AbideTask):
    """An ABIDE unit started from a source unit's selected model (see the module docstring for the modes)."""

    def __init__(self, config: AbideConfig, cohort: AbideCohort, plan: UnitPlan, seed: int,
                 checkpoint: Mapping[str, Any], source_modalities: list[str], new_modality: str | None,
                 load_alignment: bool) -> None:
        parts = {"train": plan.parts["train"], "val": plan.parts["val"], "test": plan.parts["test"],
                 "target": plan.parts["target"], "labelled": plan.labelled}
        super().__init__(config, cohort, parts, seed)
        self.plan, self.checkpoint, self.source_modalities = plan, checkpoint, source_modalities
        self.new_modality, self.load_alignment, self.mode = new_modality, load_alignment, config.adapt
        if self.mode == "align":
            self.selections = (Selection("target_align_loss", mode="min"),)  # type: ignore[assignment]

    def build(self, device: torch.device) -> UnitModules:
        """Arrays (the source unit's training statistics), the model with the source's states, frozen parts, and
        the before metrics."""
        built = super().build(device)
        names = ["model", *(["alignment"] if self.alignment is not None and self.load_alignment else [])]
        new = [f"model.backbone.encoders.{self.new_modality}"] if self.new_modality else []
        self.init_report = load_initial_states(built.modules, self.checkpoint, names, new=new)
        if self.new_modality:
            frozen = [*(f"model.backbone.encoders.{m}" for m in self.source_modalities), "model.classifier"]
        elif self.mode == "align":
            frozen = ["model.classifier"]
        elif self.mode == "none":
            frozen = list(built.modules)
        else:
            frozen = []
        self.built = UnitModules(built.modules, ddp=built.ddp, frozen=tuple(frozen))
        target = self.arrays["target"]  # align: the target subjects without their labels
        self.unlabelled = SplitArrays(target.inputs, target.mask, np.zeros_like(target.labels), target.index,
                                      target.fmri_scale)
        self.before = self._before()
        return self.built

    def _before(self) -> dict[str, Any]:
        """The source model (its modalities only) on the validation and final test subjects."""
        def loader(arrays: SplitArrays) -> DataLoader:
            kept = [m for m in arrays.inputs if m in self.source_modalities]
            return DataLoader(CohortDataset(SplitArrays({m: arrays.inputs[m] for m in kept},
                                                        {m: arrays.mask[m] for m in kept}, arrays.labels,
                                                        arrays.index)), batch_size=64)

        val = evaluate(self.model, loader(self.arrays["val"]), self.device)
        test = evaluate(self.model, loader(self.arrays["test"]), self.device)
        return probability_result(self.config.threshold, self.cohort, self.arrays["test"].index, val["label"],
                                  val["prob"], test["label"], test["prob"])

    def train_data(self) -> TrainData:
        """The source unit's training subjects (new modality, ``none``), the unlabelled target subjects
        (``align``) or the labelled ones (``finetune``)."""
        arrays = {"none": self.arrays["train"], "align": self.unlabelled,
                  "finetune": self.arrays["labelled"]}[self.mode]
        return self.training_batches(arrays)

    def batch_loss(self, batch: Any, step: Any) -> dict[str, torch.Tensor]:
        """``align``: ``align_weight * alignment`` only (the labels are not used); else the ABIDE loss."""
        if self.mode != "align":
            return super().batch_loss(batch, step)
        from pmrl_sci.tasks.abide_model import to_device

        inputs, mask, _ = batch
        inputs, mask = to_device(inputs, self.device), to_device(mask, self.device)
        _, embeddings = step.forward["model"](inputs, mask)
        aligned = self.alignment(embeddings, mask)  # type: ignore[misc]
        parts = {f"align_{k}": v.detach() for k, v in aligned.items()}
        parts["loss"] = self.config.align_weight * aligned["loss"]
        return parts

    def validate(self, epoch: int) -> dict[str, Any]:
        """The source validation part's metrics; with ``align`` also the target subjects' alignment loss."""
        record = super().validate(epoch)
        if self.mode == "align":
            record["target_align_loss"] = self.target_alignment_loss()
        return record

    @torch.no_grad()
    def target_alignment_loss(self) -> float:
        """Mean alignment loss of the target subjects in fixed batches of ``--batch-size`` (no labels, no
        gathering across ranks: every rank computes the same value)."""
        from pmrl_sci.tasks.abide_model import to_device

        assert self.alignment is not None
        gather = getattr(self.alignment, "gather", None)
        if gather is not None:
            self.alignment.gather = False
        total = count = 0.0
        try:
            for inputs, mask, _ in DataLoader(CohortDataset(self.unlabelled), batch_size=self.config.batch_size):
                inputs, mask = to_device(inputs, self.device), to_device(mask, self.device)
                _, embeddings = self.model(inputs, mask)
                total += float(self.alignment(embeddings, mask)["loss"]) * len(next(iter(mask.values())))
                count += len(next(iter(mask.values())))
        finally:
            if gather is not None:
                self.alignment.gather = gather
        return total / max(count, 1.0)

    def test(self, selection: Selection) -> dict[str, Any]:
        """The ABIDE test metrics of the selected model, plus its validation AUC."""
        from pmrl_sci.metrics import binary_classification_metrics

        result = super().test(selection)
        val = evaluate(self.model, self.val_loader, self.device)
        result["val_auc"] = binary_classification_metrics(val["label"], val["prob"])["auc"]
        return result

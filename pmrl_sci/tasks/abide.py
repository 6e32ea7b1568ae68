"""ABIDE autism classification on the training engine: the config, the task, the whole run.

The command-line front end (:mod:`pmrl_sci.abide`) parses options into :class:`AbideConfig` and
calls :func:`run_abide`. Per trial (seed) and fold, :class:`AbideTask` runs through
:func:`pmrl_sci.engine.train_unit`:

1. split the cohort (by default 5 folds stratified by diagnosis x site, each with a validation part; or
   BrainNetTF's single site-stratified 70/10/20, leave one site out, or ``--test-sites``);
2. harmonise sMRI with ComBat fitted on the training subjects only (age and sex as
   covariates; a site absent from training passed through or estimated, ``--combat-unseen``), standardise with
   training statistics (:mod:`pmrl_sci.tasks.abide_data`);
3. train BrainNetTF (fMRI), an MLP (sMRI) and a projection of frozen text embeddings, each to
   ``embed_dim``, with cross-entropy on a 3-layer MLP over the averaged modality embeddings
   plus the alignment objective (PMRL, GRAM or VAST) (:mod:`pmrl_sci.tasks.abide_model`);
4. select the epoch by validation AUC (validation cross-entropy breaks ties), evaluate it once on the test
   subjects, record the unit's result (with its test predictions, pooled per site in ``results.json``), so an
   interrupted run resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from pmrl_sci.data.abide.cohort import AbideCohort, load_abide_cohort
from pmrl_sci.data.abide.text_fields import TEXT_FIELDS, check_text_fields
from pmrl_sci.data.cache import cache_root
from pmrl_sci.engine import (
    Selection,
    Step,
    Task,
    TrainData,
    TrainSettings,
    UnitModules,
    open_run,
    resume_checkpoint_name,
    run_units,
)
from pmrl_sci.engine import train_unit as engine_train_unit
from pmrl_sci.engine.mixup import mix_batch, mixed_cross_entropy
from pmrl_sci.errors import InputError
from pmrl_sci.metrics import binary_classification_metrics
from pmrl_sci.options import (
    ObjectiveOptions,
    RunOptions,
    build_alignment_objective,
    check_objective_options,
    check_run_options,
)
from pmrl_sci.runs import RunFolder, summarize
from pmrl_sci.tasks.abide_data import (
    FMRI_CHANNELS,
    CohortDataset,
    SplitArrays,
    WindowCropDataset,
    harmonise_smri,
    prepare_split_arrays,
    resolve_data,
    unit_splits,
)
from pmrl_sci.tasks.abide_fit import (  # noqa: F401 - test_predictions re-exported
    FUSION_SELECTS,
    FUSIONS,
    THRESHOLDS,
    EnsembleMember,
    FusionPartner,
    ensemble_member_name,
    ensemble_metrics,
    fit_baseline_unit,
    fuse_with_logistic,
    fusion_partner,
    late_fusion,
    members_probability,
    probability_result,
    test_predictions,
)
from pmrl_sci.tasks.abide_model import AbideModel, build_abide_model, evaluate, to_device
from pmrl_sci.tasks.abide_sites import (  # noqa: F401 - re-exported
    parse_sites,
    per_site_results,
    site_report,
    split_kind,
    unseen_sites,
    upgrade_recorded_config,
)
from pmrl_sci.training import resolve_device

if TYPE_CHECKING:  # pragma: no cover
    from pmrl_sci.distributed import DistInfo

logger = logging.getLogger(__name__)

__all__ = [  # the data and model helpers are re-exported for callers of the former single module
    "ABIDE_MODALITIES", "EMBEDDED_EPOCHS", "ENCODER_BASELINES", "FIT_BASELINES", "FMRI_CHANNELS", "MODELS",
    "PAPER_SETTING", "REAL_DATA_EPOCHS", "SETTINGS", "AbideConfig", "AbideModel", "AbideTask", "CohortDataset",
    "SplitArrays", "build_abide_model",
    "build_alignment", "evaluate", "fit_baseline_unit", "harmonise_smri", "prepare_split_arrays", "resolve_data",
    "resolve_model", "run_abide", "train_abide_unit", "train_settings", "train_unit", "unit_splits",
]

ABIDE_MODALITIES = ("fmri", "smri", "text")

#: --model choices: the multimodal model (any modalities, any objective), fMRI-only encoder baselines
#: trained with cross-entropy, and the non-deep baselines of the paper's Table 4
ENCODER_BASELINES = ("brainnettf", "vanillatf", "brainnetcnn", "edge_mlp")
FIT_BASELINES = ("gcn", "logistic", "logistic-all")
MODELS = ("multimodal", *ENCODER_BASELINES, *FIT_BASELINES)
#: default maximum epochs: BrainNetTF-style training on real data; shorter on the embedded cohort so that
#: the default command finishes in minutes on a laptop CPU (early stopping applies to both)
REAL_DATA_EPOCHS = 100
EMBEDDED_EPOCHS = 30
#: ``--setting paper``: the paper's ABIDE setting (PMRL with its L_M and weights, BrainNetTF on Pearson and
#: partial correlation, Adam 1e-4, batch 16, 128-d embeddings, the text "age, gender", threshold 0.5, no
#: alignment-first phase, no weight averaging); every option not listed keeps the front end's default, any flag
#: still overrides
PAPER_SETTING: dict[str, Any] = {
    "objective": "pmrl", "sign_aware": False, "tau1": 0.05, "tau2": 0.4, "lambda1": 1.0, "rank": 1,
    "instance_term": True, "align_weight": 1.0, "classification_weight": 1.0, "align_epochs": 0,
    "fmri_encoder": "brainnettf", "fmri_channels": "both", "lr": 1e-4, "weight_decay": 1e-4, "batch_size": 16,
    "embed_dim": 128, "dropout": 0.1, "text_fields": ["age", "sex"], "threshold": "0.5", "ema_decay": 0.0,
    "fmri_standardize": False, "fmri_crop": 0.0, "mixup": 0.0, "fusion": "none",
    "fusion_select": "trained",
}
#: --setting choices: the kit's recipe (the dataclass defaults) or the paper's setting
SETTINGS: dict[str, dict[str, Any]] = {"default": {}, "paper": PAPER_SETTING}
#: --split choices (--folds and --test-sites are the other split kinds) and --combat-unseen choices
SPLITS = ("folds", "bnt", "loso")
#: K of the default split (``--split folds`` without ``--folds``)
DEFAULT_FOLDS = 5
COMBAT_UNSEEN = ("passthrough", "estimate")


@dataclass
class AbideConfig(RunOptions, ObjectiveOptions):
    """Everything that defines an ABIDE run (the resolved config written to the run folder).

    The defaults are the kit's recipe, chosen on the real development sites over 5 folds x 3 seeds (README,
    "ABIDE on the real development sites"): the edge MLP on Pearson connectivity, sign-aware PMRL with tau1 0.5
    and no instance-wise term (it kept the modalities from aligning), the text of every phenotype field a
    clinician has (age, sex, handedness, IQ), the decision threshold chosen on validation, 5 stratified folds,
    and its probabilities averaged with logistic regression's on the same inputs (``--fusion logistic``: higher
    and steadier over initialisations on folds, unseen sites and the embedded cohort; ``--fusion none`` reports the
    trained model alone). No weight average (``--ema-decay 0``): it gained within noise over folds and lost AUC on
    unseen sites.
    ``--setting paper`` (:data:`PAPER_SETTING`) restores the paper's setting.
    """

    modalities: list[str] = field(default_factory=lambda: list(ABIDE_MODALITIES))
    setting: str = "default"
    model: str = "multimodal"
    fmri_encoder: str = "edge_mlp"
    data_dir: str | None = None
    atlas: str = "cc200"
    pipeline: str = "cpac"
    strategy: str = "filt_noglobal"
    freesurfer_dir: str | None = None
    quality_checked: bool = True
    tau1: float = 0.5  # ObjectiveOptions' fields with ABIDE's defaults (see the class docstring)
    tau2: float = 0.4
    instance_term: bool = False
    classification_weight: float = 1.0
    align_epochs: int = 0
    split: str = "folds"
    folds: int | None = None  # K of --split folds (None: DEFAULT_FOLDS); see n_folds
    test_sites: str | None = None  # "SITE[,SITE...]"; sorted and deduplicated once checked (see test_site_list)
    combat_unseen: str = "passthrough"
    epochs: int | None = None
    patience: int = 20
    batch_size: int = 16
    lr: float = 1e-4
    weight_decay: float = 1e-4
    ensemble: int = 1  # members per unit, trained at --init-offset + 0 .. M - 1, probabilities averaged
    embed_dim: int = 128
    dropout: float = 0.1
    fmri_channels: str = "correlation"
    fmri_standardize: bool = False  # standardise each connectivity entry with training statistics
    fmri_crop: float = 0.0  # window-crop augmentation: fraction of each series per draw (0: off)
    mixup: float = 0.0  # Beta(alpha, alpha) of mixup in the supervised epochs (0: off)
    fusion: str = "logistic"  # averaged with --model logistic-all's probabilities (abide_fit); "none": alone
    fusion_select: str = "trained"  # under --fusion logistic, the epoch is selected on this validation AUC
    text_model: str | None = None
    combat: str = "train"
    cache_dir: str | None = None
    download: bool = False
    default_subjects: int = 200
    default_sites: int = 4
    input_noise: float = 0.0
    label_noise: float = 0.0
    text_fields: list[str] = field(default_factory=lambda: list(TEXT_FIELDS))
    threshold: str = "val"
    init_from: str | None = None  # a finished run folder to start from (pmrl_sci.tasks.abide_adapt)
    adapt: str = "none"
    adapt_labels: int | None = None

    def __post_init__(self) -> None:
        bad = [m for m in self.modalities if m not in ABIDE_MODALITIES]
        if bad or not self.modalities:
            raise InputError(f"--modalities must be a non-empty subset of {list(ABIDE_MODALITIES)}, "
                             f"got {self.modalities}")
        if self.setting not in SETTINGS:
            raise InputError(f"--setting must be one of {list(SETTINGS)}, got {self.setting!r}")
        if self.model not in MODELS:
            raise InputError(f"--model must be one of {list(MODELS)}, got {self.model!r}")
        if self.folds is not None and self.folds < 2:
            raise InputError(f"--folds must be >= 2, got {self.folds}")
        self._check_site_options()
        from pmrl_sci.tasks.abide_adapt import check_adapt_options

        check_adapt_options(self)
        check_run_options(self)
        check_objective_options(self, len(self.modalities))
        if not 0.0 <= self.label_noise <= 1.0:
            raise InputError(f"--label-noise must be in [0, 1], got {self.label_noise}")
        if not (np.isfinite(self.input_noise) and self.input_noise >= 0):
            raise InputError(f"--input-noise must be a finite number >= 0, got {self.input_noise}")
        self.text_fields = check_text_fields(self.text_fields)
        if self.fusion not in FUSIONS:
            raise InputError(f"--fusion must be one of {list(FUSIONS)}, got {self.fusion!r}")
        if self.fusion_select not in FUSION_SELECTS:
            raise InputError(f"--fusion-select must be one of {list(FUSION_SELECTS)}, got {self.fusion_select!r}")
        if self.fusion_select == "fused" and self.fusion == "none":
            raise InputError("--fusion-select fused selects the epoch on the fused validation AUC: it needs "
                             "--fusion logistic")
        if self.threshold not in THRESHOLDS:
            raise InputError(f"--threshold must be one of {list(THRESHOLDS)}, got {self.threshold!r}")
        if self.model == "logistic-all" and "fmri" not in self.modalities:
            raise InputError("--model logistic-all needs fmri in --modalities (its subjects are those with fMRI, "
                             "as for --model logistic)")
        if int(self.align_epochs) < 0:
            raise InputError(f"--align-epochs must be >= 0, got {self.align_epochs}")
        if self.align_epochs and (self.model != "multimodal" or self.objective == "none"
                                  or len(self.modalities) < 2):
            raise InputError("--align-epochs needs the multimodal model with an alignment objective (--objective "
                             "pmrl, gram or vast) over at least two --modalities")
        if not (self.fmri_crop == 0 or 0 < self.fmri_crop < 1):
            raise InputError(f"--fmri-crop must be 0 (off) or a fraction in (0, 1), got {self.fmri_crop}")
        if self.fmri_crop and self.model not in FIT_BASELINES:
            if "fmri" not in self.modalities:
                raise InputError("--fmri-crop augments the fMRI connectivity: it needs fmri in --modalities")
            if self.fmri_channels != "correlation":
                raise InputError(f"--fmri-crop recomputes Pearson connectivity only: use --fmri-channels "
                                 f"correlation (got {self.fmri_channels!r}) or --fmri-crop 0")
            if self.input_noise > 0:
                raise InputError("--fmri-crop and --input-noise both change the training fMRI: use one of them")
        if not (np.isfinite(self.mixup) and self.mixup >= 0) or (self.mixup and self.model in FIT_BASELINES):
            raise InputError(f"--mixup must be 0 (off) or a Beta concentration > 0 for a trained model, got "
                             f"{self.mixup} with --model {self.model}")
        if isinstance(self.ensemble, bool) or int(self.ensemble) != self.ensemble or self.ensemble < 1:
            raise InputError(f"--ensemble must be an integer >= 1, got {self.ensemble!r}")
        if self.ensemble > 1 and self.model in FIT_BASELINES:
            raise InputError(f"--ensemble averages initialisations of a trained model: --model {self.model} is a "
                             "deterministic fit (use --ensemble 1)")
        if self.ensemble > 1 and self.init_from is not None:
            raise InputError("--ensemble trains every member from scratch: not with --init-from")
        if self.model == "logistic-all" and self.input_noise > 0:
            raise InputError("--input-noise is not applied by --model logistic-all (its sMRI and phenotype features "
                             "would stay clean); use --model logistic or the multimodal model")

    def _check_site_options(self) -> None:
        """``--split``, ``--test-sites`` (a list, or one comma-separated string) and ``--combat-unseen``."""
        if self.split not in SPLITS:
            raise InputError(f"--split must be one of {list(SPLITS)}, got {self.split!r}")
        if self.combat_unseen not in COMBAT_UNSEEN:
            raise InputError(f"--combat-unseen must be one of {list(COMBAT_UNSEEN)}, got {self.combat_unseen!r}")
        if self.test_sites is not None:
            self.test_sites = ",".join(parse_sites(self.test_sites))
        kinds = [name for name, on in (("--split loso", self.split == "loso"), ("--split bnt", self.split == "bnt"),
                                       ("--folds", self.folds is not None), ("--test-sites", bool(self.test_sites)))
                 if on]
        if len(kinds) > 1:
            raise InputError(f"{' and '.join(kinds)} are different splits: choose one")

    @property
    def n_folds(self) -> int:
        """K of the cross-validation (``--folds``, else :data:`DEFAULT_FOLDS`); used when the split is folds."""
        return int(self.folds) if self.folds is not None else DEFAULT_FOLDS

    @property
    def test_site_list(self) -> list[str] | None:
        """``--test-sites`` as a sorted list of site names (None without it)."""
        return None if self.test_sites is None else parse_sites(self.test_sites)


# ----------------------------------------------------------------------------------------
# the task on the engine


def build_alignment(config: AbideConfig) -> nn.Module | None:
    """The alignment objective, or None (``--objective none`` or a single modality); anchor: the last modality."""
    return build_alignment_objective(config, config.modalities)


def train_settings(config: AbideConfig) -> TrainSettings:
    """ABIDE's engine settings: Adam at a constant rate, no clipping, early stopping on validation AUC.

    ``--align-epochs N`` prepends N alignment-only epochs to the ``--epochs`` supervised ones; model selection
    and early stopping start after them (``TrainSettings.select_from``).
    """
    align = int(config.align_epochs)
    return TrainSettings(epochs=align + int(config.epochs or EMBEDDED_EPOCHS), patience=config.patience,
                         lr=config.lr, weight_decay=config.weight_decay, optimizer="adam", select_from=align,
                         ema_decay=config.ema_decay, init_offset=config.init_offset,
                         progress=config.progress,
                         tensorboard=config.tensorboard)


class AbideTask(Task):
    """One ABIDE unit (a seed, a fold): the multimodal model or an fMRI encoder baseline, cross-entropy plus
    the alignment objective, selected on validation AUC (accuracy when the AUC is undefined; validation
    cross-entropy breaks ties).

    Parameters
    ----------
    config : AbideConfig
        Resolved run options (``--model`` applied).
    cohort : AbideCohort
        The whole cohort.
    parts : mapping
        ``{"train", "val", "test": subject indices}`` of this unit.
    seed : int
        The unit's seed (label noise, input noise).
    partner : FusionPartner, optional
        With ``--fusion-select fused``, the unit's logistic regression: each epoch's validation probabilities are
        also fused with it (``val_fused_auc``), and that AUC selects the epoch.
    """

    selections = (Selection("val_auc", mode="max", tiebreak="val_loss", fallback="val_accuracy"),)

    def __init__(self, config: AbideConfig, cohort: AbideCohort, parts: Mapping[str, np.ndarray], seed: int,
                 partner: FusionPartner | None = None) -> None:
        self.config, self.cohort, self.parts, self.seed = config, cohort, parts, seed
        self.partner, self.partner_val = partner, None
        if partner is not None:  # the same rule on the fused validation AUC
            self.selections = (dataclasses.replace(self.selections[0], metric="val_fused_auc"),)
        self.arrays: dict[str, SplitArrays] = {}
        self.info: dict[str, Any] = {}

    def build(self, device: torch.device) -> UnitModules:
        """Arrays per split part (training statistics only), the model and the alignment objective."""
        self.device = device
        self.arrays, self.info = prepare_split_arrays(self.cohort, self.config, self.parts["train"], self.parts,
                                                      self.seed)
        self.val_loader = DataLoader(CohortDataset(self.arrays["val"]), batch_size=64)
        if self.partner is not None:  # in the validation subjects' order, as evaluate() returns them
            self.partner_val = self.partner.probabilities(self.arrays["val"].index)
        self.test_loader = DataLoader(CohortDataset(self.arrays["test"]), batch_size=64)
        self.model = build_abide_model(self.config, self.cohort).to(device)
        alignment = build_alignment(self.config)
        self.alignment = alignment.to(device) if alignment is not None else None
        modules: dict[str, nn.Module] = {"model": self.model}
        if self.alignment is not None:
            modules["alignment"] = self.alignment
        return UnitModules(modules, ddp=("model",))

    def train_data(self) -> TrainData:
        """Training subjects in shuffled batches (the last partial batch dropped when there is more than one)."""
        return self.training_batches(self.arrays["train"])

    def training_batches(self, arrays: SplitArrays) -> TrainData:
        """``arrays`` as training data: window crops of the fMRI series under ``--fmri-crop``, shuffled batches."""
        if self.config.fmri_crop and "fmri" in arrays.inputs:
            dataset: CohortDataset = WindowCropDataset(arrays, self.cohort, self.config.fmri_crop, arrays.fmri_scale)
        else:
            dataset = CohortDataset(arrays)
        return TrainData(dataset, self.config.batch_size, drop_last=len(dataset) > self.config.batch_size)

    def batch_loss(self, batch: Any, step: Step) -> dict[str, torch.Tensor]:
        """``classification_weight * CE + align_weight * alignment``, with the parts logged.

        In the first ``--align-epochs`` epochs the loss is the alignment objective alone: the labels are not
        read (self-supervised alignment of the modality encoders on every training subject).
        """
        from pmrl_sci.distributed import global_mean_share

        inputs, mask, y = batch
        inputs, mask = to_device(inputs, self.device), to_device(mask, self.device)
        mixed = (mix_batch(inputs, mask, self.config.mixup)  # --mixup: in the supervised epochs only
                 if self.config.mixup and step.epoch >= self.config.align_epochs else None)
        if mixed is not None:
            inputs, mask = mixed.inputs, mixed.mask
        logits, embeddings = step.forward["model"](inputs, mask)
        if step.epoch < self.config.align_epochs:
            assert self.alignment is not None  # AbideConfig refuses --align-epochs without an alignment objective
            aligned = self.alignment(embeddings, mask)
            # the classifier's logits join with weight 0 so that DDP sees every parameter used
            loss = aligned["loss"] + 0.0 * logits.sum()
            return {"loss": loss, **{f"align_{k}": v.detach() for k, v in aligned.items()}}
        y = y.to(self.device)
        # per-subject losses only where needed: without mixup or DDP, the one reduction the recorded runs used
        if mixed is not None or step.distributed:
            per_subject = (mixed_cross_entropy(logits, y, mixed) if mixed is not None
                           else nn.functional.cross_entropy(logits, y, reduction="none"))
            # under DDP, this rank's share of the global-batch mean
            ce = global_mean_share(per_subject, count=step.global_batch_size) if step.distributed \
                else per_subject.mean()
        else:
            ce = nn.functional.cross_entropy(logits, y)
        loss = self.config.classification_weight * ce
        parts: dict[str, torch.Tensor] = {"ce": ce.detach()}
        if self.alignment is not None:
            aligned = self.alignment(embeddings, mask)
            loss = loss + self.config.align_weight * aligned["loss"]
            parts.update({f"align_{k}": v.detach() for k, v in aligned.items()})
        parts["loss"] = loss
        return parts

    def validate(self, epoch: int) -> dict[str, Any]:
        """Validation AUC, accuracy, ..., cross-entropy, and the spectrum of the modality matrix."""
        val = evaluate(self.model, self.val_loader, self.device)
        metrics = binary_classification_metrics(val["label"], val["prob"])
        record: dict[str, Any] = {**{f"val_{k}": v for k, v in metrics.items()}, "val_loss": val["loss"]}
        if self.partner_val is not None:  # --fusion-select fused: the AUC of what the unit will report
            record["val_fused_auc"] = binary_classification_metrics(
                val["label"], late_fusion(val["prob"], self.partner_val))["auc"]
        if val["sigma"] is not None:
            record["val_sigma_mean"] = val["sigma"].mean(axis=0).tolist()
            record["val_u1_cosine"] = val["u1_cosine"]
            record["val_v_abs_mean"] = val["v_abs_mean"]
        return record

    def test(self, selection: Selection) -> dict[str, Any]:
        """Test metrics (at the ``--threshold``, chosen on validation), ROC points and the spectra of the selected
        model (validation and test)."""
        val = evaluate(self.model, self.val_loader, self.device)
        test = evaluate(self.model, self.test_loader, self.device)
        return {**probability_result(self.config.threshold, self.cohort, self.arrays["test"].index, val["label"],
                                     val["prob"], test["label"], test["prob"]),
                "val_sigma": val["sigma"].mean(axis=0).tolist() if val["sigma"] is not None else None,
                "test_sigma": test["sigma"].tolist() if test["sigma"] is not None else None,
                "test_u1_cosine": test.get("u1_cosine"), "test_v_abs_mean": test.get("v_abs_mean")}


def train_abide_unit(config: AbideConfig, cohort: AbideCohort, parts: Mapping[str, np.ndarray], seed: int, unit: str,
                     run: RunFolder, device: torch.device, dist_info: DistInfo | None = None) -> dict[str, Any]:
    """Train one unit on the engine and return its result (test metrics of the epoch selected on validation).

    Under torchrun the model trains through DDP on each rank's share of every global batch of
    ``--batch-size`` subjects; the cross-entropy is a share of the global-batch mean and the alignment
    objectives gather embeddings across ranks, so gradients equal one process's on the same global batch.
    """
    members: list[EnsembleMember] = []
    # --fusion-select fused: the logistic regression is fitted first, its validation probabilities select epochs
    partner = fusion_partner(config, cohort, parts, seed) if config.fusion_select == "fused" else None
    for member in range(int(config.ensemble)):  # --ensemble M: member m trains at --init-offset + m
        task = AbideTask(config, cohort, parts, seed, partner)
        settings = dataclasses.replace(train_settings(config), init_offset=config.init_offset + member)
        outcome = engine_train_unit(task, settings, unit=ensemble_member_name(unit, member), seed=seed, run=run,
                                    device=device, dist_info=dist_info)
        if config.ensemble > 1 or config.fusion != "none":  # the selected model is in place: its probabilities
            members.append(EnsembleMember(outcome.best, evaluate(task.model, task.val_loader, device),
                                          evaluate(task.model, task.test_loader, device)))
        else:
            members.append(EnsembleMember(outcome.best, {}, {}))
        if member == 0:
            first_task = task
    best = members[0].best
    result = {"unit": unit, "seed": seed, "best_epoch": best.epoch, "best_val": best.score,
              "n_train": len(parts["train"]), "n_val": len(parts["val"]), "n_test": len(parts["test"]),
              **best.test, "prep": first_task.info}
    if config.ensemble > 1:
        result.update(ensemble_metrics(config, cohort, first_task.arrays["test"].index, members))
        for member in range(1, config.ensemble):  # the members' resume states are not needed any more
            run.remove_checkpoint(resume_checkpoint_name(ensemble_member_name(unit, member)))
    if config.fusion == "logistic":
        deep = {p: {"subject": first_task.arrays[p].index, "label": getattr(members[0], p)["label"],
                    "prob": members_probability(members, p)} for p in ("val", "test")}
        result.update(fuse_with_logistic(config, cohort, parts, seed, deep["val"], deep["test"], partner))
    return result


#: the name benchmarks and older callers use
train_unit = train_abide_unit


def resolve_model(config: AbideConfig) -> AbideConfig:
    """Apply ``--model`` (fMRI-only baselines use the fMRI modality and no alignment objective) and the cases
    where ``--fusion logistic`` does not apply (fitted baselines, no fMRI, ``--init-from``, ``--input-noise``)."""
    without = {"a fitted baseline": config.model in FIT_BASELINES, "no fmri": "fmri" not in config.modalities,
               "--init-from": config.init_from is not None, "--input-noise": config.input_noise > 0}
    if config.fusion != "none" and any(without.values()):
        logger.info("--fusion %s not applied (%s)", config.fusion, ", ".join(k for k, v in without.items() if v))
        config = dataclasses.replace(config, fusion="none", fusion_select="trained")
    if config.model == "logistic-all":
        return dataclasses.replace(config, objective="none")
    if config.model == "multimodal":
        if len(config.modalities) < 2 and config.objective != "none":
            logger.info("one modality: no alignment term (objective %s not used)", config.objective)
            return dataclasses.replace(config, objective="none")
        return config
    if config.modalities != ["fmri"]:
        logger.info("--model %s uses the fMRI modality only (asked: %s)", config.model, config.modalities)
    changes: dict[str, Any] = {"modalities": ["fmri"], "objective": "none"}
    if config.model in ENCODER_BASELINES:
        changes["fmri_encoder"] = config.model
    return dataclasses.replace(config, **changes)


def run_abide(config: AbideConfig) -> dict[str, Any]:
    """Run every trial/fold of ``config`` and return the aggregated results (also in results.json).

    Under ``torchrun`` each process joins the process group (gloo on CPU, nccl on CUDA); rank 0 prepares the
    data cache first, writes the run folder and draws the plots.
    """
    from pmrl_sci.distributed import distributed_context

    with distributed_context(device=resolve_device(config.device)) as dist_info:
        return _run_abide(config, dist_info)


def _run_abide(config: AbideConfig, dist_info: DistInfo) -> dict[str, Any]:
    from pmrl_sci.distributed import gather_objects, main_process_first
    from pmrl_sci.reports.plots import plot_roc_curves, plot_singular_values

    config.modalities = [m for m in ABIDE_MODALITIES if m in config.modalities]
    config = resolve_model(config)
    device = dist_info.device
    run = RunFolder(gather_objects(str(config.out))[0] if dist_info.distributed else config.out)  # rank 0's
    with main_process_first():  # rank 0 generates and caches; the others then read the cache
        root, fs_dir, simulated = resolve_data(config)
    if config.epochs is None:
        config = dataclasses.replace(config, epochs=EMBEDDED_EPOCHS if simulated else REAL_DATA_EPOCHS)
    cache = cache_root(config.cache_dir)
    with main_process_first():
        cohort = load_abide_cohort(root, atlas=config.atlas, pipeline=config.pipeline, strategy=config.strategy,
                                   freesurfer_dir=fs_dir, modalities=config.modalities,
                                   quality_checked=config.quality_checked, text_model=config.text_model,
                                   cache_dir=cache / "abide_preprocessed", text_fields=config.text_fields,
                                   progress=config.progress and dist_info.is_main)
    if cohort.report.get("cache") == "hit" and dist_info.is_main:
        logger.info("preprocessed cohort read from the cache (%s)", cache / "abide_preprocessed")
        print(f"[pmrl_sci.abide] reusing cached preprocessed data from {cache / 'abide_preprocessed'}")
    resolved = dataclasses.asdict(config) | {"data_root": str(root), "freesurfer_resolved": str(fs_dir),
                                             "simulated_data": simulated, "device_resolved": str(device)}
    adaptation = None
    if config.init_from is not None:  # --init-from: checked, and the units mapped, before anything is written
        from pmrl_sci.tasks.abide_adapt import open_adaptation

        adaptation = open_adaptation(config, cohort, resolved)
        cohort = adaptation.cohort
    splits = unit_splits(cohort, config)  # bad site options are refused before the run folder is written
    if adaptation is not None:
        adaptation.plan_units(splits)
    open_run(run, resolved, ignore=("data_root", "freesurfer_resolved"), upgrade=upgrade_recorded_config)
    run.write_json("data_report.json", cohort.report | {"sites_as_domains": site_report(config)}
                   | ({"adaptation": adaptation.report()} if adaptation is not None else {}))
    leaky = config.combat == "paper"
    if leaky:
        run.write_text("LEAKY.txt", "ComBat was fitted on all subjects with diagnosis as a covariate (--combat paper):"
                                    " test labels leaked into the sMRI features. For comparison with the paper only.\n")
    def run_one(unit: str, seed: int, parts: dict[str, np.ndarray]) -> dict[str, Any]:
        if adaptation is not None:
            return adaptation.run_unit(unit, seed, run, device, dist_info)
        if config.model in FIT_BASELINES:
            return fit_baseline_unit(config, cohort, parts, seed, unit)
        return train_abide_unit(config, cohort, parts, seed, unit, run, device, dist_info)

    units = [(unit, (lambda u=unit, s=seed, p=parts: run_one(u, s, p))) for unit, seed, parts in splits]
    results = run_units(run, units, show_progress=config.progress, desc="trials")
    unseen = {unit: unseen_sites(cohort.sites, parts) for unit, _, parts in splits}
    summary: dict[str, Any] = {key: summarize([r[key] for r in results])
                               for key in ("auc", "accuracy", "sensitivity", "specificity")}
    summary["validation"] = {"metric": "auc", **summarize([r["best_val"] for r in results])}
    summary.update(
        objective=config.objective, model=config.model, modalities=config.modalities, n_subjects=len(cohort),
        leaky=leaky,
        simulated_data=simulated, split=split_kind(config), test_sites=config.test_site_list, units=[
            {**{k: r[k] for k in ("unit", "seed", "best_epoch", "auc", "accuracy", "sensitivity", "specificity",
                                  "n_train", "n_val", "n_test")}, "unseen_sites": unseen[r["unit"]],
             "threshold": r.get("threshold", 0.5), "val_sigma": r.get("val_sigma")}
            | ({"deep_auc": r["fusion"]["deep_auc"], "linear_auc": r["fusion"]["linear_auc"]} if "fusion" in r else {})
            for r in results])
    if config.fusion != "none":  # what each model reached alone, beside the fused numbers above
        summary["fusion"] = {"mode": config.fusion, **{key: summarize([r["fusion"][key] for r in results])
                                                       for key in ("deep_auc", "linear_auc")}}
    summary.update(per_site_results(results, unseen))
    summary["combat_unseen"] = {"mode": config.combat_unseen, "estimated_from_unlabelled_test_subjects": {
        r["unit"]: r["prep"]["combat"]["unseen_sites"] for r in results
        if r.get("prep", {}).get("combat", {}).get("unlabelled_estimation")}}
    if adaptation is not None:
        summary["adaptation"] = adaptation.summary(results, unseen)
    summary["distributed"] = {"world_size": dist_info.world_size, "backend": dist_info.backend}
    run.write_results(summary)
    if not dist_info.is_main:
        return summary
    plot_roc_curves(run, [(r["unit"], r.get("roc")) for r in results])
    plot_singular_values(run, run.read_metrics())
    return summary

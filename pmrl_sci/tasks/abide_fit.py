"""ABIDE's fitted baselines (:func:`fit_baseline_unit`), the decision threshold and the late fusion.

:func:`thresholded_metrics` reports test metrics at 0.5 or at the threshold chosen on the validation subjects
(``--threshold val``: Youden's J, see :func:`pmrl_sci.metrics.youden_threshold`); the test labels are only
read after the threshold is fixed. :func:`logistic_all_features` builds, per unit, the features of every input
the multimodal model sees: vectorised connectivity (fMRI), ComBat-harmonised FreeSurfer features fitted on the
training subjects only (sMRI), and the phenotype fields its text carries, encoded numerically (text).
:func:`probability_result` is a unit's test result from validation and test probabilities (every ABIDE model and
baseline reports through it); :func:`ensemble_metrics` is that of a unit of ``--ensemble M`` from its members.
:func:`baseline_inputs` gives the features and subjects of the fitted baselines, and :func:`fuse_with_logistic`
averages a trained model's probabilities with logistic regression's on the same inputs (``--fusion logistic``),
:func:`fusion_partner`'s fit, which ``--fusion-select fused`` makes before training to select on the fused AUC.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from pmrl_sci.data.abide.cohort import AbideCohort
from pmrl_sci.metrics import binary_classification_metrics, roc_points, youden_threshold

if TYPE_CHECKING:  # pragma: no cover
    from pmrl_sci.engine.task import SelectedModel
    from pmrl_sci.tasks.abide import AbideConfig

#: --threshold choices: 0.5 on the predicted probability, or chosen on the validation subjects
THRESHOLDS = ("0.5", "val")


def decision_threshold(mode: str, val_labels: np.ndarray, val_prob: np.ndarray) -> float:
    """0.5, or (``mode="val"``) the validation threshold maximising Youden's J (0.5 when J is undefined)."""
    if mode == "val":
        return youden_threshold(val_labels, val_prob)
    return 0.5


def thresholded_metrics(mode: str, val_labels: np.ndarray, val_prob: np.ndarray, test_labels: np.ndarray,
                        test_prob: np.ndarray) -> dict[str, float]:
    """Test AUC, accuracy, sensitivity, specificity at the decision threshold, and ``threshold`` itself.

    The threshold depends on the validation subjects only; AUC does not depend on it.
    """
    threshold = decision_threshold(mode, np.asarray(val_labels), np.asarray(val_prob))
    return {**binary_classification_metrics(test_labels, test_prob, threshold=threshold), "threshold": threshold}


def _impute(values: np.ndarray, train: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """NaN -> the training median (0 when none is stated); the missing-indicator column when any is missing."""
    missing = ~np.isfinite(values)
    stated = values[train][np.isfinite(values[train])]
    fill = float(np.median(stated)) if stated.size else 0.0
    filled = np.where(missing, fill, values)
    return filled, (missing.astype(np.float64) if missing.any() else None)


def logistic_all_features(cohort: AbideCohort, config: AbideConfig, rows: np.ndarray, train: np.ndarray
                          ) -> tuple[np.ndarray, list[str]]:
    """Features of ``rows`` for ``--model logistic-all`` from ``config.modalities``, with their block names.

    Parameters
    ----------
    cohort : AbideCohort
        The whole cohort.
    config : AbideConfig
        ``modalities``, ``fmri_channels`` (the connectivity the model sees) and ``combat``.
    rows : ndarray of int
        Cohort rows, in the order of the returned matrix.
    train : ndarray of int
        Positions in ``rows`` of the training subjects: ComBat, standardisation and imputation
        use them only.

    Returns
    -------
    (ndarray, list of str)
        ``[len(rows), P]`` features and one name per column block (``fmri[...]``, ``smri[...]``, phenotype fields).
    """
    from pmrl_sci.baselines import vectorize_connectivity
    from pmrl_sci.tasks.abide_data import FMRI_CHANNELS, harmonise_smri

    blocks: list[np.ndarray] = []
    names: list[str] = []
    if "fmri" in config.modalities:
        for channel in FMRI_CHANNELS[config.fmri_channels]:
            blocks.append(vectorize_connectivity(cohort.fmri[rows, channel]))
            names.append(f"fmri[{blocks[-1].shape[1]}]")
    if "smri" in config.modalities:
        smri, _ = harmonise_smri(cohort, rows[train], config.combat)
        blocks.append(smri[rows].astype(np.float64))
        names.append(f"smri[{smri.shape[1]}]")
        has = cohort.mask["smri"][rows]
        if not has.all():
            blocks.append((~has).astype(np.float64)[:, None])
            names.append("smri_missing")
    if "text" in config.modalities:
        for field, values in cohort.phenotype.items():
            filled, missing = _impute(np.asarray(values, dtype=np.float64)[rows], train)
            blocks.append(filled[:, None])
            names.append(field)
            if missing is not None:
                blocks.append(missing[:, None])
                names.append(f"{field}_missing")
    return np.concatenate(blocks, axis=1), names


@dataclass
class BaselineInputs:
    """A unit's subjects with fMRI, in the order train, val, test, as the fitted baselines see them.

    Attributes
    ----------
    subjects : ndarray of int
        Cohort rows.
    labels : ndarray of int
        Their labels (training labels as the trained models see them, i.e. after ``--label-noise``).
    local : dict of str to ndarray
        Positions of ``train``, ``val`` and ``test`` in ``subjects``.
    features : ndarray
        Vectorised connectivity, or with ``every_input`` the features of :func:`logistic_all_features`.
    info : dict
        Preparation record (ComBat, feature blocks).
    excluded_no_fmri : int
        Subjects of the unit left out for lack of fMRI.
    """

    subjects: np.ndarray
    labels: np.ndarray
    local: dict[str, np.ndarray]
    features: np.ndarray
    info: dict[str, Any]
    excluded_no_fmri: int


def baseline_inputs(config: AbideConfig, cohort: AbideCohort, parts: Mapping[str, np.ndarray], seed: int,
                    every_input: bool = False) -> BaselineInputs:
    """The fitted baselines' inputs for one unit: its subjects with fMRI, their vectorised connectivity (prepared
    with training statistics only) or, with ``every_input``, the features of every input of ``config.modalities``
    (:func:`logistic_all_features`)."""
    from pmrl_sci.baselines import vectorize_connectivity
    from pmrl_sci.tasks.abide_data import prepare_split_arrays

    has = cohort.mask["fmri"]
    kept = {name: idx[has[idx]] for name, idx in parts.items()}
    arrays, info = prepare_split_arrays(cohort, config, kept["train"], kept, seed, modalities=["fmri"])
    order = ["train", "val", "test"]
    features = vectorize_connectivity(np.concatenate([arrays[n].inputs["fmri"] for n in order]))
    labels = np.concatenate([arrays[n].labels for n in order])
    subjects = np.concatenate([arrays[n].index for n in order])
    bounds = np.cumsum([0] + [len(arrays[n].labels) for n in order])
    local = {n: np.arange(bounds[i], bounds[i + 1]) for i, n in enumerate(order)}
    if every_input:
        features, blocks = logistic_all_features(cohort, config, subjects, local["train"])
        info["features"] = blocks
    return BaselineInputs(subjects, labels, local, features, info,
                          int(sum(len(parts[n]) - len(kept[n]) for n in order)))


def baseline_probabilities(features: np.ndarray, labels: np.ndarray, local: Mapping[str, np.ndarray], seed: int
                           ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Logistic regression fitted on the training rows, C chosen on validation AUC: (val, test) probabilities."""
    from pmrl_sci.baselines import fit_predict_logistic

    prob, info = fit_predict_logistic(features, labels, local["train"], local["val"], local["test"], seed=seed,
                                      return_info=True)
    return info.pop("val_prob"), prob, info


def probability_result(mode: str, cohort: AbideCohort, test_subjects: np.ndarray, val_labels: np.ndarray,
                       val_prob: np.ndarray, test_labels: np.ndarray, test_prob: np.ndarray) -> dict[str, Any]:
    """A unit's test result from probabilities: :func:`thresholded_metrics` (threshold ``mode``, chosen on the
    validation subjects), each test subject's ``predictions`` and the ``roc`` points (None with one class)."""
    test_labels = np.asarray(test_labels)
    return {**thresholded_metrics(mode, np.asarray(val_labels), np.asarray(val_prob), test_labels, test_prob),
            "predictions": test_predictions(cohort, test_subjects, test_prob),
            "roc": roc_points(test_labels, test_prob) if len(set(test_labels.tolist())) == 2 else None}


def fit_baseline_unit(config: AbideConfig, cohort: AbideCohort, parts: Mapping[str, np.ndarray], seed: int,
                      unit: str) -> dict[str, Any]:
    """The non-deep baselines: logistic regression or the population GCN on vectorised connectivity, or
    (``logistic-all``) logistic regression on every input of ``--modalities`` (:func:`logistic_all_features`).

    Subjects without fMRI are left out of these baselines (counted in the result).
    """
    from pmrl_sci.baselines import fit_predict_population_gcn

    inputs = baseline_inputs(config, cohort, parts, seed, every_input=config.model == "logistic-all")
    features, labels, subjects, local, info = (inputs.features, inputs.labels, inputs.subjects, inputs.local,
                                               inputs.info)
    if config.model in ("logistic", "logistic-all"):
        val_prob, prob, fit_info = baseline_probabilities(features, labels, local, seed)
        best_val = max(fit_info["scores"].values()) if fit_info.get("scores") else float("nan")
    else:
        prob_all, fit_info = fit_predict_population_gcn(
            features, labels, cohort.sites[subjects], cohort.sex[subjects], cohort.age[subjects], local["train"],
            local["val"], local["test"], seed=seed, epochs=config.epochs, return_all=True, return_info=True)
        prob, val_prob = prob_all[local["test"]], prob_all[local["val"]]
        val_metrics = binary_classification_metrics(labels[local["val"]], val_prob)
        best_val = val_metrics["auc"]
    result = probability_result(config.threshold, cohort, subjects[local["test"]], labels[local["val"]], val_prob,
                                labels[local["test"]], prob)
    return {"unit": unit, "seed": seed, "best_epoch": int(fit_info.get("best_epoch", -1)), "best_val": best_val,
            "n_train": len(local["train"]), "n_val": len(local["val"]), "n_test": len(local["test"]),
            "excluded_no_fmri": inputs.excluded_no_fmri, **result, "test_sigma": None,
            "prep": info | {"fit": {k: v for k, v in fit_info.items() if k != "scores"}}}


#: --fusion choices: the trained model alone, or averaged with logistic regression on the same inputs
FUSIONS = ("none", "logistic")
#: --fusion-select choices: which validation AUC selects the trained model's epoch under --fusion logistic
FUSION_SELECTS = ("trained", "fused")


def late_fusion(trained: np.ndarray, linear: np.ndarray) -> np.ndarray:
    """The probabilities ``--fusion logistic`` reports: the mean of the trained model's and logistic regression's,
    at equal weights fixed beforehand; the trained model's alone where ``linear`` is NaN (no fMRI to score)."""
    trained, linear = np.asarray(trained, dtype=float), np.asarray(linear, dtype=float)
    return np.where(np.isnan(linear), trained, (trained + linear) / 2.0)


@dataclass
class FusionPartner:
    """The logistic regression a unit's trained model is fused with: its probability per subject (cohort row) of
    the validation and test subjects it can score (those with fMRI), and the C chosen on validation."""

    prob: dict[int, float]
    C: float

    def probabilities(self, subjects: Sequence[int] | np.ndarray) -> np.ndarray:
        """Its probabilities of ``subjects`` (cohort rows), NaN for a subject it does not score."""
        return np.array([self.prob.get(int(s), np.nan) for s in subjects])


def fusion_partner(config: AbideConfig, cohort: AbideCohort, parts: Mapping[str, np.ndarray], seed: int
                   ) -> FusionPartner:
    """``--model logistic-all``'s logistic regression on this unit: every input of ``config.modalities``
    (connectivity, harmonised FreeSurfer features, the phenotype fields of the text), fitted on the training
    subjects, its C chosen on the validation subjects (deterministic: the same fit before or after training)."""
    inputs = baseline_inputs(config, cohort, parts, seed, every_input=True)
    val_prob, test_prob, fit_info = baseline_probabilities(inputs.features, inputs.labels, inputs.local, seed)
    prob = dict(zip(inputs.subjects[inputs.local["val"]].tolist(), val_prob.tolist()))
    prob |= dict(zip(inputs.subjects[inputs.local["test"]].tolist(), test_prob.tolist()))
    return FusionPartner(prob, float(fit_info["C"]))


def fuse_with_logistic(config: AbideConfig, cohort: AbideCohort, parts: Mapping[str, np.ndarray], seed: int,
                       val: Mapping[str, np.ndarray], test: Mapping[str, np.ndarray],
                       partner: FusionPartner | None = None) -> dict[str, Any]:
    """A unit's result from the trained model's probabilities averaged with logistic regression's (``--fusion
    logistic``): a late fusion at equal weights, fixed beforehand (not tuned on any split).

    The logistic regression is :func:`fusion_partner`'s (``--model logistic-all`` on this unit). A subject
    without fMRI, which it cannot score, keeps the trained model's probability. The decision threshold is chosen
    on the fused validation probabilities.

    Parameters
    ----------
    config, cohort, parts, seed
        The unit, as the trained model saw it.
    val, test : mapping
        The trained model's ``subject`` (cohort rows), ``label`` and ``prob`` of the validation and test subjects.
    partner : FusionPartner, optional
        The unit's logistic regression when it was already fitted (``--fusion-select fused``); fitted here if not.

    Returns
    -------
    dict
        :func:`probability_result` of the fused probabilities, and ``fusion``: the weight, the C chosen, the
        validation AUC that selected the trained model's epoch (``select``), the test AUC of each model alone and
        the trained model's own thresholded metrics (``deep``).
    """
    if partner is None:
        partner = fusion_partner(config, cohort, parts, seed)
    fused, alone = {}, {}
    for name, part in (("val", val), ("test", test)):
        alone[name] = partner.probabilities(part["subject"])
        fused[name] = late_fusion(part["prob"], alone[name])
    scored = ~np.isnan(alone["test"])
    deep = thresholded_metrics(config.threshold, val["label"], val["prob"], test["label"], test["prob"])
    linear_auc = (binary_classification_metrics(np.asarray(test["label"])[scored], alone["test"][scored])["auc"]
                  if scored.any() else float("nan"))
    return {**probability_result(config.threshold, cohort, np.asarray(test["subject"]), val["label"], fused["val"],
                                 test["label"], fused["test"]),
            "fusion": {"with": "logistic-all", "weight": 0.5, "C": partner.C, "select": config.fusion_select,
                       "deep": deep, "deep_auc": deep["auc"], "linear_auc": linear_auc,
                       "trained_model_only": int((~scored).sum() + np.isnan(alone["val"]).sum())}}


def ensemble_member_name(unit: str, member: int) -> str:
    """Run-folder name of an ensemble member: the unit itself for member 0, ``<unit>-member<m>`` after it."""
    return unit if member == 0 else f"{unit}-member{member}"


def members_probability(members: Sequence[EnsembleMember], part: str) -> np.ndarray:
    """The members' probabilities of ``part`` (``val`` or ``test``) averaged per subject: a unit's trained model
    (the one member without ``--ensemble``) as the ensemble and the fusion see it."""
    return np.mean([getattr(m, part)["prob"] for m in members], axis=0)


def ensemble_metrics(config: AbideConfig, cohort: AbideCohort, test_subjects: np.ndarray,
                     members: Sequence[EnsembleMember]) -> dict[str, Any]:
    """The unit's result from its members' averaged probabilities (``--ensemble``): :func:`probability_result`
    at the threshold chosen on the averaged validation probabilities, the members' mean validation singular
    values, and ``ensemble`` (each member's ``--init-offset``, selected epoch and test AUC)."""
    val_prob, test_prob = (members_probability(members, part) for part in ("val", "test"))
    sigmas = [m.best.test["val_sigma"] for m in members if m.best.test.get("val_sigma") is not None]
    return {**probability_result(config.threshold, cohort, test_subjects, members[0].val["label"], val_prob,
                                 members[0].test["label"], test_prob),
            "val_sigma": np.mean(sigmas, axis=0).tolist() if sigmas else None,
            "ensemble": {"members": len(members), "init_offsets": [config.init_offset + i for i in range(len(members))],
                         "best_epochs": [m.best.epoch for m in members],
                         "member_auc": [m.best.test["auc"] for m in members]}}


@dataclass
class EnsembleMember:
    """One trained member of an ``--ensemble`` unit: its selected model (``best``: epoch, score, test metrics)
    and that model's validation and test probabilities and labels (:func:`~pmrl_sci.tasks.abide_model.evaluate`)."""

    best: SelectedModel
    val: dict[str, Any]
    test: dict[str, Any]


def test_predictions(cohort: AbideCohort, subjects: np.ndarray, prob: np.ndarray) -> dict[str, list[Any]]:
    """Each test subject's index, site, label and predicted probability (for the per-site results)."""
    subjects = np.asarray(subjects, dtype=int)
    return {"subject": subjects.tolist(), "site": [str(s) for s in cohort.sites[subjects]],
            "label": cohort.labels[subjects].astype(int).tolist(), "prob": np.asarray(prob, dtype=float).tolist()}

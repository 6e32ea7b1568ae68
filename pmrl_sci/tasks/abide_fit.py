"""ABIDE helpers for the decision threshold and the logistic regression on every input (``--model logistic-all``).

:func:`thresholded_metrics` reports test metrics at 0.5 or at the threshold chosen on the validation subjects
(``--threshold val``: Youden's J, see :func:`pmrl_sci.metrics.youden_threshold`); the test labels are only
read after the threshold is fixed. :func:`logistic_all_features` builds, per unit, the features of every input
the multimodal model sees: vectorised connectivity (fMRI), ComBat-harmonised FreeSurfer features fitted on the
training subjects only (sMRI), and the phenotype fields its text carries, encoded numerically (text).
:func:`probability_result` is a unit's test result from validation and test probabilities (every ABIDE model and
baseline reports through it); :func:`ensemble_metrics` is that of a unit of ``--ensemble M`` from its members.
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


def ensemble_member_name(unit: str, member: int) -> str:
    """Run-folder name of an ensemble member: the unit itself for member 0, ``<unit>-member<m>`` after it."""
    return unit if member == 0 else f"{unit}-member{member}"


def ensemble_metrics(config: AbideConfig, cohort: AbideCohort, test_subjects: np.ndarray,
                     members: Sequence[EnsembleMember]) -> dict[str, Any]:
    """The unit's result from its members' averaged probabilities (``--ensemble``): :func:`probability_result`
    at the threshold chosen on the averaged validation probabilities, the members' mean validation singular
    values, and ``ensemble`` (each member's ``--init-offset``, selected epoch and test AUC)."""
    val_prob = np.mean([m.val["prob"] for m in members], axis=0)
    test_prob = np.mean([m.test["prob"] for m in members], axis=0)
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

"""ABIDE data per unit: the unit splits, sMRI harmonisation and model-ready arrays per split part.

Split, harmonise sMRI with ComBat fitted on the training subjects only (age and sex as covariates),
standardise with training statistics; see :mod:`pmrl_sci.tasks.abide` for the whole run.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import Dataset

from pmrl_sci.data.abide.cohort import AbideCohort
from pmrl_sci.data.cache import cache_root
from pmrl_sci.errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    from pmrl_sci.tasks.abide import AbideConfig

logger = logging.getLogger(__name__)

FMRI_CHANNELS = {"both": [0, 1], "correlation": [0], "partial": [1]}


@dataclass
class SplitArrays:
    """Model-ready arrays for one split part (train, val or test)."""

    inputs: dict[str, np.ndarray]
    mask: dict[str, np.ndarray]
    labels: np.ndarray
    index: np.ndarray
    fmri_scale: tuple[np.ndarray, np.ndarray] | None = None  # (mean, std) of --fmri-standardize


class CohortDataset(Dataset):
    """Rows of :class:`SplitArrays` as ``(inputs, mask, label)`` tensors."""

    def __init__(self, arrays: SplitArrays) -> None:
        self.inputs = {m: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)) for m, v in arrays.inputs.items()}
        self.mask = {m: torch.from_numpy(v.astype(bool)) for m, v in arrays.mask.items()}
        self.labels = torch.from_numpy(arrays.labels.astype(np.int64))

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], torch.Tensor]:
        return ({m: v[i] for m, v in self.inputs.items()}, {m: v[i] for m, v in self.mask.items()}, self.labels[i])


class WindowCropDataset(CohortDataset):
    """Training rows whose fMRI connectivity is recomputed on a random window of the ROI time series each time a
    subject is drawn (``--fmri-crop``): window-crop augmentation of connectomes.

    A subject with ``T`` time points gets a window of ``max(3, round(fraction * T))`` consecutive time points at a
    uniformly drawn start (drawn from torch's global generator, so a resumed unit draws the same windows), and
    Pearson connectivity with the cohort's estimator and dead-ROI policy
    (:func:`~pmrl_sci.data.abide.connectivity.window_correlation`). Validation and test subjects keep the
    connectivity of their whole series; subjects without fMRI keep zeros.

    Parameters
    ----------
    arrays : SplitArrays
        The training part (its ``fmri`` input is replaced on the fly).
    cohort : AbideCohort
        The cohort with its ROI time series (``fmri_series``).
    fraction : float
        Window length as a fraction of each subject's series, in (0, 1).
    standardize : (ndarray, ndarray), optional
        The training edge means and standard deviations the other fMRI inputs were standardised with
        (``--fmri-standardize``); each window's connectivity is standardised the same way.
    """

    def __init__(self, arrays: SplitArrays, cohort: AbideCohort, fraction: float,
                 standardize: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        super().__init__(arrays)
        self.standardize = None if standardize is None else tuple(torch.from_numpy(a) for a in standardize)
        if cohort.fmri_series is None:
            raise InputError("--fmri-crop needs the ROI time series, which this cohort does not hold (fmri not "
                             "loaded)")
        self.series = [cohort.timeseries(int(i)) for i in arrays.index]
        self.fraction = float(fraction)

    def __getitem__(self, i: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], torch.Tensor]:
        from pmrl_sci.data.abide.connectivity import window_correlation

        inputs, mask, label = super().__getitem__(i)
        series = self.series[i]
        if bool(mask["fmri"]) and len(series) >= 3:
            length = min(len(series), max(3, round(self.fraction * len(series))))
            start = int(torch.randint(0, len(series) - length + 1, (1,)))
            fmri = torch.from_numpy(window_correlation(series, start, length))
            if self.standardize is not None:
                fmri = (fmri - self.standardize[0]) / self.standardize[1]
            inputs = {**inputs, "fmri": fmri}
        return inputs, mask, label


def standardize_connectivity(fmri: np.ndarray, has: np.ndarray, train: np.ndarray
                             ) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """Each connectivity entry standardised with the training subjects' mean and standard deviation.

    The usual preprocessing of connectome edges before a linear model (the logistic-regression baselines
    standardise the same way with scikit-learn's ``StandardScaler``). Entries constant over the training
    subjects (the diagonal) keep a scale of 1; subjects without fMRI stay all-zero (they are masked).

    Returns
    -------
    (ndarray, (ndarray, ndarray))
        The standardised float32 array and the ``(mean, std)`` used (float32, shaped like one subject).
    """
    fit = np.intersect1d(train, np.flatnonzero(has))
    if fit.size < 2:
        raise InputError("fewer than two training subjects have fMRI: cannot standardise their connectivity "
                         "(use --no-fmri-standardize)")
    mean = fmri[fit].mean(axis=0, dtype=np.float64)
    std = fmri[fit].std(axis=0, dtype=np.float64)
    std = np.where(std > 1e-8, std, 1.0)
    out = ((fmri - mean) / std).astype(np.float32)
    out[~has] = 0.0
    return out, (mean.astype(np.float32), std.astype(np.float32))


def harmonise_smri(cohort: AbideCohort, train: np.ndarray, mode: str, unseen: str = "passthrough"
                   ) -> tuple[np.ndarray, dict[str, Any]]:
    """ComBat-harmonised, standardised sMRI features for every subject of ``cohort``.

    ``mode="train"`` fits ComBat on the training subjects with sMRI (age and sex as
    covariates, no diagnosis) and applies it to everyone; ``"paper"`` fits on all subjects with
    diagnosis as a covariate (leaks labels; for comparison with the paper); ``"off"`` skips
    ComBat. A site with no training subject (``--test-sites``, ``--split loso``) is returned unadjusted
    (``unseen="passthrough"``) or gets its own ComBat location and scale estimated from all its subjects with
    sMRI, without their labels, holding the training fit fixed (``unseen="estimate"``; see
    :class:`~pmrl_sci.data.combat.ComBat`); ``info`` then names those sites and subject counts. Features are then
    standardised with the training subjects' mean and standard deviation; a feature missing for a subject (NaN)
    takes the training median.
    """
    import pandas as pd

    from pmrl_sci.data.combat import ComBat

    x = cohort.smri.astype(np.float64).copy()
    has = cohort.mask["smri"].copy()
    fit_rows = np.intersect1d(train, np.flatnonzero(has)) if mode != "paper" else np.flatnonzero(has)
    if fit_rows.size < 2:
        raise InputError("fewer than two training subjects have sMRI features: cannot harmonise or "
                         "standardise them (use --combat off or drop smri from --modalities)")
    median = np.nanmedian(x[fit_rows], axis=0)
    median = np.where(np.isfinite(median), median, 0.0)
    missing_cells = np.isnan(x) & has[:, None]
    x = np.where(np.isnan(x), median, x)
    info: dict[str, Any] = {"mode": mode, "fit_subjects": int(fit_rows.size), "imputed_cells": int(missing_cells.sum())}
    if mode != "off":
        covariates = pd.DataFrame({"age": cohort.age, "sex": cohort.sex.astype(int)})
        categorical = ["sex"]
        if mode == "paper":
            covariates["dx"] = cohort.labels.astype(int)
            categorical.append("dx")
        combat = ComBat(unseen_site=unseen)
        rows = np.flatnonzero(has)
        combat.fit(x[fit_rows], cohort.sites[fit_rows], covariates.iloc[fit_rows].reset_index(drop=True),
                   categorical=categorical, continuous=["age"])
        x[rows] = np.asarray(combat.transform(x[rows], cohort.sites[rows],
                                              covariates.iloc[rows].reset_index(drop=True)))
        info.update(sites=[str(s) for s in combat.sites_],
                    dropped_covariates=list(getattr(combat, "dropped_covariates_", [])),
                    singleton_sites=[str(s) for s in getattr(combat, "singleton_sites_", [])],
                    unseen_site_mode=unseen, unseen_sites=dict(combat.unseen_sites_))
        if unseen == "estimate" and combat.unseen_sites_:
            info["unlabelled_estimation"] = (
                f"ComBat location and scale of the site(s) {', '.join(combat.unseen_sites_)}, which have no training "
                f"subject, were estimated from their own {sum(combat.unseen_sites_.values())} subject(s) "
                "(validation/test subjects included), using their sMRI, age and sex but not their diagnosis")
    mean = x[fit_rows].mean(axis=0)
    std = x[fit_rows].std(axis=0)
    std = np.where(std > 1e-8, std, 1.0)
    x = (x - mean) / std
    x[~has] = 0.0
    return x.astype(np.float32), info


def prepare_split_arrays(cohort: AbideCohort, config: AbideConfig, train: np.ndarray, parts: Mapping[str, np.ndarray],
                         seed: int, modalities: Sequence[str] | None = None
                         ) -> tuple[dict[str, SplitArrays], dict[str, Any]]:
    """Inputs for each split part, harmonised and standardised with training statistics only; of ``modalities``
    (default ``config.modalities``; the fitted baselines ask for fMRI alone)."""
    modalities = config.modalities if modalities is None else modalities
    inputs: dict[str, np.ndarray] = {}
    info: dict[str, Any] = {}
    fmri_scale = None
    if "fmri" in modalities:
        channels = FMRI_CHANNELS[config.fmri_channels]
        inputs["fmri"] = cohort.fmri[:, channels[0]] if len(channels) == 1 else cohort.fmri[:, channels]
        if config.fmri_standardize:
            inputs["fmri"], fmri_scale = standardize_connectivity(inputs["fmri"], cohort.mask["fmri"], train)
            info["fmri_standardized_on"] = int(np.intersect1d(train, np.flatnonzero(cohort.mask["fmri"])).size)
    if "smri" in modalities:
        inputs["smri"], info["combat"] = harmonise_smri(cohort, train, config.combat, config.combat_unseen)
    if "text" in modalities:
        emb = cohort.text_embeddings.astype(np.float32)
        inputs["text"] = emb
    rng = np.random.default_rng(seed + 7919)
    labels = cohort.labels.astype(np.int64).copy()
    if config.input_noise > 0:
        from pmrl_sci.noise import add_input_noise

        inputs = add_input_noise(inputs, config.input_noise, rng)
    train_labels = labels.copy()
    if config.label_noise > 0:
        from pmrl_sci.noise import flip_labels

        train_labels[train] = flip_labels(labels[train], config.label_noise, rng)
        info["label_noise_flipped"] = int((train_labels[train] != labels[train]).sum())
    out = {}
    for name, idx in parts.items():
        target = train_labels if name == "train" else labels
        out[name] = SplitArrays({m: v[idx] for m, v in inputs.items()},
                                {m: cohort.mask[m][idx] for m in inputs}, target[idx], idx, fmri_scale)
    return out, info



def unit_splits(cohort: AbideCohort, config: AbideConfig) -> list[tuple[str, int, dict[str, np.ndarray]]]:
    """(unit name, seed, {"train", "val", "test": indices}) for every trial and fold.

    Unit names: ``seed<s>-fold<f>`` (``--split folds``, the default), ``seed<s>`` (``--split bnt``),
    ``seed<s>-site-<SITE>`` (``--split loso``: one unit per site, tested on it) and
    ``seed<s>-test-<SITE>[+<SITE>...]`` (``--test-sites``).
    """
    from pmrl_sci.data.splits import (
        bnt_split,
        domain_holdout_split,
        domain_unit_name,
        leave_one_domain_out,
        stratified_site_folds,
    )

    units = []
    for trial in range(config.seeds):
        seed = config.seed + trial
        if config.split == "loso":
            for site, (train, val, test) in leave_one_domain_out(cohort.labels, cohort.sites, seed):
                units.append((f"seed{seed}-site-{domain_unit_name([site])}", seed,
                              {"train": train, "val": val, "test": test}))
        elif config.test_site_list:
            sites = config.test_site_list
            train, val, test = domain_holdout_split(cohort.labels, cohort.sites, sites, seed)
            units.append((f"seed{seed}-test-{domain_unit_name(sites)}", seed,
                          {"train": train, "val": val, "test": test}))
        elif config.split == "bnt":
            train, val, test = bnt_split(cohort.labels, cohort.sites, seed)
            units.append((f"seed{seed}", seed, {"train": train, "val": val, "test": test}))
        else:
            folds = stratified_site_folds(cohort.labels, cohort.sites, config.n_folds, seed)
            for f, (train, val, test) in enumerate(folds):
                units.append((f"seed{seed}-fold{f}", seed, {"train": train, "val": val, "test": test}))
    return units



def resolve_data(config: AbideConfig) -> tuple[Path, Path | None, bool]:
    """The ABIDE root (generated when none is given), the FreeSurfer folder, and whether it is simulated."""
    cache = cache_root(config.cache_dir)
    if config.data_dir is None:
        from pmrl_sci.data.abide.generator import generate_abide_like

        root = cache / f"abide_default_n{config.default_subjects}_s{config.default_sites}_{config.atlas}"
        logger.info("no --data-dir: generating the embedded simulated cohort in %s", root)
        generate_abide_like(root, n_subjects=config.default_subjects, n_sites=config.default_sites, atlas=config.atlas)
        fs = Path(config.freesurfer_dir) if config.freesurfer_dir else root / "freesurfer"
        return root, fs, True
    root = Path(config.data_dir).expanduser()
    if config.download:
        from pmrl_sci.data.abide.cohort import fetch_abide

        fetch_abide(root, atlas=config.atlas, pipeline=config.pipeline, strategy=config.strategy)
    if not root.exists():
        raise FileNotFoundError(f"--data-dir {root} does not exist (use --download to fetch ABIDE with nilearn)")
    fs = Path(config.freesurfer_dir).expanduser() if config.freesurfer_dir else None
    return root, fs, False

"""ABIDE: logistic regression on three connectivity features, on the same units: Pearson, tangent space, and
Pearson harmonised across sites with ComBat.

- Pearson correlation (Fisher z): the front end's ``--model logistic``.
- Tangent space: the tangent-space embedding of the subjects' covariance matrices (Varoquaux et al., MICCAI 2010),
  the best connectivity for ABIDE classification in Dadi et al. (NeuroImage 2019). nilearn's
  ``ConnectivityMeasure(kind="tangent")`` with Ledoit-Wolf covariances, its reference mean fitted on the unit's
  training subjects' ROI time series only; nilearn z-scores each ROI and leaves a zero-variance ROI a zero series
  (Ledoit-Wolf shrinkage keeps the covariance invertible).
- Pearson + ComBat: every connectivity edge harmonised across sites with ComBat (:class:`pmrl_sci.data.combat.ComBat`,
  following neuroCombat; age and sex as covariates, no diagnosis), fitted on the unit's training subjects only, as
  multi-site connectome studies do (Yu et al., Hum. Brain Mapp. 2018); a site without a training subject is
  passed through.

Per unit of the front end (``--folds`` x ``--seeds``, the same splits as ``python -m pmrl_sci.abide``), every row is
:func:`~pmrl_sci.baselines.logistic.fit_predict_logistic` (C chosen on validation AUC) on the subjects with fMRI.
Writes ``<out>/connectivity.md`` and ``connectivity.csv``: test AUC per row (mean ± std over units) and the paired
difference from Pearson with a 95% corrected resampled t interval
(:func:`pmrl_sci.reports.compare.paired_difference`).

    python experiments/abide_connectivity.py --data-dir ~/data/abide-dev --atlas ho \\
        --freesurfer-dir ~/data/abide-dev/freesurfer --seeds 3 --out runs/connectivity
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from nilearn.connectome import ConnectivityMeasure
from sklearn.covariance import LedoitWolf
from threadpoolctl import threadpool_limits

from pmrl_sci.baselines import vectorize_connectivity
from pmrl_sci.baselines.logistic import fit_predict_logistic
from pmrl_sci.data.abide.cohort import AbideCohort, load_abide_cohort
from pmrl_sci.data.cache import cache_root
from pmrl_sci.data.combat import ComBat
from pmrl_sci.io import atomic_write_text
from pmrl_sci.metrics import binary_classification_metrics
from pmrl_sci.reports.compare import frame_markdown, interval_note, paired_unit_table
from pmrl_sci.tasks.abide import AbideConfig, resolve_data
from pmrl_sci.tasks.abide_data import unit_splits

ROWS = ("Pearson correlation (--model logistic)", "Tangent space, fitted on the training subjects",
        "Pearson + ComBat, fitted on the training subjects")


def tangent_features(series: Sequence[np.ndarray], train: np.ndarray) -> np.ndarray:
    """Vectorised tangent-space connectivity of every subject's ROI series, the reference mean fitted on ``train``
    only (nilearn z-scores each ROI; a zero-variance ROI stays a zero series)."""
    measure = ConnectivityMeasure(kind="tangent", cov_estimator=LedoitWolf(store_precision=False), vectorize=True,
                                  discard_diagonal=True, standardize="zscore_sample")
    with threadpool_limits(limits=1):
        measure.fit([series[i] for i in train])
        return measure.transform(list(series))


def combat_features(features: np.ndarray, sites: np.ndarray, covariates: pd.DataFrame, train: np.ndarray
                    ) -> np.ndarray:
    """``features`` of every subject harmonised across ``sites`` with ComBat fitted on ``train`` only (age continuous,
    sex categorical; a site without a training subject passes through unchanged)."""
    combat = ComBat(unseen_site="passthrough")
    combat.fit(features[train], sites[train], covariates.iloc[train].reset_index(drop=True), categorical=["sex"],
               continuous=["age"])
    return np.asarray(combat.transform(features, sites, covariates.reset_index(drop=True)))


def unit_aucs(cohort: AbideCohort, config: AbideConfig) -> tuple[dict[str, dict[str, float]], float]:
    """``{row: {unit: test AUC}}`` for every row over the front end's units (subjects with fMRI only), and the
    units' mean ``n_test / n_train`` (the ratio of the corrected interval)."""
    has = np.flatnonzero(cohort.mask["fmri"])
    labels = cohort.labels[has].astype(int)
    local = np.full(len(cohort.labels), -1)
    local[has] = np.arange(has.size)
    pearson = vectorize_connectivity(cohort.fmri[has, 0])
    series = [cohort.timeseries(int(i)).astype(np.float64) for i in has]
    sites = cohort.sites[has]
    covariates = pd.DataFrame({"age": cohort.age[has], "sex": cohort.sex[has].astype(int)})
    out: dict[str, dict[str, float]] = {row: {} for row in ROWS}
    ratios = []
    for unit, seed, parts in unit_splits(cohort, config):
        train, val, test = (local[parts[n]][local[parts[n]] >= 0] for n in ("train", "val", "test"))
        ratios.append(test.size / train.size)
        rows = (pearson, tangent_features(series, train), combat_features(pearson, sites, covariates, train))
        for row, features in zip(ROWS, rows):
            prob = fit_predict_logistic(features, labels, train, val, test, seed=seed)
            out[row][unit] = binary_classification_metrics(labels[test], prob)["auc"]
        print(f"[experiment] {unit}: " + ", ".join(f"{row.split(',')[0]} {out[row][unit]:.3f}" for row in ROWS),
              flush=True)
    return out, float(np.mean(ratios))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the comparison; returns 0."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=None, help="ABIDE root (default: the embedded generated cohort)")
    parser.add_argument("--atlas", default="cc200")
    parser.add_argument("--freesurfer-dir", default=None)
    parser.add_argument("--folds", type=int, default=None, help="K folds per seed (default 5)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--default-subjects", type=int, default=200, help="size of the embedded cohort")
    parser.add_argument("--default-sites", type=int, default=4, help="sites of the embedded cohort")
    parser.add_argument("--out", default="runs/abide-connectivity")
    args = parser.parse_args(argv)
    config = AbideConfig(modalities=["fmri"], data_dir=args.data_dir, atlas=args.atlas,
                         freesurfer_dir=args.freesurfer_dir, folds=args.folds, seeds=args.seeds, seed=args.seed,
                         cache_dir=args.cache_dir, default_subjects=args.default_subjects,
                         default_sites=args.default_sites, progress=False)
    root, fs_dir, _ = resolve_data(config)
    cohort = load_abide_cohort(root, atlas=config.atlas, freesurfer_dir=fs_dir, modalities=["fmri"],
                               cache_dir=cache_root(config.cache_dir) / "abide_preprocessed", progress=False)
    aucs, ratio = unit_aucs(cohort, config)
    table = paired_unit_table(aucs, ROWS[0], test_train_ratio=ratio)
    out = Path(args.out)
    atomic_write_text(out / "connectivity.csv", table.to_csv())
    title = "# ABIDE: logistic regression on three connectivity features (test AUC, %)"
    note = f"> Δ: mean paired difference with a {interval_note(ratio)}"
    atomic_write_text(out / "connectivity.md", f"{title}\n\n{frame_markdown(table)}\n{note}\n")
    print(table.to_string())
    return 0


if __name__ == "__main__":
    sys.exit(main())

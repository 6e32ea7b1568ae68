"""ABIDE: logistic regression on tangent-space connectivity against Pearson connectivity, on the same units.

Tangent-space embedding of the subjects' covariance matrices (Varoquaux et al., MICCAI 2010) was the best
connectivity for ABIDE classification in Dadi et al. (NeuroImage 2019). Per unit of the front end (``--folds`` x
``--seeds``, the same splits as ``python -m pmrl_sci.abide``), nilearn's ``ConnectivityMeasure(kind="tangent")``
with Ledoit-Wolf covariances is fitted on the training subjects' ROI time series only and applied to every
subject; nilearn z-scores each ROI and leaves a zero-variance ROI a zero series (Ledoit-Wolf shrinkage keeps the
covariance invertible). Both
rows are :func:`~pmrl_sci.baselines.logistic.fit_predict_logistic` (C chosen on validation AUC) on the subjects
with fMRI; Pearson is the front end's ``--model logistic``. Writes ``<out>/tangent.md`` and ``tangent.csv``: test
AUC per row (mean ± std over units) and the paired difference from Pearson with a 95% corrected resampled t
interval (:func:`pmrl_sci.reports.compare.paired_difference`).

    python experiments/abide_tangent.py --data-dir ~/data/abide-dev --atlas ho \\
        --freesurfer-dir ~/data/abide-dev/freesurfer --seeds 3 --out runs/tangent
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from nilearn.connectome import ConnectivityMeasure
from sklearn.covariance import LedoitWolf
from threadpoolctl import threadpool_limits

from pmrl_sci.baselines import vectorize_connectivity
from pmrl_sci.baselines.logistic import fit_predict_logistic
from pmrl_sci.data.abide.cohort import AbideCohort, load_abide_cohort
from pmrl_sci.data.cache import cache_root
from pmrl_sci.io import atomic_write_text
from pmrl_sci.metrics import binary_classification_metrics
from pmrl_sci.reports.compare import frame_markdown, interval_note, paired_unit_table
from pmrl_sci.tasks.abide import AbideConfig, resolve_data
from pmrl_sci.tasks.abide_data import unit_splits

ROWS = ("Pearson correlation (--model logistic)", "Tangent space, fitted on the training subjects")


def tangent_features(series: Sequence[np.ndarray], train: np.ndarray) -> np.ndarray:
    """Vectorised tangent-space connectivity of every subject's ROI series, the reference mean fitted on ``train``
    only (nilearn z-scores each ROI; a zero-variance ROI stays a zero series)."""
    measure = ConnectivityMeasure(kind="tangent", cov_estimator=LedoitWolf(store_precision=False), vectorize=True,
                                  discard_diagonal=True, standardize="zscore_sample")
    with threadpool_limits(limits=1):
        measure.fit([series[i] for i in train])
        return measure.transform(list(series))


def unit_aucs(cohort: AbideCohort, config: AbideConfig) -> tuple[dict[str, dict[str, float]], float]:
    """``{row: {unit: test AUC}}`` for both rows over the front end's units (subjects with fMRI only), and the
    units' mean ``n_test / n_train`` (the ratio of the corrected interval)."""
    has = np.flatnonzero(cohort.mask["fmri"])
    labels = cohort.labels[has].astype(int)
    local = np.full(len(cohort.labels), -1)
    local[has] = np.arange(has.size)
    pearson = vectorize_connectivity(cohort.fmri[has, 0])
    series = [cohort.timeseries(int(i)).astype(np.float64) for i in has]
    out: dict[str, dict[str, float]] = {row: {} for row in ROWS}
    ratios = []
    for unit, seed, parts in unit_splits(cohort, config):
        train, val, test = (local[parts[n]][local[parts[n]] >= 0] for n in ("train", "val", "test"))
        ratios.append(test.size / train.size)
        for row, features in zip(ROWS, (pearson, tangent_features(series, train))):
            prob = fit_predict_logistic(features, labels, train, val, test, seed=seed)
            out[row][unit] = binary_classification_metrics(labels[test], prob)["auc"]
        print(f"[experiment] {unit}: " + ", ".join(f"{row.split(' ')[0]} {out[row][unit]:.3f}" for row in ROWS),
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
    parser.add_argument("--out", default="runs/abide-tangent")
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
    atomic_write_text(out / "tangent.csv", table.to_csv())
    atomic_write_text(out / "tangent.md", "# ABIDE: logistic regression, Pearson vs tangent space (test AUC, %)\n\n"
                      + frame_markdown(table) + f"\n> Δ: mean paired difference with a {interval_note(ratio)}\n")
    print(table.to_string())
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Samplers and pruners of a sweep: TPE reseeded per trial (:class:`TrialSeededSampler`) and :func:`make_pruner`."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

from pmrl_sci.extras import require
from pmrl_sci.sweep.config import SweepConfig

optuna = require("optuna", "sweep", "Optuna sweeps")
FrozenTrial, TrialState = optuna.trial.FrozenTrial, optuna.trial.TrialState


class TrialSeededSampler(optuna.samplers.BaseSampler):
    """TPE whose random state is reset from ``(seed, trial number)`` before each trial.

    A trial's parameters are then a function of the seed, its number and the study's history: a single
    worker is reproducible (and a resumed study continues as an uninterrupted one would), and parallel
    workers started with the same ``--seed`` do not draw the same parameters.
    """

    def __init__(self, seed: int, n_startup_trials: int = 10) -> None:
        self.seed = seed
        self.n_startup_trials = n_startup_trials
        self._tpe = self._make(seed)

    def _make(self, seed: int) -> optuna.samplers.TPESampler:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.TPESampler(seed=seed, n_startup_trials=self.n_startup_trials, constant_liar=True)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        """Re-create the TPE sampler with a seed derived from the trial number."""
        self._tpe = self._make((self.seed * 1_000_003 + trial.number) % (2**32))
        self._tpe.before_trial(study, trial)

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, Any]:
        """Delegated to TPE."""
        return self._tpe.infer_relative_search_space(study, trial)

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, Any]
                        ) -> dict[str, Any]:
        """Delegated to TPE."""
        return self._tpe.sample_relative(study, trial, search_space)

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: Any) -> Any:
        """Delegated to TPE."""
        return self._tpe.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState,
                    values: Sequence[float] | None) -> None:
        """Delegated to TPE."""
        self._tpe.after_trial(study, trial, state, values)


def make_pruner(cfg: SweepConfig) -> optuna.pruners.BasePruner:
    """The pruner named by ``cfg.pruner``."""
    if cfg.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=cfg.pruner_startup, n_warmup_steps=cfg.pruner_warmup)
    if cfg.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource="auto")
    if cfg.pruner == "threshold":
        return optuna.pruners.ThresholdPruner(lower=cfg.prune_below, n_warmup_steps=cfg.pruner_warmup)
    return optuna.pruners.NopPruner()

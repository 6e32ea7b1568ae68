"""One trial of a sweep: the Optuna objective (:class:`TrialRunner`), which runs the front end in-process, its
per-epoch :class:`EpochReporter` (pruning), the validation value it returns, and the trial counts of a study."""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import os
import socket
import sys
import time
import traceback
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pmrl_sci.extras import require
from pmrl_sci.sweep.config import SEED_OPTION, SweepConfig
from pmrl_sci.sweep_spaces import SearchSpace, options_to_argv

optuna = require("optuna", "sweep", "Optuna sweeps")
TrialState = optuna.trial.TrialState

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


class EpochReporter:
    """The :func:`pmrl_sci.training.epoch_callback` of a trial: report, and prune when the pruner says so.

    Every unit of a run (seed, fold, member) gets a block of steps as long as its epoch budget, in the order
    the units run: epoch ``e`` of the ``k``-th unit is step ``k * max_epochs + e``. Early stopping ends a unit
    before its block does, so the next unit still starts at the same step in every trial, and the pruner
    compares trials on the same unit at the same epoch (counting the epochs run instead would compare one
    trial's first epochs of fold 2 with another's late epochs of fold 1). The steps are the epoch budget
    spent, the resource Hyperband counts.
    """

    def __init__(self, trial: optuna.Trial, metric: str) -> None:
        self.trial = trial
        self.metric = metric
        self.next_block = 0
        self.blocks: dict[str, tuple[int, int]] = {}  # unit -> (first step, last epoch reported)

    def step_of(self, unit: str, epoch: int, max_epochs: int) -> int:
        """The step of ``epoch`` of ``unit`` (a new block when the unit is new or starts over, e.g. a later phase)."""
        start, last = self.blocks.get(unit, (None, -1))
        if start is None or epoch <= last:
            start, self.next_block = self.next_block, self.next_block + max(int(max_epochs), epoch + 1)
        self.blocks[unit] = (start, epoch)
        return start + epoch

    def __call__(self, unit: str, epoch: int, metrics: Mapping[str, float], max_epochs: int) -> None:
        """Report ``metrics[self.metric]``; raise :class:`optuna.TrialPruned` when the pruner says so."""
        if self.metric not in metrics:
            raise KeyError(f"the front end reported {sorted(metrics)} for {unit} epoch {epoch}; the pruning "
                           f"metric {self.metric!r} (--report-metric) is not among them")
        value = float(metrics[self.metric])
        step = self.step_of(unit, epoch, max_epochs)
        if not math.isfinite(value):
            return
        self.trial.report(value, step)
        if self.trial.should_prune():
            self.trial.set_user_attr("pruned_at", {"unit": unit, "epoch": int(epoch), "step": step,
                                                   self.metric: value})
            raise optuna.TrialPruned(f"{unit} epoch {epoch}: {self.metric} {value:.4f}")


class _Tee(io.TextIOBase):
    """Writes to a stream and keeps the last ``limit`` characters (a trial's error messages)."""

    def __init__(self, stream: Any, limit: int = 4000) -> None:
        self.stream, self.limit, self.kept = stream, limit, ""

    def write(self, text: str) -> int:
        self.kept = (self.kept + text)[-self.limit:]
        return self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()


def validation_value(results: Any, front_end: str) -> tuple[float, dict[str, Any]]:
    """The objective value: ``results["validation"]["mean"]`` (never a test metric)."""
    validation = results.get("validation") if isinstance(results, Mapping) else None
    if not isinstance(validation, Mapping) or "mean" not in validation:
        raise KeyError(f"the {front_end} front end returned no results['validation'] = {{'metric', 'mean', ...}}; "
                       "the sweep optimises the validation score only and will not select on test metrics")
    value = float(validation["mean"])
    if not math.isfinite(value):
        raise ValueError(f"the {front_end} front end's validation {validation.get('metric')} is {value}")
    return value, {k: validation[k] for k in ("metric", "mean", "std", "n") if k in validation}


class TrialRunner:
    """The Optuna objective: sample, run the front end in-process, return its validation score."""

    def __init__(self, cfg: SweepConfig, space: SearchSpace, base_argv: list[str], context: Mapping[str, Any],
                 parser: argparse.ArgumentParser) -> None:
        self.cfg, self.space, self.base_argv, self.context, self.parser = cfg, space, base_argv, context, parser
        self.trials_dir = cfg.out / "trials" / str(cfg.study_name)

    def run_dir(self, number: int) -> Path:
        """Run folder of trial ``number``."""
        return self.trials_dir / f"trial-{number:04d}"

    def __call__(self, trial: optuna.Trial) -> float:
        """Run one trial; exceptions are recorded in the ``error`` user attribute and re-raised (FAIL)."""
        trial.set_user_attr("worker", {"host": socket.gethostname(), "pid": os.getpid()})
        try:
            return self._run(trial)
        except optuna.TrialPruned:
            raise
        except SystemExit as exc:  # argparse's error / exit inside the front end
            message = f"the front end exited with status {exc.code}: {getattr(self, '_stderr', '').strip()}"
            trial.set_user_attr("error", message[-2000:])
            raise RuntimeError(message) from None
        except Exception as exc:
            trial.set_user_attr("error", f"{type(exc).__name__}: {exc}"[:2000])
            trial.set_user_attr("traceback", traceback.format_exc()[-4000:])
            raise

    def _run(self, trial: optuna.Trial) -> float:
        from pmrl_sci.training import epoch_callback

        surplus = surplus_reason(trial, self.cfg.n_trials)
        if surplus:
            trial.set_user_attr("surplus", True)
            raise RuntimeError(surplus)
        params = self.space.sample(trial, self.context)
        run_dir = self.run_dir(trial.number)
        if run_dir.exists() and any(run_dir.iterdir()):  # left by an older study of the same name: keep it aside
            run_dir.rename(run_dir.with_name(f"{run_dir.name}.old-{time.strftime('%Y%m%d-%H%M%S')}"))
        options = {**params, SEED_OPTION: self.cfg.trial_seed, "out": str(run_dir)}
        argv = self.base_argv + options_to_argv(options, self.parser, f"trial {trial.number}")
        trial.set_user_attr("run_dir", str(run_dir.resolve()))
        trial.set_user_attr("seed", self.cfg.trial_seed)
        trial.set_user_attr("argv", argv)
        tee = _Tee(sys.stderr)
        self._stderr = ""
        reporter = EpochReporter(trial, self.cfg.report_metric or self.cfg.spec.report_metric)
        try:
            with epoch_callback(reporter), contextlib.redirect_stderr(tee):
                results = self.cfg.spec.load().main(argv)
        finally:
            self._stderr = tee.kept
        value, validation = validation_value(results, self.cfg.front_end)
        trial.set_user_attr("validation", validation)
        return value


def count_states(study: optuna.Study) -> dict[str, int]:
    """Trials of the study by state name (``COMPLETE``, ``PRUNED``, ``FAIL``, ``RUNNING``, ``WAITING``)."""
    counts = {state.name: 0 for state in TrialState}
    for trial in study.get_trials(deepcopy=False):
        counts[trial.state.name] += 1
    return counts


def surplus_reason(trial: optuna.Trial, n_trials: int) -> str | None:
    """Why this trial is not needed (``n_trials`` already finished or running in lower-numbered trials), or None.

    Workers check the count before asking for a trial; two that ask at the same moment can both get one, and
    the higher-numbered of them stops at once (recorded FAIL with ``surplus``), so finished trials never
    exceed ``--n-trials``.
    """
    states = (*FINISHED, TrialState.RUNNING)
    before = [t for t in trial.study.get_trials(deepcopy=False, states=states) if t.number < trial.number]
    if len(before) >= n_trials:
        return f"surplus trial: {len(before)} trials before it already reach --n-trials {n_trials}"
    return None


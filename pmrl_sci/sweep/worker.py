"""The worker loop of a sweep: run trials until the study has enough, wait for those running elsewhere, print a
line per trial and write ``best.json``."""

from __future__ import annotations

import contextlib
import sys
import time
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from pmrl_sci.extras import require
from pmrl_sci.sweep.config import SweepConfig, SweepError
from pmrl_sci.sweep.sampling import TrialSeededSampler, make_pruner
from pmrl_sci.sweep.storage import describe_storage, fail_dead_local_trials, open_storage, redact
from pmrl_sci.sweep.trial_options import check_fixed_options, fixed_options, prepare
from pmrl_sci.sweep.trials import TrialRunner, count_states

optuna = require("optuna", "sweep", "Optuna sweeps")
FrozenTrial, TrialState = optuna.trial.FrozenTrial, optuna.trial.TrialState


def _param_text(params: Mapping[str, Any]) -> str:
    return " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


class ProgressLine:
    """One line per trial (rank 0 only)."""

    def __init__(self, cfg: SweepConfig) -> None:
        from pmrl_sci.runs import is_rank_zero

        self.cfg, self.enabled = cfg, is_rank_zero()

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        """Print the trial's outcome, the best value so far and the finished count."""
        if not self.enabled:
            return
        counts = count_states(study)
        seconds = trial.duration.total_seconds() if trial.duration else float("nan")
        if trial.state == TrialState.COMPLETE:
            outcome = f"COMPLETE value {trial.value:.4f}"
        elif trial.state == TrialState.PRUNED:
            outcome = f"PRUNED at step {trial.last_step}"
        else:
            outcome = f"{trial.state.name}: {str(trial.user_attrs.get('error', ''))[:160]}"
        try:
            best = f"best {study.best_value:.4f} (trial {study.best_trial.number})"
        except ValueError:
            best = "no complete trial yet"
        finished = counts["COMPLETE"] + counts["PRUNED"]
        print(f"[sweep {self.cfg.front_end}] trial {trial.number} {outcome} ({seconds:.1f} s) "
              f"{_param_text(trial.params)} | {best} | {finished}/{self.cfg.n_trials} finished", flush=True)


@contextlib.contextmanager
def _quiet_optuna() -> Iterator[None]:
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(verbosity)


def run_sweep(cfg: SweepConfig) -> dict[str, Any] | None:
    """Run this worker until the study has ``cfg.n_trials`` finished trials; return ``best.json``'s content.

    Returns None (and writes no ``best.json``) when this worker stopped after ``cfg.max_failures``
    consecutive failed trials.
    """
    space, base_argv, context, parser = prepare(cfg)
    cfg.out.mkdir(parents=True, exist_ok=True)
    fixed = fixed_options(cfg, space, context)
    with open_storage(cfg) as storage:  # a database's connections are closed however the worker stops
        return _run_study(cfg, storage, TrialRunner(cfg, space, base_argv, context, parser), fixed)


def _run_study(cfg: SweepConfig, storage: optuna.storages.BaseStorage, runner: TrialRunner,
               fixed: Mapping[str, Any]) -> dict[str, Any] | None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study = optuna.create_study(study_name=cfg.study_name, storage=storage, direction="maximize",
                                    sampler=TrialSeededSampler(cfg.seed, cfg.startup_trials),
                                    pruner=make_pruner(cfg), load_if_exists=True)
    if study.direction != optuna.study.StudyDirection.MAXIMIZE:
        raise SweepError(f"study {cfg.study_name!r} in {redact(describe_storage(cfg.storage, cfg.out)[1])} "
                         "minimises; a sweep maximises the validation score (use another --study-name)")
    check_fixed_options(study, fixed, cfg)
    study.set_user_attr("front_end", cfg.front_end)
    progress_line = ProgressLine(cfg)
    failures = 0
    ran: list[FrozenTrial] = []  # the trial of each optimize() call below
    callbacks = [progress_line, lambda _study, trial: ran.append(trial)]
    with _quiet_optuna():
        while True:
            counts = count_states(study)
            finished = counts["COMPLETE"] + counts["PRUNED"]
            if finished >= cfg.n_trials:
                break
            if finished + counts["RUNNING"] >= cfg.n_trials:
                # the last trials run elsewhere: wait, failing those whose worker died, then re-check
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    optuna.storages.fail_stale_trials(study)
                if not isinstance(storage, optuna.storages.RDBStorage):  # no heartbeats: check local pids
                    fail_dead_local_trials(study)
                time.sleep(cfg.poll)
                continue
            check_fixed_options(study, fixed, cfg)  # again: a worker may have started with others meanwhile
            ran.clear()
            study.optimize(runner, n_trials=1, catch=(Exception,), gc_after_trial=True, callbacks=callbacks)
            if any(t.state == TrialState.FAIL and not t.user_attrs.get("surplus") for t in ran):
                failures += 1
                if failures >= cfg.max_failures:
                    print(f"[sweep {cfg.front_end}] stopping this worker: {failures} consecutive failed trials "
                          "(see their 'error' attribute); fix the options and rerun to resume", file=sys.stderr)
                    return None
            elif ran:
                failures = 0
    best = best_summary(study, cfg)
    from pmrl_sci.io import atomic_write_json

    atomic_write_json(cfg.out / "best.json", best)
    _print_best(best, cfg)
    return best


def best_summary(study: optuna.Study, cfg: SweepConfig) -> dict[str, Any]:
    """``best.json``: the best trial's parameters, validation value and TEST metrics (from its results.json)."""
    import json

    counts = count_states(study)
    summary: dict[str, Any] = {
        "study": study.study_name, "front_end": cfg.front_end,
        "storage": redact(describe_storage(cfg.storage, cfg.out)[1]), "direction": "maximize",
        "n_trials": cfg.n_trials, "counts": {k: v for k, v in counts.items() if v},
        "space": str(cfg.space) if cfg.space else f"<default {cfg.front_end}>",
        "fixed_options": study.user_attrs.get("fixed_options"),
    }
    try:
        best = study.best_trial
    except ValueError:
        summary.update(best_trial=None, note="no trial completed (all pruned or failed)")
        return summary
    run_dir = Path(best.user_attrs.get("run_dir", ""))
    results_path = run_dir / "results.json"
    test: dict[str, Any] | None = None
    if results_path.is_file():
        results = json.loads(results_path.read_text(encoding="utf-8"))
        test = {k: results[k] for k in cfg.spec.test_keys if k in results}
    validation = dict(best.user_attrs.get("validation") or {})
    summary.update(
        best_trial=best.number, params=best.params,
        validation={"value": best.value, **validation},
        test=test, test_note=("TEST metrics of the selected trial, read from its results.json after the study "
                              "finished; never used for selection" if test is not None
                              else f"{results_path} not found on this host"),
        run_dir=str(run_dir), seed=best.user_attrs.get("seed"), argv=best.user_attrs.get("argv"),
    )
    return summary


def _print_best(best: Mapping[str, Any], cfg: SweepConfig) -> None:
    counts = ", ".join(f"{k.lower()} {v}" for k, v in best["counts"].items())
    if best.get("best_trial") is None:
        print(f"[sweep {cfg.front_end}] finished ({counts}): {best['note']}; {cfg.out / 'best.json'}")
        return
    metric = best["validation"].get("metric", "value")
    test = best.get("test") or {}
    test_text = ", ".join(f"{k} {v['mean']:.4f}" for k, v in test.items()
                          if isinstance(v, Mapping) and "mean" in v) or ", ".join(
        f"{k} {v:.4f}" for k, v in test.items() if isinstance(v, float))
    print(f"[sweep {cfg.front_end}] finished ({counts}); best trial {best['best_trial']}: validation {metric} "
          f"{best['validation']['value']:.4f}; test {test_text or 'n/a'}; {_param_text(best['params'])}\n"
          f"  run folder {best['run_dir']}; summary {cfg.out / 'best.json'}", flush=True)


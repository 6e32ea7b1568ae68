"""Optuna sweeps over a front end: ``python -m pmrl_sci.sweep abide|houston13|retrieval [options] [-- args]``.

Each trial calls the front end's ``main(argv)`` in-process with sampled hyper-parameters (see
:mod:`pmrl_sci.sweep_spaces`; ``--space space.yaml`` overrides the defaults), in its own run folder
``<out>/trials/<study>/trial-NNNN``. The objective is the front end's VALIDATION score
(``results["validation"]["mean"]``, maximised); the test metrics are read only at the end, for ``best.json``.
Per-epoch validation reports (:func:`pmrl_sci.training.report_epoch`) drive pruning.

Storage: a SQLite file ``<out>/study.db`` by default; ``--storage journal:///path/file.log`` (or a path ending in
``.log``) for several workers on one host; a database URL (``postgresql://user@host:port/db``) for workers on many
hosts, with heartbeats so that a worker killed mid-trial has its trial marked FAIL (and re-queued) by the others.
``--n-trials`` is the study's total of finished (complete + pruned) trials over all workers: start the same command
on several machines, or rerun it with a larger ``--n-trials`` to extend the study. The study records its fixed
options (:func:`fixed_options`); a worker with other ones is refused (:func:`check_fixed_options`). A worker holds
at most :data:`MAX_CONNECTIONS` connections to a database server and closes them when it stops.
"""

from __future__ import annotations

# The modules, by job: config (the front ends, SweepConfig), storage, sampling (sampler and pruners), trials (one
# trial), trial_options (the trials' front-end options), worker (the worker loop, best.json) and cli (the command
# line). Every public name is importable from pmrl_sci.sweep.
from pmrl_sci.sweep.cli import build_parser, main, parse_config
from pmrl_sci.sweep.config import (
    FRONT_ENDS,
    PRUNERS,
    QUIET_OPTIONS,
    SEED_OPTION,
    FrontEnd,
    SweepConfig,
    SweepError,
)
from pmrl_sci.sweep.sampling import TrialSeededSampler, make_pruner
from pmrl_sci.sweep.storage import (
    MAX_CONNECTIONS,
    POOL_OVERFLOW,
    POOL_SIZE,
    close_storage,
    describe_storage,
    fail_dead_local_trials,
    make_storage,
    open_storage,
    redact,
    with_installed_driver,
)
from pmrl_sci.sweep.trial_options import (
    check_fixed_options,
    fixed_option_differences,
    fixed_options,
    json_text,
    prepare,
)
from pmrl_sci.sweep.trials import (
    FINISHED,
    EpochReporter,
    TrialRunner,
    count_states,
    surplus_reason,
    validation_value,
)
from pmrl_sci.sweep.worker import ProgressLine, best_summary, run_sweep

__all__ = [
    "FINISHED", "FRONT_ENDS", "MAX_CONNECTIONS", "POOL_OVERFLOW", "POOL_SIZE", "PRUNERS", "QUIET_OPTIONS",
    "SEED_OPTION", "EpochReporter", "FrontEnd", "ProgressLine", "SweepConfig", "SweepError", "TrialRunner",
    "TrialSeededSampler", "best_summary", "build_parser", "check_fixed_options", "close_storage", "count_states",
    "describe_storage", "fail_dead_local_trials", "fixed_option_differences", "fixed_options", "json_text", "main",
    "make_pruner", "make_storage", "open_storage", "parse_config", "prepare", "redact", "run_sweep",
    "surplus_reason", "validation_value", "with_installed_driver",
]

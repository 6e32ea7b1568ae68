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

import argparse
import contextlib
import importlib
import inspect
import io
import math
import os
import socket
import sys
import time
import traceback
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pmrl_sci.extras import require
from pmrl_sci.sweep_spaces import SearchSpace, SpaceError, default_space, load_space, options_to_argv, parser_actions

optuna = require("optuna", "sweep", "Optuna sweeps")
FrozenTrial, TrialState = optuna.trial.FrozenTrial, optuna.trial.TrialState

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


class SweepError(RuntimeError):
    """A sweep that cannot start (bad storage, space or front-end options); the message says what to fix."""


@dataclass(frozen=True)
class FrontEnd:
    """How the sweep drives one front end.

    Parameters
    ----------
    name : str
        Command name (``abide``, ``houston13``, ``retrieval``).
    module : str
        Module with ``build_parser()`` and ``main(argv) -> dict``.
    report_metric : str
        Key of the per-epoch validation metrics used for pruning.
    seed_option : str
        Front-end option (destination) of the training seed.
    quiet : dict
        Options that turn the front end's progress bars off inside trials.
    test_keys : tuple of str
        Keys of ``results.json`` copied to ``best.json`` as the best trial's test metrics.
    """

    name: str
    module: str
    report_metric: str
    seed_option: str
    quiet: Mapping[str, Any] = field(default_factory=dict)
    test_keys: tuple[str, ...] = ()

    def load(self) -> Any:
        """The front-end module."""
        return importlib.import_module(self.module)


FRONT_ENDS: dict[str, FrontEnd] = {
    "abide": FrontEnd("abide", "pmrl_sci.abide", "val_auc", "seed", {"progress": False},
                      ("auc", "accuracy", "sensitivity", "specificity")),
    "houston13": FrontEnd("houston13", "pmrl_sci.houston13", "val_oa", "seed", {"progress": False},
                          ("oa", "aa", "kappa")),
    "retrieval": FrontEnd("retrieval", "pmrl_sci.retrieval", "val_mean_R@1", "seed", {},
                          ("mean_R@1", "mean_R@10", "recall")),
}
PRUNERS = ("median", "hyperband", "threshold", "none")


@dataclass
class SweepConfig:
    """Everything a sweep worker depends on (see ``python -m pmrl_sci.sweep --help``)."""

    front_end: str
    out: Path
    n_trials: int = 20
    storage: str | None = None
    study_name: str | None = None
    seed: int = 0
    trial_seed: int = 0
    space: Path | None = None
    pruner: str = "median"
    pruner_startup: int = 3
    pruner_warmup: int = 1
    prune_below: float | None = None
    startup_trials: int = 10
    report_metric: str | None = None
    heartbeat: int = 10
    grace: int | None = None
    retry_stale: int = 1
    max_failures: int = 5
    poll: float = 2.0
    trial_progress: bool = False
    extra: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.front_end not in FRONT_ENDS:
            raise SweepError(f"front end must be one of {sorted(FRONT_ENDS)}, got {self.front_end!r}")
        if self.pruner not in PRUNERS:
            raise SweepError(f"--pruner must be one of {list(PRUNERS)}, got {self.pruner!r}")
        if self.pruner == "threshold" and self.prune_below is None:
            raise SweepError("--pruner threshold needs --prune-below VALUE (trials reporting less are pruned)")
        for name in ("n_trials", "heartbeat", "max_failures"):
            if getattr(self, name) < 1:
                raise SweepError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.grace is not None and self.grace <= self.heartbeat:
            raise SweepError(f"--grace must be longer than --heartbeat ({self.heartbeat} s), got {self.grace}")
        self.out = Path(self.out)
        self.study_name = self.study_name or self.front_end

    @property
    def spec(self) -> FrontEnd:
        """The front end's :class:`FrontEnd`."""
        return FRONT_ENDS[self.front_end]


# -- storage -------------------------------------------------------------------------------------------------------
def describe_storage(spec: str | None, out: Path) -> tuple[str, str]:
    """``(kind, location)``: kind ``"rdb"`` (location a URL) or ``"journal"`` (location a file path)."""
    if spec is None:
        return "rdb", f"sqlite:///{(out / 'study.db').resolve()}"
    if spec.startswith("journal://"):
        path = spec[len("journal://"):]
        if not path:
            raise SweepError(f"--storage {spec}: expected journal:///path/to/file.log")
        return "journal", path
    if "://" not in spec and spec.endswith(".log"):
        return "journal", spec
    if "://" in spec:
        return "rdb", spec
    raise SweepError(f"--storage {spec!r}: expected journal:///path/to/file.log, a path ending in .log, or a "
                     "database URL (sqlite:///path.db, postgresql://user@host:port/db)")


def _stale_callback_kwargs(retry: int) -> dict[str, Any]:
    """The RDBStorage keyword re-queueing a heartbeat-stale trial (optuna >= 4.9 renamed it)."""
    names = inspect.signature(optuna.storages.RDBStorage.__init__).parameters
    if hasattr(optuna.storages, "RetryHeartbeatStaleTrialCallback") and "heartbeat_stale_trial_callback" in names:
        return {"heartbeat_stale_trial_callback": optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=retry)}
    return {"failed_trial_callback": optuna.storages.RetryFailedTrialCallback(max_retry=retry)}


# Connections one worker keeps open to a database server: its main thread's and the running trial's heartbeat
# thread's. One more may be opened for a moment (and closed when returned) rather than block a worker.
POOL_SIZE = 2
POOL_OVERFLOW = 1
MAX_CONNECTIONS = POOL_SIZE + POOL_OVERFLOW


def make_storage(cfg: SweepConfig) -> optuna.storages.BaseStorage:
    """Open (creating if needed) the study storage of ``cfg``.

    A database storage has one SQLAlchemy engine whose pool holds at most :data:`MAX_CONNECTIONS` server
    connections; :func:`close_storage` (or :func:`open_storage`, which calls it) closes them.
    """
    kind, location = describe_storage(cfg.storage, cfg.out)
    if kind == "journal":
        path = Path(location).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        journal = optuna.storages.journal
        backend_cls = getattr(journal, "JournalFileBackend", None) or optuna.storages.JournalFileStorage
        return optuna.storages.JournalStorage(backend_cls(str(path)))
    location = with_installed_driver(location)
    if location.startswith("sqlite:///"):
        Path(location[len("sqlite:///"):]).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine_kwargs: dict[str, Any] = {}
    if not location.startswith("sqlite"):
        engine_kwargs = {"pool_pre_ping": True, "pool_size": POOL_SIZE, "max_overflow": POOL_OVERFLOW}
    try:
        with warnings.catch_warnings():  # heartbeats and the retry callback are marked experimental
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(location, engine_kwargs=engine_kwargs,
                                              heartbeat_interval=cfg.heartbeat,
                                              grace_period=cfg.grace or 2 * cfg.heartbeat,
                                              **_stale_callback_kwargs(cfg.retry_stale))
    except ImportError as exc:
        raise SweepError(f"--storage {redact(location)}: a database driver is missing ({exc}); for PostgreSQL "
                         "install the 'postgres' extra (psycopg2-binary)") from None
    except Exception as exc:  # SQLAlchemy's connection errors have many types
        raise SweepError(f"--storage {redact(location)}: cannot open the database ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''})") from None


def close_storage(storage: optuna.storages.BaseStorage) -> None:
    """Close the database connections of a storage made by :func:`make_storage` (journal files: nothing to do).

    Parameters
    ----------
    storage : optuna.storages.BaseStorage
        The storage; a database storage opens new connections if it is used again.
    """
    if isinstance(storage, optuna.storages.RDBStorage):
        storage.remove_session()  # this thread's session; the heartbeat threads' ended with their threads
        storage.engine.dispose()  # the pooled connections


@contextlib.contextmanager
def open_storage(cfg: SweepConfig) -> Iterator[optuna.storages.BaseStorage]:
    """:func:`make_storage` as a context: the storage's database connections are closed on leaving it.

    Parameters
    ----------
    cfg : SweepConfig
        The sweep whose storage (``cfg.storage``, default ``<out>/study.db``) to open.

    Yields
    ------
    optuna.storages.BaseStorage
        The open storage.
    """
    storage = make_storage(cfg)
    try:
        yield storage
    finally:
        close_storage(storage)


def with_installed_driver(url: str) -> str:
    """``postgresql://`` -> ``postgresql+psycopg2://`` when psycopg (3), SQLAlchemy 2.1's default driver, is missing."""
    if not url.startswith(("postgresql://", "postgres://")):
        return url
    import importlib.util

    rest = url.split("://", 1)[1]
    if importlib.util.find_spec("psycopg") is None and importlib.util.find_spec("psycopg2") is not None:
        return "postgresql+psycopg2://" + rest
    return "postgresql://" + rest


def redact(url: str) -> str:
    """``url`` with any password hidden."""
    if "://" not in url or "@" not in url:
        return url
    require("sqlalchemy", "sweep", "checking a sweep storage URL")
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("://", 1)[0] + "://***"


def fail_dead_local_trials(study: optuna.Study) -> list[int]:
    """Mark FAIL the RUNNING trials whose worker process, on this host, no longer exists.

    Storages without heartbeats (journal files: one host) cannot tell a dead worker's trial from a running one;
    each trial records ``worker = {"host", "pid"}``, so workers on the same host can. Returns the trial numbers.
    """
    host = socket.gethostname()
    failed = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = trial.user_attrs.get("worker") or {}
        if worker.get("host") != host or not isinstance(worker.get("pid"), int) or _alive(worker["pid"]):
            continue
        with contextlib.suppress(Exception):  # another worker may have failed it first
            study._storage.set_trial_user_attr(trial._trial_id, "error",
                                               f"worker pid {worker['pid']} on {host} stopped mid-trial")
            if study._storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL):
                failed.append(trial.number)
    return failed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# -- sampling ------------------------------------------------------------------------------------------------------
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


# -- trials --------------------------------------------------------------------------------------------------------
class EpochReporter:
    """The :func:`pmrl_sci.training.epoch_callback` of a trial: report, and prune when the pruner says so.

    Steps count every epoch reported in the run (over seeds and folds in order), so trials of one study
    are compared at the same amount of training.
    """

    def __init__(self, trial: optuna.Trial, metric: str) -> None:
        self.trial = trial
        self.metric = metric
        self.step = 0

    def __call__(self, unit: str, epoch: int, metrics: Mapping[str, float]) -> None:
        """Report ``metrics[self.metric]``; raise :class:`optuna.TrialPruned` when the pruner says so."""
        if self.metric not in metrics:
            raise KeyError(f"the front end reported {sorted(metrics)} for {unit} epoch {epoch}; the pruning "
                           f"metric {self.metric!r} (--report-metric) is not among them")
        value = float(metrics[self.metric])
        step, self.step = self.step, self.step + 1
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
        options = {**params, self.cfg.spec.seed_option: self.cfg.trial_seed, "out": str(run_dir)}
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


# -- the worker loop -----------------------------------------------------------------------------------------------
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


def prepare(cfg: SweepConfig) -> tuple[SearchSpace, list[str], dict[str, Any], argparse.ArgumentParser]:
    """The space, the argv shared by all trials, the option values for ``when`` and the front end's parser.

    Checks every fixed option and parameter against the front end's parser before the study starts.
    """
    from pmrl_sci.config import parse_args_with_config

    module = cfg.spec.load()
    parser = module.build_parser()
    space = load_space(cfg.space, cfg.front_end) if cfg.space else default_space(cfg.front_end)
    actions = parser_actions(parser)
    where = space.source
    unknown = [name for name in space.params if name not in actions]
    if unknown:
        raise SweepError(f"{where}: searched parameter(s) {unknown} are not options of {parser.prog} "
                         f"(see python -m {cfg.spec.module} --help)")
    extra_dests = {actions[_dest_of(tok, actions)].dest for tok in cfg.extra if _dest_of(tok, actions)}
    reserved = {"out", cfg.spec.seed_option} & (set(space.fixed) | extra_dests)
    if reserved:
        raise SweepError(f"{sorted(reserved)} are set by the sweep for each trial (use --out / --trial-seed of the "
                         "sweep); remove them from the space's 'fixed' section and the arguments after --")
    dropped = sorted(set(space.params) & extra_dests)
    if dropped:
        print(f"[sweep {cfg.front_end}] {dropped} given after -- : not searched", flush=True)
        space = space.without(dropped)
    quiet = {} if cfg.trial_progress else {k: v for k, v in cfg.spec.quiet.items() if k not in space.fixed}
    base_argv = options_to_argv({**space.fixed, **quiet}, parser, f"{where}: fixed") + list(cfg.extra)
    context = _parse(parser, base_argv, where, parse_args_with_config)
    example = base_argv + options_to_argv({**space.examples(context), "out": str(cfg.out / "check")}, parser,
                                          where)
    _parse(parser, example, where, parse_args_with_config)
    return space, base_argv, context, parser


def fixed_options(cfg: SweepConfig, space: SearchSpace, context: Mapping[str, Any]) -> dict[str, Any]:
    """What every trial of the study shares, so that its trials are comparable; recorded in the study.

    Parameters
    ----------
    cfg : SweepConfig
        The sweep.
    space : SearchSpace
        Its search space (searched parameters are not fixed).
    context : Mapping
        The front end's option values from the space's ``fixed`` section and the arguments after ``--``
        (``-c config.yaml`` included), as :func:`prepare` returns them.

    Returns
    -------
    dict
        ``{"front_end": name, "trial_seed": seed, "options": {"--option": value}}``: the options whose value
        differs from the front end's default, except the searched ones, those the sweep sets per trial
        (``--out``, the seed) and the progress switches; values as JSON stores them (paths as strings).
    """
    import json

    def as_json(value: Any) -> Any:
        return json.loads(json.dumps(value, default=str))

    skipped = {*space.params, "out", cfg.spec.seed_option, *cfg.spec.quiet}
    options = {}
    for dest, action in parser_actions(cfg.spec.load().build_parser()).items():  # a parser with its own defaults
        if dest in skipped or dest not in context:
            continue
        value = as_json(context[dest])
        if value != as_json(action.default):
            options[max(action.option_strings, key=len)] = value
    return {"front_end": cfg.front_end, "trial_seed": cfg.trial_seed, "options": dict(sorted(options.items()))}


def fixed_option_differences(recorded: Mapping[str, Any], fixed: Mapping[str, Any]) -> list[str]:
    """How ``fixed`` (this worker's :func:`fixed_options`) differs from those ``recorded`` in the study.

    Parameters
    ----------
    recorded, fixed : Mapping
        Two results of :func:`fixed_options`.

    Returns
    -------
    list of str
        One line per differing option, ``"--epochs: 1 in the study, 3 now"``; empty when they agree.
    """
    def shown(values: Mapping[str, Any], key: str) -> str:
        return json_text(values[key]) if key in values else "the front end's default"

    lines = [f"{label}: {json_text(recorded.get(key))} in the study, {json_text(fixed.get(key))} now"
             for key, label in (("front_end", "front end"), ("trial_seed", "--trial-seed"))
             if recorded.get(key) != fixed.get(key)]
    old, new = recorded.get("options") or {}, fixed.get("options") or {}
    lines += [f"{name}: {shown(old, name)} in the study, {shown(new, name)} now"
              for name in sorted(set(old) | set(new)) if old.get(name, ...) != new.get(name, ...)]
    return lines


def json_text(value: Any) -> str:
    """``value`` as a command line shows it: lists space-separated, everything else as JSON would."""
    import json

    if isinstance(value, list):
        return " ".join(json_text(v) for v in value)
    return value if isinstance(value, str) else json.dumps(value)


def check_fixed_options(study: optuna.Study, fixed: Mapping[str, Any], cfg: SweepConfig) -> None:
    """Record ``fixed`` in a study that has none; raise :class:`SweepError` if the study's differ.

    Parameters
    ----------
    study : optuna.Study
        The sweep's study.
    fixed : Mapping
        This worker's :func:`fixed_options`.
    cfg : SweepConfig
        The sweep (for the message).

    Raises
    ------
    SweepError
        When the study was run with other fixed options: its trials and this worker's would not be
        comparable, and ``best.json`` would pick across them.
    """
    recorded = study.user_attrs.get("fixed_options")
    if recorded is None:
        study.set_user_attr("fixed_options", dict(fixed))
        # a worker that started at the same moment with other options may have written in between
        recorded = study.user_attrs.get("fixed_options")
    differences = fixed_option_differences(recorded, fixed)
    if differences:
        where = redact(describe_storage(cfg.storage, cfg.out)[1])
        raise SweepError(f"study {cfg.study_name!r} in {where} was run with other fixed options than this "
                         "worker's, so their trials would not be comparable:\n  " + "\n  ".join(differences)
                         + "\nresume it with the same options (after -- , in the space's 'fixed' section and "
                           "--trial-seed), or start a new study with another --study-name or --out")


def _dest_of(token: str, actions: Mapping[str, argparse.Action]) -> str | None:
    if not token.startswith("--"):
        return None
    option = token.split("=", 1)[0]
    for dest, action in actions.items():
        if option in action.option_strings:
            return dest
    return None


def _parse(parser: argparse.ArgumentParser, argv: list[str], where: str, parse: Any) -> dict[str, Any]:
    buffer = io.StringIO()
    try:
        with contextlib.redirect_stderr(buffer):
            return vars(parse(parser, argv))
    except SystemExit:
        message = buffer.getvalue().strip().splitlines()
        raise SweepError(f"{parser.prog} rejects the trial options {argv} (from {where} and the arguments after "
                         f"--): {message[-1] if message else 'see --help'}") from None


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


# -- command line --------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    """The sweep's command-line options (front-end options go after ``--``)."""
    d = SweepConfig(front_end="abide", out=Path("."))
    p = argparse.ArgumentParser(prog="python -m pmrl_sci.sweep", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Arguments after -- go to the front end of every trial, e.g. "
                                       "python -m pmrl_sci.sweep abide --n-trials 50 -- --epochs 100 --seeds 3")
    p.add_argument("front_end", choices=sorted(FRONT_ENDS), help="the front end whose main() each trial runs")
    p.add_argument("--out", type=Path, default=None, help="sweep folder: study.db, trials/, best.json "
                                                          "(default runs/sweep-<front end>; rerun to resume)")
    p.add_argument("--n-trials", type=int, default=d.n_trials,
                   help="total finished (complete + pruned) trials of the study, over all workers")
    p.add_argument("--storage", default=None,
                   help="journal:///path/file.log or a path ending in .log (several workers on one host), or a "
                        "database URL: sqlite:///path.db, postgresql://user@host:port/db (workers on many hosts); "
                        "default sqlite:///<out>/study.db")
    p.add_argument("--study-name", default=None, help="study name (default: the front end's name)")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of the TPE sampler")
    p.add_argument("--trial-seed", type=int, default=d.trial_seed, help="training seed given to every trial")
    p.add_argument("--space", type=Path, default=None,
                   help="YAML search space: params (type/low/high/log/choices/when) and fixed front-end options")
    p.add_argument("--pruner", choices=PRUNERS, default=d.pruner, help="pruning on the per-epoch validation reports")
    p.add_argument("--pruner-startup", type=int, default=d.pruner_startup,
                   help="median: trials that complete before pruning starts")
    p.add_argument("--pruner-warmup", type=int, default=d.pruner_warmup,
                   help="median / threshold: reported epochs before a trial can be pruned")
    p.add_argument("--prune-below", type=float, default=None,
                   help="threshold: prune a trial as soon as its reported metric is below this value")
    p.add_argument("--startup-trials", type=int, default=d.startup_trials, help="TPE: random trials first")
    p.add_argument("--report-metric", default=None,
                   help="per-epoch metric used for pruning (default val_auc for abide, val_oa for houston13, "
                        "val_mean_R@1 for retrieval)")
    p.add_argument("--heartbeat", type=int, default=d.heartbeat,
                   help="database storages: seconds between a running trial's heartbeats")
    p.add_argument("--grace", type=int, default=None,
                   help="database storages: seconds without heartbeat before a trial is failed (default 2x heartbeat)")
    p.add_argument("--retry-stale", type=int, default=d.retry_stale,
                   help="database storages: times a trial whose worker died is re-queued with the same parameters")
    p.add_argument("--max-failures", type=int, default=d.max_failures,
                   help="this worker stops after so many consecutive failed trials")
    p.add_argument("--poll", type=float, default=d.poll,
                   help="seconds between checks while the study's last trials run on other workers")
    p.add_argument("--trial-progress", action="store_true", help="keep the front end's progress bars in trials")
    return p


def parse_config(argv: Sequence[str] | None = None) -> SweepConfig:
    """Parse ``[front end] [options] [-c config.yaml] [-- front-end args]`` into a :class:`SweepConfig`."""
    from pmrl_sci.config import parse_args_with_config

    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1:]
    parser = build_parser()
    args = parse_args_with_config(parser, argv)
    values = {k: v for k, v in vars(args).items() if k != "config"}
    values["out"] = values["out"] or Path("runs") / f"sweep-{args.front_end}"
    try:
        return SweepConfig(**values, extra=extra)
    except SweepError as exc:
        parser.error(str(exc))
        raise  # unreachable


def main(argv: Sequence[str] | None = None) -> dict[str, Any] | None:
    """Run a sweep worker from the command line; returns ``best.json``'s content (None if it gave up)."""
    cfg = parse_config(argv)
    try:
        best = run_sweep(cfg)
    except (SweepError, SpaceError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    if best is None:
        raise SystemExit(1)
    return best


if __name__ == "__main__":
    main()

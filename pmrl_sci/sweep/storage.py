"""Study storage of a sweep: storage specifications, database engines with bounded connection pools, opening and
closing them, and failing the trials of workers that died (journal files, which have no heartbeats)."""

from __future__ import annotations

import contextlib
import inspect
import os
import socket
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pmrl_sci.extras import require
from pmrl_sci.sweep.config import SweepConfig, SweepError

optuna = require("optuna", "sweep", "Optuna sweeps")
TrialState = optuna.trial.TrialState


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


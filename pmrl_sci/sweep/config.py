"""What a sweep worker is told: the front ends it can drive (:data:`FRONT_ENDS`, the options they share) and its
:class:`SweepConfig`."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any


class SweepError(RuntimeError):
    """A sweep that cannot start (bad storage, space or front-end options); the message says what to fix."""


@dataclass(frozen=True)
class FrontEnd:
    """How the sweep drives one front end: what differs between front ends.

    The options every front end has and the sweep sets are :data:`SEED_OPTION` and :data:`QUIET_OPTIONS`.

    Parameters
    ----------
    name : str
        Command name (``abide``, ``houston13``, ``retrieval``).
    module : str
        Module with ``build_parser()`` and ``main(argv) -> dict``.
    report_metric : str
        Key of the per-epoch validation metrics used for pruning (the default of ``--report-metric``).
    test_keys : tuple of str
        Keys of ``results.json`` copied to ``best.json`` as the best trial's test metrics.
    """

    name: str
    module: str
    report_metric: str
    test_keys: tuple[str, ...] = ()

    def load(self) -> Any:
        """The front-end module."""
        return importlib.import_module(self.module)


FRONT_ENDS: dict[str, FrontEnd] = {
    "abide": FrontEnd("abide", "pmrl_sci.abide", report_metric="val_auc",
                      test_keys=("auc", "accuracy", "sensitivity", "specificity")),
    "houston13": FrontEnd("houston13", "pmrl_sci.houston13", report_metric="val_oa", test_keys=("oa", "aa", "kappa")),
    "retrieval": FrontEnd("retrieval", "pmrl_sci.retrieval", report_metric="val_mean_R@1",
                          test_keys=("mean_R@1", "mean_R@10", "recall")),
}
# Options every front end has (pmrl_sci.options.add_run_options), as destinations: the training seed (--seed, the
# first seed), which the sweep sets to --trial-seed in every trial, and the values that turn the progress bars off
# inside trials (--no-progress) unless --trial-progress.
SEED_OPTION = "seed"
QUIET_OPTIONS: Mapping[str, Any] = MappingProxyType({"progress": False})
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


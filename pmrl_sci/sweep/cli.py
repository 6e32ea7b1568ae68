"""The command line of a sweep worker: ``python -m pmrl_sci.sweep`` and the ``pmrl-sweep`` script."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pmrl_sci.sweep.config import FRONT_ENDS, PRUNERS, SweepConfig, SweepError
from pmrl_sci.sweep.worker import run_sweep
from pmrl_sci.sweep_spaces import SpaceError


def build_parser() -> argparse.ArgumentParser:
    """The sweep's command-line options (front-end options go after ``--``)."""
    from pmrl_sci import sweep  # its docstring describes the sweep

    d = SweepConfig(front_end="abide", out=Path("."))
    p = argparse.ArgumentParser(prog="python -m pmrl_sci.sweep", description=sweep.__doc__,
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
                   help="per-epoch metric used for pruning (default " + ", ".join(
                       f"{spec.report_metric} for {name}" for name, spec in FRONT_ENDS.items()) + ")")
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

"""Wall time of the default ABIDE command over K folds against a time budget, and what dominates it.

Runs ``python -m pmrl_sci.abide`` with its defaults and ``--folds K`` (default 5) on a real ABIDE root (or the
embedded cohort without ``--data-dir``) twice in one process, each time into a fresh run folder:

1. plain, for the wall time, printed with its ratio to ``--budget`` (default 1800 s: 30 minutes);
2. under :mod:`cProfile`, for the share of that time spent in each part of the run (cohort loading, per-unit
   preparation with ComBat, forward and backward passes, optimiser steps, validation, the late fusion's logistic
   regression, checkpoint writes).
   The profiled run is slower than the plain one; the shares are what it reports.

The preprocessed cohort is read from the cache in both runs when it is there (the first run of the default
command fills it: ``--cold`` empties a private cache first so that the plain run includes preprocessing).

    python benchmarks/bench_abide_default.py --threads 2 --data-dir ~/data/abide-dev --atlas ho \\
        --freesurfer-dir ~/data/abide-dev/freesurfer
    python benchmarks/bench_abide_default.py --threads 2 --no-profile   # the embedded cohort, wall time only
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import tempfile
import time
from pathlib import Path

import torch

#: (label, file suffix, function name): cumulative time of these functions, as shares of the profiled run
PARTS = [
    ("load the cohort (cache hit or preprocessing)", "data/abide/cohort.py", "load_abide_cohort"),
    ("prepare each unit (split arrays, ComBat, standardisation)", "tasks/abide_data.py", "prepare_split_arrays"),
    ("training steps: forward and loss", "tasks/abide.py", "batch_loss"),
    ("training steps: backward", "torch/_tensor.py", "backward"),
    ("training steps: optimiser", "torch/optim/optimizer.py", "wrapper"),
    ("validation and test passes", "tasks/abide_model.py", "evaluate"),
    ("late fusion: logistic regression on every input (--fusion logistic)", "tasks/abide_fit.py",
     "fusion_partner"),
    ("checkpoint writes (resume state every epoch, selected models)", "pmrl_sci/runs.py", "save_checkpoint"),
    ("best-state snapshots", "engine/state.py", "detached_state"),
]


def _cumulative(stats: pstats.Stats, suffix: str, name: str) -> float:
    """Cumulative seconds of the outermost calls of ``name`` in a file ending with ``suffix``."""
    total = 0.0
    for (filename, _, function), (_, _, _, cumulative, _) in stats.stats.items():  # type: ignore[attr-defined]
        if function == name and filename.endswith(suffix):
            total += cumulative
    return total


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=None, help="ABIDE root (default: the embedded cohort)")
    parser.add_argument("--atlas", default=None)
    parser.add_argument("--freesurfer-dir", default=None)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--budget", type=float, default=1800.0, help="seconds allowed (default 30 minutes)")
    parser.add_argument("--cold", action="store_true", help="preprocess from the files (a private empty cache)")
    parser.add_argument("--no-profile", dest="profile", action="store_false", help="wall time only")
    args, extra = parser.parse_known_args(argv)
    torch.set_num_threads(args.threads)

    from pmrl_sci.abide import main as abide_main

    command = ["--folds", str(args.folds), "--no-progress", *extra]
    for option in ("data_dir", "atlas", "freesurfer_dir"):
        if getattr(args, option) is not None:
            command += [f"--{option.replace('_', '-')}", str(getattr(args, option))]
    with tempfile.TemporaryDirectory() as tmp:
        if args.cold:
            command += ["--cache-dir", str(Path(tmp) / "cache")]
        start = time.perf_counter()
        results = abide_main([*command, "--out", str(Path(tmp) / "plain")])
        wall = time.perf_counter() - start
        epochs = [u["best_epoch"] for u in results["units"]]
        print(f"torch {torch.__version__}, {args.threads} threads; python -m pmrl_sci.abide {' '.join(command)}")
        print(f"| run | seconds | budget (s) | ratio to budget |\n|---|---|---|---|\n"
              f"| default command, {len(results['units'])} units | {wall:.0f} | {args.budget:.0f} | "
              f"{wall / args.budget:.2f} |")
        print(f"units: {results['n_subjects']} subjects; selected epochs {epochs}")
        shares: dict[str, float] = {}
        if args.profile:
            profiler = cProfile.Profile()
            start = time.perf_counter()
            profiler.runcall(abide_main, [*command, "--out", str(Path(tmp) / "profiled")])
            profiled = time.perf_counter() - start
            stats = pstats.Stats(profiler)
            print(f"\nprofiled run: {profiled:.0f} s (profiling overhead included)\n| part | seconds | share |\n"
                  "|---|---|---|")
            for label, suffix, name in PARTS:
                seconds = _cumulative(stats, suffix, name)
                shares[label] = seconds / profiled
                print(f"| {label} | {seconds:.1f} | {seconds / profiled:.0%} |")
        return {"wall_s": wall, "budget_s": args.budget, "ratio": wall / args.budget, "shares": shares}


if __name__ == "__main__":
    main()

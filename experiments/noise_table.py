"""ABIDE noise robustness (the paper's Table 10): VAST, GRAM and PMRL under input noise and label noise.

Input noise: Gaussian noise of standard deviation S added to every modality's normalised inputs
(train and test; ``--input-noise``). Label noise: each training label flipped with probability P
(``--label-noise``). Both are seeded by the trial seed (:mod:`pmrl_sci.noise`). One front-end
run per method and condition in ``<out>/<condition>/<method>`` (``clean``, ``input-0.4``,
``label-0.3``...), on the same seeds and splits.

Writes ``<out>/table.md`` / ``table.csv`` for S = ``--input-noise-level`` (0.4) and P =
``--label-noise-level`` (0.3), with the paper's numbers alongside. With ``--levels`` it also
sweeps S over ``--input-levels`` and P over ``--label-levels`` (0 = the clean run, shared by
both sweeps), writes ``sweep.md`` / ``sweep.csv`` and plots AUC and accuracy against the level
(``noise_curves.png``). Rerunning with the same ``--out`` resumes.

Example::

    python experiments/noise_table.py --out runs/noise --data-dir /data/ABIDE
    python experiments/noise_table.py --out runs/noise --levels --data-dir /data/ABIDE
    python experiments/noise_table.py --quick --out runs/noise-smoke
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from pmrl_sci.reports.tables import (
    TableRow,
    check_same_units,
    collect_table,
    write_table,
)
from pmrl_sci.tasks.abide_methods import (
    PAPER_PRESET,
    Method,
    MethodOutcome,
    describe_methods,
    experiment_parser,
    outcome_notes,
    report_outcomes,
    run_methods,
    shared_front_end_args,
)

#: method -> (row label, front-end options). "pmrl" is the paper's L_M (the form the paper's numbers are for);
#: "pmrl-sign-aware" is the kit's sign-aware L_M, labelled as such.
OBJECTIVES = {
    "vast": ("VAST", ["--objective", "vast"]),
    "gram": ("GRAM", ["--objective", "gram"]),
    "pmrl": ("PMRL (paper L_M)", ["--objective", "pmrl", "--no-sign-aware"]),
    "pmrl-sign-aware": ("PMRL (sign-aware L_M)", ["--objective", "pmrl", "--sign-aware"]),
}

#: The paper's Table 10 (AUC / ACC, %) at S = 0.4 and P = 0.3.
PAPER_TABLE10 = {
    ("VAST", "input", "0.4"): {"AUC": "71.5", "ACC": "64.4"},
    ("GRAM", "input", "0.4"): {"AUC": "61.0", "ACC": "57.4"},
    ("PMRL (paper L_M)", "input", "0.4"): {"AUC": "79.2", "ACC": "66.2"},
    ("VAST", "label", "0.3"): {"AUC": "72.9", "ACC": "66.4"},
    ("GRAM", "label", "0.3"): {"AUC": "50.0", "ACC": "57.1"},
    ("PMRL (paper L_M)", "label", "0.3"): {"AUC": "77.2", "ACC": "70.3"},
}

METRICS = {"auc": "AUC", "accuracy": "ACC"}


def condition_methods(kind: str, level: float, objectives: Sequence[str]) -> list[Method]:
    """The runs of one noise condition (``kind`` "input" or "label"; level 0 is the clean run)."""
    if kind not in ("input", "label"):
        raise ValueError(f"noise kind must be 'input' or 'label', got {kind!r}")
    if level < 0 or (kind == "label" and level > 1):
        raise ValueError(f"{kind} noise level must be >= 0{' and <= 1' if kind == 'label' else ''}, got {level}")
    folder = "clean" if level == 0 else f"{kind}-{level:g}"
    flags = [] if level == 0 else [f"--{kind}-noise", f"{level:g}"]
    return [Method(f"{folder}/{objective}", OBJECTIVES[objective][0], [*OBJECTIVES[objective][1], *flags],
                   columns={"noise": kind, "level": f"{level:g}"}) for objective in objectives]


def condition_rows(conditions: Sequence[tuple[str, float]], outcomes: Sequence[MethodOutcome],
                   objectives: Sequence[str]) -> list[TableRow]:
    """Table rows of the finished runs of ``conditions`` (the clean run appears under each kind)."""
    by_name = {o.method.name: o for o in outcomes}
    rows = []
    for kind, level in conditions:
        for method in condition_methods(kind, level, objectives):
            outcome = by_name.get(method.name)
            if outcome is not None and outcome.status == "done":
                rows.append(TableRow(method.label, outcome.path, {"noise": kind, "level": f"{level:g}"}))
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    """Run the noise study; returns the exit status (1 when a run failed)."""
    parser = experiment_parser(__doc__, "runs/abide-noise")
    parser.add_argument("--input-noise-level", type=float, default=0.4, help="S of the main table")
    parser.add_argument("--label-noise-level", type=float, default=0.3, help="P of the main table")
    parser.add_argument("--levels", action="store_true", help="also sweep the levels below and plot curves")
    parser.add_argument("--input-levels", type=float, nargs="+", default=[0.0, 0.2, 0.4, 0.6, 0.8])
    parser.add_argument("--label-levels", type=float, nargs="+", default=[0.0, 0.1, 0.2, 0.3, 0.4])
    args, forward = parser.parse_known_args(argv)
    objectives = args.methods or list(OBJECTIVES)
    unknown = [m for m in objectives if m not in OBJECTIVES]
    if unknown:
        parser.error(f"--methods: unknown {unknown}; expected some of {list(OBJECTIVES)}")
    conditions = [("input", args.input_noise_level), ("label", args.label_noise_level)]
    if args.levels:
        conditions += [("input", s) for s in args.input_levels] + [("label", p) for p in args.label_levels]
    methods: list[Method] = []
    seen: set[str] = set()
    try:
        for kind, level in conditions:
            for method in condition_methods(kind, level, objectives):
                if method.name not in seen:  # the clean run is shared by both sweeps
                    seen.add(method.name)
                    methods.append(method)
        shared = shared_front_end_args(args, forward, PAPER_PRESET)
    except ValueError as exc:
        parser.error(str(exc))
    if args.list:
        print(describe_methods(methods))
        return 0
    outcomes = run_methods(methods, args.out, shared)
    notes = outcome_notes(outcomes)
    main_rows = condition_rows(conditions[:2], outcomes, objectives)
    written = []
    if main_rows:
        table = collect_table(main_rows, tuple(METRICS))
        written += write_table(table, args.out, "table", title="ABIDE under noise (test set)", extra=("noise", "level"),
                               metrics=METRICS, reference=PAPER_TABLE10,
                               notes=notes + [f"different splits: {p}" for p in check_same_units(main_rows)])
    if args.levels:
        sweep_conditions = [("input", s) for s in sorted(set(args.input_levels))]
        sweep_conditions += [("label", p) for p in sorted(set(args.label_levels))]
        sweep_rows = condition_rows(sweep_conditions, outcomes, objectives)
        if sweep_rows:
            sweep = collect_table(sweep_rows, tuple(METRICS))
            written += write_table(sweep, args.out, "sweep", title="ABIDE noise sweep (test set)",
                                   extra=("noise", "level"), metrics=METRICS, notes=notes)
            if args.figures:
                from pmrl_sci.reports.spectral_analysis import plot_metric_curves
                from pmrl_sci.runs import RunFolder

                path = plot_metric_curves(sweep, RunFolder(Path(args.out)), x="level", panel="noise", metrics=METRICS,
                                          xlabel="noise level")
                print(f"[experiment] curves: {path}")
    status = report_outcomes(outcomes)
    for path in written:
        print(f"[experiment] wrote {path}")
    return status


if __name__ == "__main__":
    sys.exit(main())

"""ABIDE benchmark (the paper's Table 4): baselines, VAST, GRAM and PMRL on the same splits and seeds.

Runs ``python -m pmrl_sci.abide`` once per method, each in ``<out>/<method>``, with the same
``--seeds`` and ``--seed-offset`` (so the same BrainNetTF 70/10/20 splits), then writes
``<out>/table.md`` and ``<out>/table.csv`` (AUC, accuracy, sensitivity, specificity: mean ± std
over trials; the paper's AUC/ACC alongside) and the spectral analysis figures of the
multimodal methods in ``<out>/figures``. Rerunning with the same ``--out`` resumes.

Example::

    python experiments/abide_table.py --out runs/table4 --data-dir /data/ABIDE --freesurfer-dir /data/fs
    python experiments/abide_table.py --quick --out runs/table4-smoke
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from pmrl_sci.experiments import (
    Method,
    describe_methods,
    experiment_parser,
    report_outcomes,
    run_methods,
    select_methods,
    shared_front_end_args,
    write_outcome_table,
)

#: The paper's Table 4 (AUC / ACC, %), shown next to the measured numbers.
PAPER_TABLE4 = {
    "BrainNetTF": {"AUC": "78.7", "ACC": "70.6"},
    "VanillaTF": {"AUC": "76.1", "ACC": "68.2"},
    "BrainNetCNN": {"AUC": "73.6", "ACC": "67.9"},
    "GCN": {"AUC": "60.0", "ACC": "56.8"},
    "VAST": {"AUC": "79.2", "ACC": "71.8"},
    "GRAM": {"AUC": "63.9", "ACC": "60.6"},
    "PMRL": {"AUC": "80.5", "ACC": "73.2"},
}

_BASELINE = ("--model",)
METHODS = [
    Method("brainnettf", "BrainNetTF", ["--model", "brainnettf", "--objective", "none"], _BASELINE),
    Method("vanillatf", "VanillaTF", ["--model", "vanillatf", "--objective", "none"], _BASELINE),
    Method("brainnetcnn", "BrainNetCNN", ["--model", "brainnetcnn", "--objective", "none"], _BASELINE),
    Method("gcn", "GCN", ["--model", "gcn", "--objective", "none"], _BASELINE),
    Method("logistic", "Logistic regression", ["--model", "logistic", "--objective", "none"], _BASELINE),
    Method("vast", "VAST", ["--objective", "vast"]),
    Method("gram", "GRAM", ["--objective", "gram"]),
    Method("pmrl", "PMRL", ["--objective", "pmrl"]),
]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; returns the exit status (1 when a method failed)."""
    parser = experiment_parser(__doc__, "runs/abide-table4")
    args, forward = parser.parse_known_args(argv)
    try:
        methods = select_methods(METHODS, args.methods)
        shared = shared_front_end_args(args, forward)
    except ValueError as exc:
        parser.error(str(exc))
    if args.list:
        print(describe_methods(methods))
        return 0
    outcomes = run_methods(methods, args.out, shared)
    written = write_outcome_table(outcomes, args.out, "table", title="ABIDE: autism vs control (test set)",
                                  reference=PAPER_TABLE4)
    if written and args.figures:
        from pmrl_sci.analysis import analyse_runs

        report = analyse_runs({o.method.label: o.path for o in outcomes if o.status == "done"},
                              Path(args.out) / "figures")
        for figure, reason in report.missing.items():
            print(f"[experiment] figure {figure} not written: {reason}")
    status = report_outcomes(outcomes)
    if written:
        print(f"[experiment] table: {written[0]} and {written[1]}")
    return status


if __name__ == "__main__":
    sys.exit(main())

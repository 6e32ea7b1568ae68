"""ABIDE same-run comparison: the default multimodal command against its baselines, paired over the same units.

Runs ``python -m pmrl_sci.abide`` once per method, each in ``<out>/<method>``, on the same K folds
(``--folds``, default 5; 2 with ``--quick``) and seeds (``--seeds``, ``--seed``), so that every method sees
identical train/validation/test subjects in each unit (seed x fold):

- the default multimodal command (fMRI + sMRI + text, sign-aware PMRL, its probabilities averaged with logistic
  regression's on every input: ``--fusion logistic``): the **reference** row;
- the same multimodal model alone (``--fusion none``);
- the paper's setting (``--setting paper``: PMRL with the paper's L_M and weights, L = CE + L_M + lambda1 L_M',
  tau1 0.05, tau2 0.4, lambda1 1; BrainNetTF on Pearson and partial correlation; text "age, gender"; threshold
  0.5 unless a ``--threshold`` is passed to every run);
- the same model with cross-entropy and no alignment (``--objective none``), fused as the default is, and alone
  (``--objective none --fusion none``);
- fMRI alone with cross-entropy (``--modalities fmri --objective none``; fused as the default is, with logistic
  regression on connectivity);
- logistic regression on vectorised connectivity (``--model logistic``);
- logistic regression on every input the multimodal model sees (``--model logistic-all``: connectivity,
  FreeSurfer features harmonised with ComBat fitted on training subjects only, the text's phenotype fields
  as numbers; C chosen on validation).

Then writes ``<out>/compare.md`` and ``<out>/compare.csv``: AUC, accuracy, sensitivity, specificity (mean ±
std over units), the selected epoch's validation singular values where the model has them, the decision
thresholds, and each method's paired difference against the reference with a 95% corrected resampled t
interval over the unit differences (Nadeau & Bengio 2003: folds of one seed share training subjects; see
:func:`pmrl_sci.reports.compare.paired_difference`). Any other option (``--threshold val``,
``--data-dir``, ``--text-fields``, ``--epochs``...) goes to every run. Rerunning with the same ``--out`` resumes.

Example::

    python experiments/abide_compare.py --data-dir /data/ABIDE --atlas ho --freesurfer-dir /data/ABIDE/freesurfer \\
        --folds 5 --seeds 3 --threshold val --out runs/compare
    python experiments/abide_compare.py --quick --out runs/compare-smoke
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from pmrl_sci.reports.compare import compare_table, write_compare_table
from pmrl_sci.reports.tables import TableRow, check_same_units
from pmrl_sci.tasks.abide_methods import (
    Method,
    experiment_parser,
    outcome_notes,
    report_outcomes,
    run_methods,
    select_methods,
    shared_front_end_args,
)

REFERENCE = "Multimodal (default command)"
METHODS = [
    Method("multimodal", REFERENCE, []),
    Method("pmrl-paper", "PMRL, the paper's setting (paper L_M, BrainNetTF)", ["--setting", "paper"]),
    Method("multimodal-alone", "Multimodal model alone (--fusion none)", ["--fusion", "none"]),
    Method("ce-only", "Multimodal, cross-entropy only", ["--objective", "none"]),
    Method("ce-only-alone", "Multimodal, cross-entropy only, alone (--fusion none)",
           ["--objective", "none", "--fusion", "none"]),
    Method("fmri-ce", "fMRI alone, cross-entropy", ["--modalities", "fmri", "--objective", "none"]),
    Method("logistic", "Logistic regression (connectivity)", ["--model", "logistic"], ("--model",)),
    Method("logistic-all", "Logistic regression (all inputs)", ["--model", "logistic-all"], ("--model",)),
]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the comparison; returns the exit status (1 when a method failed)."""
    parser = experiment_parser(__doc__, "runs/abide-compare")
    parser.add_argument("--folds", type=int, default=None, help="K folds per seed (default 5; 2 with --quick)")
    args, forward = parser.parse_known_args(argv)
    try:
        methods = select_methods(METHODS, args.methods)
        folds = args.folds if args.folds is not None else (2 if args.quick else 5)
        if folds < 2:
            raise ValueError(f"--folds must be >= 2, got {folds}")
        shared = shared_front_end_args(args, [*forward, "--folds", str(folds)])
    except ValueError as exc:
        parser.error(str(exc))
    if args.list:
        from pmrl_sci.tasks.abide_methods import describe_methods

        print(describe_methods(methods))
        return 0
    outcomes = run_methods(methods, args.out, shared)
    done = [TableRow(o.method.label, o.path) for o in outcomes if o.status == "done"]
    status = report_outcomes(outcomes)
    if not any(row.method == REFERENCE for row in done):
        print(f"[experiment] no table: the reference ({REFERENCE}) did not finish")
        return 1
    notes = outcome_notes(outcomes) + [f"different splits: {p}" for p in check_same_units(done)]
    table = compare_table(done, REFERENCE)
    md, csv = write_compare_table(table, Path(args.out), REFERENCE, title="ABIDE: same-run comparison (test units)",
                                  notes=notes)
    print(f"[experiment] table: {md} and {csv}")
    return status


if __name__ == "__main__":
    sys.exit(main())

"""ABIDE: how much a result owes to one initialisation, and a deep ensemble over initialisations.

Runs, each in ``<out>/<method>``, on identical splits: the multimodal PMRL model and the same model with
cross-entropy alone (``--objective none``), each alone (``--fusion none``), at ``--init-offset 0 .. N-1`` (the same
units, each trained from N initialisations and batch orders), and logistic regression on every input once (it is
deterministic). Then writes ``<out>/init.md`` and ``<out>/init.csv``: per row the test AUC (mean and std over
units) and its paired difference from logistic regression on every input, with a 95% corrected resampled t
interval over units (Nadeau & Bengio; see :func:`pmrl_sci.reports.compare.paired_difference`), and for the PMRL
rows their paired difference from the matching cross-entropy row. The rows "ensemble of N initialisations" average
each unit's test probabilities over the N runs (a deep ensemble) before computing its AUC. The rows "+ logistic
regression" average each unit's test probabilities of that row's model (or ensemble) with logistic regression's on
every input at equal weights: what ``--fusion logistic`` (the default command) reports, to the same probabilities.
AUC only, since no threshold was chosen for these averages. Options it does not know go to every run; a rerun
resumes.

    python experiments/abide_init.py --data-dir ~/data/abide-dev --atlas ho \\
        --freesurfer-dir ~/data/abide-dev/freesurfer --seeds 3 --inits 3 --out runs/init
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from pmrl_sci.io import atomic_write_text
from pmrl_sci.metrics import binary_classification_metrics
from pmrl_sci.reports.compare import frame_markdown, interval_note, paired_unit_table, unit_size_ratio
from pmrl_sci.reports.tables import read_results
from pmrl_sci.tasks.abide_fit import late_fusion
from pmrl_sci.tasks.abide_methods import (
    Method,
    describe_methods,
    experiment_parser,
    report_outcomes,
    run_methods,
    select_methods,
    shared_front_end_args,
)

REFERENCE = "Logistic regression, all inputs"
#: the model families run at every initialisation: (folder prefix, row label, front-end options)
FAMILIES = (("pmrl", "PMRL", ["--fusion", "none"]),
            ("ce", "Cross-entropy alone", ["--objective", "none", "--fusion", "none"]))
#: the late fusion of a row's model with logistic regression on every input (what ``--fusion logistic`` reports)
FUSED = " + logistic regression"


def init_methods(inits: int) -> list[Method]:
    """PMRL and cross-entropy alone, unfused, at ``--init-offset 0 .. inits - 1``, then the reference."""
    methods = [Method(f"{prefix}-init{i}", f"{label}, --init-offset {i}", [*args, "--init-offset", str(i)])
               for prefix, label, args in FAMILIES for i in range(inits)]
    return [*methods, Method("logistic-all", REFERENCE, ["--model", "logistic-all"], ("--model",))]


def unit_predictions(folder: Path) -> dict[str, tuple[list[int], np.ndarray, np.ndarray]]:
    """``{unit: (test subjects, labels, probabilities)}`` from the finished units of a run folder."""
    out = {}
    for file in sorted((folder / "done").glob("*.json")):
        result = json.loads(file.read_text(encoding="utf-8"))
        predictions = result["predictions"]
        out[str(result["unit"])] = (list(predictions["subject"]), np.asarray(predictions["label"]),
                                    np.asarray(predictions["prob"], dtype=float))
    return out


def ensemble_auc(runs: Sequence[Mapping[str, tuple[list[int], np.ndarray, np.ndarray]]],
                 linear: Mapping[str, tuple[list[int], np.ndarray, np.ndarray]] | None = None) -> dict[str, float]:
    """Per unit, the test AUC of the probabilities averaged over ``runs`` (units every run holds); with ``linear``,
    of that average fused with ``linear``'s probabilities (:func:`~pmrl_sci.tasks.abide_fit.late_fusion`, what
    ``--fusion logistic`` reports).

    Raises
    ------
    ValueError
        When the runs tested a unit on different subjects (they were not run on the same splits).
    """
    units = sorted(set.intersection(*(set(r) for r in runs))) if runs else []
    out = {}
    for unit in units:
        subjects, labels, _ = runs[0][unit]
        if any(r[unit][0] != subjects for r in runs) or (linear is not None and linear[unit][0] != subjects):
            raise ValueError(f"unit {unit}: the runs tested different subjects; they are not on the same splits")
        prob = np.mean([r[unit][2] for r in runs], axis=0)
        if linear is not None:
            prob = late_fusion(prob, linear[unit][2])
        out[unit] = binary_classification_metrics(labels, prob)["auc"]
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Run the initialisation study; returns the exit status (1 when a run failed)."""
    parser = experiment_parser(__doc__, "runs/abide-init")
    parser.add_argument("--inits", type=int, default=3, help="initialisations per model (default 3)")
    args, forward = parser.parse_known_args(argv)
    if args.inits < 1:
        parser.error(f"--inits must be >= 1, got {args.inits}")
    try:
        shared = shared_front_end_args(args, forward)
        methods = select_methods(init_methods(args.inits), args.methods)
    except ValueError as exc:
        parser.error(str(exc))
    if args.list:
        print(describe_methods(methods))
        return 0
    outcomes = run_methods(methods, args.out, shared)
    status = report_outcomes(outcomes)
    if any(o.status != "done" for o in outcomes):
        print("[experiment] no table: not every run finished")
        return 1
    if len(methods) < len(init_methods(args.inits)):
        print("[experiment] no table: it needs every method; rerun without --methods (finished runs are reused)")
        return status
    folders = {o.method.name: o.path for o in outcomes}
    linear = unit_predictions(folders["logistic-all"])
    rows: dict[str, dict[str, float]] = {}
    for fused in (None, linear):
        for prefix, label, _ in FAMILIES:
            runs = [unit_predictions(folders[f"{prefix}-init{i}"]) for i in range(args.inits)]
            name = label if fused is None else label + FUSED
            for i, run in enumerate(runs):
                rows[f"{name}, --init-offset {i}"] = ensemble_auc([run], fused)
            if args.inits > 1:
                rows[f"{name}, ensemble of {args.inits} initialisations"] = ensemble_auc(runs, fused)
    rows[REFERENCE] = ensemble_auc([linear])
    (_, default, _), (_, ce, _) = FAMILIES
    partners = {label: label.replace(default, ce, 1) for label in rows if label.startswith(default)}
    ratio = unit_size_ratio(read_results(folders["logistic-all"]))
    table = paired_unit_table(rows, REFERENCE, partners,
                              partner_title="the same initialisation(s) of cross-entropy alone",
                              test_train_ratio=ratio)
    out = Path(args.out)
    atomic_write_text(out / "init.csv", table.to_csv())
    atomic_write_text(out / "init.md", "# ABIDE: initialisations and their ensemble (test AUC, %)\n\n"
                      + frame_markdown(table) + f"\n> Δ: mean paired difference with a {interval_note(ratio)}\n")
    print(table.to_string())
    print(f"[experiment] table: {out / 'init.md'} and {out / 'init.csv'}")
    return status


if __name__ == "__main__":
    sys.exit(main())

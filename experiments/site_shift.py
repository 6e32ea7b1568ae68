"""ABIDE sites as domains: leave one site out, per method, before and after unsupervised adaptation to the site.

Runs ``python -m pmrl_sci.abide --split loso`` once per method, each in ``<out>/<method>`` (one unit per site
and seed, trained on the other sites, validated on a part of them):

- the multimodal model with sign-aware PMRL (the default command's model), with VAST, and with GRAM;
- the same model with cross-entropy alone (``--objective none``);

each trained model reported alone (``--fusion none``: adaptation adapts the trained model, and the study compares
objectives, not their fusion with logistic regression);
- logistic regression on vectorised connectivity (``--model logistic``).

Then, for each multimodal model with an alignment objective, ``--init-from <out>/<method> --adapt align`` in
``<out>/<method>-align``: each held-out site's unit starts from the model that never saw the site and trains the
alignment objective alone on that site's subjects with their labels blanked (transductive, unsupervised; the
classifier frozen), then is tested on the same subjects. The front end records the model before and after
adaptation on identical subjects.

Writes ``<out>/site_shift.md`` and ``<out>/site_shift.csv`` (AUC per held-out site and their mean over sites, per
method, before and after adaptation, and the mean paired change) and ``<out>/site_shift.png`` (AUC per site).
Options it does not know go to every run (``--data-dir``, ``--atlas``, ``--epochs``...); a rerun with the same
``--out`` resumes.

    python experiments/site_shift.py --data-dir ~/data/abide-dev --atlas ho \\
        --freesurfer-dir ~/data/abide-dev/freesurfer --seeds 1 --out runs/site_shift
    python experiments/site_shift.py --quick --out runs/site_shift-smoke
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pmrl_sci.tasks.abide_methods import (
    Method,
    experiment_parser,
    report_outcomes,
    run_methods,
    select_methods,
    shared_front_end_args,
)

METHODS = [
    Method("pmrl", "Multimodal, PMRL (default model)", ["--fusion", "none"]),
    Method("vast", "Multimodal, VAST", ["--objective", "vast", "--fusion", "none"]),
    Method("gram", "Multimodal, GRAM", ["--objective", "gram", "--fusion", "none"]),
    Method("ce-only", "Multimodal, cross-entropy only", ["--objective", "none", "--fusion", "none"]),
    Method("logistic", "Logistic regression (connectivity)", ["--model", "logistic"], ("--model",)),
]
#: methods whose runs are adapted with --adapt align (an alignment objective over several modalities)
ADAPTED = ("pmrl", "vast", "gram")


def site_auc_table(runs: Mapping[str, Path], adapted: Mapping[str, Path]) -> tuple[list[str], dict[str, dict]]:
    """Per site AUC of every run (``runs``: label -> folder) and of every adapted run, before and after.

    Returns the sites (sorted) and ``{column: {site: auc or None}}``; an adapted run gives two columns,
    ``<label>: before`` and ``<label>: after align`` (the same subjects).
    """
    columns: dict[str, dict[str, Any]] = {}
    for label, folder in runs.items():
        results = json.loads((Path(folder) / "results.json").read_text(encoding="utf-8"))
        columns[label] = {site: m["auc"] for site, m in results["per_site"].items()}
    for label, folder in adapted.items():
        results = json.loads((Path(folder) / "results.json").read_text(encoding="utf-8"))
        per_site = results["adaptation"]["per_site"]
        columns[f"{label}: before"] = {site: m["auc"] for site, m in per_site["before"].items()}
        columns[f"{label}: after align"] = {site: m["auc"] for site, m in per_site["after"].items()}
    sites = sorted({site for column in columns.values() for site in column})
    return sites, columns


def _mean(values: Sequence[float | None]) -> float:
    finite = [v for v in values if v is not None and np.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def write_site_table(sites: list[str], columns: Mapping[str, Mapping[str, float | None]], out: Path) -> Path:
    """``site_shift.md`` and ``site_shift.csv``: AUC per site and column, the mean over sites, adaptation deltas."""
    import pandas as pd

    frame = pd.DataFrame({label: [column.get(site) for site in sites] for label, column in columns.items()},
                         index=sites, dtype=float)
    frame.loc["mean over sites"] = [_mean(list(frame[c])[:len(sites)]) for c in frame.columns]
    frame.index.name = "held-out site"
    frame.to_csv(out / "site_shift.csv")
    lines = ["# ABIDE: leave one site out (test AUC per held-out site, pooled over seeds)", "",
             "| site | " + " | ".join(frame.columns) + " |", "|---" * (len(frame.columns) + 1) + "|"]
    for site, row in frame.iterrows():
        lines.append(f"| {site} | " + " | ".join("n/a" if not np.isfinite(v) else f"{v:.3f}" for v in row) + " |")
    deltas = []
    for label in [c[:-len(": after align")] for c in frame.columns if c.endswith(": after align")]:
        diff = (frame[f"{label}: after align"] - frame[f"{label}: before"]).iloc[:len(sites)].dropna()
        if len(diff):
            deltas.append(f"- {label}: --adapt align changes the site AUC by {diff.mean():+.3f} on average "
                          f"({(diff > 0).sum()} of {len(diff)} sites up)")
    lines += ["", *deltas, "", "Before and after are the same test subjects; the before model never saw the site."]
    path = out / "site_shift.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def plot_site_auc(sites: list[str], columns: Mapping[str, Mapping[str, float | None]], path: Path) -> None:
    """AUC per held-out site (x) for every column, adapted runs before (open) and after (filled)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(sites) + 3), 4))
    x = np.arange(len(sites))
    labels = [c for c in columns if not c.endswith(": before")]
    width = 0.8 / max(len(labels), 1)
    for i, label in enumerate(labels):
        values = [np.nan if columns[label].get(s) is None else columns[label][s] for s in sites]
        offset = x - 0.4 + (i + 0.5) * width
        bars = ax.bar(offset, values, width, label=label)
        if label.endswith(": after align"):
            before = columns[label.replace(": after align", ": before")]
            ax.scatter(offset, [np.nan if before.get(s) is None else before[s] for s in sites], marker="o",
                       facecolors="none", edgecolors=bars.patches[0].get_facecolor() if bars.patches else "k",
                       zorder=3, label=label.replace(": after align", ": before (circles)"))
    ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax.set_xticks(x, sites, rotation=45, ha="right")
    ax.set_ylabel("test AUC on the held-out site")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the leave-one-site-out methods and their adaptation; returns the exit status (1 if a run failed)."""
    parser = experiment_parser(__doc__, "runs/site-shift")
    args, forward = parser.parse_known_args(argv)
    try:
        methods = select_methods(METHODS, args.methods)
        shared = shared_front_end_args(args, [*forward, "--split", "loso"])
    except ValueError as exc:
        parser.error(str(exc))
    out = Path(args.out)
    adapt = [Method(f"{m.name}-align", f"{m.label} + adapt align",
                    [*m.args, "--init-from", str(out / m.name), "--adapt", "align"]) for m in methods
             if m.name in ADAPTED]
    if args.list:
        from pmrl_sci.tasks.abide_methods import describe_methods

        print(describe_methods([*methods, *adapt]))
        return 0
    outcomes = run_methods(methods, out, shared)
    finished = {o.method.name for o in outcomes if o.status == "done"}
    outcomes += run_methods([m for m in adapt if m.name[:-len("-align")] in finished], out, shared)
    status = report_outcomes(outcomes)
    done = [o for o in outcomes if o.status == "done"]
    runs = {o.method.label: o.path for o in done if not o.method.name.endswith("-align")}
    adapted = {o.method.label.replace(" + adapt align", ""): o.path for o in done if o.method.name.endswith("-align")}
    if not runs:
        print("[experiment] no table: no method finished")
        return 1
    sites, columns = site_auc_table(runs, adapted)
    table = write_site_table(sites, columns, out)
    if args.figures:
        plot_site_auc(sites, columns, out / "site_shift.png")
    print(f"[experiment] table: {table}")
    return status


if __name__ == "__main__":
    sys.exit(main())

"""Spectral analysis figures for a set of run folders (see :mod:`pmrl_sci.reports.spectral_analysis`).

Each run is ``NAME=FOLDER`` (or a folder, named after itself). Writes into ``--out``:
``singular_values_by_method.png`` (sigma_1..sigma_k per epoch, one panel per run),
``sigma1_distribution.png`` (sigma_1 over the test instances), ``u1_cosine.png`` (mean cosine
between leading directions over training), ``modality_contribution.png`` (mean |V| heat maps)
and ``analysis.json`` (the numbers behind them).

Example::

    python experiments/analysis.py VAST=runs/table4/vast GRAM=runs/table4/gram PMRL=runs/table4/pmrl \
        --out runs/table4/figures
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from pmrl_sci.reports.spectral_analysis import analyse_runs


def parse_runs(items: Sequence[str]) -> dict[str, Path]:
    """``NAME=FOLDER`` or ``FOLDER`` items as ``{name: folder}`` (names must be unique)."""
    runs: dict[str, Path] = {}
    for item in items:
        name, sep, folder = item.partition("=")
        if not sep:
            name, folder = Path(item).name, item
        if not name or not folder:
            raise ValueError(f"run {item!r}: expected NAME=FOLDER or FOLDER")
        if name in runs:
            raise ValueError(f"run name {name!r} given twice (use NAME=FOLDER to tell them apart)")
        runs[name] = Path(folder)
    return runs


def main(argv: Sequence[str] | None = None) -> int:
    """Write the figures; returns 0, or 1 when no figure could be made."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", metavar="NAME=FOLDER", help="run folders of python -m pmrl_sci.abide")
    parser.add_argument("--out", required=True, help="folder for the figures and analysis.json")
    args = parser.parse_args(argv)
    try:
        report = analyse_runs(parse_runs(args.runs), args.out)
    except (ValueError, FileNotFoundError) as exc:
        parser.exit(2, f"error: {exc}\n")
    for figure, path in report.figures.items():
        print(f"[analysis] {figure}: {path if path else 'not written: ' + report.missing[figure]}")
    return 0 if any(report.figures.values()) else 1


if __name__ == "__main__":
    sys.exit(main())

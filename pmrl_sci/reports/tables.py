"""Result tables from run folders: mean ± std per metric, as Markdown and CSV.

Each row of a table is one run folder (one method, one condition) written by a task front end
such as ``python -m pmrl_sci.abide``: its ``results.json`` holds ``{"auc": {"mean", "std",
"values", "n"}, ...}`` aggregated over trials. :func:`collect_table` reads them into a
:class:`pandas.DataFrame` (fractions, as stored), :func:`markdown_table` formats it (percent by
default, ``mean ± std``) and :func:`write_table` writes ``<name>.md`` and ``<name>.csv``
atomically.

:func:`check_same_units` verifies that the rows were trained and tested on the same trials and
split sizes, so a table never silently compares methods on different splits.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pmrl_sci.extras import require
from pmrl_sci.io import atomic_write_text

pd = require("pandas", "neuro", "the results tables")

#: Metrics of the binary-classification front ends, in table order, with their column titles.
DEFAULT_METRICS: dict[str, str] = {"auc": "AUC", "accuracy": "ACC", "sensitivity": "SEN", "specificity": "SPE"}


@dataclass
class TableRow:
    """One row of a results table.

    Parameters
    ----------
    method : str
        Display name (first column).
    path : path-like
        Run folder holding ``results.json``.
    columns : dict of str to str
        Extra descriptive columns placed after the method (e.g. ``{"noise": "input 0.4"}``).
    """

    method: str
    path: str | os.PathLike[str]
    columns: dict[str, str] = field(default_factory=dict)


def read_results(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``results.json`` of a run folder.

    Raises
    ------
    FileNotFoundError
        When the folder has no ``results.json`` (the run has not finished).
    ValueError
        When the file is not a JSON object.
    """
    file = Path(path) / "results.json"
    if not file.is_file():
        raise FileNotFoundError(f"{file}: no results.json (has the run finished?)")
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{file}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{file}: expected a JSON object, got {type(data).__name__}")
    return data


def _metric_summary(results: Mapping[str, Any], metric: str, file: Path) -> tuple[float, float, int]:
    entry = results.get(metric)
    if not isinstance(entry, Mapping) or "mean" not in entry or "std" not in entry:
        raise ValueError(f"{file}: field {metric!r} must be an object with 'mean' and 'std' "
                         f"(as written by pmrl_sci.runs.summarize), got {entry!r}")
    n = entry.get("n", len(entry.get("values", [])))
    return float(entry["mean"]), float(entry["std"]), int(n)


def collect_table(rows: Sequence[TableRow], metrics: Sequence[str] = tuple(DEFAULT_METRICS)) -> pd.DataFrame:
    """Read the rows' ``results.json`` into a table of fractions.

    Parameters
    ----------
    rows : sequence of TableRow
        One entry per run folder, in table order.
    metrics : sequence of str
        Result fields to tabulate (each an object with ``mean`` and ``std``).

    Returns
    -------
    pandas.DataFrame
        Columns ``method``, the rows' extra columns, ``<metric>_mean`` and ``<metric>_std`` for each
        metric, ``n`` (trials), ``simulated_data``, ``leaky`` and ``path``.
    """
    if not rows:
        raise ValueError("collect_table: no rows given")
    records = []
    for row in rows:
        results = read_results(row.path)
        file = Path(row.path) / "results.json"
        record: dict[str, Any] = {"method": row.method, **row.columns}
        counts = set()
        for metric in metrics:
            mean, std, n = _metric_summary(results, metric, file)
            record[f"{metric}_mean"], record[f"{metric}_std"] = mean, std
            counts.add(n)
        record["n"] = max(counts) if counts else 0
        record["simulated_data"] = bool(results.get("simulated_data", False))
        record["leaky"] = bool(results.get("leaky", False))
        record["path"] = str(row.path)
        records.append(record)
    return pd.DataFrame.from_records(records)


def check_same_units(rows: Sequence[TableRow]) -> list[str]:
    """Differences between the rows' trials (unit names, seeds, train/val/test sizes); empty when they agree.

    Rows whose ``results.json`` lists no ``units`` are not compared.
    """
    reference: tuple[str, list[Any]] | None = None
    problems = []
    for row in rows:
        units = read_results(row.path).get("units")
        if not units:
            continue
        key = [(u.get("unit"), u.get("seed"), u.get("n_train"), u.get("n_val"), u.get("n_test")) for u in units]
        if reference is None:
            reference = (row.method, key)
        elif key != reference[1]:
            problems.append(f"{row.method} ({row.path}) was run on units {key}, "
                            f"{reference[0]} on {reference[1]}")
    return problems


def format_mean_std(mean: float, std: float, scale: float = 100.0, digits: int = 1) -> str:
    """``"78.9 ± 1.2"`` (``scale`` 100: percent); ``"n/a"`` for a NaN mean."""
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "n/a"
    if std is None or (isinstance(std, float) and math.isnan(std)):
        return f"{mean * scale:.{digits}f}"
    return f"{mean * scale:.{digits}f} ± {std * scale:.{digits}f}"


def _markdown_cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(table: pd.DataFrame, metrics: Mapping[str, str] | Sequence[str] = DEFAULT_METRICS,
                   scale: float = 100.0, digits: int = 1, extra: Sequence[str] = (),
                   reference: Mapping[Any, Mapping[str, str]] | None = None, reference_title: str = "paper") -> str:
    """A Markdown table: method, extra columns, ``mean ± std`` per metric (the mean alone for one trial), trials.

    Parameters
    ----------
    table : DataFrame
        From :func:`collect_table`.
    metrics : mapping of field to title, or sequence of fields
        Metrics to show.
    scale, digits : float, int
        Values are multiplied by ``scale`` (100: percent) and rounded.
    extra : sequence of str
        Descriptive columns of ``table`` to show after the method.
    reference : mapping, optional
        ``{method: {title: text}}`` shown in columns ``"<reference_title> <title>"`` (e.g. the
        paper's numbers); a key ``(method, *extra values)`` matches one row of a method that
        appears under several conditions. Rows without an entry get empty cells.
    reference_title : str
        Prefix of the reference columns.
    """
    titles = dict(metrics) if isinstance(metrics, Mapping) else {m: DEFAULT_METRICS.get(m, m) for m in metrics}
    ref_cols = list(dict.fromkeys(c for entry in (reference or {}).values() for c in entry))
    unit = " (%)" if scale == 100.0 else ""
    header = ["method", *extra, *[f"{t}{unit}" for t in titles.values()], "trials",
              *[f"{reference_title} {c}" for c in ref_cols]]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + [":---:"] * (len(header) - 1)) + "|"]
    for _, row in table.iterrows():
        cells = [row["method"], *[row.get(c, "") for c in extra]]
        # one trial has no spread: show the value alone rather than "± 0.0"
        cells += [format_mean_std(row[f"{m}_mean"], row[f"{m}_std"] if int(row["n"]) > 1 else float("nan"), scale,
                                  digits) for m in titles]
        cells.append(int(row["n"]))
        ref = (reference or {}).get((row["method"], *[str(row.get(c, "")) for c in extra])) if extra else None
        ref = ref if ref is not None else (reference or {}).get(row["method"], {})
        cells += [ref.get(c, "") for c in ref_cols]
        lines.append("| " + " | ".join(_markdown_cell(c) for c in cells) + " |")
    notes = []
    if "simulated_data" in table and table["simulated_data"].any():
        simulated = table["simulated_data"].astype(bool)
        which = "All rows" if simulated.all() else "Rows " + ", ".join(table.loc[simulated, "method"].astype(str))
        notes.append(f"{which} ran on the generated ABIDE-like cohort (no --data-dir): a pipeline check, "
                     "not comparable to published numbers.")
    if "leaky" in table and table["leaky"].any():
        leaky = ", ".join(table.loc[table["leaky"].astype(bool), "method"].astype(str))
        notes.append(f"Leaky (ComBat fitted on all subjects with diagnosis): {leaky}.")
    text = "\n".join(lines) + "\n"
    if notes:
        text += "\n" + "\n".join(f"> {n}" for n in notes) + "\n"
    return text


def write_table(table: pd.DataFrame, out_dir: str | os.PathLike[str], name: str = "table", *,
                title: str | None = None, notes: Sequence[str] = (), **markdown_kwargs: Any) -> tuple[Path, Path]:
    """Write ``<name>.md`` (Markdown, see :func:`markdown_table`) and ``<name>.csv`` atomically.

    Returns
    -------
    (Path, Path)
        The Markdown and CSV paths.
    """
    out = Path(out_dir)
    md_path, csv_path = out / f"{name}.md", out / f"{name}.csv"
    text = markdown_table(table, **markdown_kwargs)
    if title:
        text = f"## {title}\n\n{text}"
    if notes:
        text += "\n" + "\n".join(f"- {n}" for n in notes) + "\n"
    atomic_write_text(md_path, text)
    atomic_write_text(csv_path, table.to_csv(index=False))
    return md_path, csv_path

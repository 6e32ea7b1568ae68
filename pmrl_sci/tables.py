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

import pandas as pd

from pmrl_sci.io import atomic_write_text

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


# ----------------------------------------------------------------------------------------
# experiments: one front-end run per method, each in a sub-folder, then the table

#: Options of ``python -m pmrl_sci.abide`` for a smoke-sized run (``--quick``): a 36-subject
#: generated cohort on 2 sites, the 97-region TT atlas, 2 epochs.
QUICK_ARGS: tuple[str, ...] = ("--default-subjects", "36", "--default-sites", "2", "--atlas", "tt", "--epochs", "2",
                               "--batch-size", "8", "--embed-dim", "32")

#: Resolved options that must agree between a sub-folder's stored config.json and a rerun (anything
#: else, such as --seeds, --device or --cache-dir, may change: the front end resumes finished units).
RESUME_KEYS: tuple[str, ...] = (
    "model", "objective", "data_dir", "atlas", "default_subjects", "default_sites", "split", "folds", "epochs",
    "patience", "batch_size", "lr", "weight_decay", "embed_dim", "dropout", "tau1", "tau2", "lambda1",
    "instance_term", "rank", "temperature", "anchor", "align_weight", "classification_weight", "gram_contrastive",
    "input_noise", "label_noise", "combat", "fmri_channels", "text_model")


@dataclass
class Method:
    """One row of an experiment: a front-end run with its own options.

    Parameters
    ----------
    name : str
        Sub-folder of the experiment's output folder (letters, digits, ``-``, ``_``, ``.``; ``/``
        for nested folders).
    label : str
        Row label in the table.
    args : list of str
        Options given to the front end for this method (after the shared ones, so they win).
    requires : tuple of str
        Option strings the front end must support (e.g. ``--model``); without them the method is
        skipped and the table says why.
    columns : dict of str to str
        Extra table columns for this row (e.g. the noise condition).
    """

    name: str
    label: str
    args: list[str] = field(default_factory=list)
    requires: tuple[str, ...] = ()
    columns: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        parts = self.name.split("/")
        if not all(parts) or any(p in (".", "..") for p in parts) or not all(
                c.isalnum() or c in "-_./" for c in self.name):
            raise ValueError(f"method name {self.name!r}: expected a relative folder name of letters, digits, "
                             "'-', '_', '.' and '/'")


@dataclass
class MethodOutcome:
    """What happened to one method: ``status`` is ``"done"``, ``"skipped"`` or ``"failed"``."""

    method: Method
    path: Path
    status: str
    message: str = ""
    argv: list[str] = field(default_factory=list)


def front_end_options(parser: Any) -> set[str]:
    """Option strings an :class:`argparse.ArgumentParser` accepts."""
    return {s for action in parser._actions for s in action.option_strings}


def _normalise(value: Any) -> Any:
    if isinstance(value, list):
        return sorted(map(str, value))
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def resume_conflicts(parser: Any, argv: Sequence[str], folder: Path) -> list[str]:
    """Options of ``argv`` that differ from the ``config.json`` already in ``folder`` (see :data:`RESUME_KEYS`)."""
    stored_file = folder / "config.json"
    if not stored_file.is_file():
        return []
    from pmrl_sci.config import parse_args_with_config

    try:
        stored = json.loads(stored_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return [f"{stored_file} is not valid JSON"]
    asked = vars(parse_args_with_config(parser, list(argv)))
    return [f"{key}: stored {stored[key]!r}, asked {asked[key]!r}" for key in RESUME_KEYS
            if key in stored and key in asked and _normalise(stored[key]) != _normalise(asked[key])]


def run_methods(methods: Sequence[Method], out_dir: str | os.PathLike[str], shared_args: Sequence[str],
                main: Any = None, build_parser: Any = None) -> list[MethodOutcome]:
    """Run the front end once per method, in ``<out_dir>/<method.name>``, and report each outcome.

    Parameters
    ----------
    methods : sequence of Method
        In order. Names must be unique.
    out_dir : path-like
        The experiment folder. A rerun with the same folder resumes: the front end skips finished
        units. A sub-folder made with different training options is not reused (the outcome is
        ``failed`` and names the differing options).
    shared_args : sequence of str
        Options given to every method (seeds, data, quick preset, user extras), before the
        method's own.
    main, build_parser : callable, optional
        The front end's ``main(argv)`` and ``build_parser()``; default :mod:`pmrl_sci.abide`.

    Notes
    -----
    A method that raises (or whose front end exits with an error) is recorded as ``failed`` and
    the others still run.
    """
    if main is None or build_parser is None:
        from pmrl_sci import abide

        main = main or abide.main
        build_parser = build_parser or abide.build_parser
    names = [m.name for m in methods]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"method names must be unique, repeated: {duplicates}")
    supported = front_end_options(build_parser())
    outcomes = []
    for method in methods:
        folder = Path(out_dir) / method.name
        argv = [*shared_args, *method.args, "--out", str(folder)]
        lacking = [flag for flag in method.requires if flag not in supported]
        if lacking:
            outcomes.append(MethodOutcome(method, folder, "skipped",
                                          f"the front end has no {', '.join(lacking)} option", argv))
            continue
        conflicts = resume_conflicts(build_parser(), argv, folder)
        if conflicts:
            outcomes.append(MethodOutcome(method, folder, "failed",
                                          f"{folder} holds a run with other options ({'; '.join(conflicts)}): "
                                          "use another --out or remove that folder", argv))
            continue
        print(f"[experiment] {method.label}: {' '.join(argv)}", flush=True)
        try:
            main(argv)
        except SystemExit as exc:  # the front end's parser.error / parser.exit
            outcomes.append(MethodOutcome(method, folder, "failed", f"front end exited with status {exc.code}", argv))
            continue
        except Exception as exc:  # noqa: BLE001 - one failing method must not lose the others' runs
            outcomes.append(MethodOutcome(method, folder, "failed", f"{type(exc).__name__}: {exc}", argv))
            continue
        outcomes.append(MethodOutcome(method, folder, "done", "", argv))
    return outcomes


def outcome_notes(outcomes: Sequence[MethodOutcome]) -> list[str]:
    """One line per method that was skipped or failed."""
    return [f"{o.method.label}: {o.status} ({o.message})" for o in outcomes if o.status != "done"]


def write_outcome_table(outcomes: Sequence[MethodOutcome], out_dir: str | os.PathLike[str], name: str = "table",
                        title: str | None = None, extra: Sequence[str] = (),
                        reference: Mapping[Any, Mapping[str, str]] | None = None,
                        metrics: Mapping[str, str] = DEFAULT_METRICS) -> tuple[Path, Path] | None:
    """Table of the finished methods (skipped and failed ones listed under it); None if none finished.

    Also warns, under the table, when the rows were not run on the same trials and split sizes.
    """
    rows = [TableRow(o.method.label, o.path, dict(o.method.columns)) for o in outcomes if o.status == "done"]
    if not rows:
        return None
    notes = outcome_notes(outcomes)
    notes += [f"different splits: {p}" for p in check_same_units(rows)]
    table = collect_table(rows, tuple(metrics))
    return write_table(table, out_dir, name, title=title, notes=notes, extra=extra, reference=reference,
                       metrics=metrics)


def experiment_parser(description: str, default_out: str) -> Any:
    """Options shared by the experiment scripts; options it does not know go to every front-end run."""
    import argparse

    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="Any other option (e.g. --data-dir, --atlas cc200, --epochs 200, --device "
                                            "cuda) is passed to python -m pmrl_sci.abide for every method.")
    parser.add_argument("--out", default=default_out,
                        help=f"experiment folder, a sub-folder per method; reuse it to resume (default {default_out})")
    parser.add_argument("--seeds", type=int, default=None, help="trials per method (default 5; 2 with --quick)")
    parser.add_argument("--seed-offset", type=int, default=0, help="first seed (the same for every method)")
    parser.add_argument("--methods", nargs="+", default=None, metavar="NAME",
                        help="run only these methods (sub-folder names; see --list)")
    parser.add_argument("--list", action="store_true", help="print the methods and their options, then exit")
    parser.add_argument("--quick", action="store_true",
                        help="smoke-sized runs: " + " ".join(QUICK_ARGS) + " (explicit options still win)")
    parser.add_argument("--no-figures", dest="figures", action="store_false", help="write the table only")
    return parser


def shared_front_end_args(args: Any, forward: Sequence[str]) -> list[str]:
    """Front-end options common to every method: quick preset, seeds, then the user's extra options."""
    seeds = args.seeds if args.seeds is not None else (2 if args.quick else 5)
    if seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {seeds}")
    return [*(QUICK_ARGS if args.quick else ()), "--seeds", str(seeds), "--seed-offset", str(args.seed_offset),
            *forward]


def select_methods(methods: Sequence[Method], names: Sequence[str] | None) -> list[Method]:
    """The methods named in ``names`` (all when None), in their original order."""
    if not names:
        return list(methods)
    known = {m.name for m in methods}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"--methods: unknown {unknown}; expected some of {sorted(known)}")
    return [m for m in methods if m.name in set(names)]


def report_outcomes(outcomes: Sequence[MethodOutcome]) -> int:
    """Print one status line per method; 1 when any method failed, else 0 (skipped is not a failure)."""
    for o in outcomes:
        print(f"[experiment] {o.method.label:32s} {o.status:8s} {o.path}" + (f"  ({o.message})" if o.message else ""))
    return int(any(o.status == "failed" for o in outcomes))


def describe_methods(methods: Sequence[Method]) -> str:
    """``name  label  options`` per line (for ``--list``)."""
    return "\n".join(f"{m.name:28s} {m.label:32s} {' '.join(m.args)}"
                     + (f"   [needs {', '.join(m.requires)}]" if m.requires else "") for m in methods)

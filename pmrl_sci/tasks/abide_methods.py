"""Experiments as one command: one front-end run per method, each in its own sub-folder, then the table.

Used by the scripts in ``experiments/`` (the ABIDE table, noise robustness, ablations): every method runs
``pmrl_sci.abide.main(argv)`` in-process with the same seeds and splits into ``<out>/<method>``, so a rerun with
the same ``--out`` resumes finished trials; :func:`write_outcome_table` then writes the Markdown/CSV table with
:mod:`pmrl_sci.reports.tables`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pmrl_sci.reports.tables import DEFAULT_METRICS, TableRow, check_same_units, collect_table, write_table

#: Options of ``python -m pmrl_sci.abide`` for a smoke-sized run (``--quick``): a 36-subject
#: generated cohort on 2 sites, the 97-region TT atlas, 2 epochs.
QUICK_ARGS: tuple[str, ...] = ("--default-subjects", "36", "--default-sites", "2", "--atlas", "tt", "--epochs", "2",
                               "--batch-size", "8", "--embed-dim", "32")

#: Resolved options that must agree between a sub-folder's stored config.json and a rerun (anything
#: else, such as --seeds, --device or --cache-dir, may change: the front end resumes finished units).
RESUME_KEYS: tuple[str, ...] = (
    "model", "objective", "fmri_encoder", "align_epochs", "setting", "data_dir", "atlas", "default_subjects",
    "default_sites", "split", "folds", "epochs",
    "patience", "batch_size", "lr", "weight_decay", "embed_dim", "dropout", "tau1", "tau2", "lambda1",
    "instance_term", "rank", "temperature", "anchor", "align_weight", "classification_weight", "gram_contrastive",
    "input_noise", "label_noise", "combat", "fmri_channels", "text_model", "text_fields", "threshold", "ema_decay",
    "init_offset", "ensemble", "fmri_standardize", "fmri_crop", "mixup", "fusion", "fusion_select")


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


def resume_conflicts(parser: Any, argv: Sequence[str], folder: Path,
                     presets: Mapping[str, Mapping[str, Any]] | None = None) -> list[str]:
    """Options of ``argv`` (with the front end's ``--setting`` ``presets``) that differ from the ``config.json``
    already in ``folder`` (see :data:`RESUME_KEYS`).

    The asked options are resolved as the ABIDE front end resolves them before it records them (``--model``
    fixing the objective and modalities, :func:`~pmrl_sci.tasks.abide.resolve_model`); an option left unset
    (``None``, e.g. ``--epochs``, whose default depends on the data) is not compared: the front end's own check
    compares it once resolved.
    """
    stored_file = folder / "config.json"
    if not stored_file.is_file():
        return []
    from pmrl_sci.config import parse_args_with_config

    try:
        stored = json.loads(stored_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return [f"{stored_file} is not valid JSON"]
    from pmrl_sci.tasks.abide import upgrade_recorded_config

    stored = upgrade_recorded_config(stored) if isinstance(stored, dict) else stored
    asked = vars(parse_args_with_config(parser, list(argv), presets))
    asked.update(_resolved_abide_options(asked))
    return [f"{key}: stored {stored[key]!r}, asked {asked[key]!r}" for key in RESUME_KEYS
            if key in stored and asked.get(key) is not None and _normalise(stored[key]) != _normalise(asked[key])]


def _resolved_abide_options(asked: Mapping[str, Any]) -> dict[str, Any]:
    """``asked`` after :func:`~pmrl_sci.tasks.abide.resolve_model` (empty when they are not ABIDE options)."""
    import dataclasses

    from pmrl_sci.errors import InputError
    from pmrl_sci.tasks.abide import AbideConfig, resolve_model

    names = {f.name for f in dataclasses.fields(AbideConfig)}
    try:
        config = resolve_model(AbideConfig(**{k: v for k, v in asked.items() if k in names}))
    except (InputError, TypeError, ValueError):
        return {}
    return {key: value for key, value in dataclasses.asdict(config).items() if key in asked}


def run_methods(methods: Sequence[Method], out_dir: str | os.PathLike[str], shared_args: Sequence[str],
                main: Any = None, build_parser: Any = None,
                presets: Mapping[str, Mapping[str, Any]] | None = None) -> list[MethodOutcome]:
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
    presets : mapping, optional
        The front end's ``--setting`` presets (default: ABIDE's, :data:`pmrl_sci.tasks.abide.SETTINGS`).

    Notes
    -----
    A method that raises (or whose front end exits with an error) is recorded as ``failed`` and
    the others still run.
    """
    if main is None or build_parser is None:
        from pmrl_sci import abide

        main = main or abide.main
        build_parser = build_parser or abide.build_parser
    if presets is None:
        from pmrl_sci.tasks.abide import SETTINGS as presets
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
        conflicts = resume_conflicts(build_parser(), argv, folder, presets)
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
    parser.add_argument("--seed", type=int, default=0, help="first seed (the same for every method)")
    parser.add_argument("--methods", nargs="+", default=None, metavar="NAME",
                        help="run only these methods (sub-folder names; see --list)")
    parser.add_argument("--list", action="store_true", help="print the methods and their options, then exit")
    parser.add_argument("--quick", action="store_true",
                        help="smoke-sized runs: " + " ".join(QUICK_ARGS) + " (explicit options still win)")
    parser.add_argument("--no-figures", dest="figures", action="store_false", help="write the table only")
    return parser


#: what the paper-reproduction scripts (Table 4, Table 10, ablations) give every run: the paper's setting and its
#: protocol (one BrainNetTF 70/10/20 split per seed)
PAPER_PRESET: tuple[str, ...] = ("--setting", "paper", "--split", "bnt")


def shared_front_end_args(args: Any, forward: Sequence[str], preset: Sequence[str] = ()) -> list[str]:
    """Front-end options common to every method: quick preset, ``preset`` (e.g. :data:`PAPER_PRESET`), seeds,
    then the user's extra options (which override the others)."""
    seeds = args.seeds if args.seeds is not None else (2 if args.quick else 5)
    if seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {seeds}")
    return [*(QUICK_ARGS if args.quick else ()), *preset, "--seeds", str(seeds), "--seed", str(args.seed),
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


def table_experiment_main(methods_catalog: Sequence[Method], argv: Sequence[str] | None, *, description: str,
                          default_out: str, title: str,
                          reference: Mapping[Any, Mapping[str, str]] | None = None,
                          preset: Sequence[str] = PAPER_PRESET) -> int:
    """The whole of a one-table experiment script: parse, run every selected method, write table and figures.

    Every run gets ``preset`` first (default: the paper's setting, as these scripts reproduce the paper's tables).

    Returns the exit status (1 when a method failed), as :func:`report_outcomes`.
    """
    parser = experiment_parser(description, default_out)
    args, forward = parser.parse_known_args(argv)
    try:
        methods = select_methods(methods_catalog, args.methods)
        shared = shared_front_end_args(args, forward, preset)
    except ValueError as exc:
        parser.error(str(exc))
    if args.list:
        print(describe_methods(methods))
        return 0
    outcomes = run_methods(methods, args.out, shared)
    written = write_outcome_table(outcomes, args.out, "table", title=title, reference=reference)
    if written and args.figures:
        from pmrl_sci.reports.spectral_analysis import analyse_runs

        report = analyse_runs({o.method.label: o.path for o in outcomes if o.status == "done"},
                              Path(args.out) / "figures")
        for figure, reason in report.missing.items():
            print(f"[experiment] figure {figure} not written: {reason}")
    status = report_outcomes(outcomes)
    if written:
        print(f"[experiment] table: {written[0]} and {written[1]}")
    return status

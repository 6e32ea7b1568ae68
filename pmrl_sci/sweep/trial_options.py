"""The front-end options of a sweep's trials: checked against the front end's parser before the study starts
(:func:`prepare`), and those all trials share recorded in the study, so that a worker with other ones is refused
(:func:`fixed_options`, :func:`check_fixed_options`)."""

from __future__ import annotations

import argparse
import contextlib
import io
from collections.abc import Mapping
from typing import Any

from pmrl_sci.extras import require
from pmrl_sci.sweep.config import QUIET_OPTIONS, SEED_OPTION, SweepConfig, SweepError
from pmrl_sci.sweep.storage import describe_storage, redact
from pmrl_sci.sweep_spaces import SearchSpace, default_space, load_space, options_to_argv, parser_actions

optuna = require("optuna", "sweep", "Optuna sweeps")


def prepare(cfg: SweepConfig) -> tuple[SearchSpace, list[str], dict[str, Any], argparse.ArgumentParser]:
    """The space, the argv shared by all trials, the option values for ``when`` and the front end's parser.

    Checks every fixed option and parameter against the front end's parser before the study starts.
    """
    from pmrl_sci.config import parse_args_with_config

    module = cfg.spec.load()
    parser = module.build_parser()
    space = load_space(cfg.space, cfg.front_end) if cfg.space else default_space(cfg.front_end)
    actions = parser_actions(parser)
    where = space.source
    unknown = [name for name in space.params if name not in actions]
    if unknown:
        raise SweepError(f"{where}: searched parameter(s) {unknown} are not options of {parser.prog} "
                         f"(see python -m {cfg.spec.module} --help)")
    extra_dests = {actions[_dest_of(tok, actions)].dest for tok in cfg.extra if _dest_of(tok, actions)}
    reserved = {"out", SEED_OPTION} & (set(space.fixed) | extra_dests)
    if reserved:
        raise SweepError(f"{sorted(reserved)} are set by the sweep for each trial (use --out / --trial-seed of the "
                         "sweep); remove them from the space's 'fixed' section and the arguments after --")
    dropped = sorted(set(space.params) & extra_dests)
    if dropped:
        print(f"[sweep {cfg.front_end}] {dropped} given after -- : not searched", flush=True)
        space = space.without(dropped)
    quiet = {} if cfg.trial_progress else {k: v for k, v in QUIET_OPTIONS.items() if k not in space.fixed}
    base_argv = options_to_argv({**space.fixed, **quiet}, parser, f"{where}: fixed") + list(cfg.extra)
    context = _parse(parser, base_argv, where, parse_args_with_config)
    example = base_argv + options_to_argv({**space.examples(context), "out": str(cfg.out / "check")}, parser,
                                          where)
    _parse(parser, example, where, parse_args_with_config)
    return space, base_argv, context, parser


def fixed_options(cfg: SweepConfig, space: SearchSpace, context: Mapping[str, Any]) -> dict[str, Any]:
    """What every trial of the study shares, so that its trials are comparable; recorded in the study.

    Parameters
    ----------
    cfg : SweepConfig
        The sweep.
    space : SearchSpace
        Its search space (searched parameters are not fixed).
    context : Mapping
        The front end's option values from the space's ``fixed`` section and the arguments after ``--``
        (``-c config.yaml`` included), as :func:`prepare` returns them.

    Returns
    -------
    dict
        ``{"front_end": name, "trial_seed": seed, "options": {"--option": value}}``: the options whose value
        differs from the front end's default, except the searched ones, those the sweep sets per trial
        (``--out``, the seed) and the progress switches; values as JSON stores them (paths as strings).
    """
    import json

    def as_json(value: Any) -> Any:
        return json.loads(json.dumps(value, default=str))

    skipped = {*space.params, "out", SEED_OPTION, *QUIET_OPTIONS}
    options = {}
    for dest, action in parser_actions(cfg.spec.load().build_parser()).items():  # a parser with its own defaults
        if dest in skipped or dest not in context:
            continue
        value = as_json(context[dest])
        if value != as_json(action.default):
            options[max(action.option_strings, key=len)] = value
    return {"front_end": cfg.front_end, "trial_seed": cfg.trial_seed, "options": dict(sorted(options.items()))}


def fixed_option_differences(recorded: Mapping[str, Any], fixed: Mapping[str, Any]) -> list[str]:
    """How ``fixed`` (this worker's :func:`fixed_options`) differs from those ``recorded`` in the study.

    Parameters
    ----------
    recorded, fixed : Mapping
        Two results of :func:`fixed_options`.

    Returns
    -------
    list of str
        One line per differing option, ``"--epochs: 1 in the study, 3 now"``; empty when they agree.
    """
    def shown(values: Mapping[str, Any], key: str) -> str:
        return json_text(values[key]) if key in values else "the front end's default"

    lines = [f"{label}: {json_text(recorded.get(key))} in the study, {json_text(fixed.get(key))} now"
             for key, label in (("front_end", "front end"), ("trial_seed", "--trial-seed"))
             if recorded.get(key) != fixed.get(key)]
    old, new = recorded.get("options") or {}, fixed.get("options") or {}
    lines += [f"{name}: {shown(old, name)} in the study, {shown(new, name)} now"
              for name in sorted(set(old) | set(new)) if old.get(name, ...) != new.get(name, ...)]
    return lines


def json_text(value: Any) -> str:
    """``value`` as a command line shows it: lists space-separated, everything else as JSON would."""
    import json

    if isinstance(value, list):
        return " ".join(json_text(v) for v in value)
    return value if isinstance(value, str) else json.dumps(value)


def check_fixed_options(study: optuna.Study, fixed: Mapping[str, Any], cfg: SweepConfig) -> None:
    """Record ``fixed`` in a study that has none; raise :class:`SweepError` if the study's differ.

    Parameters
    ----------
    study : optuna.Study
        The sweep's study.
    fixed : Mapping
        This worker's :func:`fixed_options`.
    cfg : SweepConfig
        The sweep (for the message).

    Raises
    ------
    SweepError
        When the study was run with other fixed options: its trials and this worker's would not be
        comparable, and ``best.json`` would pick across them.
    """
    recorded = study.user_attrs.get("fixed_options")
    if recorded is None:
        study.set_user_attr("fixed_options", dict(fixed))
        # a worker that started at the same moment with other options may have written in between
        recorded = study.user_attrs.get("fixed_options")
    differences = fixed_option_differences(recorded, fixed)
    if differences:
        where = redact(describe_storage(cfg.storage, cfg.out)[1])
        raise SweepError(f"study {cfg.study_name!r} in {where} was run with other fixed options than this "
                         "worker's, so their trials would not be comparable:\n  " + "\n  ".join(differences)
                         + "\nresume it with the same options (after -- , in the space's 'fixed' section and "
                           "--trial-seed), or start a new study with another --study-name or --out")


def _dest_of(token: str, actions: Mapping[str, argparse.Action]) -> str | None:
    if not token.startswith("--"):
        return None
    option = token.split("=", 1)[0]
    for dest, action in actions.items():
        if option in action.option_strings:
            return dest
    return None


def _parse(parser: argparse.ArgumentParser, argv: list[str], where: str, parse: Any) -> dict[str, Any]:
    buffer = io.StringIO()
    try:
        with contextlib.redirect_stderr(buffer):
            return vars(parse(parser, argv))
    except SystemExit:
        message = buffer.getvalue().strip().splitlines()
        raise SweepError(f"{parser.prog} rejects the trial options {argv} (from {where} and the arguments after "
                         f"--): {message[-1] if message else 'see --help'}") from None


"""Search spaces of the hyper-parameter sweeps (:mod:`pmrl_sci.sweep`): defaults per front end and YAML files.

A space file (``--space space.yaml``) looks like::

    fixed:                      # front-end options given to every trial (long option names, - or _)
      objective: pmrl
      epochs: 50
      modalities: [fmri, smri, text]
    params:                     # merged onto the front end's default space (``inherit: false`` starts empty)
      lr: {type: float, low: 1.0e-5, high: 1.0e-2, log: true}
      embed_dim: {type: categorical, choices: [64, 128, 256]}
      tau1: {type: float, low: 0.01, high: 0.5, log: true, when: {objective: pmrl}}
      dropout: null             # drop a default parameter

``when`` makes a parameter conditional on other options (fixed, given after ``--``, front-end defaults, or
parameters listed before it). A parameter also given as a fixed option is not searched.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

KINDS = ("float", "int", "categorical")
_PARAM_KEYS = {"type", "low", "high", "log", "step", "choices", "when"}
_SPACE_KEYS = {"fixed", "params", "inherit"}


class SpaceError(ValueError):
    """A search space (file or default) that cannot be used; the message names the file and the field."""


@dataclass(frozen=True)
class Param:
    """One searched hyper-parameter (a front-end option).

    Parameters
    ----------
    name : str
        The front end's option destination (``lr``, ``embed_dim``, ...).
    kind : {"float", "int", "categorical"}
        Distribution type.
    low, high : float, optional
        Bounds (float and int).
    log : bool
        Sample on a log scale (float and int).
    step : float, optional
        Discretisation step (float and int; not with ``log``).
    choices : tuple, optional
        Values of a categorical parameter (None, bool, int, float or str).
    when : mapping of str to tuple
        Sample only when every named option has one of the listed values.
    """

    name: str
    kind: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] | None = None
    when: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)

    def validate(self, where: str) -> None:
        """Raise :class:`SpaceError` (naming ``where``, e.g. ``space.yaml: params.lr``) when inconsistent."""
        if self.kind not in KINDS:
            raise SpaceError(f"{where}: 'type' must be one of {list(KINDS)}, got {self.kind!r}")
        if self.kind == "categorical":
            if not self.choices:
                raise SpaceError(f"{where}: a categorical parameter needs a non-empty 'choices' list")
            bad = [c for c in self.choices if c is not None and not isinstance(c, (bool, int, float, str))]
            if bad:
                raise SpaceError(f"{where}: 'choices' must be numbers, strings, booleans or null, got {bad}")
            return
        if self.low is None or self.high is None:
            raise SpaceError(f"{where}: a {self.kind} parameter needs 'low' and 'high'")
        for key in ("low", "high"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise SpaceError(f"{where}: {key!r} must be a finite number, got {value!r}")
        if self.low > self.high:
            raise SpaceError(f"{where}: 'low' must be <= 'high', got {self.low} > {self.high}")
        if self.log and self.low <= 0:
            raise SpaceError(f"{where}: a log-scale parameter needs 'low' > 0, got {self.low}")
        if self.log and self.step is not None:
            raise SpaceError(f"{where}: 'step' cannot be combined with 'log: true'")
        if self.kind == "int" and (self.low != int(self.low) or self.high != int(self.high)):
            raise SpaceError(f"{where}: an int parameter needs integer bounds, got {self.low}..{self.high}")

    def applies(self, values: Mapping[str, Any]) -> bool:
        """Whether the ``when`` conditions hold for the option values ``values``."""
        return all(values.get(key) in allowed for key, allowed in self.when.items())

    def suggest(self, trial: Any) -> Any:
        """Sample through an Optuna trial (``suggest_float`` / ``suggest_int`` / ``suggest_categorical``)."""
        if self.kind == "categorical":
            return trial.suggest_categorical(self.name, list(self.choices or ()))
        if self.kind == "int":
            step = int(self.step) if self.step is not None else 1
            return trial.suggest_int(self.name, int(self.low), int(self.high), step=step, log=self.log)
        return trial.suggest_float(self.name, float(self.low), float(self.high), step=self.step, log=self.log)

    def example(self) -> Any:
        """A value inside the space (used to check the front end accepts the option before the study starts)."""
        if self.kind == "categorical":
            return next(iter(self.choices or ()))
        return int(self.low) if self.kind == "int" else float(self.low)


@dataclass
class SearchSpace:
    """Searched parameters and fixed front-end options.

    Parameters
    ----------
    params : dict of str to Param
        In sampling order (conditions may refer to parameters listed earlier).
    fixed : dict of str to Any
        Front-end options given to every trial.
    source : str
        Where the space came from (for error messages and ``best.json``).
    """

    params: dict[str, Param]
    fixed: dict[str, Any] = field(default_factory=dict)
    source: str = "<default>"

    def without(self, names: Sequence[str]) -> SearchSpace:
        """The space minus the parameters ``names`` (fixed elsewhere)."""
        return replace(self, params={k: p for k, p in self.params.items() if k not in set(names)})

    def sample(self, trial: Any, context: Mapping[str, Any]) -> dict[str, Any]:
        """Sample every applicable parameter; ``context`` holds the other options' values (for ``when``)."""
        values = dict(context)
        sampled: dict[str, Any] = {}
        for name, param in self.params.items():
            if param.applies(values):
                sampled[name] = values[name] = param.suggest(trial)
        return sampled

    def examples(self, context: Mapping[str, Any]) -> dict[str, Any]:
        """One value of every applicable parameter (for checking the front end's parser)."""
        values = dict(context)
        out: dict[str, Any] = {}
        for name, param in self.params.items():
            if param.applies(values):
                out[name] = values[name] = param.example()
        return out


def _float(low: float, high: float, log: bool = True, when: dict[str, tuple[Any, ...]] | None = None) -> dict:
    return {"type": "float", "low": low, "high": high, "log": log, "when": when or {}}


_PMRL = {"objective": ("pmrl",)}
_CONTRASTIVE = {"objective": ("gram", "vast")}
_OBJECTIVE_PARAMS: dict[str, dict[str, Any]] = {
    "tau1": _float(0.01, 0.5, when=_PMRL),
    "tau2": _float(0.05, 1.0, when=_PMRL),
    "lambda1": _float(0.1, 10.0, when=_PMRL),
    "temperature": _float(0.01, 0.5, when=_CONTRASTIVE),
}
_EMBED = {"type": "categorical", "choices": [64, 128, 256]}

DEFAULT_SPACES: dict[str, dict[str, dict[str, Any]]] = {
    "abide": {**_OBJECTIVE_PARAMS, "lr": _float(1e-5, 1e-2), "embed_dim": _EMBED,
              "dropout": _float(0.0, 0.5, log=False)},
    "houston13": {**_OBJECTIVE_PARAMS, "lr": _float(1e-4, 1e-2), "embed_dim": _EMBED},
    "retrieval": {**_OBJECTIVE_PARAMS, "lr": _float(1e-4, 1e-2), "embed_dim": _EMBED},
}


def parse_param(name: str, spec: Any, where: str) -> Param:
    """A :class:`Param` from its YAML mapping (``where`` names the file and field in errors)."""
    if not isinstance(spec, Mapping):
        raise SpaceError(f"{where}: expected a mapping with type/low/high/log/choices, got {type(spec).__name__}")
    unknown = sorted(set(map(str, spec)) - _PARAM_KEYS)
    if unknown:
        raise SpaceError(f"{where}: unknown key(s) {unknown}; expected some of {sorted(_PARAM_KEYS)}")
    kind = spec.get("type", "categorical" if "choices" in spec else "float")
    when_raw = spec.get("when") or {}
    if not isinstance(when_raw, Mapping):
        raise SpaceError(f"{where}.when: expected a mapping option: value (or list of values), got {when_raw!r}")
    when = {str(k).replace("-", "_"): tuple(v) if isinstance(v, (list, tuple)) else (v,)
            for k, v in when_raw.items()}
    choices = spec.get("choices")
    if choices is not None and not isinstance(choices, (list, tuple)):
        raise SpaceError(f"{where}.choices: expected a list, got {choices!r}")
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise SpaceError(f"{where}.log: expected true or false, got {log!r}")
    param = Param(name=name, kind=str(kind), low=spec.get("low"), high=spec.get("high"), log=log,
                  step=spec.get("step"), choices=tuple(choices) if choices is not None else None, when=when)
    param.validate(where)
    return param


def default_space(front_end: str) -> SearchSpace:
    """The default space of ``front_end`` (``abide``, ``houston13`` or ``retrieval``)."""
    if front_end not in DEFAULT_SPACES:
        raise SpaceError(f"no default search space for front end {front_end!r}; known: {sorted(DEFAULT_SPACES)}")
    params = {name: parse_param(name, spec, f"default space of {front_end}: params.{name}")
              for name, spec in DEFAULT_SPACES[front_end].items()}
    return SearchSpace(params=params, source=f"<default {front_end}>")


def load_space(path: str | Path, front_end: str) -> SearchSpace:
    """Read a space file, merged onto the default space of ``front_end`` unless it says ``inherit: false``."""
    from pmrl_sci.config import read_yaml_mapping

    path = Path(path)
    data = read_yaml_mapping(path, "search space file", SpaceError)
    unknown = sorted(set(map(str, data)) - _SPACE_KEYS)
    if unknown:
        raise SpaceError(f"{path}: unknown top-level key(s) {unknown}; expected some of {sorted(_SPACE_KEYS)}")
    inherit = data.get("inherit", True)
    if not isinstance(inherit, bool):
        raise SpaceError(f"{path}: 'inherit' must be true or false, got {inherit!r}")
    params = dict(default_space(front_end).params) if inherit else {}
    raw_params = data.get("params") or {}
    if not isinstance(raw_params, Mapping):
        raise SpaceError(f"{path}: 'params' must be a mapping of name: spec, got {type(raw_params).__name__}")
    for raw_name, spec in raw_params.items():
        name = str(raw_name).replace("-", "_")
        if spec is None:
            params.pop(name, None)
            continue
        params.pop(name, None)  # a redefined parameter moves to the file's position in the order
        params[name] = parse_param(name, spec, f"{path}: params.{raw_name}")
    fixed = data.get("fixed") or {}
    if not isinstance(fixed, Mapping):
        raise SpaceError(f"{path}: 'fixed' must be a mapping of option: value, got {type(fixed).__name__}")
    fixed = {str(k).replace("-", "_"): v for k, v in fixed.items()}
    space = SearchSpace(params=params, fixed=fixed, source=str(path))
    return space.without(list(fixed))


def parser_actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """The parser's optional arguments by destination (``lr``, ``embed_dim``, ...)."""
    return {a.dest: a for a in parser._actions if a.option_strings and a.dest not in ("help", "config")}


def options_to_argv(options: Mapping[str, Any], parser: argparse.ArgumentParser, where: str) -> list[str]:
    """Command-line tokens for ``{dest: value}`` of the front end whose parser is ``parser``.

    Flags (``store_true`` / ``store_false``) are emitted when the value asks for them; lists become
    ``--opt a b``; None leaves the front end's default. Unknown names raise :class:`SpaceError`
    naming ``where`` and the option.
    """
    actions = parser_actions(parser)
    argv: list[str] = []
    for raw, value in options.items():
        dest = str(raw).replace("-", "_")
        action = actions.get(dest)
        if action is None:
            import difflib

            close = difflib.get_close_matches(dest, list(actions), n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise SpaceError(f"{where}: {raw!r} is not an option of {parser.prog}{hint}")
        option = max(action.option_strings, key=len)
        if isinstance(action, argparse._StoreConstAction) and isinstance(action.const, bool):
            if not isinstance(value, bool):
                raise SpaceError(f"{where}: {raw!r} is a flag; expected true or false, got {value!r}")
            if value == action.const:
                argv.append(option)
            continue
        if value is None:
            continue
        if isinstance(value, (list, tuple)):
            argv += [option, *map(str, value)]
        else:
            argv += [option, str(value)]
    return argv

"""Starting a run from a finished one (``--init-from RUN_DIR``): the source folder, its options, its checkpoints.

A finished run folder holds ``config.json`` (the resolved options), ``done/<unit>.json`` (each unit's result) and
``checkpoints/<unit>.pt`` (the selected model of the unit: ``{<module name>: state_dict, ..., "epoch": e}``, see
:func:`~pmrl_sci.engine.train_unit`). :class:`SourceRun` reads them and refuses, with an
:class:`~pmrl_sci.errors.InputError` that names the file and the field, what does not fit;
:func:`load_initial_states` puts a checkpoint's states into a unit's freshly built modules (a new submodule may
keep its fresh initialisation), and :class:`~pmrl_sci.engine.UnitModules` ``frozen`` freezes what should not
train.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pmrl_sci.errors import InputError
from pmrl_sci.runs import to_plain


class SourceRun:
    """A finished run folder to start from.

    Parameters
    ----------
    path : path-like
        The run folder (``--out`` of the source run).
    option : str
        The command-line option named in error messages.

    Raises
    ------
    InputError
        When the folder or its ``config.json`` is missing or unreadable.
    """

    def __init__(self, path: str | Path, option: str = "--init-from") -> None:
        self.path = Path(path).expanduser()
        self.option = option
        if not self.path.is_dir():
            raise InputError(f"{option} {self.path}: no such run folder")
        config_file = self.path / "config.json"
        if not config_file.is_file():
            raise InputError(f"{option} {self.path}: {config_file} is missing (not a run folder of the kit?)")
        self.config: dict[str, Any] = self._read_mapping(config_file, "a mapping of options")
        self.config_file = config_file

    def _read_mapping(self, path: Path, what: str) -> dict[str, Any]:
        """The JSON object in ``path``; refused, naming the file, when it is unreadable or not ``what``."""
        try:
            value = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise InputError(f"{self.option}: cannot read {path} ({exc})") from None
        if not isinstance(value, dict):
            raise InputError(f"{self.option}: {path} does not hold {what}")
        return value

    def get(self, key: str, default: Any = None) -> Any:
        """The source's resolved option ``key``."""
        return self.config.get(key, default)

    def require(self, key: str) -> Any:
        """The source's option ``key``; refused when the source config lacks it."""
        if key not in self.config:
            raise InputError(f"{self.option}: {self.config_file} has no field {key!r} (written by another version "
                             "of the kit or another task?)")
        return self.config[key]

    def differences(self, current: Mapping[str, Any], keys: Iterable[str]) -> list[str]:
        """``<field>: <source> (source) vs <now> (this run)`` for every key of ``keys`` whose values differ.

        Values are compared as JSON (tuples as lists); a key the source config lacks is reported too.
        """
        now = json.loads(json.dumps(to_plain({k: current.get(k) for k in keys}), default=str))
        diff = []
        for key in keys:
            if key not in self.config:
                diff.append(f"{key}: missing (source) vs {now[key]!r} (this run)")
            elif self.config[key] != now[key]:
                diff.append(f"{key}: {self.config[key]!r} (source) vs {now[key]!r} (this run)")
        return diff

    def require_same(self, current: Mapping[str, Any], keys: Iterable[str], why: str = "") -> None:
        """Refuse when any of ``keys`` differs between the source's config and ``current`` (all named at once)."""
        diff = self.differences(current, list(keys))
        if diff:
            raise InputError(f"{self.option} {self.path}: the source run does not match this run; in "
                             f"{self.config_file}: {'; '.join(diff)}{'. ' + why if why else ''}")

    def unit_result(self, unit: str) -> dict[str, Any]:
        """``done/<unit>.json`` of a finished source unit; refused when the unit is not finished."""
        path = self.path / "done" / f"{unit}.json"
        if not path.is_file():
            raise InputError(f"{self.option} {self.path}: unit {unit} of the source run is not finished ({path} is "
                             "missing); finish the source run first")
        return self._read_mapping(path, "a unit result")

    def checkpoint_path(self, unit: str, name: str | None = None) -> Path:
        """``checkpoints/<unit>.pt`` (``<unit>-<name>.pt`` for a named selection of a task with several)."""
        return self.path / "checkpoints" / (f"{unit}.pt" if name is None else f"{unit}-{name}.pt")

    def require_checkpoint(self, unit: str, name: str | None = None) -> Path:
        """The selected model's checkpoint file of ``unit``; refused when it is missing."""
        path = self.checkpoint_path(unit, name)
        if not path.is_file():
            raise InputError(f"{self.option} {self.path}: the selected model of unit {unit} is missing ({path}); "
                             "the source run must be a finished run of a trained model")
        return path

    def checkpoint(self, unit: str, name: str | None = None, modules: Iterable[str] = ("model",)
                   ) -> dict[str, Any]:
        """The selected model of ``unit``, loaded on the CPU with ``weights_only=True``.

        ``modules`` are the module names that must be in it (refused, naming the file, otherwise).
        """
        path = self.require_checkpoint(unit, name)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any unreadable file is bad input here
            raise InputError(f"{self.option}: cannot load {path} ({type(exc).__name__}: {exc})") from None
        if not isinstance(state, dict):
            raise InputError(f"{self.option}: {path} is not a checkpoint of the kit (expected a mapping of module "
                             "states)")
        missing = [m for m in modules if not isinstance(state.get(m), Mapping)]
        if missing:
            raise InputError(f"{self.option}: {path} has no state of module(s) {missing} (it holds "
                             f"{sorted(k for k in state if k != 'epoch')})")
        state["__path__"] = str(path)
        return state


def load_initial_states(modules: Mapping[str, nn.Module], checkpoint: Mapping[str, Any], names: Iterable[str],
                        new: Iterable[str] = (), where: str | None = None) -> dict[str, Any]:
    """Load ``checkpoint[name]`` into ``modules[name]`` for every name of ``names``, in place.

    Parameters
    ----------
    modules : mapping of str to nn.Module
        A unit's freshly built modules (e.g. ``UnitModules.modules``).
    checkpoint : mapping
        A selected-model checkpoint (:meth:`SourceRun.checkpoint`).
    names : iterable of str
        The modules to load (others keep their fresh state, e.g. an objective of another kind).
    new : iterable of str
        Dotted paths ``"<module>.<submodule>"`` of parts absent from the source (e.g. the encoder of a new
        modality, ``"model.backbone.encoders.text"``): their parameters are expected to be missing from the
        checkpoint and keep their fresh initialisation.
    where : str, optional
        The checkpoint file, for messages (default: ``checkpoint["__path__"]``).

    Returns
    -------
    dict
        ``{"loaded": [module names], "kept_initial": [new paths], "epoch": source epoch}``.

    Raises
    ------
    InputError
        Naming the file and the entry, when an entry is missing from the checkpoint (outside ``new``), is not
        expected by the module, or has another shape.
    """
    where = where or str(checkpoint.get("__path__", "the checkpoint"))
    new = tuple(new)
    loaded = []
    for name in names:
        module = modules[name]
        state = checkpoint.get(name)
        if not isinstance(state, Mapping):
            raise InputError(f"{where}: no state of module {name!r}")
        own = module.state_dict()
        fresh = [k for k in own if any(f"{name}.{k}".startswith(p + ".") for p in new)]
        missing = [k for k in own if k not in state and k not in fresh]
        unexpected = [k for k in state if k not in own]
        stale = [k for k in fresh if k in state]
        if missing or unexpected or stale:
            parts = []
            if missing:
                parts.append(f"missing {len(missing)} entr(ies) this run's model has, e.g. {name}.{missing[0]}")
            if unexpected:
                parts.append(f"{len(unexpected)} entr(ies) this run's model lacks, e.g. {name}.{unexpected[0]}")
            if stale:
                parts.append(f"entries of a part that should be new, e.g. {name}.{stale[0]}")
            raise InputError(f"{where}: module {name!r} does not fit this run's model: {'; '.join(parts)} "
                             "(another architecture, modality set or option?)")
        for key, value in state.items():
            if isinstance(value, torch.Tensor) and tuple(value.shape) != tuple(own[key].shape):
                raise InputError(f"{where}: {name}.{key} has shape {list(value.shape)} in the checkpoint but "
                                 f"{list(own[key].shape)} in this run's model (another --embed-dim, atlas or "
                                 "encoder?)")
        module.load_state_dict({**{k: own[k] for k in fresh}, **state})
        loaded.append(name)
    return {"loaded": loaded, "kept_initial": list(new), "epoch": checkpoint.get("epoch")}

"""Command-line parsing with an optional YAML config whose keys the flags override.

A config file is a YAML mapping of option values, keyed by the long option names (``epochs``,
``no-quality-filter``) or their destinations (``quality_checked``), with ``-`` or ``_``. Each value
is checked against its option as strictly as the command line would be, and more: a flag takes a
YAML boolean (``true`` / ``false``) and nothing else, an integer option an integer (not ``1.7``,
not ``"3"``), a float option a number (``1e-4`` reads as a number, as in YAML 1.2), a string option
a string, ``null`` is taken only by options whose default is None, and a list only by options
that take several values (a single value is taken as a list of one there). Errors name the file,
the key and the expected type.

:class:`HelpFormatter` is the front ends' ``--help`` formatter: it shows an option's default only
when that informs.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import re
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """``--help`` with each option's default shown only when it informs.

    The description keeps its line breaks (the front ends pass their module docstring). An option's
    help gets ``(default: ...)`` appended unless the option is a flag (``store_true``,
    ``store_false``, ``store_const``, ``BooleanOptionalAction``: their name says what they do), its
    default is None, empty or suppressed, or its help already mentions the default. List defaults
    are shown as they are typed (``fmri smri text``).

    Use it as ``argparse.ArgumentParser(..., formatter_class=HelpFormatter)``.
    """

    _FLAG_ACTIONS = (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse._StoreConstAction,
                     argparse.BooleanOptionalAction)

    def _get_help_string(self, action: argparse.Action) -> str:
        help_text = action.help or ""
        if not shows_default(action):
            return help_text
        default = format_default(action.default).replace("%", "%%")
        return f"{help_text} (default: {default})" if help_text else f"(default: {default})"


def shows_default(action: argparse.Action) -> bool:
    """Whether :class:`HelpFormatter` appends ``action``'s default to its help."""
    default = action.default
    if isinstance(action, HelpFormatter._FLAG_ACTIONS) or not action.option_strings:
        return False
    if action.help is argparse.SUPPRESS or default is None or default is argparse.SUPPRESS:
        return False
    if isinstance(default, (str, list, tuple, dict, set)) and len(default) == 0:
        return False
    return re.search(r"\bdefault", action.help or "", flags=re.IGNORECASE) is None


def format_default(value: Any) -> str:
    """A default as it would be typed on the command line (lists space-separated)."""
    if isinstance(value, (list, tuple)):
        return " ".join(format_default(v) for v in value)
    return str(value)


class _ConfigLoader(yaml.SafeLoader):
    """PyYAML's safe loader, reading ``1e-4`` as a float as YAML 1.2 does (YAML 1.1 needs ``1.0e-4``)."""


_ConfigLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                    |\.[0-9_]+(?:[eE][-+][0-9]+)?
                    |[-+]?\.(?:inf|Inf|INF)
                    |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))


def add_config_argument(parser: argparse.ArgumentParser) -> None:
    """Add ``-c/--config FILE`` to ``parser``."""
    parser.add_argument("-c", "--config", type=Path, default=None,
                        help="YAML file of option values (keys as the long option names, with - or _); "
                             "flags given on the command line override them")


def read_yaml_mapping(path: str | Path, what: str = "config file", error: type[Exception] = ValueError
                      ) -> dict[str, Any]:
    """A YAML file that must hold a mapping (empty file: ``{}``); ``error`` names the file and the problem."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{what} {path} does not exist")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_ConfigLoader) or {}
    except yaml.YAMLError as exc:
        raise error(f"{what} {path}: not valid YAML ({exc})") from None
    if not isinstance(data, dict):
        raise error(f"{what} {path}: expected a mapping, got {type(data).__name__}")
    return data


def load_config_file(path: str | Path, parser: argparse.ArgumentParser) -> dict[str, Any]:
    """Read a YAML mapping of option values and check each against its option.

    Parameters
    ----------
    path : str or Path
        The YAML file.
    parser : argparse.ArgumentParser
        The parser whose options the keys name (long option names or destinations, ``-`` or ``_``).

    Returns
    -------
    dict
        ``{destination: value}``, values converted as the command line would convert them.

    Raises
    ------
    ValueError
        Naming the file, the key and what was expected: an unknown key (with close matches), a value of
        the wrong type (see the module docstring), a value not among the option's choices, or two keys
        for the same option.
    """
    path = Path(path)
    data = read_yaml_mapping(path)
    by_dest: dict[str, argparse.Action] = {}
    by_option: dict[str, argparse.Action] = {}
    for action in parser._actions:
        if action.dest in ("help", "config") or isinstance(action, argparse._VersionAction):
            continue
        by_dest[action.dest] = action
        for option in action.option_strings:
            if option.startswith("--"):
                by_option[option[2:].replace("-", "_")] = action
    values: dict[str, Any] = {}
    keys_of: dict[str, str] = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        action = by_dest.get(name) or by_option.get(name)
        if action is None:
            close = difflib.get_close_matches(name, sorted(set(by_dest) | set(by_option)), n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ValueError(f"config file {path}: unknown option {key!r}{hint}")
        where = f"config file {path}: option {key!r}"
        if action.dest in keys_of:
            raise ValueError(f"{where}: the same option as {keys_of[action.dest]!r}; give one of them")
        keys_of[action.dest] = str(key)
        values[action.dest] = config_value(action, value, where, option=None if name in by_dest else name)
    return values


def describe_value(value: Any) -> str:
    """A YAML value with its type, for error messages (``the string 'no'``, ``the number 1.7``)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, int):
        return f"the integer {value}"
    if isinstance(value, float):
        return f"the number {value!r}"
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, list):
        return f"the list {value!r}"
    if isinstance(value, dict):
        return f"a mapping {value!r}"
    return f"{type(value).__name__} {value!r}"


def _takes_several(action: argparse.Action) -> bool:
    nargs = action.nargs
    return (nargs in ("+", "*", argparse.REMAINDER) or (isinstance(nargs, int) and nargs > 1)
            or isinstance(action, (argparse._AppendAction, argparse._ExtendAction)))


def _expected_type(action: argparse.Action) -> str:
    kind = action.type
    if kind is int:
        return "an integer"
    if kind is float:
        return "a number"
    if kind in (None, str):
        return "a string"
    return f"a string for {getattr(kind, '__name__', repr(kind))}"


def _scalar(action: argparse.Action, value: Any, where: str) -> Any:
    """One value of ``action`` from YAML, checked and converted as strictly as :func:`load_config_file` says."""
    kind = action.type
    expected = _expected_type(action)
    if value is None or isinstance(value, (bool, list, dict)):
        raise ValueError(f"{where} expects {expected}, got {describe_value(value)}")
    if kind is int:
        if not isinstance(value, int):
            hint = " (write it without quotes)" if isinstance(value, str) and re.fullmatch(r"[-+]?\d+", value) else ""
            raise ValueError(f"{where} expects an integer, got {describe_value(value)}{hint}")
        converted: Any = value
    elif kind is float:
        if not isinstance(value, (int, float)):
            raise ValueError(f"{where} expects a number, got {describe_value(value)}")
        converted = float(value)
    else:
        if not isinstance(value, str):
            raise ValueError(f"{where} expects a string, got {describe_value(value)} (quote it in YAML: '{value}')")
        try:
            converted = value if kind in (None, str) else kind(value)
        except (TypeError, ValueError, argparse.ArgumentTypeError) as exc:
            raise ValueError(f"{where}: {exc}") from None
    if action.choices is not None and converted not in action.choices:
        raise ValueError(f"{where} must be one of {list(action.choices)}, got {describe_value(value)}")
    return converted


def config_value(action: argparse.Action, value: Any, where: str, *, option: str | None = None) -> Any:
    """The destination value that YAML ``value`` gives ``action``, or a ``ValueError`` that says why not.

    Parameters
    ----------
    action : argparse.Action
        The option.
    value : Any
        The value read from YAML.
    where : str
        The start of error messages (file and key).
    option : str, optional
        The long option name the key gave (``no_quality_filter``), when it was not the destination. A
        flag's ``true`` then means "given": ``no-quality-filter: true`` sets ``quality_checked`` to false.
    """
    if isinstance(action, argparse._CountAction):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{where} expects a count (an integer >= 0), got {describe_value(value)}")
        return value
    if isinstance(action, (argparse._StoreConstAction, argparse.BooleanOptionalAction)):
        if not isinstance(value, bool):
            quoted = " (in quotes, so a string)" if isinstance(value, str) else ""
            raise ValueError(f"{where} expects true or false, got {describe_value(value)}{quoted}")
        if isinstance(action, argparse.BooleanOptionalAction):  # keyed x: value; keyed no-x: its negation
            negated = option is not None and any(o.startswith("--no-") and o[2:].replace("-", "_") == option
                                                 for o in action.option_strings)
            return not value if negated else value
        if not isinstance(action.const, bool):  # store_const: true gives the constant
            return action.const if value else action.default
        if option is None:  # keyed by the destination: the value itself
            return value
        return action.const if value else not action.const  # keyed by the flag: given or not
    if value is None:
        if action.default is None:
            return None
        raise ValueError(f"{where} expects {_expected_type(action)}, got null (the option has a default: "
                         f"{format_default(action.default)}; leave the key out to keep it)")
    if _takes_several(action):
        items = value if isinstance(value, list) else [value]
        if action.nargs == "+" and not items:
            raise ValueError(f"{where} expects at least one value, got an empty list")
        if isinstance(action.nargs, int) and len(items) != action.nargs:
            raise ValueError(f"{where} expects a list of {action.nargs} values, got {describe_value(value)}")
        return [_scalar(action, item, f"{where}, item {i + 1}") for i, item in enumerate(items)]
    if isinstance(value, list):
        raise ValueError(f"{where} takes one value, not a list; got {describe_value(value)}")
    return _scalar(action, value, where)


def matches_type(value: Any, hint: Any) -> bool:
    """Whether ``value`` is of the type ``hint`` (a dataclass field's annotation), strictly.

    ``bool`` is not an ``int`` here, an ``int`` is a ``float``, ``list[X]`` / ``tuple[X, ...]`` /
    ``Sequence[X]`` check every item, unions and ``Literal`` are understood; ``Any`` and types this
    does not know match everything.
    """
    origin = typing.get_origin(hint)
    if hint is Any:
        return True
    if hint is None or hint is type(None):
        return value is None
    if origin in (typing.Union, types.UnionType):
        return any(matches_type(value, arg) for arg in typing.get_args(hint))
    if origin is typing.Literal:
        return value in typing.get_args(hint)
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin in (list, tuple, Sequence) or hint in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return False
        args = [a for a in typing.get_args(hint) if a is not Ellipsis]
        return len(args) != 1 or all(matches_type(item, args[0]) for item in value)
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True


def describe_type(hint: Any) -> str:
    """A type annotation in words, for error messages (``an integer or null``)."""
    origin = typing.get_origin(hint)
    if hint is None or hint is type(None):
        return "null"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe_type(arg) for arg in typing.get_args(hint))
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(hint))
    if origin in (list, tuple, Sequence):
        args = [a for a in typing.get_args(hint) if a is not Ellipsis]
        return f"a list of {describe_type(args[0])} values" if len(args) == 1 else "a list"
    words = {bool: "true or false", int: "an integer", float: "a number", str: "a string", list: "a list"}
    return words.get(hint, getattr(hint, "__name__", str(hint)))


def check_field_types(values: dict[str, Any], config_class: type, where: str) -> None:
    """Raise ``ValueError`` naming the first value that does not match its field of the dataclass ``config_class``.

    Values whose name is not a field are not checked.
    """
    hints = typing.get_type_hints(config_class)
    for name, value in values.items():
        if name in hints and not matches_type(value, hints[name]):
            raise ValueError(f"{where}: option {name!r} expects {describe_type(hints[name])} "
                             f"(field {config_class.__name__}.{name}), got {describe_value(value)}")


def _parse_with_config(parser: argparse.ArgumentParser, argv: Sequence[str] | None,
                       config_class: type | None, presets: Mapping[str, Mapping[str, Any]] | None = None,
                       preset_dest: str = "setting") -> argparse.Namespace:
    if not any(action.dest == "config" for action in parser._actions):
        add_config_argument(parser)
    pre, _ = parser.parse_known_args(argv)
    values: dict[str, Any] = {}
    if pre.config is not None:
        try:
            values = load_config_file(pre.config, parser)
            if config_class is not None:
                check_field_types(values, config_class, f"config file {pre.config}")
        except (ValueError, FileNotFoundError) as exc:
            parser.error(str(exc))
    if presets:  # a named set of defaults, below the config file's values and the flags
        default = parser.get_default(preset_dest)
        chosen = getattr(pre, preset_dest)
        name = chosen if chosen != default else values.get(preset_dest, default)
        parser.set_defaults(**dict(presets.get(name, {})))
    parser.set_defaults(**values)
    return parser.parse_args(argv)


def parse_args_with_config(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None,
                           presets: Mapping[str, Mapping[str, Any]] | None = None) -> argparse.Namespace:
    """Parse ``argv``; values from ``-c config.yaml`` become defaults that explicit flags override (and ``presets``
    as in :func:`parse_dataclass_config`).

    The file's values are checked by :func:`load_config_file`; a bad file is a command-line error
    (exit status 2) that names the file, the key and what was expected.
    """
    return _parse_with_config(parser, argv, None, presets)


def parse_dataclass_config(parser: argparse.ArgumentParser, config_class: type[T],
                           argv: Sequence[str] | None = None,
                           presets: Mapping[str, Mapping[str, Any]] | None = None, **overrides: Any) -> T:
    """Parse ``argv`` (with ``-c config.yaml``) into an instance of the dataclass ``config_class``.

    Options whose destination is a field of the dataclass become its values; ``overrides`` are applied on
    top. The config file's values are checked against their options (:func:`load_config_file`) and against
    the dataclass's field types (:func:`check_field_types`). A ``ValueError`` raised by the dataclass (its
    own validation) becomes a command-line error.

    ``presets`` maps the values of the ``--setting`` option (given as a flag or in the config file) to
    defaults: a chosen preset's values replace the parser's defaults, and the config file's values and the
    flags given still override them.
    """
    args = _parse_with_config(parser, argv, config_class, presets)
    names = {f.name for f in dataclasses.fields(config_class)}
    values = {key: value for key, value in vars(args).items() if key in names} | overrides
    try:
        return config_class(**values)
    except ValueError as exc:
        parser.error(str(exc))
        raise  # unreachable: parser.error exits

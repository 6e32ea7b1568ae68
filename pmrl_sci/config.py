"""Command-line parsing with an optional YAML config whose keys the flags override."""

from __future__ import annotations

import argparse
import dataclasses
import difflib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


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
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise error(f"{what} {path}: not valid YAML ({exc})") from None
    if not isinstance(data, dict):
        raise error(f"{what} {path}: expected a mapping, got {type(data).__name__}")
    return data


def load_config_file(path: str | Path, parser: argparse.ArgumentParser) -> dict[str, Any]:
    """Read a YAML mapping and check its keys against the parser's options."""
    path = Path(path)
    data = read_yaml_mapping(path)
    known = {action.dest: action for action in parser._actions if action.dest not in ("help", "config")}
    values: dict[str, Any] = {}
    for key, value in data.items():
        dest = str(key).replace("-", "_")
        if dest not in known:
            close = difflib.get_close_matches(dest, list(known), n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ValueError(f"config file {path}: unknown option {key!r}{hint}")
        action = known[dest]
        if action.type is not None and value is not None and not isinstance(value, list):
            try:
                value = action.type(value)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"config file {path}: option {key!r}: {exc}") from None
        if action.choices is not None and value is not None:
            items = value if isinstance(value, list) else [value]
            bad = [v for v in items if v not in action.choices]
            if bad:
                raise ValueError(f"config file {path}: option {key!r} must be one of {list(action.choices)}, "
                                 f"got {bad}")
        values[dest] = value
    return values


def parse_args_with_config(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse ``argv``; values from ``-c config.yaml`` become defaults that explicit flags override."""
    if not any(action.dest == "config" for action in parser._actions):
        add_config_argument(parser)
    pre, _ = parser.parse_known_args(argv)
    if pre.config is not None:
        try:
            parser.set_defaults(**load_config_file(pre.config, parser))
        except (ValueError, FileNotFoundError) as exc:
            parser.error(str(exc))
    return parser.parse_args(argv)


def parse_dataclass_config(parser: argparse.ArgumentParser, config_class: type[T],
                           argv: Sequence[str] | None = None, **overrides: Any) -> T:
    """Parse ``argv`` (with ``-c config.yaml``) into an instance of the dataclass ``config_class``.

    Options whose destination is a field of the dataclass become its values; ``overrides`` are applied on
    top. A ``ValueError`` raised by the dataclass (its own validation) becomes a command-line error.
    """
    args = parse_args_with_config(parser, argv)
    names = {f.name for f in dataclasses.fields(config_class)}
    values = {key: value for key, value in vars(args).items() if key in names} | overrides
    try:
        return config_class(**values)
    except ValueError as exc:
        parser.error(str(exc))
        raise  # unreachable: parser.error exits

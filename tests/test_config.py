"""YAML config files checked strictly against the options and the config dataclass; the --help formatter."""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from pmrl_sci.config import (
    HelpFormatter,
    load_config_file,
    matches_type,
    parse_args_with_config,
    parse_dataclass_config,
)


@dataclass
class SmallConfig:
    """A config dataclass in the style of the front ends'."""

    modalities: list[str] = field(default_factory=lambda: ["fmri", "smri"])
    quality_checked: bool = True
    download: bool = False
    epochs: int | None = None
    folds: int | None = None
    seeds: int = 1
    lr: float = 1e-4
    objective: str = "pmrl"
    anchor: str | None = None
    cohort_size: int = 200


def small_parser() -> argparse.ArgumentParser:
    """Options of each kind the front ends use (the ABIDE front end's, trimmed)."""
    d = SmallConfig()
    parser = argparse.ArgumentParser(prog="small", formatter_class=HelpFormatter)
    parser.add_argument("--modalities", nargs="+", choices=["fmri", "smri", "text"], default=d.modalities,
                        help="modalities to use")
    parser.add_argument("--no-quality-filter", dest="quality_checked", action="store_false",
                        help="keep subjects that fail the quality filter")
    parser.add_argument("--download", action="store_true", help="fetch the data set")
    parser.add_argument("--epochs", type=int, default=d.epochs,
                        help="maximum epochs (default 100 on real data, 30 on the simulated cohort)")
    parser.add_argument("--folds", type=int, default=d.folds, help="K-fold cross-validation")
    parser.add_argument("--seeds", type=int, default=d.seeds, help="trials")
    parser.add_argument("--lr", type=float, default=d.lr, help="learning rate")
    parser.add_argument("--objective", choices=["pmrl", "gram", "vast"], default=d.objective, help="alignment loss")
    parser.add_argument("--anchor", default=d.anchor, help="anchor modality (default: the last)")
    parser.add_argument("--cohort-size", default=d.cohort_size, help="subjects generated (no type: a string option)")
    return parser


def _load(tmp_path: Path, text: str) -> dict:
    path = tmp_path / "config.yaml"
    path.write_text(text, encoding="utf-8")
    return load_config_file(path, small_parser())


def _config(tmp_path: Path, text: str, *argv: str) -> SmallConfig:
    path = tmp_path / "config.yaml"
    path.write_text(text, encoding="utf-8")
    return parse_dataclass_config(small_parser(), SmallConfig, ["-c", str(path), *argv])


def _refused(tmp_path: Path, text: str) -> str:
    with pytest.raises(ValueError) as info:
        _load(tmp_path, text)
    return str(info.value)


def test_flags_take_only_yaml_booleans(tmp_path):
    message = _refused(tmp_path, 'quality_checked: "no"\n')
    assert "option 'quality_checked' expects true or false, got the string 'no' (in quotes, so a string)" in message
    assert "config.yaml" in message
    assert "expects true or false, got the integer 0" in _refused(tmp_path, "download: 0\n")
    assert _load(tmp_path, "quality_checked: no\n") == {"quality_checked": False}  # YAML's unquoted no is false
    assert _load(tmp_path, "quality-checked: true\ndownload: yes\n") == {"quality_checked": True, "download": True}


def test_flags_keyed_by_their_option_name(tmp_path):
    assert _load(tmp_path, "no-quality-filter: true\n") == {"quality_checked": False}
    assert _load(tmp_path, "no_quality_filter: false\n") == {"quality_checked": True}
    assert "the same option as 'quality_checked'" in _refused(tmp_path, "quality_checked: true\n"
                                                                        "no-quality-filter: true\n")


def test_boolean_optional_action_keyed_either_way(tmp_path):
    parser = argparse.ArgumentParser()
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True)
    path = tmp_path / "c.yaml"
    cases = (("progress: false\n", False), ("no-progress: true\n", False), ("no_progress: false\n", True))
    for text, expected in cases:
        path.write_text(text)
        assert load_config_file(path, parser) == {"progress": expected}


def test_integers_refuse_floats_strings_and_booleans(tmp_path):
    assert "option 'epochs' expects an integer, got the number 1.7" in _refused(tmp_path, "epochs: 1.7\n")
    assert "expects an integer, got the number 2.0" in _refused(tmp_path, "epochs: 2.0\n")
    assert "expects an integer, got the string '3' (write it without quotes)" in _refused(tmp_path, 'epochs: "3"\n')
    assert "expects an integer, got the boolean true" in _refused(tmp_path, "seeds: true\n")
    assert _load(tmp_path, "epochs: 3\nseeds: 2\n") == {"epochs": 3, "seeds": 2}


def test_floats_take_numbers_including_exponent_without_a_dot(tmp_path):
    values = _load(tmp_path, "lr: 1e-4\n")  # YAML 1.1 (PyYAML's default) would read the string '1e-4'
    assert values == {"lr": 1e-4} and isinstance(values["lr"], float)
    assert _load(tmp_path, "lr: 3\n") == {"lr": 3.0}
    assert "option 'lr' expects a number, got the string 'fast'" in _refused(tmp_path, "lr: fast\n")


def test_null_only_where_the_default_is_none(tmp_path):
    assert _load(tmp_path, "epochs: null\nanchor: ~\n") == {"epochs": None, "anchor": None}
    message = _refused(tmp_path, "lr: null\n")
    assert "option 'lr' expects a number, got null (the option has a default: 0.0001" in message


def test_lists_only_where_the_option_takes_several_values(tmp_path):
    assert "option 'folds' takes one value, not a list; got the list [3]" in _refused(tmp_path, "folds: [3]\n")
    assert _load(tmp_path, "modalities: [fmri, text]\n") == {"modalities": ["fmri", "text"]}
    assert _load(tmp_path, "modalities: smri\n") == {"modalities": ["smri"]}
    assert "item 2 must be one of ['fmri', 'smri', 'text'], got the string 'eeg'" in _refused(
        tmp_path, "modalities: [fmri, eeg]\n")
    assert "expects at least one value, got an empty list" in _refused(tmp_path, "modalities: []\n")


def test_strings_and_choices(tmp_path):
    assert "option 'objective' must be one of ['pmrl', 'gram', 'vast'], got the string 'gramm'" in _refused(
        tmp_path, "objective: gramm\n")
    assert "option 'anchor' expects a string, got the boolean false" in _refused(tmp_path, "anchor: no\n")
    assert "expects a string, got the integer 3 (quote it in YAML: '3')" in _refused(tmp_path, "anchor: 3\n")
    assert "unknown option 'epoch' (did you mean epochs" in _refused(tmp_path, "epoch: 3\n")


def test_dataclass_field_types_are_checked(tmp_path):
    config = _config(tmp_path, "epochs: 4\nno-quality-filter: true\nlr: 1e-3\n", "--epochs", "6")
    assert (config.epochs, config.quality_checked, config.lr) == (6, False, 1e-3)  # the flag overrides the file
    with pytest.raises(SystemExit):  # the option has no type, the field is an int
        _config(tmp_path, 'cohort_size: "300"\n')
    assert _config(tmp_path, "seeds: 3\n").seeds == 3


def test_dataclass_field_type_error_is_named(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        _config(tmp_path, 'cohort_size: "300"\n')
    assert info.value.code == 2
    assert ("option 'cohort_size' expects an integer (field SmallConfig.cohort_size), got the string '300'"
            in capsys.readouterr().err)


def test_command_line_errors_exit_with_status_2(tmp_path, capsys):
    path = tmp_path / "config.yaml"
    path.write_text("folds: [3]\n")
    with pytest.raises(SystemExit) as info:
        parse_args_with_config(small_parser(), ["-c", str(path)])
    assert info.value.code == 2 and "option 'folds' takes one value, not a list" in capsys.readouterr().err


def test_matches_type():
    assert matches_type(3, int) and not matches_type(True, int) and not matches_type(1.7, int)
    assert matches_type(3, float) and matches_type(None, int | None) and not matches_type(None, int)
    assert matches_type(["a"], list[str]) and not matches_type(["a", 1], list[str]) and not matches_type("a", list[str])
    assert matches_type(False, bool) and not matches_type("no", bool)


# -- --help -------------------------------------------------------------------------------------------


def _help_entries(parser: argparse.ArgumentParser) -> dict[str, str]:
    """``{option: its help text}`` from ``parser.format_help()``, whitespace collapsed."""
    text = parser.format_help()
    entries = {}
    for chunk in re.split(r"\n(?=  -)", text):
        match = re.match(r"\s+(?:-\w, )?(--[\w-]+)", chunk)
        if match:
            entries[match.group(1)] = " ".join(chunk.split())
    return entries


def test_help_formatter_shows_only_informative_defaults(monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    entries = _help_entries(small_parser())
    assert "(default" not in entries["--no-quality-filter"]  # store_false: default True says nothing
    assert "(default" not in entries["--download"]
    assert "(default" not in entries["--folds"]  # None
    assert entries["--epochs"].count("default") == 1  # the help states it already
    assert entries["--anchor"].count("default") == 1
    assert entries["--seeds"].endswith("trials (default: 1)")
    assert entries["--lr"].endswith("learning rate (default: 0.0001)")
    assert entries["--modalities"].endswith("modalities to use (default: fmri smri)")


def test_help_formatter_escapes_percent_and_keeps_the_description():
    parser = argparse.ArgumentParser(description="first line\n  indented line", formatter_class=HelpFormatter)
    parser.add_argument("--fraction", default="10%", help="share of the data")
    text = parser.format_help()
    assert "share of the data (default: 10%)" in text
    assert "first line\n  indented line" in text


def test_help_formatter_on_the_abide_front_end(monkeypatch):
    from pmrl_sci.abide import build_parser

    monkeypatch.setenv("COLUMNS", "120")
    parser = build_parser()
    before = _help_entries(parser)
    assert "(default: True)" in before["--no-quality-filter"] or parser.formatter_class is HelpFormatter
    parser.formatter_class = HelpFormatter
    entries = _help_entries(parser)
    for option in ("--no-quality-filter", "--instance-term", "--sign-aware", "--gram-volume-only",
                   "--download", "--no-progress", "--folds"):
        assert "(default" not in entries[option], entries[option]
    for entry in entries.values():
        assert "(default: None)" not in entry and entry.count("(default:") <= 1, entry
    assert entries["--epochs"].count("default") == 1
    assert entries["--data-dir"].count("default") == 1
    assert entries["--out"].count("default") == 1  # its help says it: (default runs/abide-<time>)
    assert entries["--lr"].endswith("(default: 0.0001)")
    assert entries["--modalities"].endswith("(default: fmri smri text)")

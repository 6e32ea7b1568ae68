"""Registry behaviour and discovery of outside encoders through entry points."""

import importlib
import json
import os
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest
import torch

from pmrl_sci.registry import (
    BUILTIN_DATASETS,
    BUILTIN_ENCODERS,
    BUILTIN_HEADS,
    BUILTIN_OBJECTIVES,
    ENCODERS,
    Registry,
    UnknownNameError,
    build_encoder,
    list_encoders,
)

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_register_build_list_and_errors():
    registry = Registry("widget")

    @registry.register("small_widget")
    class SmallWidget:
        def __init__(self, size: int = 1) -> None:
            self.size = size

    @registry.register()
    def big_widget(size: int = 10):
        return SmallWidget(size)

    assert registry.names() == ["big_widget", "small_widget"]
    assert registry.build("small_widget", size=3).size == 3
    assert registry.build("big_widget").size == 10
    assert "small_widget" in registry and len(registry) == 2
    with pytest.raises(UnknownNameError, match="Did you mean 'small_widget'") as info:
        registry.build("smal_widget")
    assert "Registered widgets: big_widget, small_widget" in str(info.value)
    with pytest.raises(ValueError, match="already registered"):
        registry.add("small_widget", big_widget)
    registry.add("small_widget", big_widget, override=True)
    with pytest.raises(TypeError, match="cannot build widget 'big_widget'"):
        registry.build("big_widget", colour="red")


def test_builtin_encoders_are_registered():
    names = list_encoders()
    assert {"mlp", "text"} <= set(names)
    encoder = build_encoder("mlp", in_features=5, embed_dim=7)
    assert encoder(torch.randn(2, 5)).shape == (2, 7)
    with pytest.raises(ValueError, match="modality 'smri'"):
        encoder.check_input(torch.randn(2, 6), "smri")


def _install_fake_distribution(root, module_name, entry_points):
    (root / f"{module_name}.py").write_text(textwrap.dedent('''
        import torch
        from pmrl_sci.encoders.base import Encoder, InputSpec
        from pmrl_sci.registry import register_encoder

        class OutsideLinear(Encoder):
            def __init__(self, in_features: int = 4, embed_dim: int = 8):
                super().__init__()
                self.embed_dim = embed_dim
                self.input_spec = InputSpec("tensor", (in_features,))
                self.linear = torch.nn.Linear(in_features, embed_dim)

            def forward(self, x):
                return self.linear(x)

        @register_encoder("outside_self_registered")
        class SelfRegistered(OutsideLinear):
            pass
    '''))
    dist = root / f"{module_name}-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module_name}\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[pmrl_sci.encoders]\n" + entry_points)


def test_outside_encoder_discovered_through_entry_point(tmp_path, monkeypatch):
    _install_fake_distribution(tmp_path, "outside_encoders", "outside_linear = outside_encoders:OutsideLinear\n"
                               "outside_module = outside_encoders\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    try:
        ENCODERS.load_entry_points(force=True)
        encoder = build_encoder("outside_linear", in_features=3, embed_dim=6)
        assert encoder(torch.randn(5, 3)).shape == (5, 6)
        assert "outside_self_registered" in list_encoders()  # a module entry point registers on import
    finally:
        for name in ("outside_linear", "outside_self_registered"):
            ENCODERS._factories.pop(name, None)


def test_broken_plugin_is_skipped_with_a_warning(tmp_path, monkeypatch, caplog):
    _install_fake_distribution(tmp_path, "broken_encoders", "broken = no_such_module_xyz:Thing\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    try:
        ENCODERS.load_entry_points(force=True)
        assert "broken" not in ENCODERS.names()
        assert any("could not load encoder plug-in 'broken'" in r.getMessage() for r in caplog.records)
    finally:
        for name in ("outside_self_registered",):
            ENCODERS._factories.pop(name, None)


def test_heads_are_built_by_name():
    from pmrl_sci.registry import build_head, list_heads

    assert {"mlp", "linear"} <= set(list_heads())
    head = build_head("mlp", in_features=8, num_classes=3, num_layers=3)
    assert head(torch.randn(4, 8)).shape == (4, 3)


def _run_python(code: str) -> str:
    """Run ``code`` in a fresh interpreter (nothing imported yet) and return its stdout."""
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                            check=False, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_registry_is_a_leaf_and_builds_only_the_family_it_needs():
    out = _run_python('''
        import json, sys
        import pmrl_sci.registry as registry
        before = sorted(m for m in sys.modules if m.startswith("pmrl_sci"))
        encoder = registry.build_encoder("mlp", in_features=3, embed_dim=4)
        after = sorted(m for m in sys.modules if m.startswith("pmrl_sci"))
        print(json.dumps({"before": before, "after": after, "type": type(encoder).__name__}))
    ''')
    report = json.loads(out)
    assert report["before"] == ["pmrl_sci", "pmrl_sci.registry"]
    assert report["type"] == "MLPEncoder"
    assert "pmrl_sci.encoders.mlp" in report["after"]
    other_families = {module for name, module in BUILTIN_ENCODERS.items() if module != "pmrl_sci.encoders.mlp"}
    assert not other_families & set(report["after"])
    assert not any(m.startswith(("pmrl_sci.objectives", "pmrl_sci.heads", "pmrl_sci.data")) for m in report["after"])


def test_builtin_tables_match_what_the_modules_register():
    out = _run_python('''
        import importlib, json
        from pmrl_sci import registry
        tables = {"encoder": (registry.ENCODERS, registry.BUILTIN_ENCODERS),
                  "objective": (registry.OBJECTIVES, registry.BUILTIN_OBJECTIVES),
                  "head": (registry.HEADS, registry.BUILTIN_HEADS),
                  "dataset": (registry.DATASETS, registry.BUILTIN_DATASETS)}
        report = {}
        for kind, (reg, table) in tables.items():
            for module in sorted(set(table.values())):
                importlib.import_module(module)
            report[kind] = {"registered": sorted(reg._factories), "table": sorted(table),
                            "by_module": {n: f.__module__ for n, f in reg._factories.items()}}
        print(json.dumps(report))
    ''')
    tables = {"encoder": BUILTIN_ENCODERS, "objective": BUILTIN_OBJECTIVES, "head": BUILTIN_HEADS,
              "dataset": BUILTIN_DATASETS}
    for kind, report in json.loads(out).items():
        assert report["registered"] == report["table"], kind
        for name, module in report["by_module"].items():
            assert module == tables[kind][name], (kind, name)


def test_lazy_module_is_imported_on_first_lookup(tmp_path, monkeypatch):
    (tmp_path / "lazy_widgets.py").write_text(textwrap.dedent('''
        from tests_lazy_registry import WIDGETS

        @WIDGETS.register("round")
        def round_widget(size: int = 2):
            return ("round", size)
    '''))
    (tmp_path / "lazy_nothing.py").write_text("REGISTERS = None\n")
    widgets = Registry("widget", lazy_modules={"round": "lazy_widgets", "square": "lazy_nothing"})
    holder = types.ModuleType("tests_lazy_registry")
    holder.WIDGETS = widgets
    monkeypatch.setitem(sys.modules, "tests_lazy_registry", holder)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "lazy_widgets", raising=False)
    assert widgets.names() == ["round", "square"] and "round" in widgets
    assert "lazy_widgets" not in sys.modules  # listing names imports nothing
    assert widgets.build("round", size=5) == ("round", 5)
    assert "lazy_widgets" in sys.modules
    with pytest.raises(RuntimeError, match="importing lazy_nothing did not register it"):
        widgets.get("square")

"""Registry behaviour and discovery of outside encoders through entry points."""

import importlib
import textwrap

import pytest
import torch

from pmrl_sci.registry import ENCODERS, Registry, UnknownNameError, build_encoder, list_encoders


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

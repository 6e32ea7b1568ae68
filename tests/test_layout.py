"""The package's layering: the data layer imports no training code, and modules stay readable in one sitting."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "pmrl_sci"
#: what the data layer may not import: everything above it (training, objectives, models, tasks, front ends).
#: ``pmrl_sci.registry`` is allowed: it is a leaf (imports no component; tests/test_registry.py checks that), and
#: data sets register their generators in it by name.
ABOVE_DATA = ("pmrl_sci.engine", "pmrl_sci.objectives", "pmrl_sci.spectral", "pmrl_sci.tasks", "pmrl_sci.training",
              "pmrl_sci.encoders", "pmrl_sci.heads", "pmrl_sci.options", "pmrl_sci.runs",
              "pmrl_sci.distributed", "pmrl_sci.sweep", "pmrl_sci.baselines", "pmrl_sci.reports",
              "pmrl_sci.abide", "pmrl_sci.houston13", "pmrl_sci.retrieval")
MAX_LINES = 600


def imported_modules(path: Path) -> set[str]:
    """Absolute module names imported anywhere in ``path`` (function-level imports included)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


@pytest.mark.parametrize("path", sorted((PACKAGE / "data").rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_data_layer_imports_nothing_above_it(path):
    above = sorted(name for name in imported_modules(path)
                   if any(name == top or name.startswith(top + ".") for top in ABOVE_DATA))
    assert not above, f"{path.relative_to(PACKAGE)} imports {above}: the data layer must not use training code"


def test_imported_modules_sees_function_level_imports(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from pmrl_sci.engine import train_unit\n    import pmrl_sci.tasks.abide\n")
    assert {"pmrl_sci.engine", "pmrl_sci.tasks.abide"} <= imported_modules(module)


def test_no_module_exceeds_the_size_limit():
    long = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines (split them by job): {long}"

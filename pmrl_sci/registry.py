"""One small registry type for encoders, objectives, heads and datasets.

Components register under a name with a decorator and are built by name, in the
style of ``timm.register_model`` / ``open_clip``'s factory::

    from pmrl_sci.registry import register_encoder, build_encoder

    @register_encoder("my_mlp")
    class MyMLP(torch.nn.Module):
        ...

    encoder = build_encoder("my_mlp", in_features=10, embed_dim=128)

Outside packages add encoders without touching this one, through the
``pmrl_sci.encoders`` entry-point group (``pyproject.toml``)::

    [project.entry-points."pmrl_sci.encoders"]
    my_mlp = "my_package.encoders:MyMLP"

An entry point may name a class or factory (registered under the entry point's
name) or a module whose import registers its encoders itself.

This module imports none of the components: it is a leaf that the encoder,
objective and head modules import to register themselves. The built-in
components are listed by name and module in :data:`BUILTIN_ENCODERS` (and its
siblings); a registry imports the module of a built-in name the first time that
name is looked up, so building ``"mlp"`` imports ``pmrl_sci.encoders.mlp`` and
no other encoder family.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import inspect
import logging
import types
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T", bound=Callable[..., Any])

ENCODER_ENTRY_POINT_GROUP = "pmrl_sci.encoders"


class UnknownNameError(KeyError):
    """Raised when a name is not in a registry; the message lists close matches."""

    def __str__(self) -> str:  # KeyError quotes its argument; keep the message readable
        return str(self.args[0]) if self.args else ""


class Registry(Generic[T]):
    """A name -> factory mapping with decorators, builders and plug-in discovery.

    Parameters
    ----------
    kind : str
        What the registry holds ("encoder", "objective", ...), used in messages.
    entry_point_group : str, optional
        An ``importlib.metadata`` entry-point group scanned (once, lazily) for
        components defined in other installed packages.
    lazy_modules : mapping of str to str, optional
        Names registered by importing a module: ``{name: "package.module"}``. The
        module is imported the first time ``name`` is looked up, and must register
        ``name`` when imported.
    """

    def __init__(self, kind: str, entry_point_group: str | None = None,
                 lazy_modules: dict[str, str] | None = None) -> None:
        self.kind = kind
        self.entry_point_group = entry_point_group
        self.lazy_modules: dict[str, str] = dict(lazy_modules or {})
        self._factories: dict[str, T] = {}
        self._entry_points_loaded = entry_point_group is None

    # -- registration -------------------------------------------------------------
    def register(self, name: str | None = None, *, override: bool = False) -> Callable[[T], T]:
        """Return a decorator that registers a class or factory under ``name``.

        Parameters
        ----------
        name : str, optional
            Registry name; defaults to the object's ``__name__`` in lower case.
        override : bool
            Replace an existing entry instead of raising ``ValueError``.
        """

        def decorator(factory: T) -> T:
            self.add(name or factory.__name__.lower(), factory, override=override)
            return factory

        return decorator

    def add(self, name: str, factory: T, *, override: bool = False) -> None:
        """Register ``factory`` under ``name`` (non-decorator form)."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"{self.kind} name must be a non-empty string, got {name!r}")
        if not callable(factory):
            raise TypeError(f"{self.kind} {name!r}: expected a class or callable, got {factory!r}")
        existing = self._factories.get(name)
        if existing is not None and existing is not factory and not override:
            raise ValueError(
                f"{self.kind} {name!r} is already registered (by {_describe(existing)}); "
                "pass override=True to replace it"
            )
        self._factories[name] = factory

    # -- lookup -------------------------------------------------------------------
    def get(self, name: str) -> T:
        """Return the factory registered as ``name``.

        Raises
        ------
        UnknownNameError
            With the registered names closest to ``name``.
        """
        self._load(name)
        try:
            return self._factories[name]
        except KeyError:
            names = self.names()
            close = difflib.get_close_matches(str(name), names, n=3, cutoff=0.5)
            hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}.{hint} Registered {self.kind}s: {', '.join(names) or '(none)'}"
            ) from None

    def build(self, name: str, /, **kwargs: Any) -> Any:
        """Build the component registered as ``name`` with keyword arguments."""
        factory = self.get(name)
        try:
            inspect.signature(factory).bind(**kwargs)
        except TypeError as exc:
            raise TypeError(f"cannot build {self.kind} {name!r}: {exc}") from None
        except ValueError:  # builtins without a signature
            pass
        return factory(**kwargs)

    def names(self) -> list[str]:
        """Sorted registered names: built-in ones (imported or not) and entry points included."""
        self.load_entry_points()
        return sorted(set(self._factories) | set(self.lazy_modules))

    def __contains__(self, name: object) -> bool:
        if name in self.lazy_modules:
            return True
        if name not in self._factories:
            self.load_entry_points()
        return name in self._factories

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def _load(self, name: str) -> None:
        """Make ``name`` registered if it can be: import its built-in module, else scan the entry points."""
        if name in self._factories:
            return
        module = self.lazy_modules.get(name) if isinstance(name, str) else None
        if module is not None:
            importlib.import_module(module)
            if name not in self._factories:
                raise RuntimeError(f"{self.kind} {name!r}: importing {module} did not register it")
            return
        self.load_entry_points()

    # -- plug-ins -----------------------------------------------------------------
    def load_entry_points(self, *, force: bool = False) -> None:
        """Import the components advertised in the entry-point group (once).

        A broken plug-in is logged and skipped: it must not make the kit unusable.
        """
        if self._entry_points_loaded and not force:
            return
        self._entry_points_loaded = True
        if self.entry_point_group is None:
            return
        for entry_point in importlib.metadata.entry_points(group=self.entry_point_group):
            try:
                obj = entry_point.load()
            except Exception as exc:  # noqa: BLE001 - a third-party import can fail any way
                logger.warning("could not load %s plug-in %r (%s): %s",
                               self.kind, entry_point.name, entry_point.value, exc)
                continue
            if isinstance(obj, types.ModuleType):
                continue  # importing the module registered its components
            if entry_point.name not in self._factories:
                self.add(entry_point.name, obj)


def _describe(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


#: Built-in encoders: name -> the module that registers it (imported on first lookup).
BUILTIN_ENCODERS: dict[str, str] = {
    "mlp": "pmrl_sci.encoders.mlp",
    "text": "pmrl_sci.encoders.text",
    "brainnettf": "pmrl_sci.encoders.brainnettf",
    "vanillatf": "pmrl_sci.encoders.vanillatf",
    "brainnetcnn": "pmrl_sci.encoders.brainnetcnn",
    "edge_mlp": "pmrl_sci.encoders.edge_mlp",
    "hsi_cnn": "pmrl_sci.encoders.cnn",
    "lidar_cnn": "pmrl_sci.encoders.cnn",
    "vision": "pmrl_sci.encoders.vision",
    "depth": "pmrl_sci.encoders.depth",
    "touch": "pmrl_sci.encoders.touch",
    "audio": "pmrl_sci.encoders.audio",
    "features": "pmrl_sci.encoders.features",
}
#: Built-in objectives: name -> module.
BUILTIN_OBJECTIVES: dict[str, str] = {
    "pmrl": "pmrl_sci.objectives.pmrl",
    "gram": "pmrl_sci.objectives.gram",
    "vast": "pmrl_sci.objectives.vast",
    "instance_matching": "pmrl_sci.objectives.matching",
    "classification": "pmrl_sci.objectives.classification",
}
#: Built-in heads: name -> module.
BUILTIN_HEADS: dict[str, str] = {"mlp": "pmrl_sci.heads", "linear": "pmrl_sci.heads"}
#: Built-in datasets: name -> module.
BUILTIN_DATASETS: dict[str, str] = {"synthetic_scenes": "pmrl_sci.data.synthetic_scenes"}

ENCODERS: Registry[Callable[..., Any]] = Registry("encoder", ENCODER_ENTRY_POINT_GROUP, BUILTIN_ENCODERS)
OBJECTIVES: Registry[Callable[..., Any]] = Registry("objective", lazy_modules=BUILTIN_OBJECTIVES)
HEADS: Registry[Callable[..., Any]] = Registry("head", lazy_modules=BUILTIN_HEADS)
DATASETS: Registry[Callable[..., Any]] = Registry("dataset", lazy_modules=BUILTIN_DATASETS)

register_encoder = ENCODERS.register
register_objective = OBJECTIVES.register
register_head = HEADS.register
register_dataset = DATASETS.register


def build_encoder(name: str, /, **kwargs: Any) -> Any:
    """Build a registered encoder (``pmrl_sci.encoders`` entry points included)."""
    return ENCODERS.build(name, **kwargs)


def build_head(name: str, /, **kwargs: Any) -> Any:
    """Build a registered head."""
    return HEADS.build(name, **kwargs)


def list_encoders() -> list[str]:
    """Names of the available encoders."""
    return ENCODERS.names()


def list_objectives() -> list[str]:
    """Names of the available objectives."""
    return OBJECTIVES.names()


def list_heads() -> list[str]:
    """Names of the available heads."""
    return HEADS.names()


def list_datasets() -> list[str]:
    """Names of the available datasets."""
    return DATASETS.names()

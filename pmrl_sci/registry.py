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
"""

from __future__ import annotations

import difflib
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
    """

    def __init__(self, kind: str, entry_point_group: str | None = None) -> None:
        self.kind = kind
        self.entry_point_group = entry_point_group
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
        if name not in self._factories:
            self.load_entry_points()
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
        """Sorted registered names (entry points included)."""
        self.load_entry_points()
        return sorted(self._factories)

    def __contains__(self, name: object) -> bool:
        if name not in self._factories:
            self.load_entry_points()
        return name in self._factories

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

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


ENCODERS: Registry[Callable[..., Any]] = Registry("encoder", ENCODER_ENTRY_POINT_GROUP)
OBJECTIVES: Registry[Callable[..., Any]] = Registry("objective")
HEADS: Registry[Callable[..., Any]] = Registry("head")
DATASETS: Registry[Callable[..., Any]] = Registry("dataset")

register_encoder = ENCODERS.register
register_objective = OBJECTIVES.register
register_head = HEADS.register
register_dataset = DATASETS.register


def build_encoder(name: str, /, **kwargs: Any) -> Any:
    """Build a registered encoder (``pmrl_sci.encoders`` entry points included)."""
    import pmrl_sci.encoders  # noqa: F401  - registers the built-in encoders

    return ENCODERS.build(name, **kwargs)


def build_head(name: str, /, **kwargs: Any) -> Any:
    """Build a registered head."""
    import pmrl_sci.heads  # noqa: F401

    return HEADS.build(name, **kwargs)


def list_encoders() -> list[str]:
    """Names of the available encoders."""
    import pmrl_sci.encoders  # noqa: F401

    return ENCODERS.names()


def list_objectives() -> list[str]:
    """Names of the available objectives."""
    import pmrl_sci.objectives  # noqa: F401

    return OBJECTIVES.names()


def list_heads() -> list[str]:
    """Names of the available heads."""
    import pmrl_sci.heads  # noqa: F401

    return HEADS.names()


def list_datasets() -> list[str]:
    """Names of the available datasets."""
    return DATASETS.names()

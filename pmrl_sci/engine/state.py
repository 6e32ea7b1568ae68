"""Resume state of a unit: RNG states and early stopping, as plain values that load with ``weights_only=True``."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from pmrl_sci.training import EarlyStopping


def capture_rng(generator: torch.Generator | None = None) -> dict[str, Any]:
    """Python, NumPy, torch (CPU and CUDA) and loader-generator states as tensors, tuples and numbers."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()  # noqa: NPY002 - the legacy global state
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": [kind, torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    if generator is not None:
        state["loader"] = generator.get_state()
    return state


def restore_rng(state: Mapping[str, Any], generator: torch.Generator | None = None) -> None:
    """Put back what :func:`capture_rng` recorded."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))  # noqa: NPY002
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if generator is not None and "loader" in state:
        generator.set_state(state["loader"])


def stopper_state(stopper: EarlyStopping) -> dict[str, Any]:
    """An :class:`EarlyStopping` as a dict of plain values."""
    return dataclasses.asdict(stopper)


def load_stopper(state: Mapping[str, Any]) -> EarlyStopping:
    """The :class:`EarlyStopping` recorded by :func:`stopper_state`."""
    return EarlyStopping(**dict(state))


def detached_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A copy of ``module.state_dict()`` that later training does not change."""
    return {k: v.detach().clone() for k, v in module.state_dict().items()}

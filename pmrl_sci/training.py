"""Training utilities shared by the front ends: seeding, devices, the multimodal model, early stopping."""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import torch
from torch import nn

from pmrl_sci.runs import is_rank_zero

T = TypeVar("T")


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed Python, NumPy and torch; with ``deterministic`` ask torch for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % (2**32))  # noqa: NPY002 - libraries still draw from the legacy global state
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def resolve_device(name: str | None = "auto") -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; otherwise ``torch.device(name)`` (checked)."""
    if name in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"--device {name}: CUDA is not available on this machine (use cpu or auto)")
    return device


def progress(iterable: Iterable[T], **kwargs: Any) -> Iterable[T]:
    """A tqdm progress bar on rank 0 (plain iteration elsewhere, or when ``disable=True``)."""
    from tqdm.auto import tqdm

    disable = kwargs.pop("disable", False) or not is_rank_zero()
    return tqdm(iterable, disable=disable, dynamic_ncols=True, **kwargs)


class MultimodalModel(nn.Module):
    """Encoders by modality: a batch dict ``{modality: input}`` -> embeddings ``{modality: [B, d]}``.

    Modalities missing from the batch are skipped (a missing key means a missing
    modality); each present input is checked against its encoder's ``input_spec`` first,
    so a wrong input fails with the modality's name.

    Parameters
    ----------
    encoders : mapping of str to nn.Module
        One encoder per modality, in the modality order used by the objectives.
    """

    def __init__(self, encoders: Mapping[str, nn.Module]) -> None:
        super().__init__()
        if not encoders:
            raise ValueError("MultimodalModel needs at least one encoder")
        self.encoders = nn.ModuleDict(dict(encoders))

    @property
    def modalities(self) -> list[str]:
        """Modality names in order."""
        return list(self.encoders.keys())

    def forward(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """Encode every modality present in ``batch``."""
        embeddings: dict[str, torch.Tensor] = {}
        for name, encoder in self.encoders.items():
            if name not in batch:
                continue
            value = batch[name]
            check = getattr(encoder, "check_input", None)
            if check is not None:
                check(value, name)
            embeddings[name] = encoder(value)
        if not embeddings:
            raise ValueError(f"the batch holds none of the model's modalities {self.modalities}; "
                             f"it has {sorted(map(str, batch))}")
        return embeddings  # other keys (labels, masks, ids) are ignored


def fuse_mean(embeddings: Mapping[str, torch.Tensor], mask: Mapping[str, torch.Tensor] | None = None,
              normalize: bool = True) -> torch.Tensor:
    """Average of the (optionally L2-normalised) modality embeddings, over present modalities only."""
    stacked = []
    weights = []
    for name, value in embeddings.items():
        value = nn.functional.normalize(value, dim=-1) if normalize else value
        present = mask[name].to(value.dtype) if mask is not None and name in mask else value.new_ones(value.shape[0])
        stacked.append(value * present.unsqueeze(1))
        weights.append(present)
    total = torch.stack(weights).sum(0).clamp_min(1.0)
    return torch.stack(stacked).sum(0) / total.unsqueeze(1)


@dataclass
class EarlyStopping:
    """Stop when a validation score has not improved for ``patience`` epochs.

    Parameters
    ----------
    patience : int
        Epochs without improvement before stopping.
    mode : {"max", "min"}
        Whether higher scores are better.
    min_delta : float
        Minimum change that counts as an improvement.
    """

    patience: int = 20
    mode: str = "max"
    min_delta: float = 0.0
    best: float | None = None
    best_tiebreak: float | None = None
    best_epoch: int = -1
    bad_epochs: int = 0
    history: list[float] = field(default_factory=list)

    def step(self, score: float, epoch: int, tiebreak: float | None = None) -> bool:
        """Record ``score``; return True when it is the best so far.

        ``tiebreak`` (lower is better, e.g. the validation loss) decides between epochs whose scores are
        equal, which is common for AUC or accuracy on small validation sets.
        """
        self.history.append(float(score))
        if not np.isfinite(score):
            self.bad_epochs += 1
            return False
        better = (self.best is None or (score > self.best + self.min_delta if self.mode == "max"
                                        else score < self.best - self.min_delta))
        tied = (self.best is not None and not better and score == self.best and tiebreak is not None
                and self.best_tiebreak is not None and tiebreak < self.best_tiebreak)
        if better or tied:
            self.best, self.best_epoch, self.bad_epochs = float(score), epoch, 0
            self.best_tiebreak = None if tiebreak is None else float(tiebreak)
            return True
        self.bad_epochs += 1
        return False

    @property
    def should_stop(self) -> bool:
        """True once ``patience`` epochs passed without improvement."""
        return self.bad_epochs >= self.patience


#: ``callback(unit, epoch, validation_metrics, max_epochs)``: see :func:`epoch_callback`
EpochCallback = Callable[[str, int, Mapping[str, float], int], None]
_EPOCH_CALLBACK: ContextVar[EpochCallback | None] = ContextVar("pmrl_sci_epoch_callback", default=None)


@contextmanager
def epoch_callback(callback: EpochCallback) -> Iterator[None]:
    """Call ``callback(unit, epoch, validation_metrics, max_epochs)`` after every validated epoch of every front
    end run inside (``max_epochs``: the unit's epoch budget, which early stopping may cut short).

    Used by sweeps to report intermediate values to Optuna and prune: the callback may raise
    (e.g. ``optuna.TrialPruned``) to stop the run; the exception propagates out of ``main``.
    """
    token = _EPOCH_CALLBACK.set(callback)
    try:
        yield
    finally:
        _EPOCH_CALLBACK.reset(token)


def report_epoch(unit: str, epoch: int, metrics: Mapping[str, float], max_epochs: int) -> None:
    """Hand one epoch's validation metrics (and the unit's epoch budget) to the active :func:`epoch_callback`."""
    callback = _EPOCH_CALLBACK.get()
    if callback is not None:
        callback(unit, epoch, metrics, max_epochs)

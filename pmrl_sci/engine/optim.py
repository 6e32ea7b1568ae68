"""The optimiser and the learning-rate schedule of every task, from :class:`TrainSettings`."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from pmrl_sci.errors import InputError


@dataclass
class TrainSettings:
    """How the engine trains a unit (each task fills it from its options, keeping its own defaults).

    Parameters
    ----------
    epochs : int
        Maximum epochs (>= 1); epochs are numbered 0 .. epochs - 1.
    patience : int
        Early stopping: stop once ``patience`` validated epochs in a row did not improve the selection metric
        (of every selection); ``0`` turns early stopping off (all epochs run; the best epoch is still selected).
    lr, weight_decay : float
        Learning rate and weight decay.
    optimizer : {"adam", "adamw"}
        ``torch.optim.Adam`` (L2 penalty in the gradient) or ``AdamW`` (decoupled decay).
    betas : tuple of float
        Adam's betas.
    warmup_ratio : float
        Fraction of all steps with a linear warm-up (``(step + 1) / warmup_steps``, at least one step);
        0 means none.
    schedule : {"constant", "cosine"}
        After the warm-up: a constant rate, or a cosine decay to 0 at the last step.
    grad_clip : float
        Clip the gradient norm of all trained parameters to this value; 0 turns clipping off.
    validate_every : int
        Validate every this many epochs (and always after the last one).
    select_from : int
        First epoch that model selection and early stopping consider (0: all). The epochs before it form a
        phase whose states are never selected, e.g. self-supervised alignment before fine-tuning; they are still
        validated and logged, and the patience counts from ``select_from``.
    ema_decay : float
        0 (off), or the decay in (0, 1) of an exponential moving average of the weights, updated after every
        step (:class:`~pmrl_sci.engine.averaging.WeightAverage`); validation, model selection, the selected
        checkpoint and the test then use the averaged weights, while training continues on the raw ones.
    init_offset : int
        0, or N > 0 to train from another initialisation and batch order on the same data: the engine seeds
        with ``seed + 1000 N`` instead of the unit's ``seed`` (:func:`~pmrl_sci.engine.loop.training_seed`).
        Measures how much a result owes to one initialisation; splits and data preparation are unchanged.
    checkpoint_every : int
        Save the resume checkpoint every this many epochs (0: never; a killed unit then restarts).
    progress : bool
        Progress bar over epochs (rank 0 only).
    tensorboard : bool
        Also write TensorBoard event files under ``<run>/tensorboard`` (needs the ``tensorboard`` package).
    """

    epochs: int
    patience: int = 0
    lr: float = 1e-3
    weight_decay: float = 0.0
    optimizer: Literal["adam", "adamw"] = "adam"
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_ratio: float = 0.0
    schedule: Literal["constant", "cosine"] = "constant"
    grad_clip: float = 0.0
    validate_every: int = 1
    select_from: int = 0
    ema_decay: float = 0.0
    init_offset: int = 0
    checkpoint_every: int = 1
    progress: bool = True
    tensorboard: bool = False

    def __post_init__(self) -> None:
        from pmrl_sci.options import check_finite

        if int(self.epochs) < 1:
            raise InputError(f"--epochs must be >= 1, got {self.epochs}")
        if int(self.patience) < 0:
            raise InputError(f"--patience must be >= 0 (0: no early stopping), got {self.patience}")
        check_finite({"lr": self.lr, "weight_decay": self.weight_decay, "warmup_ratio": self.warmup_ratio,
                      "grad_clip": self.grad_clip, "ema_decay": self.ema_decay})
        if self.lr <= 0:
            raise InputError(f"--lr must be > 0, got {self.lr}")
        if self.optimizer not in ("adam", "adamw"):
            raise InputError(f"optimizer must be adam or adamw, got {self.optimizer!r}")
        if self.schedule not in ("constant", "cosine"):
            raise InputError(f"schedule must be constant or cosine, got {self.schedule!r}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise InputError(f"--warmup-ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.grad_clip < 0:
            raise InputError(f"--grad-clip must be >= 0 (0: off), got {self.grad_clip}")
        if self.validate_every < 1:
            raise InputError(f"validate_every must be >= 1, got {self.validate_every}")
        if not (self.ema_decay == 0 or 0 < self.ema_decay < 1):
            raise InputError(f"--ema-decay must be 0 (off) or in (0, 1), got {self.ema_decay}")
        if isinstance(self.init_offset, bool) or int(self.init_offset) != self.init_offset or self.init_offset < 0:
            raise InputError(f"--init-offset must be an integer >= 0, got {self.init_offset!r}")
        if not 0 <= int(self.select_from) < int(self.epochs):
            raise InputError(f"select_from must be in [0, epochs={self.epochs}), got {self.select_from}")


def build_optimizer(parameters: Sequence[torch.nn.Parameter], settings: TrainSettings) -> torch.optim.Optimizer:
    """Adam or AdamW over ``parameters`` (one group) with the settings' rate, betas and weight decay."""
    kind = torch.optim.AdamW if settings.optimizer == "adamw" else torch.optim.Adam
    return kind(list(parameters), lr=settings.lr, betas=tuple(settings.betas), weight_decay=settings.weight_decay)


def lr_factor(total_steps: int, warmup_ratio: float, schedule: str = "cosine") -> Callable[[int], float]:
    """Multiplier of the base rate at each step: linear warm-up, then constant or cosine decay.

    The warm-up lasts ``max(1, round(warmup_ratio * total_steps))`` steps with factor ``(step + 1) / warmup``
    (so ``warmup_ratio=0`` gives factor 1 from the first step).
    """
    warmup = max(1, int(round(warmup_ratio * total_steps)))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if schedule == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def build_lr_schedule(optimizer: torch.optim.Optimizer, settings: TrainSettings, steps_per_epoch: int
                      ) -> torch.optim.lr_scheduler.LambdaLR:
    """The per-step schedule of :func:`lr_factor` over ``settings.epochs * steps_per_epoch`` steps."""
    total = settings.epochs * max(1, steps_per_epoch)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(total, settings.warmup_ratio, settings.schedule))

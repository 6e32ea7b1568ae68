"""What a task supplies to the training engine: the :class:`Task` protocol and its small data types.

A task (ABIDE classification, Houston 2013 land cover, retrieval) knows its data, its model and its loss;
the engine (:func:`pmrl_sci.engine.train_unit`) owns everything else: optimiser and learning-rate schedule,
the epoch loop, DDP, early stopping and model selection, per-epoch checkpoints and resume, metrics records,
progress bars, sweep reports and TensorBoard events.

Epochs are 0-based everywhere (``epoch`` 0 is the first; records, checkpoints and ``best_epoch`` use the same
index). See ``/work/notes/engine_api.md`` (or the package docstring) for a worked example.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, Dataset, Sampler


@dataclass(frozen=True)
class Selection:
    """How one model is selected on validation (and what early stopping watches).

    Parameters
    ----------
    metric : str
        Key of the validation metrics (as returned by :meth:`Task.validate`), e.g. ``"val_auc"``.
    mode : {"max", "min"}
        Whether higher is better.
    name : str
        Name of the selected model (one checkpoint and one :meth:`Task.test` call per selection).
    tiebreak : str, optional
        Metric (lower is better, e.g. ``"val_loss"``) deciding between epochs with equal scores.
    fallback : str, optional
        Metric used for an epoch whose ``metric`` is not finite (e.g. AUC on a one-class validation set).
    """

    metric: str
    mode: Literal["max", "min"] = "max"
    name: str = "best"
    tiebreak: str | None = None
    fallback: str | None = None

    def score(self, metrics: Mapping[str, Any]) -> tuple[float, float | None]:
        """The selection score and tie-break value of one epoch's validation metrics."""
        import math

        if self.metric not in metrics:
            raise KeyError(f"validation metrics have no {self.metric!r} (got {sorted(metrics)})")
        value = float(metrics[self.metric])
        if not math.isfinite(value) and self.fallback is not None:
            value = float(metrics[self.fallback])
        tie = float(metrics[self.tiebreak]) if self.tiebreak is not None else None
        return value, tie


@dataclass
class UnitModules:
    """The trainable modules of one unit, in optimiser order.

    Parameters
    ----------
    modules : dict of str to nn.Module
        Every module whose parameters are trained and whose state is checkpointed and snapshotted for model
        selection (e.g. ``{"model": ..., "alignment": ...}``). Already on the unit's device.
    ddp : tuple of str
        Names trained through DDP under torchrun (a module without trainable parameters is left unwrapped).
        The other modules (an objective's learnable temperature, a matching head) get their gradients averaged
        across ranks after ``backward``.
    frozen : tuple of str
        Dotted paths of frozen (sub)modules: ``"<module name>[.<submodule path>]"``, e.g.
        ``"model.backbone.encoders.fmri"`` or ``"alignment"``. The engine sets ``requires_grad=False`` on their
        parameters before building the optimiser (so weight decay does not touch them either) and keeps them in
        eval mode during training (dropout off, BatchNorm statistics not updated); their state is still
        checkpointed and snapshotted with the rest.
    """

    modules: dict[str, nn.Module]
    ddp: tuple[str, ...] = ("model",)
    frozen: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        unknown = [n for n in self.ddp if n not in self.modules]
        if unknown:
            raise ValueError(f"UnitModules.ddp names {unknown} that are not among the modules {list(self.modules)}")
        self.frozen_modules()  # unknown paths fail here, not after training

    def frozen_modules(self) -> list[nn.Module]:
        """The (sub)modules named by :attr:`frozen`, in order."""
        found = []
        for path in self.frozen:
            name, _, rest = path.partition(".")
            if name not in self.modules:
                raise ValueError(f"UnitModules.frozen: {path!r} names no module (modules: {list(self.modules)})")
            try:
                found.append(self.modules[name].get_submodule(rest) if rest else self.modules[name])
            except AttributeError as exc:
                raise ValueError(f"UnitModules.frozen: module {name!r} has no submodule {rest!r} ({exc})") from None
        return found

    def freeze(self) -> list[nn.Module]:
        """``requires_grad=False`` on every parameter of the frozen (sub)modules; returns them."""
        found = self.frozen_modules()
        for module in found:
            module.requires_grad_(False)
        return found

    def parameter_report(self) -> dict[str, Any]:
        """Which (sub)modules are frozen and which are trained, with parameter counts (for results files).

        Call it after :meth:`freeze` (the engine freezes right after :meth:`Task.build`). ``trained`` lists the
        largest (sub)module paths with trainable parameters and no frozen part (a module with no frozen part is
        listed by its name alone); ``frozen`` the :attr:`frozen` paths.
        """
        frozen = set(self.frozen)

        def trained(module: nn.Module, path: str) -> list[str]:
            if path in frozen or not any(p.requires_grad for p in module.parameters()):
                return []
            if not any(f.startswith(path + ".") for f in frozen):
                return [path]
            found = [p for name, child in module.named_children() for p in trained(child, f"{path}.{name}")]
            if any(p.requires_grad for p in module.parameters(recurse=False)):
                found.append(f"{path} (own parameters)")
            return found

        params = [p for m in self.modules.values() for p in m.parameters()]
        return {"frozen": list(self.frozen), "trained": [p for n, m in self.modules.items() for p in trained(m, n)],
                "n_trained_parameters": int(sum(p.numel() for p in params if p.requires_grad)),
                "n_frozen_parameters": int(sum(p.numel() for p in params if not p.requires_grad))}


@dataclass
class TrainData:
    """The training set and how it is batched.

    Parameters
    ----------
    dataset : Dataset
        Indexable training set.
    batch_size : int
        The (global, under torchrun) batch size.
    drop_last : bool
        Drop a last incomplete batch.
    sampler : {"shuffle", "global"}
        ``"shuffle"``: a seeded random permutation per epoch in one process (``DataLoader(shuffle=True)`` with a
        generator seeded by the unit's seed), :class:`~pmrl_sci.distributed.GlobalBatchSampler` under torchrun;
        ``"global"``: always the global-batch sampler (seeded by ``seed + epoch``).
    loader : callable, optional
        ``loader(batch_sampler, generator) -> iterable of batches``; default
        ``DataLoader(dataset, batch_sampler=batch_sampler, generator=generator)``. Override for datasets that
        fetch whole batches (e.g. ``DataLoader(dataset, sampler=batch_sampler, batch_size=None)``).
    """

    dataset: Dataset
    batch_size: int
    drop_last: bool = False
    sampler: Literal["shuffle", "global"] = "shuffle"
    loader: Callable[[Sampler[list[int]], torch.Generator | None], Iterable[Any]] | None = None

    def make_loader(self, batch_sampler: Sampler[list[int]], generator: torch.Generator | None) -> Iterable[Any]:
        """The iterable of training batches for ``batch_sampler``."""
        if self.loader is not None:
            return self.loader(batch_sampler, generator)
        return DataLoader(self.dataset, batch_sampler=batch_sampler, generator=generator)


def shuffled_batches(dataset: Dataset, batch_size: int, drop_last: bool, generator: torch.Generator
                     ) -> BatchSampler:
    """The batch sampler of ``DataLoader(dataset, batch_size, shuffle=True, drop_last, generator=generator)``."""
    from torch.utils.data import RandomSampler

    return BatchSampler(RandomSampler(dataset, generator=generator), batch_size, drop_last)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Step:
    """Where one training step stands, handed to :meth:`Task.batch_loss`.

    Attributes
    ----------
    epoch, index : int
        0-based epoch and step within the epoch.
    forward : mapping of str to nn.Module
        The modules to call for training: DDP wrappers under torchrun for the names in ``UnitModules.ddp``,
        the plain modules otherwise.
    global_batch_size : int or None
        Under torchrun, the size of the global batch this rank holds a share of (for
        :func:`~pmrl_sci.distributed.global_mean_share`); None in one process.
    distributed : bool
        Whether running under an initialised process group with several ranks.
    """

    epoch: int
    index: int
    forward: Mapping[str, nn.Module]
    global_batch_size: int | None = None
    distributed: bool = False


@dataclass
class SelectedModel:
    """The outcome of one :class:`Selection`: best epoch, its score, and the test metrics of that state."""

    epoch: int
    score: float
    test: dict[str, Any] = field(default_factory=dict)


@dataclass
class UnitOutcome:
    """What :func:`~pmrl_sci.engine.train_unit` returns.

    Attributes
    ----------
    unit : str
        Unit name (e.g. ``seed0-fold1``).
    epochs_run : int
        Epochs trained (early stopping may end before ``--epochs``).
    selected : dict of str to SelectedModel
        Per selection name: best epoch, best validation score, test metrics.
    last_train : dict
        The last epoch's mean training losses (``train_<part>``).
    resumed_from : int or None
        The epoch the unit resumed after (None when it started fresh).
    """

    unit: str
    epochs_run: int
    selected: dict[str, SelectedModel]
    last_train: dict[str, float] = field(default_factory=dict)
    resumed_from: int | None = None

    @property
    def best(self) -> SelectedModel:
        """The first selection's outcome (the only one for most tasks)."""
        return next(iter(self.selected.values()))


class Task(ABC):
    """One unit of training (a seed, a fold) as the engine sees it.

    The engine calls, in order: :meth:`build` (after seeding with the unit's seed), :meth:`train_data`, then per
    epoch :meth:`batch_loss` for every batch and :meth:`validate`; after the last epoch, for every selection,
    it loads the selected state into the modules and calls :meth:`test`. The task keeps references to the
    modules it built (the engine restores their state in place).
    """

    #: how models are selected on validation; the first one is the run's main result
    selections: tuple[Selection, ...] = (Selection("val_loss", mode="min"),)

    @abstractmethod
    def build(self, device: torch.device) -> UnitModules:
        """Prepare the unit's data and build its trainable modules on ``device``."""

    @abstractmethod
    def train_data(self) -> TrainData:
        """The training set and its batching."""

    @abstractmethod
    def batch_loss(self, batch: Any, step: Step) -> Mapping[str, torch.Tensor | float]:
        """The loss of one batch: ``{"loss": tensor with grad, <part>: scalar, ...}``.

        Every entry but ``"loss"`` and ``"weight"`` is logged as ``train_<part>`` (epoch mean). ``"weight"``
        (optional, a number) weights this batch in the epoch means (default 1: mean over steps; the batch size
        gives a mean over samples). Under torchrun return this rank's share of global-batch values (see
        :mod:`pmrl_sci.distributed`); the engine averages the epoch means over ranks.
        """

    @abstractmethod
    def validate(self, epoch: int) -> dict[str, Any]:
        """Validation metrics of the current state (keys as logged, e.g. ``val_auc``; lists allowed).

        Called on every rank with the plain modules in eval mode (BatchNorm buffers already broadcast
        from rank 0).
        """

    @abstractmethod
    def test(self, selection: Selection) -> dict[str, Any]:
        """Test metrics of the state chosen by ``selection`` (already loaded into the modules, in eval mode)."""

"""Options every front end shares, their checks, the alignment-objective builder and the ``main`` wrapper.

A front end describes a run with one config dataclass and builds its parser from these groups, passing that
dataclass's instance as the defaults (so ABIDE keeps ``tau2=0.4`` and Houston ``0.1``). A group adds only the
options whose destination is a field of the dataclass; the names and meanings are the same everywhere:

* :func:`add_run_options`: ``--seed`` (first seed), ``--seeds``, ``--init-offset``, ``--out``, ``--device``,
  ``--no-progress``, ``--tensorboard`` (``-c/--config`` is added by :func:`pmrl_sci.config.parse_dataclass_config`);
* :func:`add_training_options`: ``--epochs``, ``--patience`` (0: no early stopping), ``--batch-size``,
  ``--lr``, ``--weight-decay``, ``--warmup-ratio``, ``--grad-clip``, ``--ema-decay``;
* :func:`add_objective_options`: ``--objective``, ``--tau1``, ``--tau2``, ``--lambda1``, ``--no-instance-term``,
  ``--no-sign-aware``, ``--rank``, ``--temperature``, ``--anchor``, ``--gram-volume-only``, ``--align-weight``,
  ``--classification-weight``.

The fields these groups fill are declared once, in :class:`RunOptions` and :class:`ObjectiveOptions`; a task's
config dataclass inherits them (redeclaring a field only to change its default) and adds its own.
"""

from __future__ import annotations

import argparse
import functools
import math
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from torch import nn

from pmrl_sci.errors import InputError

T = TypeVar("T")
OBJECTIVE_NAMES = ("pmrl", "gram", "vast", "none")


@dataclass
class RunOptions:
    """Fields of :func:`add_run_options` with the same default in every front end, plus ``--ema-decay``.

    Parameters
    ----------
    seed : int
        First seed; trials use ``seed``, ``seed + 1``, ...
    seeds : int
        Number of trials (seeds).
    init_offset : int
        0, or N to train every unit from another initialisation and batch order on the same splits.
    out : str, optional
        Run folder (None: a new time-stamped folder).
    device : str
        ``auto``, ``cpu``, ``cuda``, ``cuda:1``, ...
    progress : bool
        Progress bars on rank 0.
    tensorboard : bool
        Also write TensorBoard event files.
    ema_decay : float
        Decay per step of the weight average that is validated, selected and tested; 0: off.
    """

    seed: int = 0
    seeds: int = 1
    init_offset: int = 0
    out: str | None = None
    device: str = "auto"
    progress: bool = True
    tensorboard: bool = False
    ema_decay: float = 0.0


@dataclass
class ObjectiveOptions:
    """Fields of :func:`add_objective_options` (the alignment objective and its hyper-parameters) that every
    front end has; :func:`build_alignment_objective` reads them. A task redeclares a field to change its default
    (ABIDE: ``tau1`` 0.5, ``tau2`` 0.4, no instance term).

    Parameters
    ----------
    objective : str
        ``pmrl``, ``gram``, ``vast`` (or ``none`` where the task allows it).
    tau1, tau2, lambda1 : float
        PMRL: temperature over singular values, temperature and weight of the instance-wise term.
    instance_term : bool
        PMRL: keep the instance-wise term L_M'.
    rank : int
        PMRL: leading singular values maximised.
    sign_aware : bool
        PMRL: the sign-aware leading value (False: the paper's sign-blind L_M).
    temperature : float
        GRAM/VAST: initial temperature.
    anchor : str, optional
        GRAM/VAST anchor modality (None: the task's choice).
    gram_contrastive : bool
        GRAM: keep its contrastive part (False: the volume alone).
    align_weight : float
        Weight of the alignment objective in the loss.
    """

    objective: str = "pmrl"
    tau1: float = 0.05
    tau2: float = 0.1
    lambda1: float = 1.0
    instance_term: bool = True
    rank: int = 1
    sign_aware: bool = True
    temperature: float = 0.07
    anchor: str | None = None
    gram_contrastive: bool = True
    align_weight: float = 1.0


def _adder(group: Any, defaults: Any, helps: Mapping[str, str] | None) -> Callable[..., None]:
    def add(*flags: str, dest: str, **kwargs: Any) -> None:
        if not hasattr(defaults, dest):
            return
        kwargs.setdefault("default", getattr(defaults, dest))
        if helps and dest in helps:
            kwargs["help"] = helps[dest]
        group.add_argument(*flags, dest=dest, **kwargs)

    return add


def add_run_options(parser: argparse.ArgumentParser, defaults: Any, prefix: str = "runs/<task>",
                    helps: Mapping[str, str] | None = None) -> None:
    """``--seed --seeds --init-offset --out --device --no-progress --tensorboard`` (those that are fields of
    ``defaults``).

    ``defaults`` is an instance of the task's config dataclass; ``helps`` replaces the help of some options
    (by destination name).
    """
    add = _adder(parser.add_argument_group("run"), defaults, helps)
    add("--seed", dest="seed", type=int, help="first seed (trials use seed, seed + 1, ...)")
    add("--seeds", dest="seeds", type=int, help="number of trials (seeds), reported as mean and std")
    add("--init-offset", dest="init_offset", type=int,
        help="0, or N to train every unit from another initialisation and batch order on the same splits "
             "(the engine seeds with seed + 1000 N): how much a result owes to one initialisation")
    add("--out", dest="out", help=f"run folder (default {prefix}-<time>); reuse it to resume (same options only)")
    add("--device", dest="device", help="auto, cpu, cuda, cuda:1, ...")
    add("--no-progress", dest="progress", action="store_false", help="no progress bars")
    add("--tensorboard", dest="tensorboard", action="store_true",
        help="also write TensorBoard event files under <out>/tensorboard (needs the tensorboard package)")


def add_training_options(parser: argparse.ArgumentParser, defaults: Any,
                         helps: Mapping[str, str] | None = None) -> argparse._ArgumentGroup:
    """``--epochs --patience --batch-size --lr --weight-decay --warmup-ratio --grad-clip --ema-decay``; returns
    the group."""
    group = parser.add_argument_group("training")
    add = _adder(group, defaults, helps)
    add("--epochs", dest="epochs", type=int, help="maximum epochs per unit (numbered from 0)")
    add("--patience", dest="patience", type=int,
        help="early stopping: stop after this many validated epochs without improvement; 0: off")
    add("--batch-size", dest="batch_size", type=int, help="(global) batch size")
    add("--lr", dest="lr", type=float, help="learning rate")
    add("--weight-decay", dest="weight_decay", type=float, help="weight decay")
    add("--warmup-ratio", dest="warmup_ratio", type=float, help="fraction of steps with a linear warm-up")
    add("--grad-clip", dest="grad_clip", type=float, help="clip the gradient norm to this value; 0: off")
    add("--ema-decay", dest="ema_decay", type=float,
        help="validate, select and test an exponential moving average of the weights with this decay per step "
             "(e.g. 0.99); 0: off")
    return group


def add_objective_options(parser: argparse.ArgumentParser, defaults: Any,
                          objectives: Sequence[str] = OBJECTIVE_NAMES,
                          helps: Mapping[str, str] | None = None) -> argparse._ArgumentGroup:
    """The alignment objective and its hyper-parameters, plus ``--align-weight`` and ``--classification-weight``;
    returns the group (for a front end's own objective options)."""
    group = parser.add_argument_group("objective")
    add = _adder(group, defaults, helps)
    add("--objective", dest="objective", choices=list(objectives), help="alignment objective")
    add("--tau1", dest="tau1", type=float, help="PMRL: temperature over singular values")
    add("--tau2", dest="tau2", type=float, help="PMRL: temperature of the instance-wise term")
    add("--lambda1", dest="lambda1", type=float, help="PMRL: weight of the instance-wise term")
    add("--instance-term", dest="instance_term", action=argparse.BooleanOptionalAction,
        help="PMRL's instance-wise term L_M' (weight --lambda1, temperature --tau2); --no-instance-term drops it "
             "(the ablation 'w/o reg')")
    add("--rank", dest="rank", type=int, help="PMRL: leading singular values maximised (<= modalities)")
    add("--sign-aware", dest="sign_aware", action=argparse.BooleanOptionalAction,
        help="PMRL: the leading value is the energy along the mean embedding, which only full, same-sign "
             "alignment maximises; --no-sign-aware: the paper's sign-blind L_M (sigma_1 is the same when a "
             "modality is negated)")
    add("--temperature", dest="temperature", type=float, help="GRAM/VAST: initial temperature")
    add("--anchor", dest="anchor", help="GRAM/VAST anchor modality")
    add("--gram-volume-only", dest="gram_contrastive", action="store_false",
        help="GRAM without its contrastive part: minimise the mean volume alone ('w/o reg')")
    add("--align-weight", dest="align_weight", type=float, help="weight of the alignment objective")
    add("--classification-weight", dest="classification_weight", type=float,
        help="weight of the cross-entropy (0 for the 'w/o classification' ablation)")
    return group


def check_finite(values: Mapping[str, Any]) -> None:
    """Raise :class:`InputError` naming the option when a number is NaN or infinite."""
    for name, value in values.items():
        if value is not None and not math.isfinite(float(value)):
            raise InputError(f"--{name.replace('_', '-')} must be a finite number, got {value}")


def check_run_options(cfg: Any) -> None:
    """Checks of the shared options present on ``cfg`` (epochs, patience, seeds, finite hyper-parameters)."""
    if getattr(cfg, "epochs", None) is not None and int(cfg.epochs) < 1:
        raise InputError(f"--epochs must be >= 1, got {cfg.epochs}")
    if getattr(cfg, "patience", 0) < 0:
        raise InputError(f"--patience must be >= 0 (0: no early stopping), got {cfg.patience}")
    if getattr(cfg, "seeds", 1) < 1:
        raise InputError(f"--seeds must be >= 1, got {cfg.seeds}")
    if getattr(cfg, "init_offset", 0) < 0:
        raise InputError(f"--init-offset must be >= 0, got {cfg.init_offset}")
    if getattr(cfg, "batch_size", 1) < 1:
        raise InputError(f"--batch-size must be >= 1, got {cfg.batch_size}")
    names = ("lr", "weight_decay", "warmup_ratio", "grad_clip", "ema_decay", "tau1", "tau2", "lambda1", "temperature",
             "align_weight", "classification_weight")
    check_finite({n: getattr(cfg, n) for n in names if hasattr(cfg, n)})
    for name in ("lr", "tau1", "tau2", "temperature"):
        if hasattr(cfg, name) and getattr(cfg, name) <= 0:
            raise InputError(f"--{name.replace('_', '-')} must be > 0, got {getattr(cfg, name)}")
    if getattr(cfg, "tensorboard", False):
        from pmrl_sci.engine.loop import require_tensorboard

        require_tensorboard()


def check_objective_options(cfg: ObjectiveOptions, n_modalities: int) -> None:
    """PMRL's ``--rank`` must lie in [1, number of modalities]; ``--objective`` must be known."""
    if cfg.objective not in OBJECTIVE_NAMES:
        raise InputError(f"--objective must be one of {list(OBJECTIVE_NAMES)}, got {cfg.objective!r}")
    if cfg.objective == "pmrl" and n_modalities >= 2 and not 1 <= cfg.rank <= n_modalities:
        raise InputError(f"--rank must be between 1 and the number of modalities ({n_modalities}), got {cfg.rank}")


def build_alignment_objective(cfg: ObjectiveOptions, modalities: Sequence[str], anchor: str | None = None,
                              **extra: Any) -> nn.Module | None:
    """The alignment objective named by ``cfg.objective`` with the shared hyper-parameters, or None.

    Parameters
    ----------
    cfg : ObjectiveOptions
        The task's config (its objective fields).
    modalities : sequence of str
        The modalities aligned; fewer than two (or ``objective == "none"``) gives None.
    anchor : str, optional
        GRAM/VAST anchor when ``cfg.anchor`` is unset (default: the last modality).
    **extra
        Further GRAM/VAST hyper-parameters (e.g. ``label_smoothing``).
    """
    from pmrl_sci.objectives import build_objective

    name = cfg.objective
    if name == "none" or len(modalities) < 2:
        return None
    if name == "pmrl":
        return build_objective("pmrl", tau1=cfg.tau1, tau2=cfg.tau2, lambda1=cfg.lambda1,
                               instance_term=cfg.instance_term, rank=cfg.rank, sign_aware=cfg.sign_aware)
    chosen = cfg.anchor or anchor or modalities[-1]
    if name == "gram":
        return build_objective("gram", anchor=chosen, temperature=cfg.temperature,
                               contrastive=cfg.gram_contrastive, **extra)
    if name == "vast":
        return build_objective("vast", anchor=chosen, temperature=cfg.temperature, **extra)
    raise InputError(f"--objective must be one of {list(OBJECTIVE_NAMES)}, got {name!r}")


def front_end(main: Callable[..., T]) -> Callable[..., T]:
    """Wrap a front end's ``main``: bad input ends with ``error: <message>`` on stderr and exit code 2.

    :class:`~pmrl_sci.errors.InputError`, ``FileNotFoundError`` and ``ValueError`` raised by ``main`` (reading
    data, checking options) become that message, with no traceback; other exceptions propagate.
    """

    @functools.wraps(main)
    def wrapped(*args: Any, **kwargs: Any) -> T:
        try:
            return main(*args, **kwargs)
        except (InputError, FileNotFoundError, ValueError) as exc:
            message = str(exc) if not isinstance(exc, FileNotFoundError) or not exc.filename \
                else f"{exc.filename}: {exc.strerror or exc}"
            print(f"error: {message}", file=sys.stderr)
            raise SystemExit(2) from None

    return wrapped

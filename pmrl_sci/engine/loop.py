"""The training loop every task runs through: :func:`train_unit`."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from contextlib import nullcontext
from typing import Any

import torch
from torch import nn

from pmrl_sci.engine.averaging import WeightAverage
from pmrl_sci.engine.optim import TrainSettings, build_lr_schedule, build_optimizer
from pmrl_sci.engine.state import capture_rng, detached_state, load_stopper, restore_rng, stopper_state
from pmrl_sci.engine.task import SelectedModel, Selection, Step, Task, UnitOutcome, shuffled_batches
from pmrl_sci.runs import RunFolder
from pmrl_sci.training import EarlyStopping, progress, report_epoch, seed_everything

logger = logging.getLogger(__name__)


#: seeds of the initialisations of one unit under ``--init-offset`` are this far apart
INIT_OFFSET_STRIDE = 1000


def training_seed(seed: int, init_offset: int = 0) -> int:
    """The seed the engine trains a unit with: ``seed + 1000 * init_offset`` (``seed`` itself by default).

    ``init_offset`` (``--init-offset``) changes the initialisation and the batch order of a unit but not its
    split or data preparation, which the task derives from ``seed``.
    """
    return int(seed) + INIT_OFFSET_STRIDE * int(init_offset)


def resume_checkpoint_name(unit: str) -> str:
    """File name (under ``checkpoints/``) of a unit's per-epoch resume state."""
    return f"{unit}.resume.pt"


def selection_checkpoint_name(unit: str, selection: Selection, n_selections: int) -> str:
    """File name of a unit's selected model: ``<unit>.pt``, or ``<unit>-<selection>.pt`` with several."""
    return f"{unit}.pt" if n_selections == 1 else f"{unit}-{selection.name}.pt"


def train_unit(task: Task, settings: TrainSettings, *, unit: str, seed: int, run: RunFolder,
               device: torch.device, dist_info: Any = None) -> UnitOutcome:
    """Train one unit (a seed, a fold) of ``task``, select on validation, test each selected state.

    Parameters
    ----------
    task : Task
        Supplies the modules, the data, the batch loss, validation and test.
    settings : TrainSettings
        Epochs, early stopping, optimiser, schedule, clipping, checkpoints, progress, TensorBoard.
    unit : str
        Unit name: records carry it, checkpoints are named after it.
    seed : int
        The unit's seed (records carry it). Python, NumPy and torch are seeded before :meth:`Task.build`, and
        the batch order drawn, with :func:`training_seed` of it and ``settings.init_offset``.
    run : RunFolder
        Where records (``metrics.jsonl``), checkpoints and TensorBoard events go (rank 0 writes).
    device : torch.device
        This rank's device.
    dist_info : pmrl_sci.distributed.DistInfo, optional
        Under torchrun: modules named in ``UnitModules.ddp`` train through DDP, batches come from the
        global-batch sampler, the other modules' gradients and the logged means are averaged over ranks.

    Returns
    -------
    UnitOutcome
        Epochs run, per selection the best epoch, score and test metrics.

    Notes
    -----
    After every ``settings.checkpoint_every`` epochs the modules, optimiser, schedule, early stopping, best
    states and RNG states are saved to ``checkpoints/<unit>.resume.pt``; a rerun resumes after the last saved
    epoch (records of later epochs of this unit are dropped from ``metrics.jsonl`` first), so an interrupted
    unit ends with the same result as an uninterrupted one.
    """
    from pmrl_sci.distributed import (
        GlobalBatchSampler,
        all_reduce_dict_mean,
        average_gradients,
        broadcast_buffers,
        gather_objects,
        wrap_ddp,
    )

    distributed = dist_info is not None and dist_info.distributed
    rank = dist_info.rank if distributed else 0
    init_seed = training_seed(seed, settings.init_offset)
    seed_everything(init_seed)
    built = task.build(device)
    frozen = built.freeze()  # before DDP and the optimiser see the parameters
    modules = built.modules
    forward = {n: wrap_ddp(m, dist_info) if distributed and n in built.ddp else m for n, m in modules.items()}
    outside_ddp = [p for n, m in modules.items() if forward[n] is m for p in m.parameters() if p.requires_grad]
    data = task.train_data()
    generator: torch.Generator | None = None
    global_sampler: GlobalBatchSampler | None = None
    if distributed or data.sampler == "global":
        global_sampler = GlobalBatchSampler(len(data.dataset), data.batch_size, seed=init_seed,  # type: ignore[arg-type]
                                            drop_last=data.drop_last)
        batch_sampler: Any = global_sampler
    else:
        generator = torch.Generator().manual_seed(init_seed)
        batch_sampler = shuffled_batches(data.dataset, data.batch_size, data.drop_last, generator)
    loader = data.make_loader(batch_sampler, generator)
    parameters = [p for m in modules.values() for p in m.parameters() if p.requires_grad]
    if not parameters:
        raise ValueError(f"{unit}: every parameter is frozen; there is nothing to train")
    optimizer = build_optimizer(parameters, settings)
    scheduler = build_lr_schedule(optimizer, settings, len(batch_sampler))
    selections = tuple(task.selections)
    stoppers = {s.name: EarlyStopping(patience=max(settings.patience, 1), mode=s.mode) for s in selections}
    best: dict[str, dict[str, dict[str, torch.Tensor]] | None] = {s.name: None for s in selections}
    start, stopped, last_train, resumed_from = 0, False, {}, None
    average = WeightAverage(modules, settings.ema_decay) if settings.ema_decay > 0 else None

    checkpoint_name = resume_checkpoint_name(unit)
    saved = run.load_checkpoint(checkpoint_name, map_location="cpu")
    if saved is not None:
        for name, module in modules.items():
            module.load_state_dict(saved["modules"][name])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        stoppers = {name: load_stopper(state) for name, state in saved["stoppers"].items()}
        if average is not None:
            average.load_state_dict(saved["ema"])
        best = dict(saved["best"])
        rng = saved["rng"]
        restore_rng(rng[rank] if rank < len(rng) else rng[0], generator)
        start, stopped, last_train = int(saved["epoch"]) + 1, bool(saved["stopped"]), dict(saved["last_train"])
        resumed_from = int(saved["epoch"])
        logger.info("%s: resuming after epoch %d from %s", unit, resumed_from, run.path / "checkpoints")
    run.drop_unit_metrics(unit, from_epoch=start)  # records of a killed attempt after the saved epoch

    writer = _tensorboard_writer(run, unit) if settings.tensorboard and run.write else None
    epoch = start - 1
    epochs = range(start, settings.epochs) if not stopped else range(0)  # a resumed unit may have stopped early
    bar = progress(epochs, desc=f"train {unit}", disable=not settings.progress, leave=False)
    try:
        for epoch in bar:
            for module in forward.values():
                module.train()
            for module in frozen:  # frozen parts keep eval-mode dropout and BatchNorm statistics
                module.eval()
            sizes: list[int] | None = None
            if global_sampler is not None:
                global_sampler.set_epoch(epoch)
                sizes = global_sampler.global_batch_sizes() if distributed else None
            sums: dict[str, float] = {}
            total_weight = 0.0
            for index, batch in enumerate(loader):
                step = Step(epoch, index, forward, sizes[index] if sizes is not None else None, distributed)
                parts = task.batch_loss(batch, step)
                loss = parts["loss"]
                if not bool(torch.isfinite(loss)):  # type: ignore[arg-type]
                    raise FloatingPointError(f"{unit}, epoch {epoch}, step {index}: non-finite loss {float(loss)}; "
                                             "lower --lr or check the inputs")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()  # type: ignore[union-attr]
                if distributed and outside_ddp:
                    average_gradients(outside_ddp)  # e.g. a learnable temperature outside DDP
                if settings.grad_clip > 0:
                    nn.utils.clip_grad_norm_(parameters, settings.grad_clip)
                optimizer.step()
                scheduler.step()
                if average is not None:
                    average.update(modules)
                weight = float(parts.get("weight", 1.0))
                for key, value in parts.items():
                    if key != "weight":
                        value = value.detach() if isinstance(value, torch.Tensor) else value
                        sums[key] = sums.get(key, 0.0) + float(value) * weight
                total_weight += weight
            last_train = {f"train_{k}": v / max(total_weight, 1e-12) for k, v in sums.items()}
            if distributed:
                last_train = all_reduce_dict_mean(last_train)  # per-rank shares -> global-batch values
                for name in built.ddp:
                    broadcast_buffers(modules[name])
            record: dict[str, Any] = {"unit": unit, "seed": seed, "epoch": epoch, **last_train}
            validated = (epoch + 1) % settings.validate_every == 0 or epoch == settings.epochs - 1
            if validated:
                for module in modules.values():
                    module.eval()
                with average.swapped_in(modules) if average is not None else nullcontext():
                    metrics = task.validate(epoch)  # of the averaged weights under --ema-decay
                    if epoch >= settings.select_from:  # earlier epochs: a phase whose states are never selected
                        for selection in selections:
                            score, tiebreak = selection.score(metrics)
                            if stoppers[selection.name].step(score, epoch, tiebreak=tiebreak):
                                best[selection.name] = {n: detached_state(m) for n, m in modules.items()}
                        stopped = settings.patience > 0 and all(s.should_stop for s in stoppers.values())
                record.update(metrics)
            record["lr"] = scheduler.get_last_lr()[0]
            run.log_metrics(record)
            if writer is not None:
                _write_scalars(writer, record, epoch)
            if validated:
                report_epoch(unit, epoch, {k: v for k, v in metrics.items() if _is_number(v)}, settings.epochs)
            if hasattr(bar, "set_postfix"):
                shown = {"loss": f"{last_train.get('train_loss', float('nan')):.3f}"}
                if validated:
                    shown[selections[0].metric] = f"{float(metrics[selections[0].metric]):.3f}"
                bar.set_postfix(**shown)
            if settings.checkpoint_every and ((epoch + 1) % settings.checkpoint_every == 0 or stopped
                                              or epoch == settings.epochs - 1):
                rng = gather_objects(capture_rng(generator)) if distributed else [capture_rng(generator)]
                run.save_checkpoint(checkpoint_name, {
                    "unit": unit, "epoch": epoch, "stopped": stopped, "last_train": last_train,
                    "modules": {n: m.state_dict() for n, m in modules.items()},
                    "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "stoppers": {n: stopper_state(s) for n, s in stoppers.items()}, "best": best, "rng": rng,
                    "ema": average.state_dict() if average is not None else None})
            if stopped:
                break
    finally:
        if writer is not None:
            writer.close()
    last_epoch = max(epoch, start - 1)
    if last_epoch < 0:
        raise RuntimeError(f"{unit}: no epoch was trained (epochs={settings.epochs})")

    selected: dict[str, SelectedModel] = {}
    for selection in selections:
        stopper = stoppers[selection.name]
        state = best[selection.name]
        if state is None:  # every validation score was non-finite: the last state
            logger.warning("%s: no finite validation %s; testing the last epoch", unit, selection.metric)
            state = ({n: detached_state(m) for n, m in modules.items()} if average is None
                     else {n: dict(average.shadow[n]) for n in modules})
            chosen = SelectedModel(last_epoch, float("nan"))
        else:
            chosen = SelectedModel(stopper.best_epoch, float(stopper.best))  # type: ignore[arg-type]
        for name, module in modules.items():
            module.load_state_dict(state[name])
        run.save_checkpoint(selection_checkpoint_name(unit, selection, len(selections)),
                            {**{n: m.state_dict() for n, m in modules.items()}, "epoch": chosen.epoch})
        for module in modules.values():
            module.eval()
        chosen.test = task.test(selection)
        selected[selection.name] = chosen
    return UnitOutcome(unit, last_epoch + 1, selected, last_train, resumed_from)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def require_tensorboard() -> None:
    """Raise :class:`~pmrl_sci.errors.InputError` unless the ``tensorboard`` package is importable."""
    import importlib.util

    from pmrl_sci.errors import InputError

    if importlib.util.find_spec("tensorboard") is None:
        raise InputError("--tensorboard needs the 'tensorboard' package, which is not installed: "
                         "pip install tensorboard (or the kit's tensorboard extra), or leave out --tensorboard")


def _tensorboard_writer(run: RunFolder, unit: str) -> Any:
    require_tensorboard()
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(run.path / "tensorboard" / unit))


def _write_scalars(writer: Any, record: Mapping[str, Any], epoch: int) -> None:
    for key, value in record.items():
        if key not in ("epoch", "seed") and _is_number(value) and math.isfinite(float(value)):
            writer.add_scalar(key, float(value), epoch)
    writer.flush()

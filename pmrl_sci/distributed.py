"""Distributed data-parallel training under ``torchrun``: process group, sharding, gathers with gradient.

Launch any front end with ``torchrun --nproc-per-node N -m pmrl_sci.<front end> ...``; torchrun sets ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``, which :func:`init_distributed` reads (gloo on
CPU, nccl on CUDA, one GPU per local rank). Without those variables every helper here is a no-op, so the same code
runs as one plain process.

Design: the global batch and the gradient scale
-----------------------------------------------
* :class:`GlobalBatchSampler` draws one permutation per epoch (seeded by ``seed + epoch``, identical on every
  rank), cuts it into *global* batches of ``--batch-size`` and hands rank r the r-th contiguous share of each.
  No index is padded or repeated (a duplicate would be its own false negative in a contrastive loss), so local
  batches can differ by one sample, but every rank runs the *same number of steps*: required, because the
  objectives call collectives (:func:`gather_with_grad`) inside the forward and backward. (``Join`` cannot cover
  those collectives, which is why steps are equalised rather than joined.) A last global batch smaller than the
  world size is merged into the previous one, so no local batch is ever empty.
* Objectives gather what couples instances (PMRL's u1, the VAST / GRAM embeddings) with :func:`gather_with_grad`
  and compute the *global* contrastive loss on every rank. The backward of the all-gather sums the gradients of
  the W identical losses, so each rank's embeddings receive W times the gradient of the global loss; DDP then
  averages over the W ranks: the result is exactly the single-process gradient of the global-batch loss.
* Per-instance means (PMRL's L_M, a classification cross-entropy) are written as :func:`global_mean_share`:
  ``W * sum(local values) / global count``. Its gradient, averaged by DDP, is that of the global mean, and the
  mean of the values over ranks (:func:`all_reduce_mean`) is the global mean. Log that mean, not the local value.
* Parameters outside the DDP module (an objective's learnable temperature, a matching head) are averaged with
  :func:`average_gradients` after ``backward``.
* Evaluation runs on the unwrapped module (a DDP forward is itself a collective); :func:`shard_range` splits the
  evaluation set into contiguous parts and :func:`gather_objects` puts the predictions back in order.
"""

from __future__ import annotations

import datetime
import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Sampler

logger = logging.getLogger(__name__)

_ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands in the (possibly trivial) process group.

    Attributes
    ----------
    rank, world_size, local_rank : int
        From torchrun (0, 1, 0 for a plain process).
    backend : str or None
        ``"gloo"`` or ``"nccl"``; None when not distributed.
    device : torch.device
        The device this rank computes on (``cuda:<local_rank>`` on GPUs).
    initialized_here : bool
        Whether :func:`init_distributed` created the process group (and :func:`cleanup` should end it).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    device: torch.device = torch.device("cpu")
    initialized_here: bool = False

    @property
    def distributed(self) -> bool:
        """True when running as one of several ranks of an initialised process group."""
        return self.world_size > 1 and is_initialized()

    @property
    def is_main(self) -> bool:
        """True on rank 0."""
        return self.rank == 0


def is_initialized() -> bool:
    """Whether a ``torch.distributed`` process group is up."""
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    """This process's rank (0 when not distributed)."""
    return dist.get_rank() if is_initialized() else 0


def get_world_size() -> int:
    """Number of ranks (1 when not distributed)."""
    return dist.get_world_size() if is_initialized() else 1


def is_main_process() -> bool:
    """True on rank 0 or in a plain process."""
    return get_rank() == 0


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r}: expected an integer (as set by torchrun)") from None


def init_distributed(backend: str | None = None, device: str | torch.device | None = None,
                     timeout_s: float = 1800.0) -> DistInfo:
    """Join the process group described by torchrun's environment; a no-op in a plain process.

    Parameters
    ----------
    backend : {"gloo", "nccl"}, optional
        Default: nccl when this rank computes on CUDA, gloo otherwise.
    device : str or torch.device, optional
        The requested device (``"cpu"``, ``"cuda"``, ``"auto"``/None = CUDA when available). Under torchrun a CUDA
        request becomes ``cuda:<LOCAL_RANK>`` and is made the current CUDA device.
    timeout_s : float
        Collective timeout.

    Returns
    -------
    DistInfo
        With ``world_size == 1`` and ``backend=None`` when ``WORLD_SIZE`` is unset or 1.

    Raises
    ------
    ValueError
        Inconsistent torchrun variables, or more local ranks than visible GPUs.
    """
    requested = torch.device("cuda" if torch.cuda.is_available() else "cpu") if device in (None, "", "auto") \
        else torch.device(device)
    if is_initialized():  # someone else set it up: describe it
        rank, world = dist.get_rank(), dist.get_world_size()
        local = _env_int("LOCAL_RANK", rank)
        return DistInfo(rank, world, local, str(dist.get_backend()), _rank_device(requested, local), False)
    world = _env_int("WORLD_SIZE", 1)
    rank, local = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"torchrun environment: RANK={rank} must lie in [0, WORLD_SIZE={world})")
    if world == 1:
        return DistInfo(device=requested)
    device_here = _rank_device(requested, local)
    if backend is None:
        backend = "nccl" if device_here.type == "cuda" else "gloo"
    if backend not in ("gloo", "nccl"):
        raise ValueError(f"backend must be 'gloo' or 'nccl', got {backend!r}")
    if backend == "nccl" and device_here.type != "cuda":
        raise ValueError(f"backend nccl needs CUDA devices; this rank computes on {device_here}")
    if device_here.type == "cuda":
        torch.cuda.set_device(device_here)
    kwargs: dict[str, Any] = {"backend": backend, "timeout": datetime.timedelta(seconds=timeout_s)}
    if backend == "nccl":
        kwargs["device_id"] = device_here
    dist.init_process_group(**kwargs)
    logger.info("rank %d of %d (local %d) on %s, backend %s", rank, world, local, device_here, backend)
    return DistInfo(rank, world, local, backend, device_here, True)


def _rank_device(requested: torch.device, local_rank: int) -> torch.device:
    if requested.type != "cuda":
        return requested
    if requested.index is not None:
        return requested
    count = torch.cuda.device_count()
    if local_rank >= count:
        raise ValueError(f"LOCAL_RANK={local_rank} but only {count} CUDA device(s) are visible: use "
                         f"--nproc-per-node <= {count} or --device cpu")
    return torch.device("cuda", local_rank)


def cleanup() -> None:
    """Destroy the process group if one is up, after every rank has reached this point.

    Without the barrier a fast rank tears the group down (rank 0 also its TCP store) while a peer is still
    finishing its last collective, and gloo aborts that process (SIGABRT, "terminate called without an active
    exception") after its work is done.
    """
    if is_initialized():
        try:
            dist.barrier()
        finally:
            dist.destroy_process_group()


@contextmanager
def distributed_context(backend: str | None = None, device: str | torch.device | None = None
                        ) -> Iterator[DistInfo]:
    """:func:`init_distributed` on entry; :func:`cleanup` on exit if the group was created here."""
    info = init_distributed(backend, device)
    try:
        yield info
    finally:
        if info.initialized_here:
            cleanup()


def barrier() -> None:
    """Wait for every rank (no-op in a plain process)."""
    if is_initialized() and get_world_size() > 1:
        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()


@contextmanager
def main_process_first() -> Iterator[None]:
    """Run the body on rank 0 first, then on the other ranks (for downloads, caches and generated files)."""
    main = is_main_process()
    if not main:
        barrier()
    try:
        yield
    finally:
        if main:
            barrier()


# -- samplers ----------------------------------------------------------------------------------------------------

def _replicas(num_replicas: int | None, rank: int | None) -> tuple[int, int]:
    world = get_world_size() if num_replicas is None else int(num_replicas)
    rank = get_rank() if rank is None else int(rank)
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"rank {rank} must lie in [0, num_replicas={world})")
    return world, rank


def _permutation(n: int, shuffle: bool, seed: int, epoch: int) -> torch.Tensor:
    if not shuffle:
        return torch.arange(n)
    generator = torch.Generator().manual_seed(int(seed) + int(epoch))
    return torch.randperm(n, generator=generator)


def shard_range(n: int, num_replicas: int | None = None, rank: int | None = None) -> range:
    """This rank's contiguous part of ``range(n)`` (sizes differ by at most one; concatenated in rank order
    the parts are ``range(n)`` again)."""
    world, rank = _replicas(num_replicas, rank)
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (1 if rank < extra else 0))


class ShardedSampler(Sampler[int]):
    """Shard a dataset across ranks without padding: rank r gets positions r, r + W, ... of the permutation.

    The permutation is drawn from ``seed + epoch`` and is the same on every rank, so the shards are disjoint and
    cover the dataset exactly once (unlike ``DistributedSampler``, which pads with repeated indices). Shard
    sizes differ by at most one: for training with collectives in the loss use :class:`GlobalBatchSampler`,
    which equalises the number of steps.

    Parameters
    ----------
    dataset_size : int or sized
        Number of samples (or the dataset).
    num_replicas, rank : int, optional
        Default: from the process group.
    shuffle : bool
        Draw a new permutation every epoch (:meth:`set_epoch`).
    seed : int
        Base seed of the permutation.
    """

    def __init__(self, dataset_size: int | Any, num_replicas: int | None = None, rank: int | None = None,
                 shuffle: bool = True, seed: int = 0) -> None:
        self.n = int(dataset_size if isinstance(dataset_size, (int, np.integer)) else len(dataset_size))
        self.num_replicas, self.rank = _replicas(num_replicas, rank)
        self.shuffle, self.seed, self.epoch = shuffle, int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        """Use the permutation of ``epoch`` (call before each epoch on every rank)."""
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        order = _permutation(self.n, self.shuffle, self.seed, self.epoch)
        return iter(order[self.rank::self.num_replicas].tolist())

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.num_replicas))


class GlobalBatchSampler(Sampler[list[int]]):
    """Batch sampler yielding this rank's share of each global batch (same number of steps on every rank).

    Epoch ``e`` draws one permutation from ``seed + e`` (identical on every rank) and cuts it into global batches
    of ``batch_size``; rank r receives the r-th contiguous part (``numpy.array_split``) of each, so the parts
    concatenated in rank order are the global batch, in order. No index is repeated or padded. If the last global
    batch has fewer samples than ranks it is merged into the previous one, so no rank ever gets an empty batch.
    With one replica this is a plain shuffled batch sampler.

    Parameters
    ----------
    dataset_size : int or sized
        Number of samples (or the dataset).
    batch_size : int
        Global batch size (summed over ranks); at least the number of replicas.
    num_replicas, rank : int, optional
        Default: from the process group.
    shuffle : bool
        New permutation every epoch.
    seed : int
        Base seed.
    drop_last : bool
        Drop the last incomplete global batch instead.
    """

    def __init__(self, dataset_size: int | Any, batch_size: int, num_replicas: int | None = None,
                 rank: int | None = None, shuffle: bool = True, seed: int = 0, drop_last: bool = False) -> None:
        self.n = int(dataset_size if isinstance(dataset_size, (int, np.integer)) else len(dataset_size))
        self.batch_size = int(batch_size)
        self.num_replicas, self.rank = _replicas(num_replicas, rank)
        self.shuffle, self.seed, self.drop_last, self.epoch = shuffle, int(seed), drop_last, 0
        if self.batch_size < self.num_replicas:
            raise ValueError(f"global batch size {self.batch_size} is smaller than the number of ranks "
                             f"{self.num_replicas}: every rank needs at least one sample per step")
        if self.n < self.num_replicas:
            raise ValueError(f"{self.n} samples cannot be shared among {self.num_replicas} ranks")

    def set_epoch(self, epoch: int) -> None:
        """Use the permutation of ``epoch`` (call before each epoch on every rank)."""
        self.epoch = int(epoch)

    def global_batches(self) -> list[np.ndarray]:
        """The global batches (index arrays) of the current epoch, identical on every rank."""
        return self._cut(_permutation(self.n, self.shuffle, self.seed, self.epoch).numpy())

    def _cut(self, order: np.ndarray) -> list[np.ndarray]:
        batches = [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        if self.drop_last and len(batches) > 1 and len(batches[-1]) < self.batch_size:
            batches.pop()
        if len(batches) > 1 and len(batches[-1]) < self.num_replicas:
            last = batches.pop()
            batches[-1] = np.concatenate([batches[-1], last])
        return batches

    def global_batch_sizes(self) -> list[int]:
        """Sizes of the global batches of the current epoch."""
        return [len(b) for b in self.global_batches()]

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.global_batches():
            yield np.array_split(batch, self.num_replicas)[self.rank].tolist()

    def __len__(self) -> int:
        return len(self._cut(np.arange(self.n)))


# -- collectives -------------------------------------------------------------------------------------------------

def gather_sizes(n: int, device: torch.device | None = None) -> list[int]:
    """Leading sizes of every rank's tensor (``[n]`` in a plain process)."""
    if get_world_size() == 1:
        return [int(n)]
    return gather_counts([n], device)[:, 0].tolist()


def gather_counts(values: Sequence[int] | torch.Tensor, device: torch.device | None = None) -> torch.Tensor:
    """All-gather a few integers from every rank: ``[world_size, len(values)]`` (int64, on CPU)."""
    local = torch.as_tensor(values, dtype=torch.int64).reshape(1, -1)
    if get_world_size() == 1:
        return local
    device = _collective_device(device)
    local = local.to(device)
    out = [torch.empty_like(local) for _ in range(get_world_size())]
    dist.all_gather(out, local)
    return torch.cat(out).cpu()


def _collective_device(device: torch.device | None) -> torch.device:
    if is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return device if device is not None else torch.device("cpu")


def _pad_rows(x: torch.Tensor, rows: int) -> torch.Tensor:
    if x.shape[0] == rows:
        return x
    pad = x.new_zeros((rows - x.shape[0], *x.shape[1:]))
    return torch.cat([x, pad])


def gather_with_grad(x: torch.Tensor, sizes: Sequence[int] | None = None) -> torch.Tensor:
    """All-gather ``x [n_r, ...]`` from every rank, concatenated in rank order, keeping the gradient.

    Ranks may hold different ``n_r`` (padded for the collective, trimmed after). The backward sums, over ranks,
    the gradients reaching this rank's rows (``torch.distributed.nn.functional.all_gather``): with the same loss
    computed on every rank, each rank's ``x`` receives ``world_size`` times the gradient of that loss (see the
    module notes for how DDP's averaging cancels it), as with open_clip's ``gather_with_grad``. Identity in a
    plain process.

    Parameters
    ----------
    x : Tensor [n_r, ...]
    sizes : sequence of int, optional
        Every rank's ``n_r`` if known (saves one collective).
    """
    if get_world_size() == 1:
        return x
    sizes = gather_sizes(x.shape[0], x.device) if sizes is None else list(sizes)
    pieces = _AllGatherWithGrad.apply(_pad_rows(x, max(sizes)))  # [W, max(sizes), ...]
    return torch.cat([piece[:size] for piece, size in zip(pieces.unbind(0), sizes, strict=True)])


class _AllGatherWithGrad(torch.autograd.Function):
    """All-gather whose backward sums the gradients over ranks and keeps this rank's slice.

    (What ``torch.distributed.nn.functional.all_gather`` does, which torch 2.13 deprecates: reduce-scatter on
    nccl, all-reduce then slice on gloo.)
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        x = x.contiguous()
        out = [torch.empty_like(x) for _ in range(get_world_size())]
        dist.all_gather(out, x)
        return torch.stack(out)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:  # noqa: D102
        grad = grad.contiguous()
        if dist.get_backend() == "nccl":
            mine = torch.empty_like(grad[0])
            dist.reduce_scatter_tensor(mine, grad)
            return mine
        dist.all_reduce(grad)
        return grad[get_rank()].clone()


def gather_no_grad(x: torch.Tensor, sizes: Sequence[int] | None = None) -> torch.Tensor:
    """All-gather without gradient (masks, labels, indices); bool tensors are supported."""
    if get_world_size() == 1:
        return x
    sizes = gather_sizes(x.shape[0], x.device) if sizes is None else list(sizes)
    dtype = x.dtype
    y = x.to(torch.uint8) if dtype == torch.bool else x
    y = _pad_rows(y.detach(), max(sizes)).contiguous()
    out = [torch.empty_like(y) for _ in sizes]
    dist.all_gather(out, y)
    gathered = torch.cat([piece[:size] for piece, size in zip(out, sizes, strict=True)])
    return gathered.to(dtype) if dtype == torch.bool else gathered


def broadcast_from_main(x: torch.Tensor) -> torch.Tensor:
    """Rank 0's ``x`` on every rank (in place; same shape and dtype needed everywhere)."""
    if get_world_size() > 1:
        dist.broadcast(x, src=0)
    return x


def all_reduce_sum(x: torch.Tensor | float) -> torch.Tensor:
    """Sum over ranks (a detached copy; a float becomes a float64 tensor)."""
    t = torch.as_tensor(x, dtype=torch.float64) if not isinstance(x, torch.Tensor) else x.detach().clone()
    if get_world_size() > 1:
        device = _collective_device(t.device)
        moved = t.to(device)
        dist.all_reduce(moved)
        t = moved.to(t.device)
    return t


def all_reduce_mean(x: torch.Tensor | float) -> torch.Tensor:
    """Mean over ranks (for logging: losses, metrics). Detached."""
    return all_reduce_sum(x) / get_world_size()


def all_reduce_dict_mean(values: dict[str, float]) -> dict[str, float]:
    """Mean over ranks of every value of a flat dict of numbers (one collective; same keys on every rank)."""
    if get_world_size() == 1 or not values:
        return dict(values)
    keys = sorted(values)
    reduced = all_reduce_mean(torch.tensor([float(values[k]) for k in keys], dtype=torch.float64))
    return {k: float(v) for k, v in zip(keys, reduced.tolist(), strict=True)}


def global_mean_share(values: torch.Tensor, count: int | None = None) -> torch.Tensor:
    """This rank's share of a global-batch mean, scaled for DDP: ``W * values.sum() / global count``.

    Averaged over ranks (DDP's gradient averaging, or :func:`all_reduce_mean` of the value) it gives the mean of
    ``values`` over the global batch, even when ranks hold different numbers of rows. In a plain process it is
    ``values.mean()``. ``count`` overrides the global count (e.g. when already gathered).
    """
    world = get_world_size()
    if world == 1:
        return values.mean()
    total = count if count is not None else int(gather_counts([values.numel()], values.device).sum())
    if total == 0:
        return values.sum() * 0.0
    return values.sum() * (world / total)


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's (picklable) ``obj`` in rank order (``[obj]`` in a plain process)."""
    if get_world_size() == 1:
        return [obj]
    out: list[Any] = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


# -- models ------------------------------------------------------------------------------------------------------

def has_trainable_parameters(module: nn.Module) -> bool:
    """Whether ``module`` has a parameter that requires a gradient."""
    return any(p.requires_grad for p in module.parameters())


def wrap_ddp(module: nn.Module, info: DistInfo | None = None, sync_batchnorm: bool | None = None,
             **ddp_kwargs: Any) -> nn.Module:
    """``DistributedDataParallel(module)`` when distributed and trainable, else ``module`` unchanged.

    Parameters
    ----------
    module : nn.Module
        Already on its device.
    info : DistInfo, optional
        Gives the device; default: the device of the module's first parameter.
    sync_batchnorm : bool, optional
        Convert BatchNorm layers to ``SyncBatchNorm`` (global-batch statistics). Default: on CUDA only
        (``SyncBatchNorm`` does not run on CPU; on CPU BatchNorm statistics stay per rank, rank 0's running
        statistics being broadcast at every forward).
    **ddp_kwargs
        Passed to ``DistributedDataParallel`` (e.g. ``find_unused_parameters=True``).
    """
    if not is_initialized() or get_world_size() == 1 or not has_trainable_parameters(module):
        return module
    device = info.device if info is not None else next(module.parameters()).device
    if sync_batchnorm is None:
        sync_batchnorm = device.type == "cuda"
    if sync_batchnorm:
        module = nn.SyncBatchNorm.convert_sync_batchnorm(module)
    device_ids = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(module, device_ids=device_ids, **ddp_kwargs)


def unwrap(module: nn.Module) -> nn.Module:
    """The module inside a DDP wrapper (or ``module`` itself)."""
    return module.module if isinstance(module, nn.parallel.DistributedDataParallel) else module


def average_gradients(module: nn.Module | Sequence[nn.Parameter]) -> None:
    """Average the gradients of parameters not managed by DDP over ranks (one collective; no-op alone).

    A parameter whose gradient is None on every rank stays None; on some ranks only, the missing ones count as
    zero.
    """
    if get_world_size() == 1:
        return
    params = [p for p in (module.parameters() if isinstance(module, nn.Module) else module) if p.requires_grad]
    if not params:
        return
    device = _collective_device(params[0].device)
    flags = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=device)
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).detach().reshape(-1).float()
                      .to(device) for p in params])
    buffer = torch.cat([flat, flags])
    dist.all_reduce(buffer)
    buffer /= get_world_size()
    offset = 0
    for i, p in enumerate(params):
        size = p.numel()
        if float(buffer[flat.numel() + i]) > 0:
            p.grad = buffer[offset:offset + size].view_as(p).to(p.device, p.dtype).clone()
        offset += size


def broadcast_buffers(module: nn.Module) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank, e.g. before a sharded evaluation."""
    if get_world_size() == 1:
        return
    for buffer in module.buffers():
        if buffer.device.type == "cpu" and dist.get_backend() == "nccl":
            continue
        dist.broadcast(buffer.data, src=0)


__all__ = [
    "DistInfo", "GlobalBatchSampler", "ShardedSampler", "all_reduce_dict_mean", "all_reduce_mean", "all_reduce_sum",
    "average_gradients", "barrier", "broadcast_buffers", "broadcast_from_main", "cleanup", "distributed_context",
    "gather_counts", "gather_no_grad", "gather_objects", "gather_sizes", "gather_with_grad", "get_rank",
    "get_world_size", "global_mean_share", "has_trainable_parameters", "init_distributed", "is_initialized",
    "is_main_process", "main_process_first", "shard_range", "unwrap", "wrap_ddp",
]

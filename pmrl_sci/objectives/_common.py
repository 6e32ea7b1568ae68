"""Shared plumbing of the objectives: stacking, masks, normalisation, contrastive cross-entropy."""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from pmrl_sci.spectral import normalize_rows

MaskLike = torch.Tensor | Mapping[str, torch.Tensor] | None


def stack_modalities(embeddings: Mapping[str, torch.Tensor], mask: MaskLike = None, *, min_modalities: int = 2,
                     normalize: bool = True) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """Check, normalise and stack a ``{modality: [B, d]}`` dict.

    Parameters
    ----------
    embeddings : mapping of str to Tensor [B, d]
        Same B and d for every modality; dict order is the modality order.
    mask : Tensor [B, k] of bool, or mapping of str to Tensor [B], optional
        True where instance i has modality m. Missing rows are ignored (their values,
        even non-finite ones, never reach the loss). Default: all present.
    min_modalities : int
        Minimum number of modalities (k).
    normalize : bool
        L2-normalise each embedding (:func:`pmrl_sci.spectral.normalize_rows`: an exactly zero
        embedding stays zero and receives a zero gradient).

    Returns
    -------
    names : list of str
    z : Tensor [B, k, d]
        Normalised embeddings, zero where missing.
    present : Tensor [B, k] of bool

    Raises
    ------
    ValueError
        Too few modalities, shape mismatch, or non-finite values in a present row (the
        message names the modality).
    """
    if not isinstance(embeddings, Mapping):
        raise TypeError(f"objectives take a dict {{modality: Tensor[B, d]}}, got {type(embeddings).__name__}")
    names = list(embeddings)
    if len(names) < min_modalities:
        raise ValueError(f"this objective needs at least {min_modalities} modalities, got {names}")
    first = embeddings[names[0]]
    for name in names:
        value = embeddings[name]
        if not isinstance(value, torch.Tensor) or value.dim() != 2:
            raise ValueError(f"modality {name!r}: expected a tensor [B, d], got "
                             f"{list(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__}")
        if value.shape != first.shape:
            raise ValueError(f"modality {name!r} has shape {list(value.shape)}, modality {names[0]!r} has "
                             f"{list(first.shape)}: all modalities need the same [B, d]")
    present = as_mask(mask, names, first.shape[0], first.device)
    z = torch.stack([embeddings[name] for name in names], dim=1)  # [B, k, d]
    # a NaN or inf anywhere in a row makes its norm non-finite: one [B, k] check instead of one over [B, k, d]
    norms = torch.linalg.vector_norm(z, dim=2)
    overflow = ~torch.isfinite(norms)
    bad = present & overflow
    if bool(bad.any()):  # rare: tell NaN/inf from finite rows whose sum of squares overflowed (e.g. 3e38)
        finite_rows = torch.isfinite(z).all(dim=2)
        bad = present & ~finite_rows
        rescale = overflow & finite_rows
        if bool(rescale.any()):  # the direction is scale-free: divide those rows by their largest entry first
            scale = z.abs().amax(dim=2, keepdim=True).detach()
            z = torch.where(rescale.unsqueeze(2), z / torch.where(rescale.unsqueeze(2), scale, 1.0), z)
            norms = torch.where(rescale, torch.linalg.vector_norm(z, dim=2), norms)
    if bool(bad.any()):
        m = int(bad.any(dim=0).nonzero()[0, 0])
        rows = bad[:, m]
        raise ValueError(f"non-finite values (NaN or inf) in the {names[m]!r} embeddings of {int(rows.sum())} "
                         f"instance(s), e.g. batch row {int(rows.nonzero()[0, 0])}: check that encoder's input "
                         "and the learning rate")
    if mask is not None and not bool(present.all()):
        z = torch.where(present.unsqueeze(2), z, torch.zeros((), dtype=z.dtype, device=z.device))
        norms = torch.where(present, norms, torch.ones((), dtype=norms.dtype, device=norms.device))
    if normalize:  # as F.normalize, reusing the norms, but exactly zero rows get a zero gradient (not 1e12 x)
        z = normalize_rows(z, norms)
    return names, z, present


def as_mask(mask: MaskLike, names: list[str], batch: int, device: torch.device) -> torch.Tensor:
    """Turn a mask given as a tensor [B, k] or a dict of [B] into a bool tensor [B, k]."""
    if mask is None:
        return torch.ones(batch, len(names), dtype=torch.bool, device=device)
    if isinstance(mask, Mapping):
        unknown = set(mask) - set(names)
        if unknown:
            raise ValueError(f"mask names modalities {sorted(unknown)} that are not among {names}")
        missing = [n for n in names if n not in mask]
        if missing:  # a silent default (present, or absent) would hide a caller's bug either way
            raise ValueError(f"mask has no entry for modalities {missing}: a dict mask needs one [B] entry per "
                             f"modality of the embeddings {names}")
        columns = [torch.as_tensor(mask[n], device=device).bool() for n in names]
        mask = torch.stack(columns, dim=1)
    mask = torch.as_tensor(mask, device=device).bool()
    if mask.shape != (batch, len(names)):
        raise ValueError(f"mask must have shape [B, k] = [{batch}, {len(names)}], got {list(mask.shape)}")
    return mask


class LearnableTemperature(nn.Module):
    """CLIP-style learnable temperature: a log logit scale, clamped at ``max_scale``."""

    def __init__(self, init_temperature: float = 0.07, learnable: bool = True, max_scale: float = 100.0) -> None:
        super().__init__()
        value = torch.tensor(math.log(1.0 / init_temperature))
        self.log_scale = nn.Parameter(value, requires_grad=learnable)
        self.max_scale = max_scale

    def forward(self) -> torch.Tensor:
        """The current logit scale 1 / temperature."""
        return self.log_scale.exp().clamp(max=self.max_scale)


def symmetric_cross_entropy(logits: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Mean of row-wise and column-wise cross-entropy with the diagonal as targets."""
    targets = torch.arange(logits.shape[0], device=logits.device)
    rows = F.cross_entropy(logits, targets, label_smoothing=label_smoothing)
    cols = F.cross_entropy(logits.transpose(0, 1), targets, label_smoothing=label_smoothing)
    return 0.5 * (rows + cols)


def zero_loss(reference: torch.Tensor) -> torch.Tensor:
    """A differentiable zero attached to ``reference``'s graph (for batches with nothing to learn)."""
    return reference.sum() * 0.0


GatherFlag = bool | str


def check_gather_flag(gather: GatherFlag) -> GatherFlag:
    """Validate an objective's ``gather`` option (True, False or ``"auto"``)."""
    if gather not in (True, False, "auto"):
        raise ValueError(f"gather must be True, False or 'auto', got {gather!r}")
    return gather


def gather_active(gather: GatherFlag) -> bool:
    """Whether to gather across ranks: ``"auto"`` and True gather when a process group of >= 2 ranks is up.

    See :mod:`pmrl_sci.distributed`: a gathered objective computes the loss of the *global* batch on every rank,
    and DDP's gradient averaging then gives exactly the single-process gradient of that loss.
    """
    if gather is False:
        return False
    from pmrl_sci.distributed import get_world_size

    return get_world_size() > 1


def gather_embeddings(embeddings: Mapping[str, torch.Tensor], mask: MaskLike = None
                      ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """All-gather (with gradient) every modality's embeddings and the mask from every rank, in rank order.

    The local dict is checked first (:func:`stack_modalities`), so bad input fails with the usual message. One
    collective carries all modalities (stacked), one the mask; ranks may hold different batch sizes.

    Returns
    -------
    embeddings : dict of str to Tensor [N, d]
        The global batch (N = sum of the ranks' B).
    mask : Tensor [N, k] of bool
    """
    from pmrl_sci.distributed import gather_no_grad, gather_sizes, gather_with_grad

    names, _, present = stack_modalities(embeddings, mask)
    stacked = torch.stack([embeddings[name] for name in names], dim=1)  # [B, k, d], raw (normalised later)
    sizes = gather_sizes(stacked.shape[0], stacked.device)
    gathered = gather_with_grad(stacked, sizes)
    return ({name: gathered[:, m] for m, name in enumerate(names)}, gather_no_grad(present, sizes))

"""What every encoder declares: its input spec, so a wrong batch entry fails clearly."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class InputSpec:
    """What an encoder expects in its batch entry (the batch dimension excluded).

    Parameters
    ----------
    kind : {"tensor", "text"}
        A tensor, or a sequence of strings.
    shape : tuple of (int or None or str)
        Expected trailing shape without the batch dimension; ``None`` or a name
        (e.g. ``"time"``) for a free axis. Ignored for text.
    dtype : {"float", "long", "any"}
        Floating point, integer, or no constraint.
    description : str
        One line for error messages ("fMRI connectivity [n_rois, n_rois]").
    """

    kind: str = "tensor"
    shape: tuple[int | str | None, ...] = ()
    dtype: str = "float"
    description: str = ""

    def check(self, value: Any, modality: str = "input") -> None:
        """Raise ``ValueError`` naming ``modality`` when ``value`` does not fit."""
        expected = self.description or f"{self.kind} of shape [batch, {', '.join(map(_axis, self.shape))}]"
        if self.kind == "text":
            if isinstance(value, str) or not isinstance(value, Sequence) or not all(isinstance(v, str) for v in value):
                raise ValueError(f"modality {modality!r}: expected a list of strings ({expected}), "
                                 f"got {type(value).__name__}")
            return
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"modality {modality!r}: expected a tensor ({expected}), got {type(value).__name__}")
        if self.dtype == "float" and not value.is_floating_point():
            raise ValueError(f"modality {modality!r}: expected a floating-point tensor ({expected}), got {value.dtype}")
        if self.dtype == "long" and value.is_floating_point():
            raise ValueError(f"modality {modality!r}: expected an integer tensor ({expected}), got {value.dtype}")
        if self.shape:
            trailing = tuple(value.shape[1:])
            if len(trailing) != len(self.shape) or any(
                isinstance(want, int) and want != got for want, got in zip(self.shape, trailing)
            ):
                raise ValueError(f"modality {modality!r}: expected shape [batch, {', '.join(map(_axis, self.shape))}] "
                                 f"({expected}), got {list(value.shape)}")


def _axis(axis: int | str | None) -> str:
    return "*" if axis is None else str(axis)


class Encoder(torch.nn.Module):
    """Base class: an encoder maps one modality's batch entry to ``[batch, embed_dim]``.

    Subclasses set ``input_spec`` and ``embed_dim``; :meth:`check_input` is called by
    the model before ``forward``.
    """

    input_spec: InputSpec = InputSpec()
    embed_dim: int

    def check_input(self, value: Any, modality: str = "input") -> None:
        """Validate ``value`` against :attr:`input_spec`."""
        self.input_spec.check(value, modality)


def pooled_output(output: Any) -> torch.Tensor:
    """A ``transformers`` model output as ``[batch, hidden]``: its pooler output, else the mean over tokens."""
    pooled = getattr(output, "pooler_output", None)
    if pooled is None:
        pooled = output.last_hidden_state.mean(dim=1)
    return pooled.flatten(1)

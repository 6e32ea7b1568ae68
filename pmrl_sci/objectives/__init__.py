"""Objectives, each a ``torch.nn.Module`` built by name.

>>> from pmrl_sci.objectives import build_objective
>>> objective = build_objective("pmrl", tau1=0.05, tau2=0.1)
>>> out = objective({"fmri": e1, "smri": e2, "text": e3})  # doctest: +SKIP
>>> out["loss"].backward()  # doctest: +SKIP

Alignment objectives take a dict ``{modality: Tensor[B, d]}`` (k >= 2 modalities, same B
and d; normalised inside) and an optional mask ([B, k] bool or ``{modality: [B] bool}``) and
return a dict of named scalar tensors with ``"loss"``. Registered names: ``pmrl``, ``gram``,
``vast``, ``instance_matching``, and ``classification`` (called with logits and labels).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from pmrl_sci.objectives import classification, gram, matching, pmrl, vast  # noqa: F401  (registration)
from pmrl_sci.objectives.classification import ClassificationObjective
from pmrl_sci.objectives.gram import GRAMObjective
from pmrl_sci.objectives.matching import InstanceMatchingObjective
from pmrl_sci.objectives.pmrl import PMRLObjective
from pmrl_sci.objectives.vast import VASTObjective
from pmrl_sci.registry import OBJECTIVES

ALIGNMENT_OBJECTIVES = ("pmrl", "gram", "vast")


def build_objective(name: str, /, **hyperparameters: Any) -> nn.Module:
    """Build the objective registered as ``name`` with its hyper-parameters."""
    return OBJECTIVES.build(name, **hyperparameters)


def list_objectives() -> list[str]:
    """Registered objective names."""
    return OBJECTIVES.names()


__all__ = [
    "ALIGNMENT_OBJECTIVES", "ClassificationObjective", "GRAMObjective", "InstanceMatchingObjective",
    "PMRLObjective", "VASTObjective", "build_objective", "list_objectives",
]

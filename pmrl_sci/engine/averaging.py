"""An exponential moving average of a unit's weights, validated, selected and tested in place of the raw ones.

On small, noisy cohorts (a few hundred subjects, a validation set of a few dozen) the weights after any one
step carry that step's noise, and selecting the best validated epoch amplifies it. The average
``w_ema <- d * w_ema + (1 - d) * w`` after every optimiser step smooths it (Polyak averaging; timm's
``ModelEmaV3`` and ``torch.optim.swa_utils.get_ema_multi_avg_fn`` implement the same update for one module).
Here one average covers every module of a unit, and :meth:`WeightAverage.swapped_in` lends its weights to the
live modules, because a task validates and tests through the modules it built.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn


class WeightAverage:
    """Exponential moving average of the floating-point parameters and buffers of named modules.

    Parameters
    ----------
    modules : mapping of str to nn.Module
        The unit's modules; the average starts from their current state.
    decay : float
        Target decay ``d`` in ``(0, 1)``. The decay used at update ``t`` (counted from 1) is
        ``min(d, (1 + t) / (10 + t))``, so early updates are not dominated by the initial weights (timm's
        warm-up form).

    Notes
    -----
    Integer buffers (e.g. BatchNorm's ``num_batches_tracked``) are copied, not averaged. Parameters of
    frozen modules do not change, so their average equals them.
    """

    def __init__(self, modules: Mapping[str, nn.Module], decay: float) -> None:
        if not 0.0 < float(decay) < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = float(decay)
        self.updates = 0
        self.shadow = {name: {k: v.detach().clone() for k, v in module.state_dict().items()}
                       for name, module in modules.items()}

    def current_decay(self) -> float:
        """The decay the next update uses (its warm-up form)."""
        t = self.updates + 1
        return min(self.decay, (1.0 + t) / (10.0 + t))

    @torch.no_grad()
    def update(self, modules: Mapping[str, nn.Module]) -> None:
        """Move the average towards the modules' current state (call after each optimiser step)."""
        weight = 1.0 - self.current_decay()
        for name, module in modules.items():
            shadow = self.shadow[name]
            for key, value in module.state_dict().items():
                if value.is_floating_point():
                    shadow[key].lerp_(value.detach(), weight)
                else:
                    shadow[key].copy_(value)
        self.updates += 1

    @contextmanager
    def swapped_in(self, modules: Mapping[str, nn.Module]) -> Iterator[None]:
        """Inside the block the modules hold the averaged weights; their own are put back on exit."""
        own = {name: {k: v.detach().clone() for k, v in module.state_dict().items()}
               for name, module in modules.items()}
        try:
            for name, module in modules.items():
                module.load_state_dict(self.shadow[name])
            yield
        finally:
            for name, module in modules.items():
                module.load_state_dict(own[name])

    def state_dict(self) -> dict[str, Any]:
        """Plain tensors and numbers (loads with ``weights_only=True``)."""
        return {"decay": self.decay, "updates": self.updates, "shadow": self.shadow}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` recorded (the decay must match)."""
        if float(state["decay"]) != self.decay:
            raise ValueError(f"the saved EMA decay {state['decay']} differs from {self.decay}")
        self.updates = int(state["updates"])
        for name, saved in state["shadow"].items():
            for key, value in saved.items():
                self.shadow[name][key].copy_(value)

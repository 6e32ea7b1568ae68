"""Encoders, one module per family, each registered by name in :data:`pmrl_sci.registry.ENCODERS`.

Build one with :func:`pmrl_sci.registry.build_encoder`. Outside packages add theirs through
the ``pmrl_sci.encoders`` entry-point group.
"""

from pmrl_sci.encoders import mlp, text  # noqa: F401
from pmrl_sci.encoders.base import Encoder, InputSpec

__all__ = ["Encoder", "InputSpec"]

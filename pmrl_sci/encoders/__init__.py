"""Encoders, one module per family, each registered by name in :data:`pmrl_sci.registry.ENCODERS`.

Build one with :func:`pmrl_sci.registry.build_encoder`: the registry imports a family's module the
first time its name is looked up (:data:`pmrl_sci.registry.BUILTIN_ENCODERS`), so importing this
package imports no family. Outside packages add theirs through the ``pmrl_sci.encoders`` entry-point
group.

Families: ``mlp`` (tabular), ``text`` (transformers), ``brainnettf`` / ``vanillatf`` / ``brainnetcnn`` /
``edge_mlp`` (connectivity), ``hsi_cnn`` / ``lidar_cnn`` (remote-sensing patches), ``vision``, ``depth``, ``touch``,
``audio`` and ``features`` (precomputed embeddings).
"""

from pmrl_sci.encoders.base import Encoder, InputSpec

__all__ = ["Encoder", "InputSpec"]

"""pmrl-sci: principled multimodal representation learning for scientific modalities.

Subpackages
-----------
spectral, objectives
    Batched spectral operations on the per-instance modality matrix and the losses
    (PMRL, GRAM, VAST, instance matching, classification).
encoders
    One module per encoder family, each registered by name.
data
    The data layer: readers of the on-disk formats, preprocessing (connectivity, ComBat, patches,
    frozen text embeddings), splits, caches and embedded generators. It imports no training code.
"""

__version__ = "0.1.0"

"""pmrl-sci: principled multimodal representation learning for scientific modalities.

Subpackages
-----------
spectral, objectives
    Batched spectral operations on the per-instance modality matrix and the losses
    (PMRL, GRAM, VAST, instance matching, classification).
encoders
    One module per encoder family, each registered by name.
pipelines
    Readers for on-disk formats, preprocessing, splits and embedded data generators.
"""

__version__ = "0.1.0"

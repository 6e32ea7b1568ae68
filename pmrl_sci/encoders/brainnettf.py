"""Brain Network Transformer (BrainNetTF; Kan et al., NeurIPS 2022) as a connectivity encoder.

The model follows the authors' public implementation (github.com/Wayfear/BrainNetworkTransformer),
re-written for this kit:

* node features are connection profiles: node ``i`` is row ``i`` of the connectivity matrix;
  with ``C`` channels (e.g. Pearson and partial correlation) the rows are concatenated to
  ``C * R`` features;
* two transformer encoder layers over the ``R`` nodes (4 heads, feed-forward 1024, batch-first);
* the orthonormal clustering readout (OCRead) after the second layer: a small bottleneck MLP
  over the flattened node features (``R * F -> 32 -> 32 -> R * F``), ``K`` cluster centres
  initialised orthonormal (Gram-Schmidt, done here by QR) and frozen, soft assignment
  ``softmax_k((h_i . c_k)^2 / ||c_k||)``, cluster embeddings ``A^T H`` (``[K, F]``);
* the dimension reduction of the reference (``Linear(F, 8)`` + LeakyReLU per cluster, flattened to
  ``8 K``) and an MLP to ``embed_dim`` (the reference's 256-unit layer, then ``embed_dim`` instead
  of the class logits).

The shared helpers :func:`connectivity_input_spec` and :func:`connection_profiles` are used by the
other connectivity encoders (``vanillatf``, ``brainnetcnn``).
"""

from __future__ import annotations

import torch
from torch import nn

from pmrl_sci.encoders.base import Encoder, InputSpec
from pmrl_sci.registry import register_encoder

__all__ = ["BrainNetTF", "OCRead", "as_channels", "connection_profiles", "connectivity_input_spec",
           "orthonormal_centers"]


def connectivity_input_spec(n_rois: int, channels: int = 1) -> InputSpec:
    """Input spec of a connectivity encoder: ``[R, R]`` for one channel, ``[C, R, R]`` otherwise.

    Parameters
    ----------
    n_rois : int
        Number of regions ``R``.
    channels : int
        Number of connectivity matrices per subject ``C``.

    Returns
    -------
    InputSpec
        A float-tensor spec with a readable description.
    """
    if n_rois < 2:
        raise ValueError(f"n_rois must be >= 2, got {n_rois}")
    if channels < 1:
        raise ValueError(f"channels must be >= 1, got {channels}")
    if channels == 1:
        return InputSpec("tensor", (n_rois, n_rois), "float", f"connectivity [batch, {n_rois}, {n_rois}]")
    return InputSpec("tensor", (channels, n_rois, n_rois), "float",
                     f"connectivity [batch, {channels}, {n_rois}, {n_rois}] ({channels} channels)")


def as_channels(x: torch.Tensor, n_rois: int, channels: int) -> torch.Tensor:
    """Return connectivity as ``[B, C, R, R]``, accepting ``[B, R, R]`` when ``C == 1``.

    Raises
    ------
    ValueError
        When the shape does not match ``n_rois`` / ``channels``.
    """
    if x.dim() == 3 and channels == 1:
        x = x.unsqueeze(1)
    if x.dim() != 4 or tuple(x.shape[1:]) != (channels, n_rois, n_rois):
        want = f"[batch, {n_rois}, {n_rois}]" if channels == 1 else f"[batch, {channels}, {n_rois}, {n_rois}]"
        raise ValueError(f"connectivity input: expected shape {want}, got {list(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"connectivity input: expected a floating-point tensor, got {x.dtype}")
    return x


def connection_profiles(x: torch.Tensor, n_rois: int, channels: int = 1) -> torch.Tensor:
    """Node features from connectivity: row ``i`` of each channel, concatenated.

    Parameters
    ----------
    x : Tensor
        ``[B, R, R]`` or ``[B, C, R, R]``.
    n_rois, channels : int
        Expected ``R`` and ``C``.

    Returns
    -------
    Tensor
        ``[B, R, C * R]``; feature ``c * R + j`` of node ``i`` is ``x[:, c, i, j]``.
    """
    x = as_channels(x, n_rois, channels)
    batch = x.shape[0]
    return x.permute(0, 2, 1, 3).reshape(batch, n_rois, channels * n_rois)


def orthonormal_centers(n_clusters: int, dim: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``n_clusters`` orthonormal rows in ``R^dim``: Xavier-uniform draws orthonormalised in order.

    Equivalent to Gram-Schmidt on the rows (QR of the transpose with the signs of ``R``'s diagonal
    made positive), computed in float64 and returned as float32.

    Raises
    ------
    ValueError
        When ``n_clusters > dim`` (at most ``dim`` orthonormal vectors exist).
    """
    if n_clusters < 1:
        raise ValueError(f"n_clusters must be >= 1, got {n_clusters}")
    if n_clusters > dim:
        raise ValueError(f"OCRead: cannot place {n_clusters} orthonormal cluster centres in a {dim}-dimensional "
                         f"node-feature space; use n_clusters <= {dim} (node features = channels * n_rois)")
    bound = (6.0 / (n_clusters + dim)) ** 0.5  # xavier_uniform_ on a [n_clusters, dim] matrix
    init = (torch.rand(n_clusters, dim, generator=generator, dtype=torch.float64) * 2 - 1) * bound
    q, r = torch.linalg.qr(init.T)  # [dim, K], [K, K]
    signs = torch.sign(torch.diagonal(r))
    signs[signs == 0] = 1.0
    return (q * signs).T.contiguous().to(torch.float32)


class OCRead(nn.Module):
    """Orthonormal clustering readout of BrainNetTF.

    Parameters
    ----------
    n_nodes : int
        Number of nodes ``R``.
    feature_dim : int
        Node-feature dimension ``F``.
    n_clusters : int
        Number of cluster centres ``K`` (``<= F``).
    bottleneck : int
        Width of the node-feature MLP of the reference implementation (32).
    freeze_centers : bool
        Keep the orthonormal centres fixed (a buffer) instead of learning them.
    """

    def __init__(self, n_nodes: int, feature_dim: int, n_clusters: int = 100, bottleneck: int = 32,
                 freeze_centers: bool = True) -> None:
        super().__init__()
        self.n_nodes, self.feature_dim, self.n_clusters = n_nodes, feature_dim, n_clusters
        flat = n_nodes * feature_dim
        self.encoder = nn.Sequential(
            nn.Linear(flat, bottleneck), nn.LeakyReLU(),
            nn.Linear(bottleneck, bottleneck), nn.LeakyReLU(),
            nn.Linear(bottleneck, flat),
        )
        centers = orthonormal_centers(n_clusters, feature_dim)
        self.freeze_centers = freeze_centers
        if freeze_centers:
            self.register_buffer("centers", centers)
        else:
            self.centers = nn.Parameter(centers)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pool node features ``[B, R, F]`` to cluster embeddings.

        Returns
        -------
        clusters : Tensor
            ``[B, K, F]``, ``A^T H'`` with ``H'`` the MLP-encoded node features.
        assignment : Tensor
            ``[B, R, K]`` soft assignment of each node to the clusters (rows sum to 1).
        """
        batch = h.shape[0]
        encoded = self.encoder(h.reshape(batch, -1)).reshape(batch, self.n_nodes, self.feature_dim)
        scores = (encoded @ self.centers.T).pow(2) / torch.linalg.vector_norm(self.centers, dim=-1)
        assignment = torch.softmax(scores, dim=-1)
        return assignment.transpose(1, 2) @ encoded, assignment


def _transformer_layer(d_model: int, n_heads: int, dim_feedforward: int, dropout: float) -> nn.TransformerEncoderLayer:
    if d_model % n_heads:
        raise ValueError(f"node-feature dimension {d_model} (channels * n_rois) is not divisible by "
                         f"n_heads={n_heads}; choose n_heads dividing it")
    return nn.TransformerEncoderLayer(d_model=d_model, nhead=n_heads, dim_feedforward=dim_feedforward,
                                      dropout=dropout, batch_first=True)


@register_encoder("brainnettf")
class BrainNetTF(Encoder):
    """Brain Network Transformer encoder: connectivity ``[B, (C,) R, R]`` to ``[B, embed_dim]``.

    Parameters
    ----------
    n_rois : int
        Number of regions ``R`` (200 for CC200).
    embed_dim : int
        Output dimension.
    channels : int
        Connectivity matrices per subject ``C``; node features have ``C * R`` dimensions.
    n_layers : int
        Transformer encoder layers (2 in the paper); OCRead follows the last one.
    n_heads : int
        Attention heads (4).
    dim_feedforward : int
        Feed-forward width (1024).
    n_clusters : int
        OCRead cluster centres ``K`` (100; at most ``C * R``).
    dropout : float
        Transformer dropout (0.1, PyTorch's default as in the reference).
    freeze_centers : bool
        Keep the orthonormal centres fixed (the paper's setting).
    reduced_dim : int
        Per-cluster dimension after the reduction layer (8).
    hidden_dim : int
        Hidden width of the final MLP (256).
    """

    def __init__(self, n_rois: int, embed_dim: int = 128, channels: int = 1, n_layers: int = 2, n_heads: int = 4,
                 dim_feedforward: int = 1024, n_clusters: int = 100, dropout: float = 0.1,
                 freeze_centers: bool = True, reduced_dim: int = 8, hidden_dim: int = 256) -> None:
        super().__init__()
        if n_layers < 1:
            raise ValueError(f"n_layers must be >= 1, got {n_layers}")
        self.input_spec = connectivity_input_spec(n_rois, channels)
        self.n_rois, self.channels, self.embed_dim = n_rois, channels, embed_dim
        feature_dim = channels * n_rois
        self.layers = nn.ModuleList(
            _transformer_layer(feature_dim, n_heads, dim_feedforward, dropout) for _ in range(n_layers))
        self.readout = OCRead(n_rois, feature_dim, n_clusters, freeze_centers=freeze_centers)
        self.dim_reduction = nn.Sequential(nn.Linear(feature_dim, reduced_dim), nn.LeakyReLU())
        self.head = nn.Sequential(nn.Linear(reduced_dim * n_clusters, hidden_dim), nn.LeakyReLU(),
                                  nn.Linear(hidden_dim, embed_dim))

    def forward(self, x: torch.Tensor, return_assignment: bool = False
                ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Embed connectivity.

        Parameters
        ----------
        x : Tensor
            ``[B, R, R]`` (one channel) or ``[B, C, R, R]``.
        return_assignment : bool
            Also return the OCRead soft assignment ``[B, R, K]``.

        Returns
        -------
        Tensor or (Tensor, Tensor)
            ``[B, embed_dim]``, and the assignment when asked.
        """
        h = connection_profiles(x, self.n_rois, self.channels)
        for layer in self.layers:
            h = layer(h)
        clusters, assignment = self.readout(h)
        z = self.head(self.dim_reduction(clusters).flatten(1))
        return (z, assignment) if return_assignment else z

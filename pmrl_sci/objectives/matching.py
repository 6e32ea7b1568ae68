"""Instance matching: a binary matched / mismatched head with hard-negative mining."""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from pmrl_sci.objectives._common import (
    GatherFlag,
    MaskLike,
    check_gather_flag,
    gather_active,
    stack_modalities,
    zero_loss,
)
from pmrl_sci.registry import register_objective


@register_objective("instance_matching")
class InstanceMatchingObjective(nn.Module):
    """Binary cross-entropy of a matching head on positive and hard-negative tuples.

    The head ("multimodal encoder + 2-layer MLP", as in the paper) is one transformer
    encoder layer over the k modality tokens (plus learned modality embeddings), mean-pooled,
    then a 2-layer MLP to one logit. For each anchor i a negative candidate j != i is drawn
    with probability softmax(sim(i, .) / temperature) (diagonal excluded), where sim is the
    cosine between the anchor and the mean of j's other modalities; symmetrically a negative
    anchor is drawn for each candidate. Positives: the B matched tuples.

    Parameters
    ----------
    embed_dim : int
        Embedding dimension d.
    num_modalities : int
        k (the dict passed at call time must have k entries).
    anchor : str, optional
        Anchor modality; default the first key of the dict.
    hidden_dim : int
        Width of the MLP.
    num_heads : int
        Attention heads of the fusion layer (must divide ``embed_dim``; reduced if not).
    temperature : float
        Temperature of the negative-sampling softmax.
    gather : bool or "auto"
        Under ``torch.distributed`` (>= 2 ranks; "auto", the default, and True): negatives are mined from the
        global batch (tuples gathered with gradient; the draws are rank 0's, broadcast, so every rank uses the
        same ones) while each rank scores only the tuples of its own instances, as the share
        ``W * sum_local / (3 N_global)`` of the global BCE. The head's parameters are then NOT global by
        themselves: wrap this module in DDP or call :func:`pmrl_sci.distributed.average_gradients` on it after
        ``backward``. False: local batch only.

    Notes
    -----
    Masks: only instances with every modality present take part (as anchors, candidates
    and negatives).
    """

    def __init__(self, embed_dim: int, num_modalities: int, anchor: str | None = None, hidden_dim: int = 256,
                 num_heads: int = 4, temperature: float = 0.07, gather: GatherFlag = "auto") -> None:
        super().__init__()
        self.gather = check_gather_flag(gather)
        while embed_dim % num_heads:
            num_heads -= 1
        self.anchor, self.temperature, self.num_modalities = anchor, temperature, num_modalities
        self.modality_embedding = nn.Parameter(torch.zeros(num_modalities, embed_dim))
        self.fusion = nn.TransformerEncoderLayer(embed_dim, num_heads, dim_feedforward=2 * embed_dim,
                                                 dropout=0.0, batch_first=True)
        self.classifier = nn.Sequential(nn.Linear(embed_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, 1))

    def match_logits(self, tokens: torch.Tensor) -> torch.Tensor:
        """Matching logits ``[N]`` for tuples ``[N, k, d]`` of normalised embeddings."""
        fused = self.fusion(tokens + self.modality_embedding)
        return self.classifier(fused.mean(dim=1)).squeeze(-1)

    def forward(self, embeddings: Mapping[str, torch.Tensor], mask: MaskLike = None) -> dict[str, torch.Tensor]:
        """Loss and matching accuracy for a ``{modality: [B, d]}`` dict."""
        names, z, present = stack_modalities(embeddings, mask)
        if len(names) != self.num_modalities:
            raise ValueError(f"instance matching was built for {self.num_modalities} modalities, got {names}")
        anchor = self.anchor if self.anchor is not None else names[0]
        if anchor not in names:
            raise ValueError(f"instance-matching anchor {anchor!r} is not among the modalities {names}")
        a = names.index(anchor)
        full = present.all(dim=1)
        z = z[full]
        if gather_active(self.gather):
            return self._forward_gathered(z, a, len(names))
        n = z.shape[0]
        if n < 2:
            return {"loss": zero_loss(z) + sum(zero_loss(p) for p in self.parameters())}
        rest = [m for m in range(len(names)) if m != a]
        with torch.no_grad():
            others_mean = F.normalize(z[:, rest].mean(dim=1), dim=-1)
            sim = z[:, a] @ others_mean.transpose(0, 1) / self.temperature
            sim.fill_diagonal_(float("-inf"))
            negative_candidate = torch.multinomial(torch.softmax(sim, dim=1), 1).squeeze(1)
            negative_anchor = torch.multinomial(torch.softmax(sim.transpose(0, 1), dim=1), 1).squeeze(1)
        neg1 = z[negative_candidate].clone()
        neg1[:, a] = z[:, a]
        neg2 = z.clone()
        neg2[:, a] = z[negative_anchor, a]
        tuples = torch.cat([z, neg1, neg2])
        labels = torch.cat([z.new_ones(n), z.new_zeros(2 * n)])
        logits = self.match_logits(tuples)
        loss = F.binary_cross_entropy_with_logits(logits, labels)
        accuracy = ((logits > 0).float() == labels).float().mean()
        return {"loss": loss, "matching_accuracy": accuracy.detach()}

    def _forward_gathered(self, z_local: torch.Tensor, a: int, k: int) -> dict[str, torch.Tensor]:
        """Distributed forward: global negatives, local tuples, the local share of the global BCE."""
        from pmrl_sci.distributed import broadcast_from_main, gather_sizes, gather_with_grad, get_rank, get_world_size

        sizes = gather_sizes(z_local.shape[0], z_local.device)
        z = gather_with_grad(z_local, sizes)  # [N, k, d], the global batch in rank order
        n = z.shape[0]
        if n < 2:
            return {"loss": zero_loss(z) + sum(zero_loss(p) for p in self.parameters())}
        rest = [m for m in range(k) if m != a]
        with torch.no_grad():  # the same draws as one process over the global batch (rank 0's, broadcast)
            others_mean = F.normalize(z[:, rest].mean(dim=1), dim=-1)
            sim = z[:, a] @ others_mean.transpose(0, 1) / self.temperature
            sim.fill_diagonal_(float("-inf"))
            negative_candidate = torch.multinomial(torch.softmax(sim, dim=1), 1).squeeze(1)
            negative_anchor = torch.multinomial(torch.softmax(sim.transpose(0, 1), dim=1), 1).squeeze(1)
            draws = broadcast_from_main(torch.stack([negative_candidate, negative_anchor]).contiguous())
        start = sum(sizes[:get_rank()])
        mine = torch.arange(start, start + sizes[get_rank()], device=z.device)
        neg1 = z[draws[0, mine]].clone()
        neg1[:, a] = z[mine, a]
        neg2 = z[mine].clone()
        neg2[:, a] = z[draws[1, mine], a]
        tuples = torch.cat([z[mine], neg1, neg2])
        m = len(mine)
        labels = torch.cat([z.new_ones(m), z.new_zeros(2 * m)])
        logits = self.match_logits(tuples)
        scale = get_world_size() / (3 * n)
        loss = F.binary_cross_entropy_with_logits(logits, labels, reduction="sum") * scale
        loss = loss + sum(zero_loss(p) for p in self.parameters())  # every parameter in the graph on every rank
        accuracy = ((logits > 0).float() == labels).float().sum() * scale
        return {"loss": loss, "matching_accuracy": accuracy.detach()}

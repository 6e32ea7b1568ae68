"""Retrieval evaluation: recall matrix over modality pairs, validation score, zero-shot classification, seed means."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pmrl_sci.data.manifest import LoadedData
from pmrl_sci.errors import InputError
from pmrl_sci.tasks.retrieval_model import embed_rows

#: recall cut-offs reported for every pair
KS = (1, 5, 10)


def pairwise_recall(embeddings: dict[str, torch.Tensor], mask: np.ndarray, modalities: Sequence[str],
                    ks: Sequence[int] = KS, skip_empty: bool = False) -> dict[str, dict[str, float]]:
    """R@K and median rank for every ordered pair ``"query->gallery"`` over rows having both modalities.

    Parameters
    ----------
    embeddings : dict of str to Tensor
        L2-normalised ``[N, d]`` per modality.
    mask : numpy.ndarray
        Bool ``[N, k]``, True where the row has the modality.
    modalities : sequence of str
        The k modalities, in the column order of ``mask``.
    ks : sequence of int
        Recall cut-offs.
    skip_empty : bool
        Leave out pairs without a row having both modalities (a small validation set) instead of raising.

    Raises
    ------
    InputError
        When a pair has no row with both modalities (an empty gallery) and ``skip_empty`` is False, naming the pair.
    """
    from pmrl_sci.metrics import retrieval_metrics

    results = {}
    for i, q in enumerate(modalities):
        for j, g in enumerate(modalities):
            if i == j:
                continue
            rows = np.flatnonzero(mask[:, i] & mask[:, j])
            if rows.size == 0:
                if skip_empty:
                    continue
                raise InputError(f"retrieval {q}->{g}: empty gallery (no test row has both {q!r} and {g!r})")
            similarity = embeddings[q][rows] @ embeddings[g][rows].T
            metrics = retrieval_metrics(similarity, ks=ks)
            metrics["n"] = int(rows.size)
            results[f"{q}->{g}"] = metrics
    return results


def mean_recall(recall: dict[str, dict[str, float]], metric: str = "R@1") -> float:
    """Mean of ``metric`` over the pairs of :func:`pairwise_recall` (NaN when there is none)."""
    values = [r[metric] for r in recall.values()]
    return float(np.mean(values)) if values else float("nan")


def validation_scores(model: nn.Module, data: LoadedData, val: np.ndarray, batch_size: int, device: torch.device,
                      sharded: bool = False) -> dict[str, float]:
    """``val_mean_R@1``, ``val_mean_R@5`` and ``val_mean_R@10`` over the pairs present in the validation rows.

    NaN without validation rows (the engine then tests the last epoch).
    """
    if len(val) == 0:
        return {f"val_mean_R@{k}": float("nan") for k in KS}
    embeddings = embed_rows(model, data, val, batch_size, device, sharded=sharded)
    recall = pairwise_recall(embeddings, data.mask[val], data.modalities, skip_empty=True)
    return {f"val_mean_R@{k}": mean_recall(recall, f"R@{k}") for k in KS}


def average_recall(recalls: Sequence[Mapping[str, Mapping[str, float]]]) -> dict[str, dict[str, float]]:
    """Per pair, the mean over units (seeds) of every metric of :func:`pairwise_recall`."""
    if not recalls:
        return {}
    return {pair: {key: float(np.mean([r[pair][key] for r in recalls])) for key in recalls[0][pair]}
            for pair in recalls[0]}


def read_label_file(path: str | Path) -> tuple[list[str], list[str]]:
    """Class names and prompts from a text file: ``name`` or ``name<TAB>prompt`` per line (``#`` comments)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"--zero-shot-labels {path} does not exist")
    names, prompts = [], []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, _, prompt = line.partition("\t")
        names.append(name.strip())
        prompts.append(prompt.strip() or name.strip())
    if not names:
        raise InputError(f"zero-shot label file {path} holds no labels")
    if len(set(names)) != len(names):
        raise InputError(f"zero-shot label file {path} repeats labels")
    return names, prompts


def check_zero_shot_labels(label_file: str, data: LoadedData) -> None:
    """Refuse a zero-shot label file before training: unreadable, empty or repeating labels, or no text modality.

    Raises
    ------
    InputError
        Naming ``--zero-shot-labels`` and what is wrong.
    """
    read_label_file(label_file)
    if not any(data.kinds[m] == "text" for m in data.modalities):
        raise InputError(f"--zero-shot-labels {label_file} needs a text modality among --modalities "
                         f"(got {data.modalities})")


@torch.no_grad()
def zero_shot(model: nn.Module, data: LoadedData, rows: np.ndarray, embeddings: dict[str, torch.Tensor],
              label_file: str, text_model: str | None, device: torch.device) -> dict[str, Any]:
    """Top-1 accuracy of classifying each non-text modality by retrieval against the label texts.

    Parameters
    ----------
    model : nn.Module
        The trained :class:`~pmrl_sci.training.MultimodalModel` (its text encoder projects the label texts).
    data : LoadedData
        Every row (``labels`` holds the class names).
    rows : numpy.ndarray
        The evaluated (test) rows.
    embeddings : dict of str to Tensor
        L2-normalised embeddings of ``rows`` per modality.
    label_file : str
        Class names and prompts (:func:`read_label_file`).
    text_model : str or None
        Frozen text model that embeds the prompts (the one used for the text column).
    device : torch.device
        The model's device.
    """
    from pmrl_sci.data.text import embed_texts

    text_modalities = [m for m in data.modalities if data.kinds[m] == "text"]
    if not text_modalities:
        raise InputError("--zero-shot-labels needs a text modality among --modalities")
    names, prompts = read_label_file(label_file)
    labels = [data.labels[i] for i in rows]
    known = np.array([label in names for label in labels])
    if not known.any():
        raise InputError(f"--zero-shot-labels {label_file}: no test row has a label among {names} "
                         "(the manifest's 'label' column)")
    text = text_modalities[0]
    encoder = model.encoders[text]
    encoder.eval()
    label_embeddings = torch.from_numpy(embed_texts(prompts, text_model)).to(device)
    classes = torch.nn.functional.normalize(encoder(label_embeddings).float(), dim=-1).cpu()
    target = np.array([names.index(label) if label in names else -1 for label in labels])
    mask = data.mask[rows]
    out: dict[str, Any] = {"labels": names, "text_modality": text, "chance": 1.0 / len(names),
                           "unlabelled_rows": int((~known).sum()), "accuracy": {}}
    for j, m in enumerate(data.modalities):
        if data.kinds[m] == "text":
            continue
        keep = known & mask[:, j]
        if not keep.any():
            continue
        predicted = (embeddings[m][keep] @ classes.T).argmax(dim=1).numpy()
        out["accuracy"][m] = float((predicted == target[keep]).mean())
    return out

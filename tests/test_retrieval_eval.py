"""Retrieval evaluation (``pmrl_sci.tasks.retrieval_eval``): recall against a brute-force reference, label files."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pmrl_sci.data.manifest import LoadedData
from pmrl_sci.errors import InputError
from pmrl_sci.tasks.retrieval_eval import (
    average_recall,
    mean_recall,
    pairwise_recall,
    read_label_file,
    validation_scores,
)
from pmrl_sci.training import MultimodalModel


def _brute_force(q: np.ndarray, g: np.ndarray, k: int) -> tuple[float, float]:
    ranks = []
    for i in range(len(q)):
        scores = [float(q[i] @ g[j]) for j in range(len(g))]
        better = sum(1 for j in range(len(g)) if j != i and scores[j] >= scores[i])
        ranks.append(better + 1)
    ranks = np.array(ranks)
    return float(np.mean(ranks <= k)), float(np.median(ranks))


def test_pairwise_recall_matches_brute_force() -> None:
    rng = np.random.default_rng(0)
    n, d = 30, 8
    shared = rng.standard_normal((n, d))
    emb = {m: torch.from_numpy(shared + s * rng.standard_normal((n, d))).float() for m, s in
           (("a", 0.5), ("b", 1.0), ("c", 2.0))}
    emb = {m: torch.nn.functional.normalize(v, dim=-1) for m, v in emb.items()}
    mask = np.ones((n, 3), bool)
    mask[[1, 5, 7], 1] = False  # rows without b
    mask[[2, 5], 2] = False
    recall = pairwise_recall(emb, mask, ["a", "b", "c"], ks=(1, 5, 10))
    assert set(recall) == {"a->b", "a->c", "b->a", "b->c", "c->a", "c->b"}
    names = ["a", "b", "c"]
    for pair, metrics in recall.items():
        q, g = pair.split("->")
        rows = np.flatnonzero(mask[:, names.index(q)] & mask[:, names.index(g)])
        assert metrics["n"] == rows.size
        for k in (1, 5, 10):
            expected, median = _brute_force(emb[q][rows].numpy(), emb[g][rows].numpy(), k)
            assert metrics[f"R@{k}"] == pytest.approx(expected)
            assert metrics["median_rank"] == pytest.approx(median)
    assert recall["a->b"]["R@1"] > recall["a->c"]["R@1"]  # the less noisy pair retrieves better
    assert mean_recall(recall) == pytest.approx(np.mean([m["R@1"] for m in recall.values()]))
    assert np.isnan(mean_recall({}))


def test_pairwise_recall_empty_gallery_is_named_or_skipped() -> None:
    emb = {m: torch.nn.functional.normalize(torch.randn(5, 3), dim=-1) for m in ("x", "y", "z")}
    mask = np.array([[True, False, True]] * 5)
    with pytest.raises(InputError, match="x->y: empty gallery"):
        pairwise_recall(emb, mask, ["x", "y", "z"])
    assert set(pairwise_recall(emb, mask, ["x", "y", "z"], skip_empty=True)) == {"x->z", "z->x"}


def test_average_recall_is_the_per_pair_mean() -> None:
    a = {"x->y": {"R@1": 0.2, "median_rank": 3.0}, "y->x": {"R@1": 0.4, "median_rank": 1.0}}
    b = {"x->y": {"R@1": 0.6, "median_rank": 1.0}, "y->x": {"R@1": 0.0, "median_rank": 5.0}}
    assert average_recall([a, b]) == {"x->y": {"R@1": pytest.approx(0.4), "median_rank": 2.0},
                                      "y->x": {"R@1": pytest.approx(0.2), "median_rank": 3.0}}
    assert average_recall([a]) == a


def test_validation_scores_see_identical_views_perfectly() -> None:
    """Two modalities encoded by the same module retrieve each row exactly; no rows give NaN."""
    torch.manual_seed(0)
    encoder = torch.nn.Linear(4, 8)
    model = MultimodalModel({"a": encoder, "b": encoder})
    x = np.random.default_rng(0).standard_normal((12, 4)).astype(np.float32)
    data = LoadedData(["a", "b"], {"a": "features", "b": "features"}, {"a": x, "b": x.copy()},
                      np.ones((12, 2), bool), [str(i) for i in range(12)], [None] * 12, [None] * 12)
    scores = validation_scores(model, data, np.arange(3, 12), batch_size=4, device=torch.device("cpu"))
    assert scores == {"val_mean_R@1": 1.0, "val_mean_R@5": 1.0, "val_mean_R@10": 1.0}
    data.arrays["b"] = x[::-1].copy()  # rows of b no longer match rows of a
    assert validation_scores(model, data, np.arange(12), 4, torch.device("cpu"))["val_mean_R@1"] < 0.5
    empty = validation_scores(model, data, np.arange(0), 4, torch.device("cpu"))
    assert all(np.isnan(v) for v in empty.values())


def test_label_file(tmp_path) -> None:
    path = tmp_path / "labels.txt"
    path.write_text("# classes\ncircle\tan image of a circle\nsquare\n\n")
    assert read_label_file(path) == (["circle", "square"], ["an image of a circle", "square"])
    path.write_text("a\na\n")
    with pytest.raises(InputError, match="repeats"):
        read_label_file(path)
    path.write_text("# nothing\n")
    with pytest.raises(InputError, match="no labels"):
        read_label_file(path)
    with pytest.raises(InputError, match="nope.txt"):
        read_label_file(tmp_path / "nope.txt")

"""Any-modality retrieval: recall against a brute-force reference, few-shot sampling, label files, end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pmrl_sci.pipelines.manifest import LoadedData
from pmrl_sci.pipelines.retrieval_training import (
    few_shot_indices,
    pairwise_recall,
    read_label_file,
    split_indices,
)
from pmrl_sci.retrieval import main

torch.set_num_threads(1)


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
    # better-aligned pairs retrieve better
    assert recall["a->b"]["R@1"] > recall["a->c"]["R@1"] - 1e-9


def test_pairwise_recall_empty_gallery_is_named() -> None:
    emb = {m: torch.randn(4, 3) for m in ("x", "y")}
    mask = np.array([[True, False]] * 4)
    with pytest.raises(ValueError, match="x->y: empty gallery"):
        pairwise_recall(emb, mask, ["x", "y"])


def _data(labels, splits) -> LoadedData:
    n = len(labels)
    return LoadedData(["a"], {"a": "features"}, {"a": np.zeros((n, 2), np.float32)}, np.ones((n, 1), bool),
                      [str(i) for i in range(n)], labels, splits)


def test_few_shot_and_splits() -> None:
    labels = ["x"] * 6 + ["y"] * 6 + ["z"] * 2
    train = np.arange(14)
    rows, mode = few_shot_indices(train, labels, 3, seed=0)
    assert mode == "per_class" and len(rows) == 3 + 3 + 2
    assert sorted(labels[i] for i in rows).count("x") == 3
    rows, mode = few_shot_indices(train, [None] * 14, 5, seed=0)
    assert mode == "instances" and len(rows) == 5 and len(set(rows.tolist())) == 5
    tr, te = split_indices(_data(labels, ["train"] * 10 + ["test"] * 4), 0.2, 0)
    assert tr.tolist() == list(range(10)) and te.tolist() == [10, 11, 12, 13]
    tr, te = split_indices(_data(labels, [None] * 14), 0.25, 0)
    assert len(te) == 4 and len(tr) == 10 and not set(tr) & set(te)


def test_label_file(tmp_path) -> None:
    path = tmp_path / "labels.txt"
    path.write_text("# classes\ncircle\tan image of a circle\nsquare\n\n")
    assert read_label_file(path) == (["circle", "square"], ["an image of a circle", "square"])
    path.write_text("a\na\n")
    with pytest.raises(ValueError, match="repeats"):
        read_label_file(path)
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        read_label_file(tmp_path / "nope.txt")


_TINY = ["--n-train", "40", "--n-test", "16", "--image-size", "16", "--width", "4", "--num-blocks", "2",
         "--n-mels", "16", "--embed-dim", "16", "--batch-size", "16", "--threads", "1"]


def test_end_to_end_tiny(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("PMRL_SCI_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    results = main([*_TINY, "--modalities", "vision", "audio", "text", "--epochs", "2", "--missing-rate", "0.2",
                    "--data-dir", str(tmp_path / "scenes"), "--out", str(out), "--eval-every", "1"])
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["recall"].keys() == results["recall"].keys() == {
        "vision->audio", "vision->text", "audio->vision", "audio->text", "text->vision", "text->audio"}
    for metrics in on_disk["recall"].values():
        assert 0.0 <= metrics["R@1"] <= metrics["R@5"] <= metrics["R@10"] <= 1.0
        assert 1 <= metrics["median_rank"] <= metrics["n"] <= 16
    assert on_disk["missing"]["rows_with_missing"] > 0  # missing modalities were generated, counted and reported
    assert on_disk["n_train"] == 40 and on_disk["n_test"] == 16
    assert set(on_disk["zero_shot"]["accuracy"]) == {"vision", "audio"}
    assert (out / "recall_heatmap.png").stat().st_size > 1000
    epochs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in epochs] == [1, 2] and all(np.isfinite(e["total_loss"]) for e in epochs)
    assert "test_mean_R@1" in epochs[-1] and "im_loss" in epochs[-1]


def test_end_to_end_few_shot_gram_without_text(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("PMRL_SCI_CACHE", str(tmp_path / "cache"))
    results = main([*_TINY, "--modalities", "vision", "depth", "touch", "--objective", "gram", "--few-shot", "3",
                    "--epochs", "1", "--data-dir", str(tmp_path / "scenes"), "--out", str(tmp_path / "run")])
    assert results["few_shot"] == {"n": 3, "mode": "per_class"}
    assert results["n_train"] <= 12 and results["anchor"] == "vision" and len(results["recall"]) == 6
    assert "zero_shot" not in results


def test_unknown_modality_is_an_error(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("PMRL_SCI_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ValueError, match="no column for modalities.*smell"):
        main([*_TINY, "--modalities", "vision", "smell", "--epochs", "1", "--data-dir", str(tmp_path / "scenes"),
              "--out", str(tmp_path / "run")])


@pytest.mark.slow
def test_default_scenes_are_learnable(tmp_path, monkeypatch) -> None:
    """A longer run: cross-modal retrieval well above chance (1/n_test) on the embedded scenes."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("PMRL_SCI_CACHE", str(tmp_path / "cache"))
    results = main(["--modalities", "vision", "depth", "text", "--n-train", "300", "--n-test", "100",
                    "--epochs", "15", "--data-dir", str(tmp_path / "scenes"), "--out", str(tmp_path / "run")])
    assert results["mean_R@10"] > 3 * 10 / 100

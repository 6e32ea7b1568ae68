"""Houston 2013 costs: training throughput and the time / peak memory to classify a full-size scene.

* ``train``: patches per second of full training steps (patch cutting, HSI and LiDAR CNNs, label embeddings,
  alignment objective, MLP head cross-entropy, backward, AdamW) of the default model on the synthetic scene.
* ``map``: classify every pixel of a 349 x 1905 x 144 scene (random standardised values: the cost does not
  depend on them) with the dense strip path used for the classification map; wall time and peak resident-set
  growth (Linux ``VmHWM`` of a fresh spawned process, so the parent's arrays are not counted). The per-patch path
  is timed on a sample of pixels and extrapolated, for comparison. Target: under 5 minutes on 2 CPU cores.

    python benchmarks/bench_houston13.py --threads 2
    python benchmarks/bench_houston13.py --rows 64 --cols 256 --steps 5    # quick
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

from pmrl_sci.data.houston13 import (
    PatchDataset,
    SyntheticSceneConfig,
    fit_band_stats,
    labelled_pixels,
    load_houston13,
    patch_loader,
    standardize_scene,
    write_synthetic_houston13,
)
from pmrl_sci.tasks.houston13 import (
    Houston13Config,
    LabelInputs,
    build_alignment,
    build_models,
    fused_embedding,
    predict_pixels,
    predict_scene,
)


def bench_training(cfg: Houston13Config, steps: int) -> dict[str, float]:
    """Patches per second of training steps on the default synthetic scene."""
    with tempfile.TemporaryDirectory() as tmp:
        write_synthetic_houston13(tmp, SyntheticSceneConfig())
        scene = load_houston13(tmp)
    hsi, lidar = standardize_scene(scene, fit_band_stats(scene))
    rows, cols, y = labelled_pixels(scene.train_labels)
    dataset = PatchDataset(hsi, lidar, rows, cols, y, cfg.patch_size)
    model, head = build_models(cfg, hsi.shape[0], scene.n_classes, None)
    objective = build_alignment(cfg)
    params = [*model.parameters(), *objective.parameters(), *head.parameters()]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr)
    labels = LabelInputs(None)
    done, elapsed = 0, 0.0
    loader = iter(patch_loader(dataset, cfg.batch_size, shuffle=True, generator=torch.Generator().manual_seed(0)))
    for step in range(steps + 1):
        try:
            batch = next(loader)
        except StopIteration:
            loader = iter(patch_loader(dataset, cfg.batch_size, shuffle=True))
            batch = next(loader)
        start = time.perf_counter()
        emb = model({"hsi": batch["hsi"], "lidar": batch["lidar"], "label": labels(batch["target"])})
        loss = objective(emb)["loss"] + torch.nn.functional.cross_entropy(head(fused_embedding(emb)), batch["target"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step > 0:  # the first step warms up
            elapsed += time.perf_counter() - start
            done += len(batch["target"])
    return {"train_patches_per_s": done / elapsed, "train_steps": steps, "batch_size": cfg.batch_size}


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def _map_child(cfg: Houston13Config, rows: int, cols: int, threads: int) -> dict[str, float]:
    """Run in a fresh spawned process: classify a random scene of ``rows x cols`` pixels."""
    torch.set_num_threads(threads)
    rng = np.random.default_rng(0)
    hsi = rng.standard_normal((144, rows, cols), dtype=np.float32)
    lidar = rng.standard_normal((1, rows, cols), dtype=np.float32)
    model, head = build_models(cfg, 144, 15, None)
    with open("/proc/self/clear_refs", "w") as handle:  # reset the peak-RSS mark (VmHWM) to the current RSS
        handle.write("5")
    base = _rss_kib("VmRSS")
    start = time.perf_counter()
    prediction = predict_scene(model, head, hsi, lidar, "retrieval", LabelInputs(None), 15, cfg.patch_size,
                               torch.device("cpu"), cfg.map_tile_rows)
    seconds = time.perf_counter() - start
    peak = _rss_kib("VmHWM")
    sample = rng.choice(rows * cols, size=min(4096, rows * cols), replace=False)
    dataset = PatchDataset(hsi, lidar, sample // cols, sample % cols, None, cfg.patch_size)
    start = time.perf_counter()
    predict_pixels(model, head, dataset, ("retrieval",), LabelInputs(None), 15, torch.device("cpu"), 512)
    per_patch = (time.perf_counter() - start) / len(sample)
    return {"map_seconds": seconds, "map_pixels": rows * cols, "map_peak_rss_growth_mib": (peak - base) / 1024,
            "scene_input_mib": (hsi.nbytes + lidar.nbytes) / 2**20, "classes_seen": int(len(np.unique(prediction))),
            "per_patch_path_seconds_extrapolated": per_patch * rows * cols,
            "per_patch_over_dense_ratio": per_patch * rows * cols / seconds}


def bench_map(cfg: Houston13Config, rows: int, cols: int) -> dict[str, float]:
    """Time and peak memory of classifying every pixel, in a fresh spawned process (a forked one can hang in
    OpenMP, and its peak RSS would include the parent's)."""
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return pool.submit(_map_child, cfg, rows, cols, torch.get_num_threads()).result()


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Run both benchmarks and print (and optionally write) a JSON record."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=349, help="rows of the scene to classify")
    parser.add_argument("--cols", type=int, default=1905, help="columns of the scene to classify")
    parser.add_argument("--steps", type=int, default=30, help="training steps timed")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON record here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = Houston13Config(progress=False)
    record = {"threads": torch.get_num_threads(), "patch_size": cfg.patch_size, "embed_dim": cfg.embed_dim,
              "torch": torch.__version__, **bench_training(cfg, args.steps), **bench_map(cfg, args.rows, args.cols)}
    text = json.dumps(record, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return record


if __name__ == "__main__":
    sys.exit(0 if main() else 1)

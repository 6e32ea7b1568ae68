"""Training and evaluation on Houston 2013: three modalities (HSI, LiDAR, class label) aligned, two heads.

* Encoders: ``hsi_cnn`` and ``lidar_cnn`` (:mod:`pmrl_sci.encoders.cnn`) on on-the-fly patches; the class label
  is the third modality, a learnable ``nn.Embedding`` (``label_embedding="learned"``, as in the paper) or the
  class names through the text model with a trainable projection (``"text"``).
* Loss: the alignment objective (``pmrl``, ``gram`` or ``vast``; the label is the anchor for GRAM and VAST) on
  ``{"hsi", "lidar", "label"}``, plus cross-entropy of the MLP head on the fused embedding when the MLP head is on.
* Heads: ``retrieval`` (average of the L2-normalised HSI and LiDAR embeddings, nearest class embedding by cosine)
  and ``mlp`` (a supervised classifier on the same fused embedding).
* Model selection: per head, the epoch with the best overall accuracy on a stratified validation part of the
  training pixels (the test pixels are used once, at the end).
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pmrl_sci.data.houston13.patches import (
    PatchDataset,
    fit_band_stats,
    labelled_pixels,
    patch_loader,
    standardize_scene,
    stratified_validation_split,
)
from pmrl_sci.data.houston13.readers import Houston13Scene, load_houston13
from pmrl_sci.data.houston13.synthetic import SyntheticSceneConfig, write_synthetic_houston13
from pmrl_sci.distributed import DistInfo
from pmrl_sci.encoders.base import Encoder, InputSpec

logger = logging.getLogger(__name__)

HEADS = ("retrieval", "mlp")
OBJECTIVES = ("pmrl", "gram", "vast")


@dataclass
class Houston13Config:
    """Everything a Houston 2013 run depends on (the resolved config written to the run folder).

    See ``python -m pmrl_sci.houston13 --help`` for the meaning of each field.
    """

    data_dir: str | None = None
    out: str | None = None
    objective: str = "pmrl"
    tau1: float = 0.05
    tau2: float = 0.1
    lambda1: float = 1.0
    sign_aware: bool = True
    temperature: float = 0.07
    label_smoothing: float = 0.1
    patch_size: int = 11
    embed_dim: int = 256
    head: str = "both"
    label_embedding: str = "learned"
    text_model: str | None = None
    text_template: str = "{}"
    seeds: int = 1
    seed: int = 0
    epochs: int = 40
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    grad_clip: float = 2.0
    ce_weight: float = 1.0
    val_fraction: float = 0.1
    patience: int = 10
    device: str = "auto"
    threads: int | None = None
    synthetic_rows: int = 96
    synthetic_cols: int = 256
    synthetic_seed: int = 2013
    map_tile_rows: int = 32
    eval_batch_size: int = 512
    progress: bool = True

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if self.head not in (*HEADS, "both"):
            raise ValueError(f"head must be retrieval, mlp or both, got {self.head!r}")
        if self.label_embedding not in ("learned", "text"):
            raise ValueError(f"label_embedding must be 'learned' or 'text', got {self.label_embedding!r}")
        if self.patch_size < 1 or self.patch_size % 2 == 0:
            raise ValueError(f"patch_size must be a positive odd number, got {self.patch_size}")
        for name in ("seeds", "epochs", "batch_size", "embed_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")

    @property
    def heads(self) -> tuple[str, ...]:
        """The heads evaluated."""
        return HEADS if self.head == "both" else (self.head,)

    @property
    def primary_head(self) -> str:
        """The head whose metrics are the run's top-level OA/AA/kappa (retrieval, the paper's, when on)."""
        return "retrieval" if "retrieval" in self.heads else "mlp"


class ClassEmbedding(Encoder):
    """Learnable class embeddings: the label modality's encoder (class index -> ``[embed_dim]``)."""

    def __init__(self, n_classes: int, embed_dim: int) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.input_spec = InputSpec("tensor", (), "long", "class indices [batch]")
        self.table = nn.Embedding(n_classes, embed_dim)
        nn.init.normal_(self.table.weight, std=1.0)

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        """Embed class indices ``[B]`` to ``[B, embed_dim]``."""
        return self.table(labels)


class LabelInputs:
    """Turns class indices into the label modality's encoder input (indices, or text embeddings)."""

    def __init__(self, text_table: torch.Tensor | None) -> None:
        self.text_table = text_table

    def __call__(self, classes: torch.Tensor) -> torch.Tensor:
        """Class indices ``[B]`` -> the label encoder's input (``[B]`` indices or ``[B, H]`` text embeddings)."""
        return classes if self.text_table is None else self.text_table[classes]


def build_models(cfg: Houston13Config, n_bands: int, n_classes: int, text_dim: int | None
                 ) -> tuple[nn.Module, nn.Module | None]:
    """The three-modality model (``MultimodalModel``) and the MLP head (or None)."""
    from pmrl_sci.registry import build_encoder
    from pmrl_sci.training import MultimodalModel

    if cfg.label_embedding == "learned":
        label_encoder: nn.Module = ClassEmbedding(n_classes, cfg.embed_dim)
    else:
        label_encoder = build_encoder("text", embed_dim=cfg.embed_dim, precomputed_dim=text_dim, dropout=0.0)
    model = MultimodalModel({
        "hsi": build_encoder("hsi_cnn", in_bands=n_bands, embed_dim=cfg.embed_dim, patch_size=cfg.patch_size),
        "lidar": build_encoder("lidar_cnn", in_channels=1, embed_dim=cfg.embed_dim, patch_size=cfg.patch_size),
        "label": label_encoder,
    })
    head = None
    if "mlp" in cfg.heads:
        head = nn.Sequential(nn.Linear(cfg.embed_dim, cfg.embed_dim), nn.ReLU(), nn.Dropout(0.2),
                             nn.Linear(cfg.embed_dim, n_classes))
    return model, head


def build_alignment(cfg: Houston13Config) -> nn.Module:
    """The alignment objective with its hyper-parameters (the label is GRAM's and VAST's anchor)."""
    from pmrl_sci.objectives import build_objective

    if cfg.objective == "pmrl":
        return build_objective("pmrl", tau1=cfg.tau1, tau2=cfg.tau2, lambda1=cfg.lambda1,
                               sign_aware=cfg.sign_aware)
    return build_objective(cfg.objective, anchor="label", temperature=cfg.temperature,
                           label_smoothing=cfg.label_smoothing)


def fused_embedding(embeddings: dict[str, torch.Tensor]) -> torch.Tensor:
    """Average of the L2-normalised HSI and LiDAR embeddings."""
    from pmrl_sci.training import fuse_mean

    return fuse_mean({"hsi": embeddings["hsi"], "lidar": embeddings["lidar"]}, normalize=True)


def class_embeddings(model: nn.Module, label_inputs: LabelInputs, n_classes: int, device: torch.device
                     ) -> torch.Tensor:
    """L2-normalised embeddings ``[n_classes, d]`` of every class."""
    classes = torch.arange(n_classes, device=device)
    return F.normalize(model.encoders["label"](label_inputs(classes)), dim=-1)


def predict_from_fused(fused: torch.Tensor, head_name: str, class_emb: torch.Tensor,
                       head: nn.Module | None) -> torch.Tensor:
    """Class predictions of one head from fused embeddings."""
    if head_name == "retrieval":
        return (F.normalize(fused, dim=-1) @ class_emb.T).argmax(dim=1)
    assert head is not None
    return head(fused).argmax(dim=1)


@torch.no_grad()
def predict_pixels(model: nn.Module, head: nn.Module | None, dataset: PatchDataset, heads: tuple[str, ...],
                   label_inputs: LabelInputs, n_classes: int, device: torch.device, batch_size: int = 512,
                   sharded: bool = False) -> dict[str, np.ndarray]:
    """Predicted class index per sample of ``dataset`` for each head (per-patch path).

    ``sharded``: under torch.distributed each rank predicts a contiguous part and every rank gets the whole,
    in order (the modules must be the unwrapped ones, identical on every rank).
    """
    if sharded:
        from pmrl_sci.distributed import gather_objects, shard_range

        part = shard_range(len(dataset))
        labels = None if dataset.labels is None else dataset.labels[part.start:part.stop]
        mine = PatchDataset(dataset.hsi, dataset.lidar, dataset.rows[part.start:part.stop],
                            dataset.cols[part.start:part.stop], labels, dataset.patch_size)
        parts = gather_objects(predict_pixels(model, head, mine, heads, label_inputs, n_classes, device, batch_size))
        return {name: np.concatenate([p[name] for p in parts]) for name in heads}
    model.eval()
    if head is not None:
        head.eval()
    class_emb = class_embeddings(model, label_inputs, n_classes, device)
    out: dict[str, list[np.ndarray]] = {name: [] for name in heads}
    for batch in patch_loader(dataset, batch_size):
        emb = model({"hsi": batch["hsi"].to(device), "lidar": batch["lidar"].to(device)})
        fused = fused_embedding(emb)
        for name in heads:
            out[name].append(predict_from_fused(fused, name, class_emb, head).cpu().numpy())
    return {name: np.concatenate(parts) if parts else np.zeros(0, np.int64) for name, parts in out.items()}


def _reflect_range(start: int, stop: int, size: int) -> np.ndarray:
    idx = np.abs(np.arange(start, stop))
    return np.where(idx >= size, 2 * (size - 1) - idx, idx)


@torch.no_grad()
def predict_scene(model: nn.Module, head: nn.Module | None, hsi: np.ndarray, lidar: np.ndarray, head_name: str,
                  label_inputs: LabelInputs, n_classes: int, patch_size: int, device: torch.device,
                  tile_rows: int = 32, progress: Callable[..., Any] | None = None) -> np.ndarray:
    """Classify every pixel of the scene (``[rows, cols]`` class indices) with the dense CNN path.

    The scene is processed in strips of ``tile_rows`` rows, each reflect-padded by ``patch_size // 2``, so memory
    stays bounded by one strip's feature maps; the result equals classifying each pixel's patch.
    """
    model.eval()
    if head is not None:
        head.eval()
    half = patch_size // 2
    rows, cols = hsi.shape[1:]
    col_idx = _reflect_range(-half, cols + half, cols)
    class_emb = class_embeddings(model, label_inputs, n_classes, device)
    prediction = np.zeros((rows, cols), dtype=np.int64)
    starts = range(0, rows, tile_rows)
    for r0 in (progress(starts, desc="classification map", leave=False) if progress else starts):
        r1 = min(rows, r0 + tile_rows)
        row_idx = _reflect_range(r0 - half, r1 + half, rows)
        emb = {}
        for name, cube in (("hsi", hsi), ("lidar", lidar)):
            tile = torch.from_numpy(np.ascontiguousarray(cube[:, row_idx][:, :, col_idx]))[None].to(device)
            dense = model.encoders[name].forward_dense(tile)  # [1, d, r1 - r0, cols]
            emb[name] = dense[0].permute(1, 2, 0).reshape(-1, dense.shape[1])
        fused = fused_embedding(emb)
        prediction[r0:r1] = predict_from_fused(fused, head_name, class_emb, head).view(r1 - r0, cols).cpu().numpy()
    return prediction


@dataclass
class SeedResult:
    """What one seed produced."""

    seed: int
    metrics: dict[str, dict[str, Any]]
    best_epoch: dict[str, int]
    train_seconds: float
    states: dict[str, dict[str, Any]]
    best_val: dict[str, float]


def _lr_lambda(total_steps: int, warmup_ratio: float) -> Callable[[int], float]:
    warmup = max(1, int(round(warmup_ratio * total_steps)))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def train_one_seed(cfg: Houston13Config, seed: int, hsi: np.ndarray, lidar: np.ndarray, scene: Houston13Scene,
                   label_inputs: LabelInputs, text_dim: int | None, device: torch.device,
                   log: Callable[[dict[str, Any]], None], dist_info: DistInfo | None = None) -> SeedResult:
    """Train on the training pixels (a stratified part held out for validation) and test once at the end.

    Under torchrun (``dist_info.distributed``): the model and the MLP head are wrapped in DDP, each rank trains on
    its share of every global batch of ``cfg.batch_size`` (:class:`pmrl_sci.distributed.GlobalBatchSampler`), the
    objective gathers across ranks and the cross-entropy is the rank's share of the global mean, so gradients equal
    one process's on the same global batch; evaluation is sharded and gathered, logged losses are averaged.
    """
    from sklearn.metrics import accuracy_score
    from torch.utils.data import DataLoader

    from pmrl_sci.distributed import (
        GlobalBatchSampler,
        all_reduce_dict_mean,
        average_gradients,
        broadcast_buffers,
        global_mean_share,
        wrap_ddp,
    )
    from pmrl_sci.metrics import multiclass_metrics
    from pmrl_sci.training import EarlyStopping, progress, report_epoch, seed_everything

    seed_everything(seed)
    n_classes = scene.n_classes
    rows, cols, y = labelled_pixels(scene.train_labels)
    fit_idx, val_idx = stratified_validation_split(y, cfg.val_fraction, seed)
    fit_set = PatchDataset(hsi, lidar, rows[fit_idx], cols[fit_idx], y[fit_idx], cfg.patch_size)
    val_set = PatchDataset(hsi, lidar, rows[val_idx], cols[val_idx], y[val_idx], cfg.patch_size)
    model, head = build_models(cfg, hsi.shape[0], n_classes, text_dim)
    objective = build_alignment(cfg)
    model, objective = model.to(device), objective.to(device)
    head = head.to(device) if head is not None else None
    distributed = dist_info is not None and dist_info.distributed
    train_model = wrap_ddp(model, dist_info) if distributed else model  # the DDP wrapper trains; `model` evaluates
    train_head = wrap_ddp(head, dist_info) if distributed and head is not None else head
    parameters = [p for m in (model, objective, head) if m is not None for p in m.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=cfg.lr, betas=(0.9, 0.98), weight_decay=cfg.weight_decay)
    generator = torch.Generator().manual_seed(seed)
    sampler = GlobalBatchSampler(len(fit_set), cfg.batch_size, seed=seed) if distributed else None
    steps_per_epoch = len(sampler) if sampler is not None else math.ceil(len(fit_set) / cfg.batch_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(cfg.epochs * steps_per_epoch,
                                                                        cfg.warmup_ratio))
    stoppers = {name: EarlyStopping(patience=cfg.patience, mode="max") for name in cfg.heads}
    best_states: dict[str, dict[str, Any]] = {}
    start = time.perf_counter()
    bar = progress(range(cfg.epochs), desc=f"seed {seed}", disable=not cfg.progress)
    for epoch in bar:
        train_model.train()
        if train_head is not None:
            train_head.train()
        totals: dict[str, float] = {}
        if sampler is not None:
            sampler.set_epoch(epoch)
            loader: Any = DataLoader(fit_set, sampler=sampler, batch_size=None)
            global_sizes = sampler.global_batch_sizes()
        else:
            loader = patch_loader(fit_set, cfg.batch_size, shuffle=True, generator=generator)
        for step, batch in enumerate(loader):
            target = batch["target"].to(device)
            embeddings = train_model({"hsi": batch["hsi"].to(device), "lidar": batch["lidar"].to(device),
                                      "label": label_inputs(target)})
            parts = objective(embeddings)
            loss = parts["loss"]
            record = {"align": float(loss.detach())}
            if train_head is not None:
                if distributed:  # this rank's share of the global-batch mean
                    ce = global_mean_share(F.cross_entropy(train_head(fused_embedding(embeddings)), target,
                                                           reduction="none"), count=global_sizes[step])
                else:
                    ce = F.cross_entropy(train_head(fused_embedding(embeddings)), target)
                loss = loss + cfg.ce_weight * ce
                record["ce"] = float(ce.detach())
            if not torch.isfinite(loss):
                raise FloatingPointError(f"seed {seed}, epoch {epoch}: non-finite loss {float(loss)}; "
                                         "lower --lr or check the inputs")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if distributed:
                average_gradients(objective)  # e.g. the learnable temperature (outside DDP)
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(parameters, cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            record["loss"] = float(loss.detach())
            weight = global_sizes[step] if distributed else len(target)
            for key, value in record.items():
                totals[key] = totals.get(key, 0.0) + value * weight
        if distributed:  # each rank's values are its shares: their mean over ranks is the global value
            totals = all_reduce_dict_mean(totals)
        epoch_record: dict[str, Any] = {"seed": seed, "epoch": epoch,
                                        **{k: v / len(fit_set) for k, v in totals.items()},
                                        "lr": scheduler.get_last_lr()[0]}
        eval_set = val_set if len(val_set) else fit_set
        if distributed:  # rank 0's BatchNorm statistics everywhere, so every shard sees the same model
            broadcast_buffers(model)
            if head is not None:
                broadcast_buffers(head)
        predictions = predict_pixels(model, head, eval_set, cfg.heads, label_inputs, n_classes, device,
                                     cfg.eval_batch_size, sharded=distributed)
        for name in cfg.heads:
            score = float(accuracy_score(eval_set.labels, predictions[name]))
            epoch_record[f"val_oa_{name}"] = score
            if stoppers[name].step(score, epoch):
                best_states[name] = {
                    "model": copy.deepcopy(model.state_dict()),
                    "head": copy.deepcopy(head.state_dict()) if head is not None else {},
                }
        epoch_record["time_s"] = time.perf_counter() - start
        log(epoch_record)
        report_epoch(f"seed{seed}", epoch, {"val_oa": epoch_record[f"val_oa_{cfg.primary_head}"],
                                            **{f"val_oa_{n}": epoch_record[f"val_oa_{n}"] for n in cfg.heads}})
        if hasattr(bar, "set_postfix"):
            bar.set_postfix(loss=f"{epoch_record['loss']:.3f}",
                            **{f"val_{n}": f"{epoch_record[f'val_oa_{n}']:.3f}" for n in cfg.heads})
        if all(s.should_stop for s in stoppers.values()):
            break
    train_seconds = time.perf_counter() - start

    rows_t, cols_t, y_t = labelled_pixels(scene.test_labels)
    test_set = PatchDataset(hsi, lidar, rows_t, cols_t, y_t, cfg.patch_size)
    metrics = {}
    for name in cfg.heads:
        model.load_state_dict(best_states[name]["model"])
        if head is not None:
            head.load_state_dict(best_states[name]["head"])
        pred = predict_pixels(model, head, test_set, (name,), label_inputs, n_classes, device,
                              cfg.eval_batch_size, sharded=distributed)[name]
        metrics[name] = multiclass_metrics(y_t, pred, scene.class_names)
    return SeedResult(seed, metrics, {n: s.best_epoch for n, s in stoppers.items()}, train_seconds, best_states,
                      {n: float(s.best) for n, s in stoppers.items()})


def prepare_scene(cfg: Houston13Config, run_path: Path, write: bool = True) -> tuple[Houston13Scene, str]:
    """Load ``cfg.data_dir``, or write the embedded synthetic scene under ``run_path / "data"`` and load it.

    ``write=False`` loads a synthetic scene another rank already wrote there.
    """
    if cfg.data_dir:
        return load_houston13(cfg.data_dir), "houston13"
    if not write:
        return load_houston13(run_path / "data"), "synthetic"
    synthetic = SyntheticSceneConfig(rows=cfg.synthetic_rows, cols=cfg.synthetic_cols, seed=cfg.synthetic_seed)
    files = write_synthetic_houston13(run_path / "data", synthetic)
    return load_houston13(files=files), "synthetic"


def text_label_table(cfg: Houston13Config, class_names: list[str], cache_dir: Path) -> torch.Tensor:
    """Frozen text embeddings ``[n_classes, H]`` of the class names (``cfg.text_template`` applied)."""
    from pmrl_sci.data.text import embed_texts

    texts = [cfg.text_template.format(name) for name in class_names]
    return torch.from_numpy(embed_texts(texts, cfg.text_model, cache_dir=cache_dir))


def run_houston13(cfg: Houston13Config) -> dict[str, Any]:
    """Run every seed, write the run folder and return the results (see ``results.json``).

    Under ``torchrun --nproc-per-node N -m pmrl_sci.houston13 ...`` every rank runs this; rank 0 alone writes
    (config, metrics, checkpoints, plots, results) and draws the classification map.
    """
    from pmrl_sci.distributed import distributed_context
    from pmrl_sci.training import resolve_device

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    with distributed_context(device=resolve_device(cfg.device)) as dist_info:
        return _run_houston13(cfg, dist_info)


def _run_houston13(cfg: Houston13Config, dist_info: DistInfo) -> dict[str, Any]:
    from pmrl_sci.distributed import gather_objects, main_process_first
    from pmrl_sci.reports.maps import plot_classification_map, plot_confusion
    from pmrl_sci.runs import RunFolder, default_run_dir, summarize
    from pmrl_sci.training import progress

    device = dist_info.device
    run_dir = str(cfg.out or default_run_dir("houston13"))
    run = RunFolder(gather_objects(run_dir)[0] if dist_info.distributed else run_dir)  # rank 0's folder
    config = asdict(cfg)
    config["out"] = str(run.path)
    with main_process_first():
        scene, source = prepare_scene(cfg, run.path, write=dist_info.is_main)
    config["dataset"] = {"source": source, "shape": list(scene.shape), "bands": int(scene.hsi.shape[0]),
                         "class_names": scene.class_names, "n_train": int((scene.train_labels > 0).sum()),
                         "n_test": int((scene.test_labels > 0).sum()),
                         "files": {k: str(v) for k, v in asdict(scene.files).items()} if scene.files else None}
    run.write_config(config)

    stats = fit_band_stats(scene)  # training pixels only, nodata excluded
    hsi, lidar = standardize_scene(scene, stats)
    text_table = None
    if cfg.label_embedding == "text":
        with main_process_first():  # rank 0 fills the cache, the others read it
            text_table = text_label_table(cfg, scene.class_names, run.path / "cache").to(device)
    label_inputs = LabelInputs(text_table)
    text_dim = None if text_table is None else int(text_table.shape[1])

    seeds = [cfg.seed + i for i in range(cfg.seeds)]
    seed_results = []
    for seed in seeds:
        result = train_one_seed(cfg, seed, hsi, lidar, scene, label_inputs, text_dim, device, run.log_metrics,
                                dist_info)
        run.save_checkpoint(f"seed{seed}.pt", {"seed": seed, "states": result.states,
                                               "best_epoch": result.best_epoch})
        seed_results.append(result)

    heads: dict[str, Any] = {}
    for name in cfg.heads:
        per_seed = [r.metrics[name] for r in seed_results]
        heads[name] = {
            "oa": summarize(m["oa"] for m in per_seed),
            "aa": summarize(m["aa"] for m in per_seed),
            "kappa": summarize(m["kappa"] for m in per_seed),
            "per_class": {c: summarize(m["per_class"][c] for m in per_seed) for c in scene.class_names},
            "confusion": np.sum([m["confusion"] for m in per_seed], axis=0).tolist(),
        }
    primary = cfg.primary_head
    results: dict[str, Any] = {
        "dataset": source, "objective": cfg.objective, "label_embedding": cfg.label_embedding,
        "primary_head": primary, "seeds": seeds,
        "oa": heads[primary]["oa"], "aa": heads[primary]["aa"], "kappa": heads[primary]["kappa"],
        "per_class": heads[primary]["per_class"], "heads": heads,
        "validation": {"metric": "oa", "head": primary, **summarize(r.best_val[primary] for r in seed_results)},
        "per_seed": [{"seed": r.seed, "best_epoch": r.best_epoch, "train_seconds": r.train_seconds,
                      **{n: {k: r.metrics[n][k] for k in ("oa", "aa", "kappa", "per_class")} for n in cfg.heads}}
                     for r in seed_results],
        "n_train": config["dataset"]["n_train"], "n_test": config["dataset"]["n_test"],
        "class_names": scene.class_names,
        "distributed": {"world_size": dist_info.world_size, "backend": dist_info.backend,
                        "global_batch_size": cfg.batch_size},
    }
    if not dist_info.is_main:  # the map and the files are rank 0's
        results["run_dir"] = str(run.path)
        return results

    plot_confusion(run, np.asarray(heads[primary]["confusion"]), scene.class_names,
                   f"Houston 2013 ({source}), {cfg.objective}, {primary} head, {len(seeds)} seed(s)")
    first = seed_results[0]
    model, head = build_models(cfg, hsi.shape[0], scene.n_classes, text_dim)
    model.load_state_dict(first.states[primary]["model"])
    if head is not None:
        head.load_state_dict(first.states[primary]["head"])
    model, head = model.to(device), (head.to(device) if head is not None else None)
    start = time.perf_counter()
    prediction = predict_scene(model, head, hsi, lidar, primary, label_inputs, scene.n_classes, cfg.patch_size,
                               device, cfg.map_tile_rows, progress=progress if cfg.progress else None)
    results["map_seconds"] = time.perf_counter() - start
    plot_classification_map(run, prediction, scene.train_labels, scene.test_labels, scene.class_names,
                            f"{primary} head, seed {first.seed}, test OA {first.metrics[primary]['oa']:.3f}")
    run.write_results(results)
    results["run_dir"] = str(run.path)
    return results

"""Any-modality retrieval: data, encoders, training loop and evaluation behind ``python -m pmrl_sci.retrieval``."""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pmrl_sci.data.manifest import LoadedData, LoadOptions, load_manifest_data, read_manifest
from pmrl_sci.distributed import DistInfo

logger = logging.getLogger(__name__)

DEFAULT_MODALITIES = ("vision", "depth", "touch", "audio", "text")
KS = (1, 5, 10)


@dataclass
class RetrievalConfig:
    """Every option of the retrieval front end (see ``python -m pmrl_sci.retrieval --help``)."""

    manifest: str | None = None
    modalities: list[str] | None = None
    data_dir: str | None = None
    n_train: int = 400
    n_test: int = 200
    missing_rate: float = 0.0
    scene_seed: int = 0
    image_size: int = 32
    sample_rate: int | None = None
    num_frames: int = 4
    max_depth: float = 10.0
    test_fraction: float = 0.2
    val_fraction: float = 0.1
    objective: str = "pmrl"
    anchor: str | None = None
    tau1: float = 0.05
    tau2: float = 0.1
    lambda1: float = 1.0
    sign_aware: bool = True
    lambda2: float = 0.1
    temperature: float = 0.07
    embed_dim: int = 128
    width: int = 8
    num_blocks: int = 3
    n_mels: int = 32
    text_model: str | None = None
    vision_model: str | None = None
    audio_model: str | None = None
    few_shot: int | None = None
    zero_shot_labels: str | None = None
    epochs: int = 30
    batch_size: int = 64
    eval_batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    grad_clip: float = 2.0
    eval_every: int = 1
    patience: int = 10
    seed: int = 0
    device: str = "auto"
    threads: int | None = None
    out: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.objective not in ("pmrl", "gram", "vast"):
            raise ValueError(f"objective must be pmrl, gram or vast, got {self.objective!r}")
        if self.modalities is not None and len(self.modalities) < 2:
            raise ValueError(f"retrieval needs at least two modalities, got {self.modalities}")
        if self.modalities is not None and len(set(self.modalities)) != len(self.modalities):
            raise ValueError(f"modalities repeat: {self.modalities}")
        if self.few_shot is not None and self.few_shot < 1:
            raise ValueError(f"--few-shot must be >= 1, got {self.few_shot}")
        for name in ("epochs", "batch_size", "embed_dim", "image_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(f"test_fraction must be in (0, 1), got {self.test_fraction}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        for name in ("eval_every", "patience"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")


# -- data ----------------------------------------------------------------------------------------------------------
def resolve_manifest(cfg: RetrievalConfig) -> tuple[Path, str, int]:
    """Manifest path, dataset name and sample rate (the embedded scenes are generated when no manifest is given)."""
    if cfg.manifest is not None:
        return Path(cfg.manifest), Path(cfg.manifest).stem, cfg.sample_rate or 16000
    from pmrl_sci.data.synthetic_scenes import SceneConfig, default_cache_dir, generate_scenes

    scene = SceneConfig(n_train=cfg.n_train, n_test=cfg.n_test, image_size=max(16, cfg.image_size),
                        sample_rate=cfg.sample_rate or 8000, missing_rate=cfg.missing_rate, seed=cfg.scene_seed)
    out = Path(cfg.data_dir) if cfg.data_dir else default_cache_dir(scene)
    logger.info("embedded default: synthetic scenes in %s", out)
    return generate_scenes(out, scene), "synthetic_scenes", scene.sample_rate


def split_indices(data: LoadedData, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Train and test rows: the manifest's ``split`` column (``test``, else ``val``), else a seeded random split."""
    splits = np.array([s or "" for s in data.splits])
    train = np.flatnonzero(splits == "train")
    for name in ("test", "val"):
        test = np.flatnonzero(splits == name)
        if test.size and train.size:
            return train, test
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(data))
    n_test = max(1, int(round(test_fraction * len(data))))
    if len(data) - n_test < 1:
        raise ValueError(f"{len(data)} rows are too few to split into train and test")
    logger.info("no usable split column: random %d train / %d test rows", len(data) - n_test, n_test)
    return np.sort(order[n_test:]), np.sort(order[:n_test])


def validation_split(train: np.ndarray, labels: Sequence[str | None], fraction: float, seed: int
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Carve a validation part out of the training rows; returns sorted ``(fit, val)`` row indices.

    Parameters
    ----------
    train : numpy.ndarray
        Training row indices (into ``labels``).
    labels : sequence of str or None
        Class name per row of the whole data set (``None`` where unlabelled).
    fraction : float
        Share of ``train`` held out (``round(fraction * len(train))``, at least one row when positive).
    seed : int
        Seed of the draw.

    Notes
    -----
    When every training row has a label the split is stratified: the validation rows are shared among the classes
    in proportion to their sizes (largest remainders, ties broken at random) and every class keeps at least one
    fitting row, so a class with a single row stays out of validation. Otherwise the rows are drawn at random.
    """
    train = np.sort(np.asarray(train, dtype=int))
    if fraction <= 0 or train.size < 2:
        return train, train[:0]
    rng = np.random.default_rng(seed)
    n_val = min(train.size - 1, max(1, int(round(fraction * train.size))))
    train_labels = [labels[i] for i in train]
    if any(label is None for label in train_labels):
        order = rng.permutation(train)
        return np.sort(order[n_val:]), np.sort(order[:n_val])
    groups: dict[str, list[int]] = {}
    for row, label in zip(train.tolist(), train_labels, strict=True):
        groups.setdefault(str(label), []).append(row)
    names = sorted(groups)
    counts = np.array([len(groups[name]) for name in names])
    caps = counts - 1  # every class keeps a fitting row
    n_val = min(n_val, int(caps.sum()))
    exact = n_val * counts / counts.sum()
    quota = np.minimum(np.floor(exact).astype(int), caps)
    remainder = exact - quota
    tiebreak = rng.random(len(names))
    while quota.sum() < n_val:
        open_ = np.flatnonzero(quota < caps)
        best = open_[np.lexsort((tiebreak[open_], -remainder[open_]))[0]]
        quota[best] += 1
        remainder[best] -= 1.0
    val = [row for name, q in zip(names, quota.tolist(), strict=True) if q
           for row in rng.choice(groups[name], size=q, replace=False).tolist()]
    val_rows = np.sort(np.asarray(val, dtype=int))
    return np.setdiff1d(train, val_rows), val_rows


def split_rows(data: LoadedData, test_fraction: float, val_fraction: float, seed: int
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fitting, validation and test rows.

    Test rows as :func:`split_indices`. Validation: the manifest's ``val`` rows when it has ``train``, ``val`` and
    ``test`` rows, else a part of the training rows (:func:`validation_split`, stratified by class when every
    training row has a label; empty when ``val_fraction`` is 0).
    """
    train, test = split_indices(data, test_fraction, seed)
    splits = np.array([s or "" for s in data.splits])
    manifest_val = np.flatnonzero(splits == "val")
    if manifest_val.size and (splits == "test").any() and (splits == "train").any():
        return train, manifest_val, test
    fit, val = validation_split(train, data.labels, val_fraction, seed)
    return fit, val, test


def few_shot_indices(train: np.ndarray, labels: Sequence[str | None], n: int, seed: int) -> tuple[np.ndarray, str]:
    """``n`` rows per class when every training row has a label, else ``n`` rows; returns (rows, mode)."""
    rng = np.random.default_rng(seed)
    train_labels = [labels[i] for i in train]
    if all(label is not None for label in train_labels):
        chosen = []
        for label in sorted(set(train_labels)):  # type: ignore[type-var]
            rows = train[[i for i, lab in enumerate(train_labels) if lab == label]]
            chosen.extend(rng.choice(rows, size=min(n, rows.size), replace=False).tolist())
        return np.sort(np.asarray(chosen, dtype=int)), "per_class"
    return np.sort(rng.choice(train, size=min(n, train.size), replace=False)), "instances"


def embed_text_columns(data: LoadedData, cfg: RetrievalConfig, cache_dir: Path | None) -> dict[str, int]:
    """Replace each text modality's strings by frozen text-model embeddings (in place); returns their widths."""
    from pmrl_sci.data.text import embed_texts

    widths = {}
    for m in data.modalities:
        if data.kinds[m] != "text":
            continue
        texts = data.arrays[m]
        embeddings = embed_texts(texts, cfg.text_model, cache_dir=cache_dir)
        data.arrays[m] = embeddings.astype(np.float32)
        widths[m] = int(embeddings.shape[1])
    return widths


def text_cache_dir() -> Path:
    """``$PMRL_SCI_CACHE/text`` (default ``~/.cache/pmrl_sci/text``): frozen text embeddings keyed by content."""
    from pmrl_sci.data.cache import cache_root

    return cache_root() / "text"


# -- model ---------------------------------------------------------------------------------------------------------
def build_encoders(data: LoadedData, cfg: RetrievalConfig, text_widths: dict[str, int],
                   sample_rate: int) -> dict[str, nn.Module]:
    """One registered encoder per modality, chosen by its kind (touch / tactile columns get ``touch``)."""
    from pmrl_sci.registry import build_encoder

    d, cnn = cfg.embed_dim, {"width": cfg.width, "num_blocks": cfg.num_blocks}
    encoders: dict[str, nn.Module] = {}
    for m in data.modalities:
        kind = data.kinds[m]
        if kind in ("image", "video"):
            name = "touch" if m in ("touch", "tactile") else "vision"
            encoders[m] = build_encoder(name, embed_dim=d, image_size=cfg.image_size,
                                        model_name_or_path=cfg.vision_model, **cnn)
        elif kind == "depth":
            encoders[m] = build_encoder("depth", embed_dim=d, image_size=cfg.image_size, max_depth=cfg.max_depth,
                                        **cnn)
        elif kind == "audio":
            encoders[m] = build_encoder("audio", embed_dim=d, sample_rate=sample_rate,
                                        num_samples=int(data.arrays[m].shape[1]), n_mels=cfg.n_mels,
                                        model_name_or_path=cfg.audio_model, **cnn)
        elif kind == "features":
            encoders[m] = build_encoder("features", in_features=int(data.arrays[m].shape[1]), embed_dim=d)
        elif kind == "text":
            encoders[m] = build_encoder("text", embed_dim=d, precomputed_dim=text_widths[m])
        else:  # pragma: no cover - kinds are validated by the manifest reader
            raise ValueError(f"modality {m!r}: no encoder for kind {kind!r}")
    return encoders


def build_objectives(cfg: RetrievalConfig, modalities: list[str]) -> tuple[nn.Module, nn.Module | None, str]:
    """Alignment objective, instance-matching head (None when ``lambda2 == 0``) and the anchor modality."""
    from pmrl_sci.objectives import build_objective

    anchor = cfg.anchor or ("text" if "text" in modalities else modalities[0])
    if anchor not in modalities:
        raise ValueError(f"anchor {anchor!r} is not among the modalities {modalities}")
    if cfg.objective == "pmrl":
        objective = build_objective("pmrl", tau1=cfg.tau1, tau2=cfg.tau2, lambda1=cfg.lambda1,
                                    sign_aware=cfg.sign_aware)
    else:
        objective = build_objective(cfg.objective, anchor=anchor, temperature=cfg.temperature)
    matching = None
    if cfg.lambda2 > 0:
        matching = build_objective("instance_matching", embed_dim=cfg.embed_dim, num_modalities=len(modalities),
                                   anchor=anchor)
    return objective, matching, anchor


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


@torch.no_grad()
def embed_rows(model: nn.Module, data: LoadedData, rows: np.ndarray, batch_size: int,
               device: torch.device, sharded: bool = False) -> dict[str, torch.Tensor]:
    """L2-normalised embeddings ``{modality: [len(rows), d]}`` on CPU (eval mode; missing rows are placeholders).

    ``sharded``: under ``torch.distributed`` each rank embeds a contiguous part of ``rows`` and every rank gets
    the whole, in order (``model`` must be the unwrapped module, identical on every rank).
    """
    from pmrl_sci.distributed import gather_objects, get_world_size, shard_range

    rows = np.asarray(rows, dtype=int)
    if sharded and get_world_size() > 1 and rows.size >= get_world_size():
        part = shard_range(rows.size)
        parts = gather_objects(embed_rows(model, data, rows[part.start:part.stop], batch_size, device))
        return {m: torch.cat([p[m] for p in parts]) for m in parts[0]}
    model.eval()
    chunks: dict[str, list[torch.Tensor]] = {m: [] for m in data.modalities}
    for start in range(0, len(rows), batch_size):
        batch, _ = data.batch(rows[start:start + batch_size])
        out = model(_to_device(batch, device))
        for m, value in out.items():
            chunks[m].append(torch.nn.functional.normalize(value.float(), dim=-1).cpu())
    return {m: torch.cat(v) for m, v in chunks.items()}


def mean_recall(recall: dict[str, dict[str, float]], metric: str = "R@1") -> float:
    """Mean of ``metric`` over the pairs of :func:`pairwise_recall` (NaN when there is none)."""
    values = [r[metric] for r in recall.values()]
    return float(np.mean(values)) if values else float("nan")


# -- evaluation ----------------------------------------------------------------------------------------------------
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
    ValueError
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
                raise ValueError(f"retrieval {q}->{g}: empty gallery (no test row has both {q!r} and {g!r})")
            similarity = embeddings[q][rows] @ embeddings[g][rows].T
            metrics = retrieval_metrics(similarity, ks=ks)
            metrics["n"] = int(rows.size)
            results[f"{q}->{g}"] = metrics
    return results


def read_label_file(path: str | Path) -> tuple[list[str], list[str]]:
    """Class names and prompts from a text file: ``name`` or ``name<TAB>prompt`` per line (``#`` comments)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"zero-shot label file {path} does not exist")
    names, prompts = [], []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, _, prompt = line.partition("\t")
        names.append(name.strip())
        prompts.append(prompt.strip() or name.strip())
    if not names:
        raise ValueError(f"zero-shot label file {path} holds no labels")
    if len(set(names)) != len(names):
        raise ValueError(f"zero-shot label file {path} repeats labels")
    return names, prompts


@torch.no_grad()
def zero_shot(model: nn.Module, data: LoadedData, rows: np.ndarray, embeddings: dict[str, torch.Tensor],
              label_file: str, cfg: RetrievalConfig, device: torch.device) -> dict[str, Any]:
    """Top-1 accuracy of classifying each non-text modality by retrieval against the label texts."""
    from pmrl_sci.data.text import embed_texts

    text_modalities = [m for m in data.modalities if data.kinds[m] == "text"]
    if not text_modalities:
        raise ValueError("--zero-shot-labels needs a text modality among --modalities")
    names, prompts = read_label_file(label_file)
    labels = [data.labels[i] for i in rows]
    known = np.array([label in names for label in labels])
    if not known.any():
        raise ValueError(f"--zero-shot-labels {label_file}: no test row has a label among {names} "
                         "(the manifest's 'label' column)")
    text = text_modalities[0]
    encoder = model.encoders[text]
    encoder.eval()
    label_embeddings = torch.from_numpy(embed_texts(prompts, cfg.text_model)).to(device)
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


def plot_recall_heatmap(recall: dict[str, dict[str, float]], modalities: Sequence[str], path: Path,
                        metric: str = "R@1") -> Path:
    """A query x gallery heat-map of ``metric`` saved as PNG (diagonal blank)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pmrl_sci.io import atomic_save

    k = len(modalities)
    matrix = np.full((k, k), np.nan)
    for i, q in enumerate(modalities):
        for j, g in enumerate(modalities):
            if i != j:
                matrix[i, j] = recall[f"{q}->{g}"][metric]
    fig, ax = plt.subplots(figsize=(1.1 * k + 2, 1.0 * k + 1.5))
    image = ax.imshow(matrix, vmin=0.0, vmax=1.0, cmap="viridis")
    ax.set_xticks(range(k), modalities, rotation=45, ha="right")
    ax.set_yticks(range(k), modalities)
    ax.set_xlabel("gallery")
    ax.set_ylabel("query")
    for i in range(k):
        for j in range(k):
            if i != j:
                ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center",
                        color="white" if matrix[i, j] < 0.5 else "black", fontsize=8)
    ax.set_title(f"retrieval {metric}")
    fig.colorbar(image, ax=ax, fraction=0.046)
    atomic_save(path, lambda handle: fig.savefig(handle, format="png", dpi=120, bbox_inches="tight"))
    plt.close(fig)
    return path


# -- training ------------------------------------------------------------------------------------------------------
def _lr_lambda(total_steps: int, warmup_ratio: float) -> Callable[[int], float]:
    warmup = max(1, int(round(warmup_ratio * total_steps)))

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return schedule


@dataclass
class TrainOutcome:
    """What :func:`train_retrieval` produced.

    Attributes
    ----------
    best_state : dict
        State dicts (``"model"``, ``"objective"`` and, with instance matching, ``"matching"``) of the selected
        epoch: the best validation mean R@1, or the last epoch without validation rows.
    best_epoch : int
        The selected epoch (1-based).
    best_val : float
        Its validation mean R@1 (NaN without validation rows).
    epochs_run : int
        Epochs trained (fewer than ``cfg.epochs`` after early stopping).
    last_train : dict of str to float
        Training losses of the last epoch, averaged over its steps (and ranks).
    """

    best_state: dict[str, Any]
    best_epoch: int
    best_val: float
    epochs_run: int
    last_train: dict[str, float]


def _snapshot(model: nn.Module, objective: nn.Module, matching: nn.Module | None) -> dict[str, Any]:
    state = {"model": copy.deepcopy(model.state_dict()), "objective": copy.deepcopy(objective.state_dict())}
    if matching is not None:
        state["matching"] = copy.deepcopy(matching.state_dict())
    return state


def validation_scores(model: nn.Module, data: LoadedData, val: np.ndarray, cfg: RetrievalConfig,
                      device: torch.device, sharded: bool = False) -> dict[str, float]:
    """``val_mean_R@1``, ``val_mean_R@5`` and ``val_mean_R@10`` over the pairs present in the validation rows."""
    embeddings = embed_rows(model, data, val, cfg.eval_batch_size, device, sharded=sharded)
    recall = pairwise_recall(embeddings, data.mask[val], data.modalities, skip_empty=True)
    return {f"val_mean_R@{k}": mean_recall(recall, f"R@{k}") for k in KS}


def train_retrieval(cfg: RetrievalConfig, data: LoadedData, fit: np.ndarray, val: np.ndarray, model: nn.Module,
                    objective: nn.Module, matching: nn.Module | None, device: torch.device,
                    log: Callable[[dict[str, Any]], None], dist_info: DistInfo) -> TrainOutcome:
    """Train on the ``fit`` rows, validate on the ``val`` rows, keep the best epoch (by validation mean R@1).

    Parameters
    ----------
    cfg : RetrievalConfig
        Optimiser, schedule, batch size (the *global* batch under torchrun), evaluation and early stopping.
    data : LoadedData
        Every row (text columns already embedded).
    fit, val : numpy.ndarray
        Training and validation rows.
    model : nn.Module
        The :class:`~pmrl_sci.training.MultimodalModel`, on ``device``.
    objective, matching : nn.Module
        Alignment objective and instance-matching head (or None), on ``device``.
    device : torch.device
        This rank's device.
    log : callable
        Receives one record per epoch (``RunFolder.log_metrics``: writes on rank 0 only).
    dist_info : DistInfo
        Under torchrun: ``model`` is trained through DDP, each rank takes its share of every global batch
        (:class:`~pmrl_sci.distributed.GlobalBatchSampler`), the objectives gather across ranks, the gradients of
        the objective's and the matching head's parameters are averaged, validation is sharded and gathered, and
        logged losses are averaged over ranks; every rank makes the same selection and stopping decisions.

    Every validated epoch is handed to :func:`pmrl_sci.training.report_epoch` (unit ``seed<seed>``) for sweeps.
    """
    from pmrl_sci.distributed import (
        GlobalBatchSampler,
        all_reduce_dict_mean,
        average_gradients,
        broadcast_buffers,
        wrap_ddp,
    )
    from pmrl_sci.training import EarlyStopping, report_epoch

    distributed = dist_info.distributed
    train_model = wrap_ddp(model, dist_info) if distributed else model  # the wrapper trains; `model` evaluates
    heads = [m for m in (objective, matching) if m is not None]
    head_parameters = [p for m in heads for p in m.parameters() if p.requires_grad]
    parameters = [p for p in model.parameters() if p.requires_grad] + head_parameters
    optimizer = torch.optim.AdamW(parameters, lr=cfg.lr, betas=(0.9, 0.98), weight_decay=cfg.weight_decay)
    sampler = GlobalBatchSampler(fit.size, min(cfg.batch_size, fit.size), num_replicas=dist_info.world_size,
                                 rank=dist_info.rank, seed=cfg.seed, drop_last=True)
    steps_per_epoch = len(sampler)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(cfg.epochs * steps_per_epoch,
                                                                         cfg.warmup_ratio))
    stopper = EarlyStopping(patience=cfg.patience if cfg.patience > 0 else cfg.epochs + 1, mode="max")
    best_state: dict[str, Any] | None = None
    best_epoch, best_val, last, epoch = 0, float("nan"), {}, 0
    for epoch in range(1, cfg.epochs + 1):
        for module in (train_model, *heads):
            module.train()
        sampler.set_epoch(epoch)
        totals: dict[str, float] = {}
        for local in sampler:
            batch, mask = data.batch(fit[local])
            mask = mask.to(device)
            embeddings = train_model(_to_device(batch, device))
            out = objective(embeddings, mask)
            loss = out["loss"]
            if matching is not None:
                im = matching(embeddings, mask)
                loss = loss + cfg.lambda2 * im["loss"]
                out = out | {f"im_{k}": v for k, v in im.items()}
            if not torch.isfinite(loss):
                raise FloatingPointError(f"epoch {epoch}: the loss is {loss.item()} (lower --lr?)")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if distributed:  # parameters outside DDP: the matching head, a learnable temperature
                average_gradients(head_parameters)
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(parameters, cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            totals["total_loss"] = totals.get("total_loss", 0.0) + float(loss.detach())
            for key, value in out.items():
                if isinstance(value, torch.Tensor) and value.numel() == 1:
                    totals[key] = totals.get(key, 0.0) + float(value.detach())
        last = {k: v / steps_per_epoch for k, v in totals.items()}
        if distributed:  # each rank holds its share of the global-batch values: their mean is the global value
            last = all_reduce_dict_mean(last)
        record: dict[str, Any] = {"epoch": epoch, **last, "lr": scheduler.get_last_lr()[0]}
        scores: dict[str, float] = {}
        if val.size and (epoch == cfg.epochs or (cfg.eval_every and epoch % cfg.eval_every == 0)):
            if distributed:  # rank 0's BatchNorm statistics everywhere, so every shard sees the same model
                broadcast_buffers(model)
            scores = validation_scores(model, data, val, cfg, device, sharded=distributed)
            record.update(scores)
            if stopper.step(scores["val_mean_R@1"], epoch) or best_state is None:
                best_state, best_epoch, best_val = _snapshot(model, objective, matching), epoch, \
                    scores["val_mean_R@1"]
        log(record)
        logger.info("epoch %d: %s", epoch, ", ".join(f"{k} {v:.4f}" for k, v in record.items()
                                                     if isinstance(v, float)))
        if scores:
            report_epoch(f"seed{cfg.seed}", epoch, scores)
            if stopper.should_stop:
                logger.info("early stop after epoch %d (best validation mean R@1 %.4f at epoch %d)", epoch,
                            best_val, best_epoch)
                break
    if best_state is None:  # no validation rows: the last epoch
        if distributed:
            broadcast_buffers(model)
        best_state, best_epoch = _snapshot(model, objective, matching), epoch
    return TrainOutcome(best_state, best_epoch, best_val, epoch, last)


def run_retrieval(cfg: RetrievalConfig) -> dict[str, Any]:
    """Train, select on the validation rows and evaluate retrieval once on the test rows; returns ``results.json``.

    Under ``torchrun --nproc-per-node N -m pmrl_sci.retrieval ...`` every rank runs this (see
    :func:`train_retrieval`); rank 0 alone writes the run folder (config, metrics, checkpoint, heat-map, results)
    and computes the test recall, over the whole test set; the other ranks return a short record.
    """
    from pmrl_sci.distributed import distributed_context
    from pmrl_sci.training import resolve_device

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    with distributed_context(device=resolve_device(cfg.device)) as dist_info:
        return _run_retrieval(cfg, dist_info)


def _run_retrieval(cfg: RetrievalConfig, dist_info: DistInfo) -> dict[str, Any]:
    from pmrl_sci.distributed import broadcast_buffers, gather_objects, main_process_first
    from pmrl_sci.runs import RunFolder, default_run_dir, summarize
    from pmrl_sci.training import MultimodalModel, seed_everything

    started = time.perf_counter()
    seed_everything(cfg.seed)
    device = dist_info.device
    with main_process_first():  # rank 0 generates the embedded scenes, the others read them
        manifest_path, dataset, sample_rate = resolve_manifest(cfg)
    modalities = cfg.modalities or (list(DEFAULT_MODALITIES) if cfg.manifest is None else None)
    manifest = read_manifest(manifest_path, modalities)
    if len(manifest.modalities) < 2:
        raise ValueError(f"{manifest_path}: retrieval needs at least two modalities, got {manifest.modalities}")
    options = LoadOptions(image_size=cfg.image_size, num_frames=cfg.num_frames, sample_rate=sample_rate)
    data = load_manifest_data(manifest, options)
    missing = data.missing
    if missing.get("rows_with_missing"):
        logger.info("rows with missing modalities: %d of %d (%s)", missing["rows_with_missing"], len(data),
                    {m: n for m, n in missing.items() if m != "rows_with_missing" and n})

    run_dir = str(cfg.out or default_run_dir("retrieval"))
    run = RunFolder(gather_objects(run_dir)[0] if dist_info.distributed else run_dir)  # rank 0's folder
    distributed = {"world_size": dist_info.world_size, "backend": dist_info.backend,
                   "global_batch_size": cfg.batch_size}
    run.write_config(asdict(cfg) | {"resolved_manifest": str(manifest_path), "modalities": data.modalities,
                                    "sample_rate": sample_rate, "out": str(run.path), "distributed": distributed})
    with main_process_first():  # rank 0 fills the text-embedding cache
        text_widths = embed_text_columns(data, cfg, text_cache_dir())

    fit, val, test = split_rows(data, cfg.test_fraction, cfg.val_fraction, cfg.seed)
    few_shot_mode = None
    if cfg.few_shot is not None:
        fit, few_shot_mode = few_shot_indices(fit, data.labels, cfg.few_shot, cfg.seed)
        logger.info("few-shot (%s): %d training rows", few_shot_mode, fit.size)
    logger.info("rows: %d train, %d validation, %d test", fit.size, val.size, test.size)
    distributed["global_batch_size"] = min(cfg.batch_size, int(fit.size))

    model = MultimodalModel(build_encoders(data, cfg, text_widths, sample_rate)).to(device)
    objective, matching, anchor = build_objectives(cfg, data.modalities)
    objective.to(device)
    if matching is not None:
        matching.to(device)
    outcome = train_retrieval(cfg, data, fit, val, model, objective, matching, device, run.log_metrics, dist_info)
    model.load_state_dict(outcome.best_state["model"])  # the selected epoch (the test is evaluated once, here)
    if dist_info.distributed:
        broadcast_buffers(model)
    embeddings = embed_rows(model, data, test, cfg.eval_batch_size, device, sharded=dist_info.distributed)
    finite = [outcome.best_val] if np.isfinite(outcome.best_val) else []
    validation = {"metric": "mean_R@1", "rows": int(val.size), "best_epoch": outcome.best_epoch,
                  **summarize(finite)}
    if not dist_info.is_main:  # the test recall, the files and the zero-shot check are rank 0's
        return {"rank": dist_info.rank, "run_dir": str(run.path), "validation": validation,
                "distributed": distributed}

    recall = pairwise_recall(embeddings, data.mask[test], data.modalities)
    heatmap = plot_recall_heatmap(recall, data.modalities, run.figure_path("recall_heatmap"))
    results: dict[str, Any] = {
        "dataset": dataset, "manifest": str(manifest_path), "objective": cfg.objective, "anchor": anchor,
        "modalities": data.modalities, "n_train": int(fit.size), "n_val": int(val.size), "n_test": int(test.size),
        "few_shot": None if cfg.few_shot is None else {"n": cfg.few_shot, "mode": few_shot_mode},
        "missing": missing, "recall": recall,
        "mean_R@1": mean_recall(recall, "R@1"), "mean_R@10": mean_recall(recall, "R@10"),
        "validation": validation, "best_epoch": outcome.best_epoch, "epochs_run": outcome.epochs_run,
        "final_train": outcome.last_train, "heatmap": str(heatmap), "distributed": distributed,
    }
    label_file = cfg.zero_shot_labels
    if label_file is None and cfg.manifest is None and "text" in data.modalities:
        label_file = str(manifest_path.parent / "labels.txt")  # the embedded default's class names
    if label_file:
        results["zero_shot"] = zero_shot(model, data, test, embeddings, label_file, cfg, device)
    results["train_seconds"] = time.perf_counter() - started
    results["run_dir"] = str(run.path)
    run.save_checkpoint("model.pt", {**outcome.best_state, "best_epoch": outcome.best_epoch})
    run.write_results(results)
    return results

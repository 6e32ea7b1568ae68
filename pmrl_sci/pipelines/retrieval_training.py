"""Any-modality retrieval: data, encoders, training loop and evaluation behind ``python -m pmrl_sci.retrieval``."""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pmrl_sci.pipelines.manifest import LoadedData, LoadOptions, load_manifest_data, read_manifest

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
    eval_every: int = 0
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


# -- data ----------------------------------------------------------------------------------------------------------
def resolve_manifest(cfg: RetrievalConfig) -> tuple[Path, str, int]:
    """Manifest path, dataset name and sample rate (the embedded scenes are generated when no manifest is given)."""
    if cfg.manifest is not None:
        return Path(cfg.manifest), Path(cfg.manifest).stem, cfg.sample_rate or 16000
    from pmrl_sci.pipelines.synthetic_scenes import SceneConfig, default_cache_dir, generate_scenes

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
    from pmrl_sci.encoders.text import embed_texts

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
    return Path(os.environ.get("PMRL_SCI_CACHE", Path.home() / ".cache" / "pmrl_sci")) / "text"


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
               device: torch.device) -> dict[str, torch.Tensor]:
    """L2-normalised embeddings ``{modality: [len(rows), d]}`` (eval mode; missing rows are placeholders)."""
    model.eval()
    chunks: dict[str, list[torch.Tensor]] = {m: [] for m in data.modalities}
    for start in range(0, len(rows), batch_size):
        batch, _ = data.batch(rows[start:start + batch_size])
        out = model(_to_device(batch, device))
        for m, value in out.items():
            chunks[m].append(torch.nn.functional.normalize(value.float(), dim=-1).cpu())
    return {m: torch.cat(v) for m, v in chunks.items()}


# -- evaluation ----------------------------------------------------------------------------------------------------
def pairwise_recall(embeddings: dict[str, torch.Tensor], mask: np.ndarray, modalities: Sequence[str],
                    ks: Sequence[int] = KS) -> dict[str, dict[str, float]]:
    """R@K and median rank for every ordered pair ``"query->gallery"`` over rows having both modalities.

    Raises
    ------
    ValueError
        When a pair has no row with both modalities (an empty gallery), naming the pair.
    """
    from pmrl_sci.metrics import retrieval_metrics

    results = {}
    for i, q in enumerate(modalities):
        for j, g in enumerate(modalities):
            if i == j:
                continue
            rows = np.flatnonzero(mask[:, i] & mask[:, j])
            if rows.size == 0:
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
    from pmrl_sci.encoders.text import embed_texts

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
def _lr_lambda(total_steps: int, warmup_ratio: float):
    warmup = max(1, int(round(warmup_ratio * total_steps)))

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return schedule


def run_retrieval(cfg: RetrievalConfig) -> dict[str, Any]:
    """Train on the training rows and evaluate any-modality retrieval on the test rows; returns ``results.json``."""
    from pmrl_sci.runs import RunFolder, default_run_dir
    from pmrl_sci.training import MultimodalModel, resolve_device, seed_everything

    started = time.perf_counter()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
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

    run = RunFolder(cfg.out or default_run_dir("retrieval"))
    config_record = asdict(cfg) | {"resolved_manifest": str(manifest_path), "modalities": data.modalities,
                                   "sample_rate": sample_rate}
    run.write_config(config_record)
    text_widths = embed_text_columns(data, cfg, text_cache_dir())

    train, test = split_indices(data, cfg.test_fraction, cfg.seed)
    few_shot_mode = None
    if cfg.few_shot is not None:
        train, few_shot_mode = few_shot_indices(train, data.labels, cfg.few_shot, cfg.seed)
        logger.info("few-shot (%s): %d training rows", few_shot_mode, train.size)

    model = MultimodalModel(build_encoders(data, cfg, text_widths, sample_rate)).to(device)
    objective, matching, anchor = build_objectives(cfg, data.modalities)
    objective.to(device)
    parameters = list(model.parameters()) + list(objective.parameters())
    if matching is not None:
        matching.to(device)
        parameters += list(matching.parameters())
    parameters = [p for p in parameters if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=cfg.lr, betas=(0.9, 0.98), weight_decay=cfg.weight_decay)
    batch_size = min(cfg.batch_size, train.size)
    steps_per_epoch = max(1, train.size // batch_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(cfg.epochs * steps_per_epoch,
                                                                         cfg.warmup_ratio))
    rng = np.random.default_rng(cfg.seed)
    last: dict[str, float] = {}
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        objective.train()
        order = rng.permutation(train)
        totals: dict[str, float] = {}
        for step in range(steps_per_epoch):
            batch, mask = data.batch(order[step * batch_size:(step + 1) * batch_size])
            mask = mask.to(device)
            embeddings = model(_to_device(batch, device))
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
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(parameters, cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            totals["total_loss"] = totals.get("total_loss", 0.0) + float(loss.detach())
            for key, value in out.items():
                if isinstance(value, torch.Tensor) and value.numel() == 1:
                    totals[key] = totals.get(key, 0.0) + float(value.detach())
        last = {k: v / steps_per_epoch for k, v in totals.items()}
        record: dict[str, Any] = {"epoch": epoch, **last, "lr": scheduler.get_last_lr()[0]}
        if cfg.eval_every and (epoch % cfg.eval_every == 0 or epoch == cfg.epochs):
            recall = pairwise_recall(embed_rows(model, data, test, cfg.eval_batch_size, device), data.mask[test],
                                     data.modalities)
            record["test_mean_R@1"] = float(np.mean([r["R@1"] for r in recall.values()]))
        run.log_metrics(record)
        logger.info("epoch %d: %s", epoch, ", ".join(f"{k} {v:.4f}" for k, v in record.items()
                                                     if isinstance(v, float)))

    embeddings = embed_rows(model, data, test, cfg.eval_batch_size, device)
    recall = pairwise_recall(embeddings, data.mask[test], data.modalities)
    heatmap = plot_recall_heatmap(recall, data.modalities, run.figure_path("recall_heatmap"))
    results: dict[str, Any] = {
        "dataset": dataset, "manifest": str(manifest_path), "objective": cfg.objective, "anchor": anchor,
        "modalities": data.modalities, "n_train": int(train.size), "n_test": int(test.size),
        "few_shot": None if cfg.few_shot is None else {"n": cfg.few_shot, "mode": few_shot_mode},
        "missing": missing, "recall": recall,
        "mean_R@1": float(np.mean([r["R@1"] for r in recall.values()])),
        "mean_R@10": float(np.mean([r["R@10"] for r in recall.values()])),
        "final_train": last, "heatmap": str(heatmap),
    }
    label_file = cfg.zero_shot_labels
    if label_file is None and cfg.manifest is None and "text" in data.modalities:
        label_file = str(manifest_path.parent / "labels.txt")  # the embedded default's class names
    if label_file:
        results["zero_shot"] = zero_shot(model, data, test, embeddings, label_file, cfg, device)
    results["train_seconds"] = time.perf_counter() - started
    results["run_dir"] = str(run.path)
    run.save_checkpoint("model.pt", {"model": model.state_dict(), "objective": objective.state_dict()})
    run.write_results(results)
    return results

"""ABIDE autism classification: data per split, the multimodal model, training and evaluation.

The command-line front end (:mod:`pmrl_sci.abide`) parses options into :class:`AbideConfig` and
calls :func:`run_abide`. Per trial (seed) and fold:

1. split the cohort (BrainNetTF's site-stratified 70/10/20, or K stratified folds);
2. harmonise sMRI with ComBat fitted on the training subjects only (age and sex as
   covariates), standardise with training statistics;
3. train BrainNetTF (fMRI), an MLP (sMRI) and a projection of frozen text embeddings, each to
   ``embed_dim``, with cross-entropy on a 3-layer MLP over the averaged modality embeddings
   plus the alignment objective (PMRL, GRAM or VAST);
4. select the epoch by validation AUC, evaluate it once on the test subjects, write the unit's
   results, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from pmrl_sci.data.abide.cohort import AbideCohort, load_abide_cohort
from pmrl_sci.data.cache import cache_root
from pmrl_sci.metrics import binary_classification_metrics, roc_points
from pmrl_sci.objectives import build_objective
from pmrl_sci.registry import build_encoder, build_head
from pmrl_sci.runs import RunFolder, summarize
from pmrl_sci.spectral import spectrum

if TYPE_CHECKING:  # pragma: no cover
    from pmrl_sci.distributed import DistInfo
from pmrl_sci.training import (
    EarlyStopping,
    MultimodalModel,
    progress,
    report_epoch,
    resolve_device,
    seed_everything,
)

logger = logging.getLogger(__name__)

ABIDE_MODALITIES = ("fmri", "smri", "text")
FMRI_CHANNELS = {"both": [0, 1], "correlation": [0], "partial": [1]}
#: --model choices: the multimodal model (any modalities, any objective), fMRI-only encoder baselines
#: trained with cross-entropy, and the non-deep baselines of the paper's Table 4
ENCODER_BASELINES = ("brainnettf", "vanillatf", "brainnetcnn")
FIT_BASELINES = ("gcn", "logistic")
MODELS = ("multimodal", *ENCODER_BASELINES, *FIT_BASELINES)
#: default maximum epochs: BrainNetTF-style training on real data; shorter on the embedded cohort so that
#: the default command finishes in minutes on a laptop CPU (early stopping applies to both)
REAL_DATA_EPOCHS = 100
EMBEDDED_EPOCHS = 30


@dataclass
class AbideConfig:
    """Everything that defines an ABIDE run (the resolved config written to the run folder)."""

    modalities: list[str] = field(default_factory=lambda: list(ABIDE_MODALITIES))
    model: str = "multimodal"
    fmri_encoder: str = "brainnettf"
    data_dir: str | None = None
    atlas: str = "cc200"
    pipeline: str = "cpac"
    strategy: str = "filt_noglobal"
    freesurfer_dir: str | None = None
    quality_checked: bool = True
    objective: str = "pmrl"
    tau1: float = 0.05
    tau2: float = 0.4
    lambda1: float = 1.0
    instance_term: bool = True
    sign_aware: bool = True
    rank: int = 1
    temperature: float = 0.07
    anchor: str | None = None
    gram_contrastive: bool = True
    align_weight: float = 1.0
    classification_weight: float = 1.0
    split: str = "bnt"
    folds: int | None = None
    seeds: int = 1
    seed_offset: int = 0
    epochs: int | None = None
    patience: int = 20
    batch_size: int = 16
    lr: float = 1e-4
    weight_decay: float = 1e-4
    embed_dim: int = 128
    dropout: float = 0.1
    fmri_channels: str = "correlation"
    text_model: str | None = None
    combat: str = "train"
    device: str = "auto"
    out: str | None = None
    cache_dir: str | None = None
    download: bool = False
    default_subjects: int = 200
    default_sites: int = 4
    progress: bool = True
    input_noise: float = 0.0
    label_noise: float = 0.0


# ----------------------------------------------------------------------------------------
# data per split


@dataclass
class SplitArrays:
    """Model-ready arrays for one split part (train, val or test)."""

    inputs: dict[str, np.ndarray]
    mask: dict[str, np.ndarray]
    labels: np.ndarray
    index: np.ndarray


class CohortDataset(Dataset):
    """Rows of :class:`SplitArrays` as ``(inputs, mask, label)`` tensors."""

    def __init__(self, arrays: SplitArrays) -> None:
        self.inputs = {m: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)) for m, v in arrays.inputs.items()}
        self.mask = {m: torch.from_numpy(v.astype(bool)) for m, v in arrays.mask.items()}
        self.labels = torch.from_numpy(arrays.labels.astype(np.int64))

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], torch.Tensor]:
        return ({m: v[i] for m, v in self.inputs.items()}, {m: v[i] for m, v in self.mask.items()}, self.labels[i])


def harmonise_smri(cohort: AbideCohort, train: np.ndarray, mode: str) -> tuple[np.ndarray, dict[str, Any]]:
    """ComBat-harmonised, standardised sMRI features for every subject of ``cohort``.

    ``mode="train"`` fits ComBat on the training subjects with sMRI (age and sex as
    covariates, no diagnosis) and applies it to everyone; ``"paper"`` fits on all subjects with
    diagnosis as a covariate (leaks labels; for comparison with the paper); ``"off"`` skips
    ComBat. Features are then standardised with the training subjects' mean and standard
    deviation; a feature missing for a subject (NaN) takes the training median.
    """
    import pandas as pd

    from pmrl_sci.data.combat import ComBat

    x = cohort.smri.astype(np.float64).copy()
    has = cohort.mask["smri"].copy()
    fit_rows = np.intersect1d(train, np.flatnonzero(has)) if mode != "paper" else np.flatnonzero(has)
    if fit_rows.size < 2:
        raise ValueError("fewer than two training subjects have sMRI features: cannot harmonise or standardise")
    median = np.nanmedian(x[fit_rows], axis=0)
    median = np.where(np.isfinite(median), median, 0.0)
    missing_cells = np.isnan(x) & has[:, None]
    x = np.where(np.isnan(x), median, x)
    info: dict[str, Any] = {"mode": mode, "fit_subjects": int(fit_rows.size), "imputed_cells": int(missing_cells.sum())}
    if mode != "off":
        covariates = pd.DataFrame({"age": cohort.age, "sex": cohort.sex.astype(int)})
        categorical = ["sex"]
        if mode == "paper":
            covariates["dx"] = cohort.labels.astype(int)
            categorical.append("dx")
        combat = ComBat(unseen_site="passthrough")
        rows = np.flatnonzero(has)
        combat.fit(x[fit_rows], cohort.sites[fit_rows], covariates.iloc[fit_rows].reset_index(drop=True),
                   categorical=categorical, continuous=["age"])
        x[rows] = np.asarray(combat.transform(x[rows], cohort.sites[rows],
                                              covariates.iloc[rows].reset_index(drop=True)))
        info.update(sites=[str(s) for s in combat.sites_],
                    dropped_covariates=list(getattr(combat, "dropped_covariates_", [])),
                    singleton_sites=[str(s) for s in getattr(combat, "singleton_sites_", [])])
    mean = x[fit_rows].mean(axis=0)
    std = x[fit_rows].std(axis=0)
    std = np.where(std > 1e-8, std, 1.0)
    x = (x - mean) / std
    x[~has] = 0.0
    return x.astype(np.float32), info


def prepare_split_arrays(cohort: AbideCohort, config: AbideConfig, train: np.ndarray, parts: Mapping[str, np.ndarray],
                         seed: int) -> tuple[dict[str, SplitArrays], dict[str, Any]]:
    """Inputs for each split part, harmonised and standardised with training statistics only."""
    inputs: dict[str, np.ndarray] = {}
    info: dict[str, Any] = {}
    if "fmri" in config.modalities:
        channels = FMRI_CHANNELS[config.fmri_channels]
        inputs["fmri"] = cohort.fmri[:, channels[0]] if len(channels) == 1 else cohort.fmri[:, channels]
    if "smri" in config.modalities:
        inputs["smri"], info["combat"] = harmonise_smri(cohort, train, config.combat)
    if "text" in config.modalities:
        emb = cohort.text_embeddings.astype(np.float32)
        inputs["text"] = emb
    rng = np.random.default_rng(seed + 7919)
    labels = cohort.labels.astype(np.int64).copy()
    if config.input_noise > 0:
        from pmrl_sci.noise import add_input_noise

        inputs = add_input_noise(inputs, config.input_noise, rng)
    train_labels = labels.copy()
    if config.label_noise > 0:
        from pmrl_sci.noise import flip_labels

        train_labels[train] = flip_labels(labels[train], config.label_noise, rng)
        info["label_noise_flipped"] = int((train_labels[train] != labels[train]).sum())
    out = {}
    for name, idx in parts.items():
        target = train_labels if name == "train" else labels
        out[name] = SplitArrays({m: v[idx] for m, v in inputs.items()},
                                {m: cohort.mask[m][idx] for m in inputs}, target[idx], idx)
    return out, info


# ----------------------------------------------------------------------------------------
# model


class AbideModel(nn.Module):
    """Modality encoders, mean fusion over present modalities, and a 3-layer MLP classifier."""

    def __init__(self, encoders: Mapping[str, nn.Module], embed_dim: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.backbone = MultimodalModel(encoders)
        self.classifier = build_head("mlp", in_features=embed_dim, num_classes=2, hidden_dim=embed_dim, num_layers=3,
                                     dropout=dropout)

    def forward(self, inputs: Mapping[str, torch.Tensor], mask: Mapping[str, torch.Tensor]
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Class logits ``[B, 2]`` and the modality embeddings."""
        embeddings = self.backbone(inputs)
        weights = torch.stack([mask[m].to(e.dtype) for m, e in embeddings.items()])  # [k, B]
        stacked = torch.stack(list(embeddings.values()))  # [k, B, d]
        fused = (stacked * weights.unsqueeze(-1)).sum(0) / weights.sum(0).clamp_min(1.0).unsqueeze(-1)
        return self.classifier(fused), embeddings


def build_abide_model(config: AbideConfig, cohort: AbideCohort) -> AbideModel:
    """BrainNetTF for fMRI, a 2-layer MLP for sMRI, a projection of frozen text embeddings."""
    encoders: dict[str, nn.Module] = {}
    if "fmri" in config.modalities:
        n_rois = cohort.fmri.shape[-1]
        channels = len(FMRI_CHANNELS[config.fmri_channels])
        # BrainNetTF uses 4 heads over R-dimensional node features (R = 200 for CC200); atlases whose
        # feature size 4 does not divide (ho: 111, tt: 97, dosenbach160: 161) get the largest divisor below
        heads = next(h for h in (4, 3, 2, 1) if (channels * n_rois) % h == 0)
        if heads != 4:
            logger.warning("BrainNetTF: %d node features are not divisible by 4 heads; using %d", channels * n_rois,
                           heads)
        if config.fmri_encoder == "brainnettf":
            encoders["fmri"] = build_encoder("brainnettf", n_rois=n_rois, embed_dim=config.embed_dim,
                                             channels=channels, n_heads=heads, n_clusters=min(100, channels * n_rois))
        elif config.fmri_encoder == "vanillatf":
            encoders["fmri"] = build_encoder("vanillatf", n_rois=n_rois, embed_dim=config.embed_dim,
                                             channels=channels, n_heads=heads)
        else:
            encoders["fmri"] = build_encoder(config.fmri_encoder, n_rois=n_rois, embed_dim=config.embed_dim,
                                             channels=channels)
    if "smri" in config.modalities:
        encoders["smri"] = build_encoder("mlp", in_features=cohort.smri.shape[1], embed_dim=config.embed_dim,
                                         hidden_dim=256, num_layers=2, dropout=config.dropout)
    if "text" in config.modalities:
        encoders["text"] = build_encoder("text", embed_dim=config.embed_dim,
                                         precomputed_dim=cohort.text_embeddings.shape[1], dropout=config.dropout)
    return AbideModel(encoders, config.embed_dim, config.dropout)


def build_alignment(config: AbideConfig) -> nn.Module | None:
    """The alignment objective, or None (``--objective none`` or a single modality)."""
    if config.objective == "none" or len(config.modalities) < 2:
        return None
    if config.objective == "pmrl":
        return build_objective("pmrl", tau1=config.tau1, tau2=config.tau2, lambda1=config.lambda1,
                               instance_term=config.instance_term, rank=config.rank, sign_aware=config.sign_aware)
    if config.objective == "gram":
        return build_objective("gram", anchor=config.anchor or config.modalities[-1], temperature=config.temperature,
                               contrastive=config.gram_contrastive)
    if config.objective == "vast":
        return build_objective("vast", anchor=config.anchor or config.modalities[-1], temperature=config.temperature)
    raise ValueError(f"unknown objective {config.objective!r}: expected pmrl, gram, vast or none")


# ----------------------------------------------------------------------------------------
# training and evaluation


def _to(batch: Mapping[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


@torch.no_grad()
def evaluate(model: AbideModel, loader: DataLoader, device: torch.device) -> dict[str, Any]:
    """Probabilities of autism, labels, and the mean singular values of the modality matrix."""
    model.eval()
    probs, labels, sigmas, u1s, vs = [], [], [], [], []
    for inputs, mask, y in loader:
        inputs, mask = _to(inputs, device), _to(mask, device)
        logits, embeddings = model(inputs, mask)
        probs.append(torch.softmax(logits.float(), dim=1)[:, 1].cpu())
        labels.append(y)
        if len(embeddings) >= 2:
            full = torch.stack([mask[m] for m in embeddings]).all(0)
            z = torch.stack([nn.functional.normalize(e.float(), dim=-1) for e in embeddings.values()], dim=1)
            if bool(full.any()):
                spec = spectrum(z[full])
                sigmas.append(spec.sigma.cpu())
                u1s.append(spec.u1.cpu())
                vs.append(spec.v.abs().cpu())
    out: dict[str, Any] = {"prob": torch.cat(probs).numpy(), "label": torch.cat(labels).numpy()}
    p = np.clip(out["prob"], 1e-7, 1 - 1e-7)
    out["loss"] = float(-np.mean(out["label"] * np.log(p) + (1 - out["label"]) * np.log(1 - p)))
    out["sigma"] = torch.cat(sigmas).numpy() if sigmas else None
    if u1s:
        u1 = torch.cat(u1s)
        cosine = u1 @ u1.T
        n = u1.shape[0]
        # mean cosine between the leading directions of different instances
        out["u1_cosine"] = float((cosine.sum() - cosine.diagonal().sum()) / max(n * (n - 1), 1))
        # modality contribution: mean |V| over instances (rows: modalities, columns: singular directions)
        out["v_abs_mean"] = torch.cat(vs).mean(0).tolist()
    return out


def train_unit(config: AbideConfig, cohort: AbideCohort, parts: Mapping[str, np.ndarray], seed: int, unit: str,
               run: RunFolder, device: torch.device, dist_info: DistInfo | None = None) -> dict[str, Any]:
    """Train on one split and return its test metrics (selected on validation AUC).

    Under torchrun (``dist_info.distributed``) the model is wrapped in DDP and each rank trains on its share of
    every global batch of ``--batch-size`` subjects (no padded duplicates); the cross-entropy is a share of the
    global-batch mean and the alignment objectives gather embeddings across ranks, so the gradients equal those
    of one process on the same global batch. Every rank evaluates the (identical) model on the whole validation
    and test sets, so early stopping agrees across ranks.
    """
    from pmrl_sci.distributed import (
        GlobalBatchSampler,
        all_reduce_dict_mean,
        average_gradients,
        broadcast_buffers,
        global_mean_share,
        wrap_ddp,
    )

    distributed = dist_info is not None and dist_info.distributed
    seed_everything(seed)
    arrays, info = prepare_split_arrays(cohort, config, parts["train"], parts, seed)
    train_set = CohortDataset(arrays["train"])
    drop_last = len(train_set) > config.batch_size
    sampler = GlobalBatchSampler(len(train_set), config.batch_size, seed=seed, drop_last=drop_last) \
        if distributed else None
    if sampler is not None:
        train_loader = DataLoader(train_set, batch_sampler=sampler)
    else:
        generator = torch.Generator().manual_seed(seed)
        train_loader = DataLoader(train_set, batch_size=config.batch_size, shuffle=True, generator=generator,
                                  drop_last=drop_last)
    val_loader = DataLoader(CohortDataset(arrays["val"]), batch_size=64)
    test_loader = DataLoader(CohortDataset(arrays["test"]), batch_size=64)
    model = build_abide_model(config, cohort).to(device)
    train_model = wrap_ddp(model, dist_info) if distributed else model  # DDP trains; `model` evaluates
    alignment = build_alignment(config)
    if alignment is not None:
        alignment = alignment.to(device)
    params = list(model.parameters()) + (list(alignment.parameters()) if alignment is not None else [])
    optimizer = torch.optim.Adam([p for p in params if p.requires_grad], lr=config.lr,
                                 weight_decay=config.weight_decay)
    stopper = EarlyStopping(patience=config.patience, mode="max")
    best_state = copy.deepcopy(model.state_dict())
    bar = progress(range(config.epochs), desc=f"train {unit}", disable=not config.progress, leave=False)
    for epoch in bar:
        train_model.train()
        if alignment is not None:
            alignment.train()
        sums: dict[str, float] = {}
        steps = 0
        if sampler is not None:
            sampler.set_epoch(epoch)
            global_sizes = sampler.global_batch_sizes()
        for inputs, mask, y in train_loader:
            inputs, mask, y = _to(inputs, device), _to(mask, device), y.to(device)
            logits, embeddings = train_model(inputs, mask)
            if distributed:
                ce = global_mean_share(nn.functional.cross_entropy(logits, y, reduction="none"),
                                       count=global_sizes[steps])
            else:
                ce = nn.functional.cross_entropy(logits, y)
            loss = config.classification_weight * ce
            parts_out = {"ce": ce.detach()}
            if alignment is not None:
                aligned = alignment(embeddings, mask)
                loss = loss + config.align_weight * aligned["loss"]
                parts_out.update({f"align_{k}": v.detach() for k, v in aligned.items()})
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if distributed and alignment is not None:
                average_gradients(alignment)  # e.g. GRAM's and VAST's learnable temperature (outside DDP)
            optimizer.step()
            parts_out["loss"] = loss.detach()
            for key, value in parts_out.items():
                sums[key] = sums.get(key, 0.0) + float(value)
            steps += 1
        if distributed:
            sums = all_reduce_dict_mean(sums)  # per-rank shares -> global-batch values
            broadcast_buffers(model)
        val = evaluate(model, val_loader, device)
        val_metrics = binary_classification_metrics(val["label"], val["prob"])
        # validation AUC selects the epoch; the validation cross-entropy breaks ties (small validation sets)
        improved = stopper.step(val_metrics["auc"] if np.isfinite(val_metrics["auc"]) else val_metrics["accuracy"],
                                epoch, tiebreak=val["loss"])
        if improved:
            best_state = copy.deepcopy(model.state_dict())
        train_means = {f"train_{k}": v / max(steps, 1) for k, v in sums.items()}
        record = {"unit": unit, "seed": seed, "epoch": epoch, **train_means,
                  **{f"val_{k}": v for k, v in val_metrics.items()}, "val_loss": val["loss"]}
        if val["sigma"] is not None:
            record["val_sigma_mean"] = val["sigma"].mean(axis=0).tolist()
            record["val_u1_cosine"] = val["u1_cosine"]
            record["val_v_abs_mean"] = val["v_abs_mean"]
        run.log_metrics(record)
        report_epoch(unit, epoch, {f"val_{k}": v for k, v in val_metrics.items()})
        if hasattr(bar, "set_postfix"):
            bar.set_postfix(loss=f"{record['train_loss']:.3f}", val_auc=f"{val_metrics['auc']:.3f}")
        if stopper.should_stop:
            break
    model.load_state_dict(best_state)
    run.save_checkpoint(f"{unit}.pt", {"model": model.state_dict(), "epoch": stopper.best_epoch})
    test = evaluate(model, test_loader, device)
    metrics = binary_classification_metrics(test["label"], test["prob"])
    result = {"unit": unit, "seed": seed, "best_epoch": stopper.best_epoch, "best_val": stopper.best,
              "n_train": len(parts["train"]), "n_val": len(parts["val"]), "n_test": len(parts["test"]),
              **metrics, "roc": roc_points(test["label"], test["prob"]) if len(set(test["label"])) == 2 else None,
              "test_sigma": test["sigma"].tolist() if test["sigma"] is not None else None,
              "test_u1_cosine": test.get("u1_cosine"), "test_v_abs_mean": test.get("v_abs_mean"), "prep": info}
    return result


def fit_baseline_unit(config: AbideConfig, cohort: AbideCohort, parts: Mapping[str, np.ndarray], seed: int,
                      unit: str) -> dict[str, Any]:
    """The non-deep baselines on vectorised connectivity: logistic regression or the population GCN.

    Subjects without fMRI are left out of these baselines (counted in the result).
    """
    from pmrl_sci.baselines import fit_predict_logistic, fit_predict_population_gcn, vectorize_connectivity

    fmri_only = dataclasses.replace(config, modalities=["fmri"])
    has = cohort.mask["fmri"]
    kept = {name: idx[has[idx]] for name, idx in parts.items()}
    arrays, info = prepare_split_arrays(cohort, fmri_only, kept["train"], kept, seed)
    order = ["train", "val", "test"]
    features = vectorize_connectivity(np.concatenate([arrays[n].inputs["fmri"] for n in order]))
    labels = np.concatenate([arrays[n].labels for n in order])
    subjects = np.concatenate([arrays[n].index for n in order])
    bounds = np.cumsum([0] + [len(arrays[n].labels) for n in order])
    local = {n: np.arange(bounds[i], bounds[i + 1]) for i, n in enumerate(order)}
    if config.model == "logistic":
        prob, fit_info = fit_predict_logistic(features, labels, local["train"], local["val"], local["test"], seed=seed,
                                              return_info=True)
        best_val = max(fit_info["scores"].values()) if fit_info.get("scores") else float("nan")
    else:
        prob_all, fit_info = fit_predict_population_gcn(
            features, labels, cohort.sites[subjects], cohort.sex[subjects], cohort.age[subjects], local["train"],
            local["val"], local["test"], seed=seed, epochs=config.epochs, return_all=True, return_info=True)
        prob = prob_all[local["test"]]
        val_metrics = binary_classification_metrics(labels[local["val"]], prob_all[local["val"]])
        best_val = val_metrics["auc"]
    test_labels = labels[local["test"]]
    metrics = binary_classification_metrics(test_labels, prob)
    return {"unit": unit, "seed": seed, "best_epoch": int(fit_info.get("best_epoch", -1)), "best_val": best_val,
            "n_train": len(local["train"]), "n_val": len(local["val"]), "n_test": len(local["test"]),
            "excluded_no_fmri": int(sum(len(parts[n]) - len(kept[n]) for n in order)), **metrics,
            "roc": roc_points(test_labels, prob) if len(set(test_labels)) == 2 else None, "test_sigma": None,
            "prep": info | {"fit": {k: v for k, v in fit_info.items() if k != "scores"}}}


def resolve_model(config: AbideConfig) -> AbideConfig:
    """Apply ``--model``: fMRI-only baselines use the fMRI modality and no alignment objective."""
    if config.model not in MODELS:
        raise ValueError(f"unknown --model {config.model!r}: expected one of {list(MODELS)}")
    if config.model == "multimodal":
        if len(config.modalities) < 2 and config.objective != "none":
            logger.info("one modality: no alignment term (objective %s not used)", config.objective)
            return dataclasses.replace(config, objective="none")
        return config
    if config.modalities != ["fmri"]:
        logger.info("--model %s uses the fMRI modality only (asked: %s)", config.model, config.modalities)
    changes: dict[str, Any] = {"modalities": ["fmri"], "objective": "none"}
    if config.model in ENCODER_BASELINES:
        changes["fmri_encoder"] = config.model
    return dataclasses.replace(config, **changes)


def unit_splits(cohort: AbideCohort, config: AbideConfig) -> list[tuple[str, int, dict[str, np.ndarray]]]:
    """(unit name, seed, {"train", "val", "test": indices}) for every trial and fold."""
    from pmrl_sci.data.splits import bnt_split, stratified_site_folds

    units = []
    for trial in range(config.seeds):
        seed = config.seed_offset + trial
        if config.folds:
            folds = stratified_site_folds(cohort.labels, cohort.sites, config.folds, seed)
            for f, (train, val, test) in enumerate(folds):
                units.append((f"seed{seed}-fold{f}", seed, {"train": train, "val": val, "test": test}))
        else:
            train, val, test = bnt_split(cohort.labels, cohort.sites, seed)
            units.append((f"seed{seed}", seed, {"train": train, "val": val, "test": test}))
    return units


# ----------------------------------------------------------------------------------------
# the whole run


def resolve_data(config: AbideConfig) -> tuple[Path, Path | None, bool]:
    """The ABIDE root (generated when none is given), the FreeSurfer folder, and whether it is simulated."""
    cache = cache_root(config.cache_dir)
    if config.data_dir is None:
        from pmrl_sci.data.abide.generator import generate_abide_like

        root = cache / f"abide_default_n{config.default_subjects}_s{config.default_sites}_{config.atlas}"
        logger.info("no --data-dir: generating the embedded simulated cohort in %s", root)
        generate_abide_like(root, n_subjects=config.default_subjects, n_sites=config.default_sites, atlas=config.atlas)
        fs = Path(config.freesurfer_dir) if config.freesurfer_dir else root / "freesurfer"
        return root, fs, True
    root = Path(config.data_dir).expanduser()
    if config.download:
        from pmrl_sci.data.abide.cohort import fetch_abide

        fetch_abide(root, atlas=config.atlas, pipeline=config.pipeline, strategy=config.strategy)
    if not root.exists():
        raise FileNotFoundError(f"--data-dir {root} does not exist (use --download to fetch ABIDE with nilearn)")
    fs = Path(config.freesurfer_dir).expanduser() if config.freesurfer_dir else None
    return root, fs, False


def run_abide(config: AbideConfig) -> dict[str, Any]:
    """Run every trial/fold of ``config`` and return the aggregated results (also in results.json).

    Under ``torchrun`` each process joins the process group (gloo on CPU, nccl on CUDA); rank 0 prepares the
    data cache first, writes the run folder and draws the plots.
    """
    from pmrl_sci.distributed import distributed_context

    with distributed_context(device=resolve_device(config.device)) as dist_info:
        return _run_abide(config, dist_info)


def _run_abide(config: AbideConfig, dist_info: DistInfo) -> dict[str, Any]:
    from pmrl_sci.distributed import gather_objects, main_process_first
    from pmrl_sci.reports.plots import plot_roc_curves, plot_singular_values

    bad = [m for m in config.modalities if m not in ABIDE_MODALITIES]
    if bad or not config.modalities:
        raise ValueError(f"--modalities must be a non-empty subset of {list(ABIDE_MODALITIES)}, "
                         f"got {config.modalities}")
    config.modalities = [m for m in ABIDE_MODALITIES if m in config.modalities]
    config = resolve_model(config)
    device = dist_info.device
    run = RunFolder(gather_objects(str(config.out))[0] if dist_info.distributed else config.out)  # rank 0's
    with main_process_first():  # rank 0 generates and caches; the others then read the cache
        root, fs_dir, simulated = resolve_data(config)
    if config.epochs is None:
        config = dataclasses.replace(config, epochs=EMBEDDED_EPOCHS if simulated else REAL_DATA_EPOCHS)
    cache = cache_root(config.cache_dir)
    with main_process_first():
        cohort = load_abide_cohort(root, atlas=config.atlas, pipeline=config.pipeline, strategy=config.strategy,
                                   freesurfer_dir=fs_dir, modalities=config.modalities,
                                   quality_checked=config.quality_checked, text_model=config.text_model,
                                   cache_dir=cache / "abide_preprocessed",
                                   progress=config.progress and dist_info.is_main)
    if cohort.report.get("cache") == "hit" and dist_info.is_main:
        logger.info("preprocessed cohort read from the cache (%s)", cache / "abide_preprocessed")
        print(f"[pmrl_sci.abide] reusing cached preprocessed data from {cache / 'abide_preprocessed'}")
    resolved = dataclasses.asdict(config) | {"data_root": str(root), "freesurfer_resolved": str(fs_dir),
                                             "simulated_data": simulated, "device_resolved": str(device)}
    run.write_config(resolved)
    run.write_json("data_report.json", cohort.report)
    leaky = config.combat == "paper"
    if leaky:
        run.write_text("LEAKY.txt", "ComBat was fitted on all subjects with diagnosis as a covariate (--combat paper):"
                                    " test labels leaked into the sMRI features. For comparison with the paper only.\n")
    units = unit_splits(cohort, config)
    results = []
    for unit, seed, parts in progress(units, desc="trials", disable=not config.progress):
        if run.is_done(unit):
            logger.info("%s already finished in %s: reusing it", unit, run.path)
            results.append(run.read_done(unit))
            continue
        if config.model in FIT_BASELINES:
            result = fit_baseline_unit(config, cohort, parts, seed, unit)
        else:
            result = train_unit(config, cohort, parts, seed, unit, run, device, dist_info)
        run.mark_done(unit, result)
        results.append(result)
    summary: dict[str, Any] = {key: summarize([r[key] for r in results])
                               for key in ("auc", "accuracy", "sensitivity", "specificity")}
    summary["validation"] = {"metric": "auc", **summarize([r["best_val"] for r in results])}
    summary.update(
        objective=config.objective, model=config.model, modalities=config.modalities, n_subjects=len(cohort),
        leaky=leaky,
        simulated_data=simulated, split="folds" if config.folds else "bnt", units=[
            {k: r[k] for k in ("unit", "seed", "best_epoch", "auc", "accuracy", "sensitivity", "specificity",
                               "n_train", "n_val", "n_test")} for r in results])
    summary["distributed"] = {"world_size": dist_info.world_size, "backend": dist_info.backend}
    run.write_results(summary)
    if not dist_info.is_main:
        return summary
    plot_roc_curves(run, [(r["unit"], r.get("roc")) for r in results])
    plot_singular_values(run, run.read_metrics())
    return summary

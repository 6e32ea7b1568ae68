"""Any-modality retrieval on the training engine: the config, the task, the whole run.

The command-line front end (:mod:`pmrl_sci.retrieval`) parses options into :class:`RetrievalConfig` and calls
:func:`run_retrieval`. The rows are loaded once (:mod:`pmrl_sci.tasks.retrieval_data`); per seed,
:class:`RetrievalTask` runs through :func:`pmrl_sci.engine.train_unit`:

1. split the rows into fitting, validation and test rows (:func:`pmrl_sci.data.splits.split_rows`), optionally
   keep a few-shot draw of the fitting rows;
2. train one encoder per modality (:mod:`pmrl_sci.tasks.retrieval_model`) with the alignment objective (PMRL,
   GRAM or VAST) plus ``--lambda2`` times the instance-matching loss: AdamW, linear warm-up then cosine decay,
   gradient-norm clipping;
3. select the epoch by validation mean R@1, evaluate it once on the test rows: the recall matrix over ordered
   modality pairs and, with label texts, zero-shot classification (:mod:`pmrl_sci.tasks.retrieval_eval`).

A rerun with the same ``--out`` and options resumes: finished seeds are reused and an interrupted one continues
after its last finished epoch.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from pmrl_sci.data.manifest import LoadedData
from pmrl_sci.data.splits import few_shot_indices, split_rows
from pmrl_sci.engine import Selection, Step, Task, TrainData, TrainSettings, UnitModules, open_run, run_units
from pmrl_sci.engine import train_unit as engine_train_unit
from pmrl_sci.errors import InputError
from pmrl_sci.options import (
    ObjectiveOptions,
    RunOptions,
    build_alignment_objective,
    check_finite,
    check_objective_options,
    check_run_options,
)
from pmrl_sci.runs import RunFolder, summarize
from pmrl_sci.tasks.retrieval_data import RetrievalData, load_retrieval_data
from pmrl_sci.tasks.retrieval_eval import (
    average_recall,
    check_zero_shot_labels,
    mean_recall,
    pairwise_recall,
    validation_scores,
    zero_shot,
)
from pmrl_sci.tasks.retrieval_model import build_encoders, build_matching, embed_rows, resolve_anchor, to_device

if TYPE_CHECKING:  # pragma: no cover
    from pmrl_sci.distributed import DistInfo, GlobalBatchSampler
    from pmrl_sci.tasks.retrieval_continual import Continual

logger = logging.getLogger(__name__)

#: the batch order of (0-based) engine epoch ``e`` is the global-batch sampler's permutation of ``e + 1``: the
#: pre-engine loop numbered epochs from 1 and seeded its sampler with that number, so runs keep their results
SAMPLER_EPOCH_OFFSET = 1


@dataclass
class RetrievalConfig(RunOptions, ObjectiveOptions):
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
    lambda2: float = 0.1
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
    threads: int | None = None
    init_from: str | None = None  # a finished run with one modality fewer (pmrl_sci.tasks.retrieval_continual)

    def __post_init__(self) -> None:
        if self.objective not in ("pmrl", "gram", "vast"):
            raise InputError(f"--objective must be pmrl, gram or vast, got {self.objective!r}")
        if self.modalities is not None and len(self.modalities) < 2:
            raise InputError(f"--modalities: retrieval needs at least two, got {self.modalities}")
        if self.modalities is not None and len(set(self.modalities)) != len(self.modalities):
            raise InputError(f"--modalities repeat: {self.modalities}")
        if self.few_shot is not None and self.few_shot < 1:
            raise InputError(f"--few-shot must be >= 1, got {self.few_shot}")
        for name in ("epochs", "batch_size", "eval_batch_size", "embed_dim", "image_size", "n_train", "n_test",
                     "num_frames", "width", "num_blocks", "n_mels"):
            if getattr(self, name) < 1:
                raise InputError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if not 0.0 < self.test_fraction < 1.0:
            raise InputError(f"--test-fraction must be in (0, 1), got {self.test_fraction}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise InputError(f"--val-fraction must be in [0, 1), got {self.val_fraction}")
        if not 0.0 <= self.missing_rate < 1.0:
            raise InputError(f"--missing-rate must be in [0, 1), got {self.missing_rate}")
        if self.eval_every < 0:
            raise InputError(f"--eval-every must be >= 0 (0: only after the last epoch), got {self.eval_every}")
        if self.sample_rate is not None and self.sample_rate < 1:
            raise InputError(f"--sample-rate must be >= 1 Hz, got {self.sample_rate}")
        check_finite({"lambda2": self.lambda2, "max_depth": self.max_depth})
        if self.lambda2 < 0:
            raise InputError(f"--lambda2 must be >= 0 (0: no instance matching), got {self.lambda2}")
        check_run_options(self)
        # the rank's upper bound needs the modality count, checked again once the manifest is read
        check_objective_options(self, len(self.modalities) if self.modalities else max(self.rank, 2))


# ----------------------------------------------------------------------------------------------------------------
# the task on the engine


@dataclass
class UnitRows:
    """Row indices of one unit: ``fit`` (trained on), ``val`` (model selection), ``test``; the few-shot mode."""

    fit: np.ndarray
    val: np.ndarray
    test: np.ndarray
    few_shot_mode: str | None = None


def unit_rows(data: LoadedData, cfg: RetrievalConfig, seed: int) -> UnitRows:
    """The split of ``seed`` (:func:`~pmrl_sci.data.splits.split_rows`), then the few-shot draw of the fitting rows."""
    fit, val, test = split_rows(data, cfg.test_fraction, cfg.val_fraction, seed)
    mode = None
    if cfg.few_shot is not None:
        fit, mode = few_shot_indices(fit, data.labels, cfg.few_shot, seed)
        logger.info("few-shot (%s): %d training rows", mode, fit.size)
    if fit.size < 1:
        raise InputError("no training rows are left after the validation split; lower --val-fraction")
    logger.info("rows: %d train, %d validation, %d test", fit.size, val.size, test.size)
    return UnitRows(fit, val, test, mode)


class RowBatches(Dataset):
    """Rows of :class:`~pmrl_sci.data.manifest.LoadedData` fetched a whole batch at a time.

    ``dataset[positions]`` (a list of positions into ``rows``) is ``data.batch(rows[positions])``: the batch dict
    and the ``[B, k]`` presence mask.
    """

    def __init__(self, data: LoadedData, rows: np.ndarray) -> None:
        self.data, self.rows = data, np.asarray(rows, dtype=int)

    def __len__(self) -> int:
        return int(self.rows.size)

    def __getitem__(self, positions: list[int]) -> tuple[dict[str, Any], torch.Tensor]:
        return self.data.batch(self.rows[np.asarray(positions, dtype=int)])


class ShiftedEpochBatches:
    """The batches of a :class:`~pmrl_sci.distributed.GlobalBatchSampler`, drawn as for epoch ``epoch + offset``.

    The engine sets the sampler's (0-based) epoch before iterating; this loader draws that epoch's batches from
    the permutation of ``epoch + offset`` and restores the sampler's epoch afterwards (see
    :data:`SAMPLER_EPOCH_OFFSET`). Batch sizes, and so the steps per epoch, do not depend on the epoch.
    """

    def __init__(self, dataset: RowBatches, sampler: GlobalBatchSampler, offset: int) -> None:
        self.dataset, self.sampler, self.offset = dataset, sampler, offset

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[tuple[dict[str, Any], torch.Tensor]]:
        epoch = self.sampler.epoch
        self.sampler.set_epoch(epoch + self.offset)
        try:
            batches = list(self.sampler)
        finally:
            self.sampler.set_epoch(epoch)
        for positions in batches:
            yield self.dataset[positions]


def train_settings(cfg: RetrievalConfig, has_validation: bool = True) -> TrainSettings:
    """Retrieval's engine settings: AdamW (betas 0.9, 0.98), warm-up then cosine decay, gradient clipping.

    Validation every ``--eval-every`` epochs (0: after the last only). Without validation rows there is nothing
    to select or stop on: validation runs once, after the last epoch, early stopping is off, and the last epoch
    is tested.
    """
    validate_every = cfg.eval_every if cfg.eval_every > 0 and has_validation else cfg.epochs
    return TrainSettings(epochs=cfg.epochs, patience=cfg.patience if has_validation else 0, lr=cfg.lr,
                         weight_decay=cfg.weight_decay, optimizer="adamw", betas=(0.9, 0.98),
                         warmup_ratio=cfg.warmup_ratio, schedule="cosine", grad_clip=cfg.grad_clip,
                         validate_every=validate_every, ema_decay=cfg.ema_decay, init_offset=cfg.init_offset,
                         progress=cfg.progress,
                         tensorboard=cfg.tensorboard)


class RetrievalTask(Task):
    """One retrieval unit (a seed): encoders per modality, alignment plus instance matching, selected on
    validation mean R@1, tested on the recall matrix (and zero-shot classification with label texts).

    Parameters
    ----------
    cfg : RetrievalConfig
        Run options.
    loaded : RetrievalData
        Every row (text already embedded), the sample rate and text widths.
    rows : UnitRows
        This unit's fitting, validation and test rows.
    anchor : str
        Anchor modality of GRAM / VAST and of instance matching.
    label_file : str or None
        Zero-shot label texts (None: no zero-shot test).
    sharded : bool
        Under torchrun: validation and test embeddings are computed in shards and gathered.
    """

    selections = (Selection("val_mean_R@1", mode="max"),)

    def __init__(self, cfg: RetrievalConfig, loaded: RetrievalData, rows: UnitRows, anchor: str,
                 label_file: str | None = None, sharded: bool = False) -> None:
        self.cfg, self.loaded, self.rows, self.anchor = cfg, loaded, rows, anchor
        self.label_file, self.sharded = label_file, sharded
        self.data = loaded.data

    def build(self, device: torch.device) -> UnitModules:
        """The encoders (in one :class:`~pmrl_sci.training.MultimodalModel`), the objective, the matching head."""
        from pmrl_sci.training import MultimodalModel

        self.device = device
        encoders = build_encoders(self.data, self.cfg, self.loaded.text_widths, self.loaded.sample_rate)
        self.model = MultimodalModel(encoders).to(device)
        objective = build_alignment_objective(self.cfg, self.data.modalities, anchor=self.anchor)
        if objective is None:  # pragma: no cover - the config refuses "none" and needs two modalities
            raise InputError("retrieval needs an alignment objective (pmrl, gram or vast)")
        self.objective = objective.to(device)
        matching = build_matching(self.cfg, self.data.modalities, self.anchor)
        self.matching = matching.to(device) if matching is not None else None
        modules: dict[str, nn.Module] = {"model": self.model, "objective": self.objective}
        if self.matching is not None:
            modules["matching"] = self.matching
        return UnitModules(modules, ddp=("model",))

    def train_data(self) -> TrainData:
        """Fitting rows in global batches (the last incomplete one dropped), fetched a batch at a time."""
        dataset = RowBatches(self.data, self.rows.fit)
        return TrainData(dataset, min(self.cfg.batch_size, len(dataset)), drop_last=True, sampler="global",
                         loader=lambda sampler, _generator: ShiftedEpochBatches(dataset, sampler,  # type: ignore
                                                                                SAMPLER_EPOCH_OFFSET))

    def batch_loss(self, batch: Any, step: Step) -> dict[str, torch.Tensor]:
        """``align_weight * alignment + lambda2 * instance matching``, the scalar parts logged as ``align_*``,
        ``im_*``."""
        inputs, mask = batch
        mask = mask.to(self.device)
        embeddings = step.forward["model"](to_device(inputs, self.device))
        aligned = self.objective(embeddings, mask)
        loss = self.cfg.align_weight * aligned["loss"]
        parts = {f"align_{k}": v.detach() for k, v in aligned.items() if _is_scalar(v)}
        if self.matching is not None:
            matched = self.matching(embeddings, mask)
            loss = loss + self.cfg.lambda2 * matched["loss"]
            parts.update({f"im_{k}": v.detach() for k, v in matched.items() if _is_scalar(v)})
        parts["loss"] = loss
        return parts

    def validate(self, epoch: int) -> dict[str, Any]:
        """Validation mean R@1, R@5, R@10 over the pairs present in the validation rows (NaN without rows)."""
        return validation_scores(self.model, self.data, self.rows.val, self.cfg.eval_batch_size, self.device,
                                 sharded=self.sharded)

    def test(self, selection: Selection) -> dict[str, Any]:
        """Recall matrix of the selected state on the test rows, its means, and zero-shot accuracy."""
        test = self.rows.test
        embeddings = embed_rows(self.model, self.data, test, self.cfg.eval_batch_size, self.device,
                                sharded=self.sharded)
        recall = pairwise_recall(embeddings, self.data.mask[test], self.data.modalities)
        result: dict[str, Any] = {"recall": recall, "mean_R@1": mean_recall(recall, "R@1"),
                                  "mean_R@10": mean_recall(recall, "R@10")}
        if self.label_file:
            result["zero_shot"] = zero_shot(self.model, self.data, test, embeddings, self.label_file,
                                            self.cfg.text_model, self.device)
        return result


def _is_scalar(value: Any) -> bool:
    return isinstance(value, torch.Tensor) and value.numel() == 1


def train_retrieval_unit(cfg: RetrievalConfig, loaded: RetrievalData, anchor: str, seed: int, unit: str,
                         run: RunFolder, device: torch.device, dist_info: DistInfo | None = None,
                         label_file: str | None = None, continual: Continual | None = None) -> dict[str, Any]:
    """Train one seed on the engine and return its result (test recall of the epoch selected on validation).

    Under torchrun the model trains through DDP on each rank's share of every global batch of ``--batch-size``
    rows; the objectives gather embeddings across ranks; validation and test are sharded and gathered. With
    ``continual`` (``--init-from``) the unit starts from the source unit's model and trains the new modality's
    encoder only (:mod:`pmrl_sci.tasks.retrieval_continual`).
    """
    rows = unit_rows(loaded.data, cfg, seed)
    sharded = dist_info is not None and dist_info.distributed
    task = (RetrievalTask(cfg, loaded, rows, anchor, label_file=label_file, sharded=sharded) if continual is None
            else continual.task(cfg, loaded, rows, unit, label_file, sharded))
    outcome = engine_train_unit(task, train_settings(cfg, has_validation=rows.val.size > 0), unit=unit, seed=seed,
                                run=run, device=device, dist_info=dist_info)
    best = outcome.best
    result = {"unit": unit, "seed": seed, "best_epoch": best.epoch, "best_val": best.score,
              "epochs_run": outcome.epochs_run, "final_train": outcome.last_train, "n_train": int(rows.fit.size),
              "n_val": int(rows.val.size), "n_test": int(rows.test.size), "few_shot_mode": rows.few_shot_mode,
              "global_batch_size": min(cfg.batch_size, int(rows.fit.size)), **best.test}
    if continual is not None:
        result["continual"] = continual.unit_record(unit, task, best.test)  # type: ignore[arg-type]
    return result


def zero_shot_label_file(cfg: RetrievalConfig, loaded: RetrievalData) -> str | None:
    """``--zero-shot-labels``, else the embedded scenes' class names when they include text, else None."""
    if cfg.zero_shot_labels is not None:
        return cfg.zero_shot_labels
    if cfg.manifest is None and "text" in loaded.data.modalities:
        return str(loaded.manifest_path.parent / "labels.txt")
    return None


def run_retrieval(cfg: RetrievalConfig) -> dict[str, Any]:
    """Train every seed, select each on its validation rows, test each once; returns ``results.json``.

    Under ``torchrun --nproc-per-node N -m pmrl_sci.retrieval ...`` every rank runs this; rank 0 writes the run
    folder (config, metrics, checkpoints, heat map, results).
    """
    from pmrl_sci.distributed import distributed_context
    from pmrl_sci.training import resolve_device

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    with distributed_context(device=resolve_device(cfg.device)) as dist_info:
        return _run_retrieval(cfg, dist_info)


def _run_retrieval(cfg: RetrievalConfig, dist_info: DistInfo) -> dict[str, Any]:
    from pmrl_sci.distributed import gather_objects
    from pmrl_sci.reports.plots import plot_recall_heatmap
    from pmrl_sci.runs import default_run_dir

    started = time.perf_counter()
    device = dist_info.device
    loaded = load_retrieval_data(cfg)
    data = loaded.data
    check_objective_options(cfg, len(data.modalities))
    anchor = resolve_anchor(cfg, data.modalities)
    label_file = zero_shot_label_file(cfg, loaded)
    if label_file:
        check_zero_shot_labels(label_file, data)  # before training, not after it
    out = str(cfg.out or default_run_dir("retrieval"))
    run = RunFolder(gather_objects(out)[0] if dist_info.distributed else out)  # rank 0's folder
    resolved = dataclasses.asdict(cfg) | {"out": str(run.path), "resolved_manifest": str(loaded.manifest_path),
                                          "modalities": data.modalities, "sample_rate": loaded.sample_rate,
                                          "anchor": anchor, "device_resolved": str(device)}
    continual = None
    if cfg.init_from is not None:  # checked, with every unit's source unit, before anything is written
        from pmrl_sci.tasks.retrieval_continual import open_continual

        continual = open_continual(cfg, data.modalities, anchor, resolved)
        for seed in range(cfg.seed, cfg.seed + cfg.seeds):
            continual.check_unit(f"seed{seed}", unit_rows(data, cfg, seed))
    open_run(run, resolved, ignore=("resolved_manifest",))

    def run_one(unit: str, seed: int) -> dict[str, Any]:
        return train_retrieval_unit(cfg, loaded, anchor, seed, unit, run, device, dist_info, label_file, continual)

    units = [(f"seed{seed}", (lambda u=f"seed{seed}", s=seed: run_one(u, s)))
             for seed in range(cfg.seed, cfg.seed + cfg.seeds)]
    results = run_units(run, units, show_progress=cfg.progress and cfg.seeds > 1, desc="seeds")
    first = results[0]
    recall = average_recall([r["recall"] for r in results])
    summary: dict[str, Any] = {
        "dataset": loaded.dataset, "manifest": str(loaded.manifest_path), "objective": cfg.objective,
        "anchor": anchor, "modalities": data.modalities,
        "n_train": first["n_train"], "n_val": first["n_val"], "n_test": first["n_test"],
        "few_shot": None if cfg.few_shot is None else {"n": cfg.few_shot, "mode": first["few_shot_mode"]},
        "missing": data.missing, "recall": recall,
        "mean_R@1": summarize([r["mean_R@1"] for r in results]),
        "mean_R@10": summarize([r["mean_R@10"] for r in results]),
        "validation": {"metric": "mean_R@1", "rows": first["n_val"],
                       **summarize([r["best_val"] for r in results if np.isfinite(r["best_val"])])},
        "units": results,
        "distributed": {"world_size": dist_info.world_size, "backend": dist_info.backend,
                        "global_batch_size": first["global_batch_size"]},
    }
    if label_file:
        summary["zero_shot"] = average_zero_shot([r["zero_shot"] for r in results])
    if continual is not None:
        summary["continual"] = continual.summary(results)
    if dist_info.is_main:
        summary["heatmap"] = str(plot_recall_heatmap(run, recall, data.modalities))
    summary["seconds"] = time.perf_counter() - started
    summary["run_dir"] = str(run.path)
    run.write_results(summary)
    return summary


def average_zero_shot(outcomes: list[Mapping[str, Any]]) -> dict[str, Any]:
    """Zero-shot results of several seeds: the labels and chance level, the accuracy per modality as a summary."""
    first = outcomes[0]
    modalities = list(first["accuracy"])
    return {"labels": first["labels"], "text_modality": first["text_modality"], "chance": first["chance"],
            "unlabelled_rows": first["unlabelled_rows"],
            "accuracy": {m: summarize([o["accuracy"][m] for o in outcomes if m in o["accuracy"]])
                         for m in modalities}}

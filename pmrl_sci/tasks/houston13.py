"""Houston 2013 land-cover classification on the training engine: the config, the task, the whole run.

Three modalities (HSI, LiDAR, class label) are aligned with PMRL, GRAM or VAST (the label is GRAM's and VAST's
anchor); the model parts and the two heads are in :mod:`pmrl_sci.tasks.houston13_model`. Per seed,
:class:`Houston13Task` runs through :func:`pmrl_sci.engine.train_unit`:

1. hold out a stratified part of the TRAINING pixels for validation
   (:func:`pmrl_sci.data.houston13.patches.stratified_validation_split`; the test pixels are used once, at the end);
2. train the encoders, the label embeddings and the MLP head with ``align_weight * alignment +
   classification_weight * cross-entropy`` (AdamW, betas (0.9, 0.98), linear warm-up then cosine decay,
   gradient-norm clip);
3. select one state per head (``retrieval``, ``mlp``) on its validation overall accuracy, test each once,
   record the seed's result, so an interrupted run resumes where it stopped.

The command-line front end is :mod:`pmrl_sci.houston13`.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from pmrl_sci.data.houston13.patches import (
    PatchDataset,
    fit_band_stats,
    labelled_pixels,
    standardize_scene,
    stratified_validation_split,
)
from pmrl_sci.data.houston13.readers import Houston13Scene, load_houston13
from pmrl_sci.data.houston13.synthetic import SyntheticSceneConfig, write_synthetic_houston13
from pmrl_sci.engine import Selection, Step, Task, TrainData, TrainSettings, UnitModules, open_run, run_units
from pmrl_sci.engine import train_unit as engine_train_unit
from pmrl_sci.errors import InputError
from pmrl_sci.options import (
    ObjectiveOptions,
    RunOptions,
    build_alignment_objective,
    check_objective_options,
    check_run_options,
)
from pmrl_sci.runs import RunFolder, summarize
from pmrl_sci.tasks.houston13_model import (
    HEADS,
    ClassEmbedding,
    LabelInputs,
    build_models,
    class_embeddings,
    fused_embedding,
    predict_from_fused,
    predict_pixels,
    predict_scene,
)

if TYPE_CHECKING:  # pragma: no cover
    from pmrl_sci.distributed import DistInfo

logger = logging.getLogger(__name__)

__all__ = [  # the model helpers are re-exported for the benchmarks and callers of the former single module
    "HEADS", "HOUSTON13_MODALITIES", "OBJECTIVES", "ClassEmbedding", "Houston13Config", "Houston13Task",
    "LabelInputs", "SceneInputs", "build_alignment", "build_models", "class_embeddings", "draw_figures",
    "fused_embedding", "predict_from_fused", "predict_pixels", "predict_scene", "prepare_scene", "run_houston13",
    "summarize_seeds", "text_label_table", "train_houston13_unit", "train_settings",
]

HOUSTON13_MODALITIES = ("hsi", "lidar", "label")
OBJECTIVES = ("pmrl", "gram", "vast")


@dataclass
class Houston13Config(RunOptions, ObjectiveOptions):
    """Everything a Houston 2013 run depends on (the resolved config written to the run folder).

    See ``python -m pmrl_sci.houston13 --help`` for the meaning of each field.
    """

    data_dir: str | None = None
    label_smoothing: float = 0.1
    classification_weight: float = 1.0
    patch_size: int = 11
    embed_dim: int = 256
    head: str = "both"
    label_embedding: str = "learned"
    text_model: str | None = None
    text_template: str = "{}"
    epochs: int = 40
    patience: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    grad_clip: float = 2.0
    val_fraction: float = 0.1
    threads: int | None = None
    synthetic_rows: int = 96
    synthetic_cols: int = 256
    synthetic_seed: int = 2013
    map_tile_rows: int = 32
    eval_batch_size: int = 512

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise InputError(f"--objective must be one of {list(OBJECTIVES)}, got {self.objective!r}")
        if self.head not in (*HEADS, "both"):
            raise InputError(f"--head must be retrieval, mlp or both, got {self.head!r}")
        if self.label_embedding not in ("learned", "text"):
            raise InputError(f"--label-embedding must be 'learned' or 'text', got {self.label_embedding!r}")
        if self.anchor is not None and self.anchor not in HOUSTON13_MODALITIES:
            raise InputError(f"--anchor must be one of {list(HOUSTON13_MODALITIES)}, got {self.anchor!r}")
        if self.patch_size < 1 or self.patch_size % 2 == 0:
            raise InputError(f"--patch-size must be a positive odd number, got {self.patch_size}")
        for name in ("embed_dim", "eval_batch_size", "map_tile_rows", "synthetic_rows", "synthetic_cols"):
            if getattr(self, name) < 1:
                raise InputError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.threads is not None and self.threads < 1:
            raise InputError(f"--threads must be >= 1, got {self.threads}")
        if not 0 <= self.val_fraction < 1:
            raise InputError(f"--val-fraction must be in [0, 1), got {self.val_fraction}")
        if not 0 <= self.label_smoothing < 1:
            raise InputError(f"--label-smoothing must be in [0, 1), got {self.label_smoothing}")
        check_run_options(self)
        check_objective_options(self, len(HOUSTON13_MODALITIES))
        train_settings(self)  # the optimiser settings check themselves (warm-up ratio, clip)

    @property
    def heads(self) -> tuple[str, ...]:
        """The heads evaluated."""
        return HEADS if self.head == "both" else (self.head,)

    @property
    def primary_head(self) -> str:
        """The head whose metrics are the run's top-level OA/AA/kappa (retrieval, the paper's, when on)."""
        return "retrieval" if "retrieval" in self.heads else "mlp"


def build_alignment(cfg: Houston13Config) -> nn.Module:
    """The alignment objective over ``{hsi, lidar, label}`` (the label is GRAM's and VAST's default anchor)."""
    objective = build_alignment_objective(cfg, HOUSTON13_MODALITIES, anchor="label",
                                          **({} if cfg.objective == "pmrl" else
                                             {"label_smoothing": cfg.label_smoothing}))
    assert objective is not None  # three modalities and a real objective
    return objective


def train_settings(cfg: Houston13Config) -> TrainSettings:
    """Houston's engine settings: AdamW (betas 0.9, 0.98), linear warm-up then cosine decay, gradient clip."""
    return TrainSettings(epochs=cfg.epochs, patience=cfg.patience, lr=cfg.lr, weight_decay=cfg.weight_decay,
                         optimizer="adamw", betas=(0.9, 0.98), warmup_ratio=cfg.warmup_ratio, schedule="cosine",
                         grad_clip=cfg.grad_clip, ema_decay=cfg.ema_decay, init_offset=cfg.init_offset,
                         progress=cfg.progress,
                         tensorboard=cfg.tensorboard)


@dataclass
class SceneInputs:
    """The standardised scene and the label-modality inputs every seed shares."""

    scene: Houston13Scene
    hsi: np.ndarray
    lidar: np.ndarray
    label_inputs: LabelInputs
    text_dim: int | None


class Houston13Task(Task):
    """One Houston 2013 seed: alignment plus the MLP head's cross-entropy, one selection per head.

    Parameters
    ----------
    cfg : Houston13Config
        Run options.
    inputs : SceneInputs
        The standardised scene (band statistics of the training pixels) and the label-modality inputs.
    seed : int
        The seed (validation split).
    distributed : bool
        Under torchrun: validation and test predictions are sharded over ranks and gathered.
    """

    def __init__(self, cfg: Houston13Config, inputs: SceneInputs, seed: int, distributed: bool = False) -> None:
        self.cfg, self.inputs, self.seed, self.distributed = cfg, inputs, seed, distributed
        #: one selected state per head, on that head's validation overall accuracy
        self.selections = tuple(Selection(f"val_oa_{name}", mode="max", name=name) for name in cfg.heads)

    def build(self, device: torch.device) -> UnitModules:
        """Split the training pixels into fitting and validation parts; build the model, objective and head."""
        cfg, inputs = self.cfg, self.inputs
        self.device = device
        rows, cols, y = labelled_pixels(inputs.scene.train_labels)
        fit_idx, val_idx = stratified_validation_split(y, cfg.val_fraction, self.seed)
        self.fit_set = self._patches(rows[fit_idx], cols[fit_idx], y[fit_idx])
        val_set = self._patches(rows[val_idx], cols[val_idx], y[val_idx])
        self.val_set = val_set if len(val_set) else self.fit_set  # --val-fraction 0: select on the fitting pixels
        self.test_set = self._patches(*labelled_pixels(inputs.scene.test_labels))
        model, head = build_models(cfg, inputs.hsi.shape[0], inputs.scene.n_classes, inputs.text_dim)
        self.model = model.to(device)
        self.objective = build_alignment(cfg).to(device)
        self.head = head.to(device) if head is not None else None
        modules: dict[str, nn.Module] = {"model": self.model, "objective": self.objective}
        if self.head is not None:
            modules["head"] = self.head
        return UnitModules(modules, ddp=("model", "head") if self.head is not None else ("model",))

    def _patches(self, rows: np.ndarray, cols: np.ndarray, labels: np.ndarray) -> PatchDataset:
        return PatchDataset(self.inputs.hsi, self.inputs.lidar, rows, cols, labels, self.cfg.patch_size)

    def train_data(self) -> TrainData:
        """The fitting pixels in shuffled batches; patches are cut once per batch (whole index batches)."""
        fit_set = self.fit_set
        return TrainData(fit_set, self.cfg.batch_size, drop_last=False,
                         loader=lambda batches, generator: DataLoader(fit_set, sampler=batches, batch_size=None))

    def batch_loss(self, batch: dict[str, torch.Tensor], step: Step) -> dict[str, Any]:
        """``align_weight * alignment + classification_weight * CE`` (CE with the MLP head only).

        Logged per sample (``weight`` = batch size): ``align``, ``ce``, ``loss``.
        """
        from pmrl_sci.distributed import global_mean_share

        target = batch["target"].to(self.device)
        embeddings = step.forward["model"]({"hsi": batch["hsi"].to(self.device),
                                            "lidar": batch["lidar"].to(self.device),
                                            "label": self.inputs.label_inputs(target)})
        align = self.objective(embeddings)["loss"]
        loss = self.cfg.align_weight * align
        parts: dict[str, Any] = {"align": align.detach()}
        if self.head is not None:
            logits = step.forward["head"](fused_embedding(embeddings))
            if step.distributed:  # this rank's share of the global-batch mean
                ce = global_mean_share(F.cross_entropy(logits, target, reduction="none"),
                                       count=step.global_batch_size)
            else:
                ce = F.cross_entropy(logits, target)
            loss = loss + self.cfg.classification_weight * ce
            parts["ce"] = ce.detach()
        parts["loss"] = loss
        parts["weight"] = step.global_batch_size if step.distributed else len(target)
        return parts

    def _predict(self, dataset: PatchDataset, heads: tuple[str, ...]) -> dict[str, np.ndarray]:
        return predict_pixels(self.model, self.head, dataset, heads, self.inputs.label_inputs,
                              self.inputs.scene.n_classes, self.device, self.cfg.eval_batch_size,
                              sharded=self.distributed)

    def validate(self, epoch: int) -> dict[str, Any]:
        """Validation overall accuracy per head (``val_oa_<head>``) and of the primary head (``val_oa``)."""
        predictions = self._predict(self.val_set, self.cfg.heads)
        labels = self.val_set.labels
        metrics = {f"val_oa_{name}": float(np.mean(predictions[name] == labels)) for name in self.cfg.heads}
        metrics["val_oa"] = metrics[f"val_oa_{self.cfg.primary_head}"]
        return metrics

    def test(self, selection: Selection) -> dict[str, Any]:
        """OA, AA, kappa, per-class accuracy and confusion of the selected head on the test pixels."""
        from pmrl_sci.metrics import multiclass_metrics

        prediction = self._predict(self.test_set, (selection.name,))[selection.name]
        return multiclass_metrics(self.test_set.labels, prediction, self.inputs.scene.class_names)


def train_houston13_unit(cfg: Houston13Config, inputs: SceneInputs, seed: int, run: RunFolder,
                         device: torch.device, dist_info: DistInfo | None = None) -> dict[str, Any]:
    """Train one seed on the engine and return its result (per head: test metrics of the selected state).

    Under torchrun the model and the MLP head train through DDP on each rank's share of every global batch of
    ``--batch-size`` patches; the cross-entropy is a share of the global-batch mean and the alignment objectives
    gather embeddings across ranks, so gradients equal one process's on the same global batch.

    Parameters
    ----------
    cfg : Houston13Config
        Run options.
    inputs : SceneInputs
        The standardised scene and the label-modality inputs.
    seed : int
        The seed (unit ``seed<seed>``): initialisation, validation split, batch order.
    run : RunFolder
        Where records, checkpoints (``seed<seed>-<head>.pt``, the resume state) go.
    device : torch.device
        This rank's device.
    dist_info : DistInfo, optional
        Under torchrun.

    Returns
    -------
    dict
        ``unit``, ``seed``, per head ``best_epoch`` and ``best_val`` (validation OA), ``epochs_run``,
        ``resumed_from``, ``unit_seconds`` (training and testing time of this call) and ``heads``: per head the
        test OA, AA, kappa, per-class accuracy and confusion matrix.
    """
    distributed = dist_info is not None and dist_info.distributed
    unit = f"seed{seed}"
    start = time.perf_counter()
    outcome = engine_train_unit(Houston13Task(cfg, inputs, seed, distributed), train_settings(cfg), unit=unit,
                                seed=seed, run=run, device=device, dist_info=dist_info)
    return {"unit": unit, "seed": seed,
            "best_epoch": {name: chosen.epoch for name, chosen in outcome.selected.items()},
            "best_val": {name: chosen.score for name, chosen in outcome.selected.items()},
            "epochs_run": outcome.epochs_run, "resumed_from": outcome.resumed_from,
            "unit_seconds": time.perf_counter() - start,
            "heads": {name: chosen.test for name, chosen in outcome.selected.items()}}


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
    (config, metrics, checkpoints, plots, results) and draws the classification map. Rerunning with the same
    ``--out`` and options resumes (finished seeds are reused, an interrupted one continues after its last
    epoch); other result-defining options are refused.
    """
    from pmrl_sci.distributed import distributed_context
    from pmrl_sci.training import resolve_device

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    with distributed_context(device=resolve_device(cfg.device)) as dist_info:
        return _run_houston13(cfg, dist_info)


def upgrade_recorded_config(recorded: Mapping[str, Any]) -> dict[str, Any]:
    """A ``config.json`` of an older version in today's options: ``ce_weight`` was renamed
    ``classification_weight``, and a run from before ``--sign-aware`` had the paper's L_M (``sign_aware: false``),
    so it resumes under ``--no-sign-aware`` and is refused under today's default."""
    upgraded = dict(recorded)
    if "classification_weight" not in upgraded and "ce_weight" in upgraded:
        upgraded["classification_weight"] = upgraded.pop("ce_weight")
    upgraded.setdefault("sign_aware", False)
    return upgraded


def _run_houston13(cfg: Houston13Config, dist_info: DistInfo) -> dict[str, Any]:
    from pmrl_sci.distributed import gather_objects, main_process_first
    from pmrl_sci.runs import default_run_dir

    device = dist_info.device
    run_dir = str(cfg.out or default_run_dir("houston13"))
    run = RunFolder(gather_objects(run_dir)[0] if dist_info.distributed else run_dir)  # rank 0's folder
    config: dict[str, Any] = dataclasses.asdict(cfg) | {"out": str(run.path), "device_resolved": str(device)}
    # before the synthetic scene is (re)written into the folder; the strip height does not change the map
    open_run(run, config, ignore=("map_tile_rows",), upgrade=upgrade_recorded_config)
    with main_process_first():
        scene, source = prepare_scene(cfg, run.path, write=dist_info.is_main)
    config["dataset"] = {"source": source, "shape": list(scene.shape), "bands": int(scene.hsi.shape[0]),
                         "class_names": scene.class_names, "n_train": int((scene.train_labels > 0).sum()),
                         "n_test": int((scene.test_labels > 0).sum()),
                         "files": {k: str(v) for k, v in dataclasses.asdict(scene.files).items()}
                         if scene.files else None}
    run.write_config(config)

    hsi, lidar = standardize_scene(scene, fit_band_stats(scene))  # training pixels only, nodata excluded
    text_table = None
    if cfg.label_embedding == "text":
        with main_process_first():  # rank 0 fills the cache, the others read it
            text_table = text_label_table(cfg, scene.class_names, run.path / "cache").to(device)
    inputs = SceneInputs(scene, hsi, lidar, LabelInputs(text_table),
                         None if text_table is None else int(text_table.shape[1]))

    seeds = [cfg.seed + i for i in range(cfg.seeds)]
    units = [(f"seed{seed}", (lambda s=seed: train_houston13_unit(cfg, inputs, s, run, device, dist_info)))
             for seed in seeds]
    seed_results = run_units(run, units, show_progress=cfg.progress, desc="seeds")
    results = summarize_seeds(cfg, seed_results, scene, source)
    results["distributed"] = {"world_size": dist_info.world_size, "backend": dist_info.backend,
                              "global_batch_size": cfg.batch_size}
    if dist_info.is_main:  # the map and the files are rank 0's
        results["map_seconds"] = draw_figures(cfg, run, inputs, seed_results[0], results, source, device)
        run.write_results(results)
    results["run_dir"] = str(run.path)
    return results


def summarize_seeds(cfg: Houston13Config, seed_results: list[dict[str, Any]], scene: Houston13Scene,
                    source: str) -> dict[str, Any]:
    """The run's results: per head mean/std over seeds, summed confusion, the primary head's metrics on top.

    Parameters
    ----------
    cfg : Houston13Config
        Run options (heads, objective).
    seed_results : list of dict
        :func:`train_houston13_unit` results, fresh or read back from ``done/``.
    scene : Houston13Scene
        The scene (class names, pixel counts).
    source : str
        ``"houston13"`` or ``"synthetic"``.

    Returns
    -------
    dict
        What ``results.json`` holds (without the distributed and timing fields).
    """
    heads: dict[str, Any] = {}
    for name in cfg.heads:
        per_seed = [r["heads"][name] for r in seed_results]
        heads[name] = {
            **{key: summarize(m[key] for m in per_seed) for key in ("oa", "aa", "kappa")},
            "per_class": {c: summarize(m["per_class"][c] for m in per_seed) for c in scene.class_names},
            "confusion": np.sum([m["confusion"] for m in per_seed], axis=0).tolist(),
        }
    primary = cfg.primary_head
    return {
        "dataset": source, "objective": cfg.objective, "label_embedding": cfg.label_embedding,
        "primary_head": primary, "seeds": [r["seed"] for r in seed_results],
        **{key: heads[primary][key] for key in ("oa", "aa", "kappa", "per_class")}, "heads": heads,
        "validation": {"metric": "oa", "head": primary, **summarize(r["best_val"][primary] for r in seed_results)},
        "per_seed": [{"seed": r["seed"], "best_epoch": r["best_epoch"], "epochs_run": r["epochs_run"],
                      "unit_seconds": r["unit_seconds"],
                      **{n: {k: r["heads"][n][k] for k in ("oa", "aa", "kappa", "per_class")} for n in cfg.heads}}
                     for r in seed_results],
        "n_train": int((scene.train_labels > 0).sum()), "n_test": int((scene.test_labels > 0).sum()),
        "class_names": scene.class_names,
    }


def draw_figures(cfg: Houston13Config, run: RunFolder, inputs: SceneInputs, first: dict[str, Any],
                 results: dict[str, Any], source: str, device: torch.device) -> float:
    """Draw the summed confusion matrix and the first seed's classification map (primary head).

    The map's model is read back from that seed's selected checkpoint, so it is drawn the same way whether the
    seed was trained now or reused from an earlier run.

    Returns
    -------
    float
        Seconds spent classifying the whole scene.
    """
    from pmrl_sci.engine.loop import selection_checkpoint_name
    from pmrl_sci.reports.maps import plot_classification_map, plot_confusion
    from pmrl_sci.training import progress

    primary, scene = cfg.primary_head, inputs.scene
    plot_confusion(run, np.asarray(results["heads"][primary]["confusion"]), scene.class_names,
                   f"Houston 2013 ({source}), {cfg.objective}, {primary} head, {len(results['seeds'])} seed(s)")
    name = selection_checkpoint_name(first["unit"], Selection(f"val_oa_{primary}", name=primary), len(cfg.heads))
    state = run.load_checkpoint(name, map_location="cpu")
    if state is None:
        raise RuntimeError(f"{run.path / 'checkpoints' / name} is missing: cannot draw the classification map")
    model, head = build_models(cfg, inputs.hsi.shape[0], scene.n_classes, inputs.text_dim)
    model.load_state_dict(state["model"])
    if head is not None:
        head.load_state_dict(state["head"])
    model, head = model.to(device), (head.to(device) if head is not None else None)
    start = time.perf_counter()
    prediction = predict_scene(model, head, inputs.hsi, inputs.lidar, primary, inputs.label_inputs, scene.n_classes,
                               cfg.patch_size, device, cfg.map_tile_rows, progress=progress if cfg.progress else None)
    seconds = time.perf_counter() - start
    plot_classification_map(run, prediction, scene.train_labels, scene.test_labels, scene.class_names,
                            f"{primary} head, seed {first['seed']}, test OA {first['heads'][primary]['oa']:.3f}")
    return seconds

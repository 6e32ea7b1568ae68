"""A new modality trained into an aligned retrieval model (``python -m pmrl_sci.retrieval --init-from RUN_DIR``).

The source run folder (a finished retrieval run) aligned some modalities; this run has exactly one more. Each
unit (seed) starts from the source unit of the same name: the source's encoders are loaded and frozen (no
gradient, eval mode), the new modality's encoder starts from its fresh initialisation and is the only encoder
that trains, with the run's loss (the alignment objective over all modalities, whose gradient reaches the new
encoder only, plus ``--lambda2`` times instance matching). The objective's own parameters (GRAM/VAST
temperature) are loaded when the source used the same objective and anchor, and train; the instance-matching
head is new (its modality embedding has one row per modality) and trains. Model selection is the usual one
(validation mean R@1 over every ordered pair, the new modality's included).

The source must have read the same rows with the same split and built the same encoders (refused otherwise,
naming the field of its ``config.json``); the unit's fitting, validation and test rows are checked against the
source unit's counts. ``results.json`` ``continual`` names the frozen and trained modules and gives the source
unit's test recall (before) next to this run's on the source's modality pairs, which the frozen encoders keep.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from pmrl_sci.engine import SourceRun, UnitModules, load_initial_states
from pmrl_sci.errors import InputError
from pmrl_sci.tasks.retrieval import RetrievalConfig, RetrievalTask, UnitRows
from pmrl_sci.tasks.retrieval_data import RetrievalData

#: source options that must equal this run's: the encoders' shapes and inputs, and which rows are where
SAME_ENCODERS = ("embed_dim", "width", "num_blocks", "n_mels", "image_size", "text_model", "vision_model",
                 "audio_model", "max_depth", "num_frames", "sample_rate")
SAME_ROWS = ("test_fraction", "val_fraction", "few_shot", "n_train", "n_test", "scene_seed", "missing_rate")


class Continual:
    """``--init-from`` for retrieval: the checked source run and what each unit loads and freezes."""

    def __init__(self, cfg: RetrievalConfig, source: SourceRun, modalities: list[str], anchor: str) -> None:
        self.cfg, self.source, self.anchor = cfg, source, anchor
        self.source_modalities = list(source.require("modalities"))
        self.new_modality = next(m for m in modalities if m not in self.source_modalities)

    def check_unit(self, unit: str, rows: UnitRows) -> None:
        """The source unit is finished, has its selected model, and split the rows alike (counts)."""
        result = self.source.unit_result(unit)
        self.source.require_checkpoint(unit)
        now = {"n_train": int(rows.fit.size), "n_val": int(rows.val.size), "n_test": int(rows.test.size)}
        diff = [f"{k} {result.get(k)} (source) vs {v} (this run)" for k, v in now.items() if result.get(k) != v]
        if diff:
            raise InputError(f"--init-from {self.source.path}: {self.source.path / 'done' / (unit + '.json')}: "
                             f"{'; '.join(diff)}: the rows are split otherwise")

    def task(self, cfg: RetrievalConfig, loaded: RetrievalData, rows: UnitRows, unit: str, label_file: str | None,
             sharded: bool) -> ContinualRetrievalTask:
        """The unit's task, with the source unit's selected model."""
        same_objective = self.source.get("objective") == cfg.objective and self.source.get("anchor") == self.anchor
        return ContinualRetrievalTask(cfg, loaded, rows, self.anchor, self.source.checkpoint(unit),
                                      self.source_modalities, self.new_modality, same_objective,
                                      label_file=label_file, sharded=sharded)

    def unit_record(self, unit: str, task: ContinualRetrievalTask, test: Mapping[str, Any]) -> dict[str, Any]:
        """``continual`` of a unit's result: source unit, loaded/frozen/trained parts, recall before and after."""
        source = self.source.unit_result(unit)
        shared = {pair: test["recall"][pair] for pair in source.get("recall", {}) if pair in test["recall"]}
        return {"source_unit": unit, "new_modality": self.new_modality, "init": task.init_report,
                **task.built.parameter_report(), "before": {"recall": source.get("recall"),
                                                            "mean_R@1": source.get("mean_R@1")},
                "after_source_pairs": shared}

    def summary(self, results: list[dict[str, Any]]) -> dict[str, Any]:
        """``results.json`` ``continual``."""
        first = results[0]["continual"]
        return {"init_from": str(self.source.path), "new_modality": self.new_modality,
                "source_modalities": self.source_modalities, "frozen": first["frozen"], "trained": first["trained"],
                "selection": "validation mean R@1 over every ordered modality pair (the new modality's included)",
                "source_units": {r["unit"]: r["continual"]["source_unit"] for r in results}}


def open_continual(cfg: RetrievalConfig, modalities: list[str], anchor: str, resolved: Mapping[str, Any]
                   ) -> Continual:
    """Check the source run of ``--init-from`` against this run; raises :class:`InputError` naming the field."""
    source = SourceRun(cfg.init_from or "")
    if "resolved_manifest" not in source.config or "lambda2" not in source.config:
        raise InputError(f"--init-from {source.path}: {source.config_file} is not the config of a retrieval run")
    source.require_same(resolved, (*SAME_ENCODERS, *SAME_ROWS),
                        why="A new modality is trained into a source run of the same rows and encoders")
    recorded = Path(str(source.config["resolved_manifest"])).expanduser().resolve()
    if recorded != Path(str(resolved["resolved_manifest"])).expanduser().resolve():
        raise InputError(f"--init-from {source.path}: {source.config_file} resolved_manifest {str(recorded)!r} "
                         f"(source) vs {str(resolved['resolved_manifest'])!r} (this run): other rows")
    src_mods = list(source.require("modalities"))
    new = [m for m in modalities if m not in src_mods]
    if not set(src_mods) <= set(modalities) or len(new) != 1:
        raise InputError(f"--init-from {source.path}: {source.config_file} modalities {src_mods} (source) vs "
                         f"{list(modalities)} (this run): retrieval --init-from trains exactly one new modality into "
                         "the source's aligned model (the others as in the source)")
    return Continual(cfg, source, list(modalities), anchor)


class ContinualRetrievalTask(RetrievalTask):
    """A retrieval unit whose source encoders are loaded and frozen; the new modality's encoder trains."""

    def __init__(self, cfg: RetrievalConfig, loaded: RetrievalData, rows: UnitRows, anchor: str,
                 checkpoint: Mapping[str, Any], source_modalities: list[str], new_modality: str,
                 load_objective: bool, label_file: str | None = None, sharded: bool = False) -> None:
        super().__init__(cfg, loaded, rows, anchor, label_file=label_file, sharded=sharded)
        self.checkpoint, self.source_modalities = checkpoint, source_modalities
        self.new_modality, self.load_objective = new_modality, load_objective

    def build(self, device: torch.device) -> UnitModules:
        """The modules, the source's states (the new encoder and the matching head fresh), the frozen encoders."""
        built = super().build(device)
        names = ["model", *(["objective"] if self.load_objective else [])]
        self.init_report = load_initial_states(built.modules, self.checkpoint, names,
                                               new=[f"model.encoders.{self.new_modality}"])
        frozen = tuple(f"model.encoders.{m}" for m in self.source_modalities)
        self.built = UnitModules(built.modules, ddp=built.ddp, frozen=frozen)
        return self.built

"""Retrieval data: the manifest (or the embedded synthetic scenes), loaded rows and frozen text embeddings."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pmrl_sci.data.manifest import LoadedData, LoadOptions, load_manifest_data, read_manifest
from pmrl_sci.errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    from pmrl_sci.tasks.retrieval import RetrievalConfig

logger = logging.getLogger(__name__)

#: modalities of the embedded synthetic scenes used when neither --manifest nor --modalities is given
DEFAULT_MODALITIES = ("vision", "depth", "touch", "audio", "text")


@dataclass
class RetrievalData:
    """Every row of a retrieval run, loaded once and shared by its units (seeds).

    Attributes
    ----------
    data : LoadedData
        The rows (text columns already replaced by frozen text-model embeddings).
    manifest_path : Path
        The manifest read (the generated one for the embedded scenes).
    dataset : str
        ``"synthetic_scenes"`` or the manifest's file stem.
    sample_rate : int
        Audio sample rate in Hz.
    text_widths : dict of str to int
        Width of the frozen embeddings per text modality.
    """

    data: LoadedData
    manifest_path: Path
    dataset: str
    sample_rate: int
    text_widths: dict[str, int]


def resolve_manifest(cfg: RetrievalConfig) -> tuple[Path, str, int]:
    """Manifest path, dataset name and sample rate (the embedded scenes are generated when no manifest is given)."""
    if cfg.manifest is not None:
        path = Path(cfg.manifest)
        if not path.is_file():
            raise InputError(f"--manifest {path} does not exist")
        return path, path.stem, cfg.sample_rate or 16000
    from pmrl_sci.data.synthetic_scenes import SceneConfig, default_cache_dir, generate_scenes

    scene = SceneConfig(n_train=cfg.n_train, n_test=cfg.n_test, image_size=max(16, cfg.image_size),
                        sample_rate=cfg.sample_rate or 8000, missing_rate=cfg.missing_rate, seed=cfg.scene_seed)
    out = Path(cfg.data_dir) if cfg.data_dir else default_cache_dir(scene)
    logger.info("embedded default: synthetic scenes in %s", out)
    return generate_scenes(out, scene), "synthetic_scenes", scene.sample_rate


def text_cache_dir() -> Path:
    """``$PMRL_SCI_CACHE/text`` (default ``~/.cache/pmrl_sci/text``): frozen text embeddings keyed by content."""
    from pmrl_sci.data.cache import cache_root

    return cache_root() / "text"


def embed_text_columns(data: LoadedData, text_model: str | None, cache_dir: Path | None) -> dict[str, int]:
    """Replace each text modality's strings by frozen text-model embeddings (in place); returns their widths."""
    from pmrl_sci.data.text import embed_texts

    widths = {}
    for m in data.modalities:
        if data.kinds[m] != "text":
            continue
        embeddings = embed_texts(data.arrays[m], text_model, cache_dir=cache_dir)
        data.arrays[m] = embeddings.astype(np.float32)
        widths[m] = int(embeddings.shape[1])
    return widths


def load_retrieval_data(cfg: RetrievalConfig) -> RetrievalData:
    """Read the manifest (generating the embedded scenes first when there is none), load it, embed its text.

    Parameters
    ----------
    cfg : RetrievalConfig
        Data options (``manifest``, ``modalities``, sizes, sample rate, text model). Under torchrun rank 0
        generates the scenes and fills the text cache before the other ranks read them.

    Raises
    ------
    InputError, ValueError, FileNotFoundError
        A missing or unreadable manifest or data file, an unknown modality column, an audio file at another
        sample rate, fewer than two modalities (each message names the file or option).
    """
    from pmrl_sci.distributed import main_process_first

    with main_process_first():  # rank 0 generates the embedded scenes, the others read them
        manifest_path, dataset, sample_rate = resolve_manifest(cfg)
    modalities = cfg.modalities or (list(DEFAULT_MODALITIES) if cfg.manifest is None else None)
    manifest = read_manifest(manifest_path, modalities)
    if len(manifest.modalities) < 2:
        raise InputError(f"{manifest_path}: retrieval needs at least two modalities, got {manifest.modalities}")
    options = LoadOptions(image_size=cfg.image_size, num_frames=cfg.num_frames, sample_rate=sample_rate)
    data = load_manifest_data(manifest, options)
    if data.missing.get("rows_with_missing"):
        logger.info("rows with missing modalities: %d of %d (%s)", data.missing["rows_with_missing"], len(data),
                    {m: n for m, n in data.missing.items() if m != "rows_with_missing" and n})
    with main_process_first():  # rank 0 fills the text-embedding cache
        text_widths = embed_text_columns(data, cfg.text_model, text_cache_dir())
    return RetrievalData(data, manifest_path, dataset, sample_rate, text_widths)

"""Run folders: resolved config, metrics.jsonl, results.json, checkpoints and plots.

Every file is written atomically (or appended line by line and synced), so an interrupted
run never leaves a half-written file and a rerun with the same folder can resume from what
is there. Only rank 0 writes when running under ``torch.distributed``.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from pmrl_sci.io import append_jsonl, atomic_save, atomic_write_json, atomic_write_text, read_jsonl


def is_rank_zero() -> bool:
    """True unless running under an initialised ``torch.distributed`` group as a rank > 0."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank() == 0
    return int(os.environ.get("RANK", "0")) == 0


def default_run_dir(prefix: str, root: str | os.PathLike[str] = "runs") -> Path:
    """``runs/<prefix>-<YYYYmmdd-HHMMSS>``."""
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path(root) / f"{prefix}-{stamp}"


class RunFolder:
    """A run's output folder.

    Parameters
    ----------
    path : path-like
        Created if missing. Reusing an existing folder resumes: finished units
        (:meth:`mark_done`) are found by :meth:`is_done` and :meth:`read_json`.
    write : bool, optional
        Whether this process writes (default: rank 0 only).
    """

    def __init__(self, path: str | os.PathLike[str], write: bool | None = None) -> None:
        self.path = Path(path)
        self.write = is_rank_zero() if write is None else write
        if self.write:
            self.path.mkdir(parents=True, exist_ok=True)

    # -- config and records ---------------------------------------------------------
    def write_config(self, config: Mapping[str, Any]) -> None:
        """Write the resolved configuration as ``config.yaml`` (and ``config.json``)."""
        if not self.write:
            return
        plain = to_plain(config)
        atomic_write_text(self.path / "config.yaml", yaml.safe_dump(plain, sort_keys=False))
        atomic_write_json(self.path / "config.json", plain)

    def log_metrics(self, record: Mapping[str, Any]) -> None:
        """Append one record (e.g. one epoch) to ``metrics.jsonl``."""
        if self.write:
            append_jsonl(self.path / "metrics.jsonl", to_plain(record))

    def read_metrics(self) -> list[dict[str, Any]]:
        """All records of ``metrics.jsonl`` so far."""
        return read_jsonl(self.path / "metrics.jsonl")

    def write_results(self, results: Mapping[str, Any]) -> None:
        """Write ``results.json`` atomically."""
        self.write_json("results.json", results)

    def write_json(self, name: str, obj: Any) -> None:
        """Write ``<name>`` (JSON) atomically."""
        if self.write:
            atomic_write_json(self.path / name, to_plain(obj))

    def read_json(self, name: str) -> Any:
        """Read ``<name>`` or return None when absent."""
        path = self.path / name
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None

    def write_text(self, name: str, text: str) -> None:
        """Write a text file atomically (Markdown tables, reports)."""
        if self.write:
            atomic_write_text(self.path / name, text)

    # -- resume ---------------------------------------------------------------------
    def mark_done(self, unit: str, payload: Mapping[str, Any]) -> None:
        """Record a finished unit of work (a fold, a seed) with its results."""
        self.write_json(f"done/{unit}.json", payload)

    def drop_unit_metrics(self, unit: str, from_epoch: int = 0) -> int:
        """Remove ``unit``'s records of epochs >= ``from_epoch`` from ``metrics.jsonl`` (before a unit restarts).

        A truncated last line (left by a kill) is dropped too. Returns the number of lines removed.
        """
        path = self.path / "metrics.jsonl"
        if not self.write or not path.is_file():
            return 0
        lines = path.read_text(encoding="utf-8").splitlines()
        kept = []
        for number, line in enumerate(lines):
            try:
                record = json.loads(line) if line.strip() else None
            except json.JSONDecodeError:
                if number == len(lines) - 1:
                    continue  # truncated by a kill
                kept.append(line)
                continue
            if isinstance(record, dict) and record.get("unit") == unit and int(record.get("epoch", 0)) >= from_epoch:
                continue
            if line.strip():
                kept.append(line)
        removed = len(lines) - len(kept)
        if removed:
            atomic_write_text(path, "".join(f"{line}\n" for line in kept))
        return removed

    def remove_orphan_temporaries(self) -> list[Path]:
        """Delete temporary files of interrupted atomic writes (``.<name>.*.tmp``) anywhere in the folder."""
        removed: list[Path] = []
        if not self.write or not self.path.is_dir():
            return removed
        for tmp in self.path.rglob(".*.tmp"):
            if tmp.is_file():
                tmp.unlink(missing_ok=True)
                removed.append(tmp)
        return removed

    def remove_checkpoint(self, name: str) -> None:
        """Delete ``checkpoints/<name>`` if present."""
        if self.write:
            (self.path / "checkpoints" / name).unlink(missing_ok=True)

    def is_done(self, unit: str) -> bool:
        """Whether :meth:`mark_done` recorded ``unit``."""
        return (self.path / "done" / f"{unit}.json").is_file()

    def read_done(self, unit: str) -> Any:
        """The payload recorded for ``unit``."""
        return self.read_json(f"done/{unit}.json")

    # -- files ----------------------------------------------------------------------
    def figure_path(self, name: str) -> Path:
        """Path of a PNG figure ``<name>.png`` in the run folder."""
        return self.path / (name if name.endswith(".png") else f"{name}.png")

    def save_figure(self, figure: Any, name: str, dpi: int = 120) -> Path:
        """Save a matplotlib figure atomically as PNG and close it."""
        import matplotlib.pyplot as plt

        path = self.figure_path(name)
        if self.write:
            atomic_save(path, lambda handle: figure.savefig(handle, format="png", dpi=dpi, bbox_inches="tight"))
        plt.close(figure)
        return path

    def save_checkpoint(self, name: str, state: Mapping[str, Any]) -> Path:
        """``torch.save`` a state dict (tensors and plain values) atomically under ``checkpoints/``."""
        path = self.path / "checkpoints" / name
        if self.write:
            atomic_save(path, lambda handle: torch.save(dict(state), handle))
        return path

    def load_checkpoint(self, name: str, map_location: str | torch.device = "cpu") -> dict[str, Any] | None:
        """Load a checkpoint with ``weights_only=True`` (safe for untrusted files); None if absent."""
        path = self.path / "checkpoints" / name
        if not path.is_file():
            return None
        return torch.load(path, map_location=map_location, weights_only=True)


def summarize(values: Iterable[float]) -> dict[str, Any]:
    """``{"mean", "std", "values", "n"}`` of a list of numbers (std with ddof=0 for one value, else ddof=1)."""
    array = np.asarray([float(v) for v in values], dtype=float)
    if array.size == 0:
        return {"mean": float("nan"), "std": float("nan"), "values": [], "n": 0}
    std = float(array.std(ddof=1)) if array.size > 1 else 0.0
    return {"mean": float(array.mean()), "std": std, "values": array.tolist(), "n": int(array.size)}


def to_plain(obj: Any) -> Any:
    """Convert to YAML/JSON-friendly builtins (paths, tensors, NumPy, tuples, NaN kept).

    Parameters
    ----------
    obj : Any
        A config, record or result, possibly nested in mappings, lists and tuples.

    Returns
    -------
    Any
        The same structure as dicts with string keys, lists, str, int, float, bool and None.
    """
    if isinstance(obj, Mapping):
        return {str(k): to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, torch.Tensor):
        return to_plain(obj.detach().cpu().tolist())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, float) and not math.isfinite(obj):
        return obj
    return obj

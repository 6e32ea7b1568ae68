"""TVL (Touch-Vision-Language, Fu et al. 2024) to the manifest form.

Layout accepted (the released ``tvl_dataset`` folder): sub-datasets ``ssvtp`` and ``hct/data1..3``, each
with ``train.csv`` / ``test.csv`` whose columns are ``url`` (vision image, relative to the sub-dataset
folder), ``tactile`` (tactile image) and ``caption`` (comma-separated adjectives, e.g. "smooth, hard,
cold."). A CSV without a ``tactile`` column (``ssvtp/test.csv``) gets the tactile path from ``url`` with
``rgb`` replaced by ``tac``, as in the released loaders. Captions lose line breaks and full stops.
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from pmrl_sci.data.manifest import write_manifest
from pmrl_sci.errors import InputError

logger = logging.getLogger(__name__)

DEFAULT_SUBSETS = ("ssvtp", "hct/data1", "hct/data2", "hct/data3")


def clean_caption(caption: str) -> str:
    """Drop line breaks and full stops; normalise the comma-separated adjectives' spacing."""
    text = caption.replace("\r", " ").replace("\n", " ").replace(".", "")
    return ", ".join(part.strip() for part in text.split(",") if part.strip())


def tvl_to_manifest(root: str | os.PathLike[str], split: str = "train", out_path: str | os.PathLike[str] | None = None,
                    subsets: Sequence[str] | None = None, missing_files: str = "error") -> Path:
    """Write a manifest (``id``, ``vision``, ``touch``, ``text``, ``label``, ``split``) for one TVL split.

    Parameters
    ----------
    root : str or path-like
        The ``tvl_dataset`` folder.
    split : {"train", "test"}
        Which CSV of each sub-dataset to read.
    out_path : str or path-like, optional
        Manifest path (default ``root / f"manifest_{split}.jsonl"``); paths are written relative to it.
    subsets : sequence of str, optional
        Sub-dataset folders (default: those of :data:`DEFAULT_SUBSETS` that have ``{split}.csv``).
    missing_files : {"error", "blank"}
        A named image that does not exist raises, or leaves that modality blank (counted, logged).

    Raises
    ------
    FileNotFoundError
        No TVL folder or CSV found.
    InputError
        A CSV without ``url`` / ``caption``, a missing image (with ``missing_files="error"``), a bad option.
    """
    root = Path(root)
    if missing_files not in ("error", "blank"):
        raise InputError(f"missing_files must be 'error' or 'blank', got {missing_files!r}")
    if not root.is_dir():
        raise FileNotFoundError(f"TVL folder {root} does not exist")
    out_path = Path(out_path) if out_path is not None else root / f"manifest_{split}.jsonl"
    if subsets is None:
        subsets = [s for s in DEFAULT_SUBSETS if (root / s / f"{split}.csv").is_file()]
        if not subsets:
            raise FileNotFoundError(f"{root}: no {split}.csv under any of {list(DEFAULT_SUBSETS)}")
    rows, blanks = [], {"vision": 0, "touch": 0, "text": 0}
    for subset in subsets:
        csv_path = root / subset / f"{split}.csv"
        if not csv_path.is_file():
            raise FileNotFoundError(f"TVL CSV {csv_path} does not exist")
        with csv_path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            fields = reader.fieldnames or []
            for required in ("url", "caption"):
                if required not in fields:
                    raise InputError(f"{csv_path}: column {required!r} is missing (columns: {fields}); "
                                     "expected url, tactile, caption")
            for number, record in enumerate(reader):
                url = (record.get("url") or "").strip()
                tactile = (record.get("tactile") or "").strip() if "tactile" in fields else url.replace("rgb", "tac")
                caption = clean_caption(record.get("caption") or "")
                row: dict[str, str | None] = {"id": f"{subset.replace('/', '_')}_{number}"}
                for column, value in (("vision", url), ("touch", tactile)):
                    file = root / subset / value if value else None
                    if file is not None and not file.is_file():
                        if missing_files == "error":
                            raise InputError(f"{csv_path}, row {number + 2}: {column} image {file} does not "
                                             "exist (missing_files='blank' keeps the row without it)")
                        file = None
                    if file is None:
                        blanks[column] += 1
                    row[column] = os.path.relpath(file, out_path.parent) if file is not None else None
                if not caption:
                    blanks["text"] += 1
                row.update(text=caption or None, label=caption or None, split=split)
                rows.append(row)
    if not rows:
        raise InputError(f"{root}: the {split} CSVs of {list(subsets)} have no rows")
    if any(blanks.values()):
        logger.warning("TVL %s: rows without vision / touch / text: %s", split, blanks)
    return write_manifest(rows, out_path)

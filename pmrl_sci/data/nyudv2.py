"""NYU Depth V2 (labelled subset) to the manifest form: RGB PNGs, depth ``.npy`` (metres), scene-type text.

Inputs: ``nyu_depth_v2_labeled.mat`` (MATLAB v7.3, i.e. HDF5, read with h5py: ``images`` stored as
``[N, 3, W, H]`` uint8, ``depths`` as ``[N, W, H]`` float metres, optional ``sceneTypes``, a cell array of
strings) and ``splits.mat`` (MATLAB v5, read with ``scipy.io.loadmat``: ``trainNdxs`` / ``testNdxs``,
1-based, 795 / 654 images in the standard split).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from pmrl_sci.data.manifest import write_manifest
from pmrl_sci.errors import InputError
from pmrl_sci.extras import require

logger = logging.getLogger(__name__)

STANDARD_SPLIT_SIZES = {"train": 795, "test": 654}


def read_nyudv2_splits(path: str | os.PathLike[str], num_images: int) -> list[str | None]:
    """Split name (``"train"`` / ``"test"`` / ``None``) of each of ``num_images`` images from ``splits.mat``.

    Raises
    ------
    FileNotFoundError, ValueError
        Missing file, missing ``trainNdxs`` / ``testNdxs``, indices outside ``1..num_images`` or in both splits.
    """
    from scipy.io import loadmat

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"NYUDv2 splits file {path} does not exist")
    try:
        data = loadmat(path)
    except (OSError, ValueError, NotImplementedError) as exc:
        raise InputError(f"cannot read {path} as a MATLAB v5 file: {exc}") from None
    splits: list[str | None] = [None] * num_images
    for name, key in (("train", "trainNdxs"), ("test", "testNdxs")):
        if key not in data:
            raise InputError(f"{path}: field {key!r} is missing (expected trainNdxs and testNdxs, 1-based indices)")
        indices = np.asarray(data[key]).astype(np.int64).ravel()
        if indices.size and (indices.min() < 1 or indices.max() > num_images):
            raise InputError(f"{path}: field {key!r} holds indices in [{indices.min()}, {indices.max()}]; expected "
                             f"1-based indices in [1, {num_images}]")
        for index in indices:
            if splits[index - 1] is not None and splits[index - 1] != name:
                raise InputError(f"{path}: image {index} is in both trainNdxs and testNdxs")
            splits[index - 1] = name
        if indices.size != STANDARD_SPLIT_SIZES[name]:
            logger.warning("%s: %s has %d images (the standard split has %d)", path, key, indices.size,
                           STANDARD_SPLIT_SIZES[name])
    return splits


def _read_strings(handle: object, dataset: object) -> list[str]:
    refs = np.asarray(dataset).ravel()
    out = []
    for ref in refs:
        chars = np.asarray(handle[ref]).ravel()
        out.append("".join(chr(int(c)) for c in chars))
    return out


def nyudv2_to_manifest(labeled_mat: str | os.PathLike[str], out_dir: str | os.PathLike[str],
                       splits_mat: str | os.PathLike[str] | None = None, limit: int | None = None,
                       overwrite: bool = False) -> Path:
    """Convert the labelled NYUDv2 ``.mat`` into ``out_dir/manifest.jsonl`` with ``rgb/`` and ``depth/`` files.

    Manifest columns: ``id``, ``vision`` (PNG), ``depth`` (``.npy``, metres), ``text`` (scene type, e.g.
    "living room", when ``sceneTypes`` is present), ``label`` (the scene type) and ``split``.

    Parameters
    ----------
    labeled_mat : str or path-like
        ``nyu_depth_v2_labeled.mat``.
    out_dir : str or path-like
        Output folder.
    splits_mat : str or path-like, optional
        ``splits.mat``; without it ``split`` is blank.
    limit : int, optional
        Convert only the first ``limit`` images.
    overwrite : bool
        Rewrite an existing manifest (otherwise it is returned as is).

    Raises
    ------
    FileNotFoundError, ValueError
        Missing file, not HDF5, missing ``images`` / ``depths``, shapes that do not match.
    """
    require("h5py", "media", "reading NYU Depth v2's MATLAB v7.3 file")
    require("PIL", "media", "writing NYU Depth v2 images")
    import h5py
    from PIL import Image

    labeled_mat, out_dir = Path(labeled_mat), Path(out_dir)
    manifest_path = out_dir / "manifest.jsonl"
    if manifest_path.is_file() and not overwrite:
        return manifest_path
    if not labeled_mat.is_file():
        raise FileNotFoundError(f"NYUDv2 file {labeled_mat} does not exist (nyu_depth_v2_labeled.mat)")
    try:
        handle = h5py.File(labeled_mat, "r")
    except OSError as exc:
        raise InputError(f"cannot open {labeled_mat} as HDF5 (MATLAB v7.3): {exc}") from None
    with handle:
        for key in ("images", "depths"):
            if key not in handle:
                raise InputError(f"{labeled_mat}: dataset {key!r} is missing (found {sorted(handle.keys())})")
        images, depths = handle["images"], handle["depths"]
        if images.ndim != 4 or images.shape[1] != 3:
            raise InputError(f"{labeled_mat}: 'images' has shape {list(images.shape)}, expected [N, 3, W, H]")
        if depths.shape != (images.shape[0], *images.shape[2:]):
            raise InputError(f"{labeled_mat}: 'depths' has shape {list(depths.shape)}, expected "
                             f"{[images.shape[0], *images.shape[2:]]} to match 'images'")
        total = int(images.shape[0])
        scenes = _read_strings(handle, handle["sceneTypes"]) if "sceneTypes" in handle else None
        if scenes is not None and len(scenes) != total:
            raise InputError(f"{labeled_mat}: 'sceneTypes' has {len(scenes)} entries for {total} images")
        splits = read_nyudv2_splits(splits_mat, total) if splits_mat is not None else [None] * total
        count = total if limit is None else min(int(limit), total)
        (out_dir / "rgb").mkdir(parents=True, exist_ok=True)
        (out_dir / "depth").mkdir(parents=True, exist_ok=True)
        rows = []
        for i in range(count):
            rgb = np.asarray(images[i]).transpose(2, 1, 0)  # [3, W, H] -> [H, W, 3]
            depth = np.asarray(depths[i], dtype=np.float32).T  # [W, H] -> [H, W]
            name = f"{i + 1:04d}"
            Image.fromarray(np.ascontiguousarray(rgb.astype(np.uint8))).save(out_dir / "rgb" / f"{name}.png")
            np.save(out_dir / "depth" / f"{name}.npy", depth)
            scene = scenes[i].replace("_", " ").strip() if scenes is not None else None
            rows.append({"id": name, "vision": f"rgb/{name}.png", "depth": f"depth/{name}.npy",
                         "text": scene, "label": scene, "split": splits[i]})
    return write_manifest(rows, manifest_path)

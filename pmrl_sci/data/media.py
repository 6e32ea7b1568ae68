"""Reading the files a manifest names: images, frame folders, depth maps, audio and feature arrays.

Each reader returns float32 arrays of a fixed layout and raises :class:`~pmrl_sci.errors.InputError` naming
the file and what was expected for a missing, unreadable or malformed file; :func:`load_cell` dispatches on
the modality kind (see :mod:`pmrl_sci.data.manifest` for the kinds and the manifest format).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pmrl_sci.errors import InputError
from pmrl_sci.extras import require

KINDS = ("image", "video", "depth", "audio", "features", "text")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}


@dataclass
class LoadOptions:
    """How files become arrays.

    Parameters
    ----------
    image_size : int
        Images, frames and depth maps are resized to ``image_size`` x ``image_size``.
    num_frames : int
        Frames sampled uniformly from a video folder.
    sample_rate : int
        Required sample rate of ``.wav`` files (Hz); another rate is an error.
    num_samples : int, optional
        Clips are cut or zero-padded to this length (default: the length of the first clip).
    depth_png_scale : float
        Depth PNG values are divided by this (1000: millimetre PNGs to metres).
    """

    image_size: int = 32
    num_frames: int = 4
    sample_rate: int = 16000
    num_samples: int | None = None
    depth_png_scale: float = 1000.0


def load_image(path: str | os.PathLike[str], size: int) -> np.ndarray:
    """An RGB image as float32 ``[3, size, size]`` in ``[0, 1]``."""
    require("PIL", "media", "reading images")
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image = image.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
            array = np.asarray(image, dtype=np.float32) / 255.0
    except (OSError, UnidentifiedImageError) as exc:
        raise InputError(f"cannot read image {path}: {exc}") from None
    return np.ascontiguousarray(array.transpose(2, 0, 1))


def load_video(folder: str | os.PathLike[str], size: int, num_frames: int) -> np.ndarray:
    """``num_frames`` frames sampled uniformly from a folder of images: float32 ``[T, 3, size, size]``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"video {folder}: expected a folder of frame images")
    frames = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not frames:
        raise InputError(f"video {folder}: the folder holds no frame images ({sorted(IMAGE_SUFFIXES)})")
    picks = np.linspace(0, len(frames) - 1, num_frames).round().astype(int)
    return np.stack([load_image(frames[i], size) for i in picks])


def load_depth(path: str | os.PathLike[str], size: int, png_scale: float = 1000.0) -> np.ndarray:
    """A depth map as float32 ``[1, size, size]`` (nearest-neighbour resize, so missing zeros stay zeros)."""
    require("PIL", "media", "reading images")
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if path.suffix.lower() == ".npy":
        try:
            depth = np.load(path).astype(np.float32)
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot read depth map {path}: {exc}") from None
        depth = np.squeeze(depth)
        if depth.ndim != 2:
            raise InputError(f"depth map {path}: expected a 2-D array [H, W], got shape {list(np.shape(depth))}")
    else:
        try:
            with Image.open(path) as image:
                depth = np.asarray(image).astype(np.float32)
        except (OSError, UnidentifiedImageError) as exc:
            raise InputError(f"cannot read depth map {path}: {exc}") from None
        if depth.ndim == 3:
            depth = depth[..., 0]
        depth = depth / png_scale
    image = Image.fromarray(np.ascontiguousarray(depth, dtype=np.float32))
    resized = image.resize((size, size), Image.Resampling.NEAREST)
    return np.asarray(resized, dtype=np.float32)[None]


def load_wav(path: str | os.PathLike[str], sample_rate: int, num_samples: int | None = None) -> np.ndarray:
    """A mono float32 waveform in ``[-1, 1]`` (channels averaged), cut or zero-padded to ``num_samples``.

    Raises
    ------
    InputError
        Unreadable file, a file with no samples, or a sample rate other than ``sample_rate`` (named with the
        file).
    """
    from scipy.io import wavfile

    try:
        rate, data = wavfile.read(path)
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read audio {path}: {exc}") from None
    if data.size == 0:
        raise InputError(f"audio {path}: the file holds no samples (an empty or cut .wav file)")
    if rate != sample_rate:
        raise InputError(f"audio {path} is sampled at {rate} Hz; the audio encoder takes {sample_rate} Hz "
                         "(resample the file, or set the sample rate to match)")
    if data.dtype == np.uint8:
        wave = (data.astype(np.float32) - 128.0) / 128.0
    elif np.issubdtype(data.dtype, np.integer):
        wave = data.astype(np.float32) / float(np.iinfo(data.dtype).max + 1)
    else:
        wave = data.astype(np.float32)
    if wave.ndim == 2:
        wave = wave.mean(axis=1)
    if num_samples is not None:
        wave = wave[:num_samples]
        if wave.shape[0] < num_samples:
            wave = np.pad(wave, (0, num_samples - wave.shape[0]))
    return np.ascontiguousarray(wave)


def load_features(path: str | os.PathLike[str]) -> np.ndarray:
    """A ``.npy`` feature vector ``[F]`` or sequence ``[T, F]`` as float32."""
    try:
        array = np.load(path).astype(np.float32)
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read features {path}: {exc}") from None
    if array.ndim not in (1, 2):
        raise InputError(f"features {path}: expected [F] or [T, F], got shape {list(array.shape)}")
    return array


def load_cell(kind: str, value: str, options: LoadOptions, num_samples: int | None = None) -> np.ndarray | str:
    """Load one manifest cell of ``kind`` (text passes through)."""
    if kind == "text":
        return value
    if kind == "image":
        return load_image(value, options.image_size)
    if kind == "video":
        return load_video(value, options.image_size, options.num_frames)
    if kind == "depth":
        return load_depth(value, options.image_size, options.depth_png_scale)
    if kind == "audio":
        return load_wav(value, options.sample_rate, num_samples)
    if kind == "features":
        return load_features(value)
    raise InputError(f"unknown modality kind {kind!r}; expected one of {KINDS}")


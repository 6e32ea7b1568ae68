"""The embedded default for any-modality retrieval: procedurally generated scenes with shared content.

Each instance is a random scene of one object with five attributes: shape (circle, square, triangle,
cross; the class label), colour (red, green, blue, yellow), material (smooth, ribbed, dotted, rough),
size (small, large) and position (a quadrant). Five modalities show overlapping subsets of them:

* ``vision``: a ``size x size`` RGB rendering (shape, colour, size, position; the material as surface texture);
* ``depth``: the matching depth map in metres (shape, size and position as a relief over a tilted floor);
* ``touch``: a GelSight-like tactile patch of the contact (shape imprint, size, material texture, a random
  sensor tint);
* ``audio``: a short tone sequence (one note per shape corner count: 1-4 notes; pitch from the colour;
  rising or falling with the horizontal position; octave from the vertical position; legato for large,
  staccato for small; timbre from the material);
* ``text``: a caption ("a large red ribbed circle at the upper left").

So every pair of modalities shares part of the content and retrieval between any two is learnable and
measurable. Files are written in the manifest form (:mod:`pmrl_sci.data.manifest`) with a
``labels.txt`` of class names for zero-shot classification.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from pmrl_sci.data.cache import cache_root
from pmrl_sci.data.manifest import write_manifest
from pmrl_sci.extras import require
from pmrl_sci.io import atomic_write_text, stable_hash
from pmrl_sci.registry import register_dataset

SHAPES = ("circle", "square", "triangle", "cross")
COLORS = {"red": (0.9, 0.15, 0.1), "green": (0.1, 0.8, 0.2), "blue": (0.15, 0.25, 0.95), "yellow": (0.95, 0.85, 0.1)}
MATERIALS = ("smooth", "ribbed", "dotted", "rough")
SIZES = ("small", "large")
POSITIONS = ("upper left", "upper right", "lower left", "lower right")
_BASE_PITCH = {"red": 262.0, "green": 330.0, "blue": 392.0, "yellow": 494.0}


@dataclass
class SceneConfig:
    """Size and content of the generated set.

    Parameters
    ----------
    n_train, n_test : int
        Instances per split.
    image_size : int
        Side of the RGB, depth and tactile images (>= 16).
    sample_rate : int
        Audio sample rate (Hz, >= 4000 so that the highest harmonic stays below Nyquist).
    duration : float
        Audio clip length in seconds.
    missing_rate : float
        Probability that each non-text modality of an instance is left out (tests the mask).
    seed : int
        Random seed; the same config gives the same files.
    """

    n_train: int = 400
    n_test: int = 200
    image_size: int = 32
    sample_rate: int = 8000
    duration: float = 0.5
    missing_rate: float = 0.0
    seed: int = 0

    def validate(self) -> None:
        """Raise ``ValueError`` for settings the generator cannot honour."""
        if self.n_train < 1 or self.n_test < 1:
            raise ValueError(f"need n_train >= 1 and n_test >= 1, got {self.n_train}, {self.n_test}")
        if self.image_size < 16:
            raise ValueError(f"image_size must be >= 16, got {self.image_size}")
        if self.sample_rate < 4000:
            raise ValueError(f"sample_rate must be >= 4000 Hz, got {self.sample_rate}")
        if not 0.0 <= self.missing_rate < 1.0:
            raise ValueError(f"missing_rate must be in [0, 1), got {self.missing_rate}")


def _shape_mask(shape: str, u: np.ndarray, v: np.ndarray, r: float) -> np.ndarray:
    if shape == "circle":
        return u**2 + v**2 <= r**2
    if shape == "square":
        return (np.abs(u) <= 0.85 * r) & (np.abs(v) <= 0.85 * r)
    if shape == "triangle":  # apex up (v grows downwards)
        return (v <= 0.8 * r) & (v >= -r + 1.8 * np.abs(u))
    if shape == "cross":
        return ((np.abs(u) <= r / 3) & (np.abs(v) <= r)) | ((np.abs(v) <= r / 3) & (np.abs(u) <= r))
    raise ValueError(f"unknown shape {shape!r}")


def _texture(material: str, x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    if material == "smooth":
        return np.full_like(x, 0.5, dtype=np.float64)
    if material == "ribbed":
        return 0.5 + 0.5 * np.sin(2 * np.pi * x / 4.0)
    if material == "dotted":
        return (((x % 5) - 2) ** 2 + ((y % 5) - 2) ** 2 <= 2).astype(np.float64)
    if material == "rough":
        return rng.uniform(0.0, 1.0, size=x.shape)
    raise ValueError(f"unknown material {material!r}")


def render_scene(attributes: dict[str, str], image_size: int, rng: np.random.Generator
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """RGB ``[S, S, 3]`` in [0, 1], depth ``[S, S]`` in metres and a tactile image ``[S, S, 3]`` in [0, 1]."""
    s = image_size
    y, x = np.mgrid[0:s, 0:s].astype(np.float64)
    quadrant = POSITIONS.index(attributes["position"])
    cx = s * (0.28 if quadrant % 2 == 0 else 0.72) + rng.uniform(-1.5, 1.5)
    cy = s * (0.28 if quadrant < 2 else 0.72) + rng.uniform(-1.5, 1.5)
    radius = s * (0.14 if attributes["size"] == "small" else 0.24) * rng.uniform(0.92, 1.08)
    mask = _shape_mask(attributes["shape"], x - cx, y - cy, radius)
    texture = _texture(attributes["material"], x, y, rng)
    colour = np.array(COLORS[attributes["color"]])
    rgb = np.clip(0.35 + 0.08 * rng.standard_normal((s, s, 1)), 0, 1).repeat(3, axis=2)
    rgb[mask] = colour * (0.7 + 0.3 * texture[mask, None])
    rgb = np.clip(rgb + 0.03 * rng.standard_normal(rgb.shape), 0, 1)

    floor = 3.0 + 0.3 * y / s
    height = 0.5 if attributes["size"] == "small" else 1.0
    rho = np.sqrt((x - cx) ** 2 + (y - cy) ** 2) / radius
    profile = {"circle": np.sqrt(np.clip(1 - rho**2, 0, 1)), "square": np.ones_like(x),
               "triangle": np.clip((cy + 0.8 * radius - y) / (1.8 * radius), 0, 1), "cross": np.full_like(x, 0.6)}
    depth = floor - height * profile[attributes["shape"]] * mask
    depth = (depth + 0.01 * rng.standard_normal(depth.shape)).astype(np.float32)

    t_radius = s * (0.25 if attributes["size"] == "small" else 0.38)
    imprint = _shape_mask(attributes["shape"], x - s / 2, y - s / 2, t_radius).astype(np.float64)
    pressure = imprint * (0.45 + 0.55 * _texture(attributes["material"], x, y, rng))
    gy, gx = np.gradient(pressure)
    tint = np.array([0.25, 0.45, 0.35]) + rng.uniform(-0.08, 0.08, size=3)
    touch = tint + np.stack([0.6 * gx, 0.5 * pressure, 0.6 * gy], axis=-1)
    touch = np.clip(touch + 0.02 * rng.standard_normal(touch.shape), 0, 1)
    return rgb, depth, touch


def synthesize_audio(attributes: dict[str, str], sample_rate: int, duration: float,
                     rng: np.random.Generator) -> np.ndarray:
    """A float32 tone sequence in ``[-1, 1]`` encoding shape, colour, position, size and material."""
    n = int(round(sample_rate * duration))
    t = np.arange(n) / sample_rate
    notes = SHAPES.index(attributes["shape"]) + 1
    quadrant = POSITIONS.index(attributes["position"])
    step = 4 if quadrant % 2 else -4  # semitones: rising on the right, falling on the left
    base = _BASE_PITCH[attributes["color"]] * (2.0 if quadrant < 2 else 1.0)
    duty = 0.9 if attributes["size"] == "large" else 0.45
    segment = n // notes
    wave = np.zeros(n)
    ramp = max(1, int(0.005 * sample_rate))
    for k in range(notes):
        start, length = k * segment, int(segment * duty)
        freq = base * 2 ** (k * step / 12)
        phase = rng.uniform(0, 2 * np.pi)
        tt = t[start:start + length] - t[start]
        note = np.sin(2 * np.pi * freq * tt + phase)
        material = attributes["material"]
        if material == "ribbed":
            note = note + 0.5 * np.sin(2 * np.pi * 3 * freq * tt + phase)
        elif material == "dotted":
            note = note * (0.5 + 0.5 * np.sin(2 * np.pi * 24 * tt))
        elif material == "rough":
            note = note + 0.35 * rng.standard_normal(tt.shape)
        envelope = np.ones(length)
        envelope[:ramp] = np.linspace(0, 1, min(ramp, length))
        envelope[-ramp:] = np.linspace(1, 0, min(ramp, length))
        wave[start:start + length] = note * envelope
    wave = wave / max(1e-6, np.abs(wave).max()) * rng.uniform(0.3, 0.8)
    wave = wave + 0.01 * rng.standard_normal(n)
    return np.clip(wave, -1, 1).astype(np.float32)


def caption(attributes: dict[str, str]) -> str:
    """``"a large red ribbed circle at the upper left"``."""
    return (f"a {attributes['size']} {attributes['color']} {attributes['material']} {attributes['shape']} "
            f"at the {attributes['position']}")


def sample_attributes(rng: np.random.Generator) -> dict[str, str]:
    """One random scene description."""
    return {"shape": SHAPES[rng.integers(4)], "color": list(COLORS)[rng.integers(4)],
            "material": MATERIALS[rng.integers(4)], "size": SIZES[rng.integers(2)],
            "position": POSITIONS[rng.integers(4)]}


def generate_scenes(out_dir: str | os.PathLike[str], config: SceneConfig | None = None) -> Path:
    """Write the scenes of ``config`` to ``out_dir`` and return ``out_dir/manifest.jsonl``.

    Files: ``vision/NNNN.png``, ``depth/NNNN.npy``, ``touch/NNNN.png``, ``audio/NNNN.wav`` (16-bit PCM), the
    manifest (``id``, the five modalities, ``label`` = shape, ``split``) and ``labels.txt`` (one class per
    line). An existing complete set with the same config is reused.
    """
    require("PIL", "media", "writing the generated images")
    from PIL import Image
    from scipy.io import wavfile

    config = config or SceneConfig()
    config.validate()
    out_dir = Path(out_dir)
    manifest_path = out_dir / "manifest.jsonl"
    stamp = out_dir / "config_hash.txt"
    key = stable_hash("synthetic-scenes-v1", asdict(config))
    if manifest_path.is_file() and stamp.is_file() and stamp.read_text().strip() == key:
        return manifest_path
    for folder in ("vision", "depth", "touch", "audio"):
        (out_dir / folder).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(config.seed)
    rows = []
    total = config.n_train + config.n_test
    for i in range(total):
        attributes = sample_attributes(rng)
        rgb, depth, touch = render_scene(attributes, config.image_size, rng)
        wave = synthesize_audio(attributes, config.sample_rate, config.duration, rng)
        name = f"{i:05d}"
        Image.fromarray((rgb * 255).round().astype(np.uint8)).save(out_dir / "vision" / f"{name}.png")
        np.save(out_dir / "depth" / f"{name}.npy", depth)
        Image.fromarray((touch * 255).round().astype(np.uint8)).save(out_dir / "touch" / f"{name}.png")
        wavfile.write(out_dir / "audio" / f"{name}.wav", config.sample_rate, (wave * 32767).astype(np.int16))
        row = {"id": name, "vision": f"vision/{name}.png", "depth": f"depth/{name}.npy",
               "touch": f"touch/{name}.png", "audio": f"audio/{name}.wav", "text": caption(attributes),
               "label": attributes["shape"], "split": "train" if i < config.n_train else "test"}
        if config.missing_rate > 0:
            for column in ("vision", "depth", "touch", "audio"):
                if rng.uniform() < config.missing_rate:
                    row[column] = None
        rows.append(row)
    atomic_write_text(out_dir / "labels.txt", "\n".join(SHAPES) + "\n")
    write_manifest(rows, manifest_path)
    atomic_write_text(stamp, key + "\n")
    return manifest_path


def default_cache_dir(config: SceneConfig) -> Path:
    """``$PMRL_SCI_CACHE`` (default ``~/.cache/pmrl_sci``) ``/synthetic_scenes/<config hash>``."""
    root = cache_root()
    return root / "synthetic_scenes" / stable_hash("synthetic-scenes-v1", asdict(config))


@register_dataset("synthetic_scenes")
def synthetic_scenes(out_dir: str | os.PathLike[str] | None = None, **config: object) -> Path:
    """Generate (or reuse) the default scenes and return the manifest path."""
    scene_config = SceneConfig(**config)  # type: ignore[arg-type]
    return generate_scenes(out_dir if out_dir is not None else default_cache_dir(scene_config), scene_config)

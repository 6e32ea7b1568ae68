"""An embedded, synthetic stand-in for the Houston 2013 scene, written in the real release's formats.

The generator
-------------
* **Layout.** The scene is tiled into Voronoi cells (``cells_per_class`` per class, classes shuffled over the
  cells). For each class one cell provides the training ROI and the other cells the test ROI, so training and test
  pixels never share a cell (as in the real split, where TR and VA are spatially separate).
* **Spectra.** 144 bands over 364-1046 nm (the CASI range). Each class has a smooth reflectance curve made of
  sigmoids and Gaussian bumps: vegetation (green peak, red edge, NIR plateau), soil (rising), water (low,
  falling), asphalt, concrete, roof, clay and paint curves. Reflectance varies by cell (brightness x N(1, 0.06)),
  by pixel (x N(1, 0.04)), plus band-correlated noise; values are stored as uint16 reflectance x 10000.
* **Heights.** A float32 DSM in metres: a gently sloping ground plus per-class heights and textures: smooth
  healthy grass, rough stressed grass, perfectly flat synthetic grass, 6-14 m tree canopy, 4-8 m residential and
  12-24 m commercial roofs, water 1.5 m below ground, railway with periodic rails, and cars (1.5 m blocks, also
  changing the spectrum) covering part of Parking Lot 2.
* **Overlaps, so fusion matters.** The three grasses, the two roof classes and the two parking lots are close in
  spectrum (their differences are below the within-class variability) and are told apart by height or texture;
  soil, road, highway, parking lot 1, tennis court, running track and synthetic grass are all flat ground, told
  apart only by spectrum. Neither modality alone separates every class.

:func:`write_synthetic_houston13` writes ``2013_IEEE_GRSS_DF_Contest_CASI.tif`` (144 bands, uint16),
``..._LiDAR.tif`` (float32) and the ``..._Samples_TR.txt`` / ``..._Samples_VA.txt`` ENVI ROI exports with the
real 15 class names, so the real readers load it.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from pmrl_sci.data.houston13.readers import (
    HOUSTON13_BANDS,
    HOUSTON13_CLASSES,
    PREFIX,
    Houston13Files,
    write_envi_roi,
)
from pmrl_sci.extras import require

WAVELENGTHS_NM = np.linspace(364.0, 1046.0, HOUSTON13_BANDS)


@dataclass
class SyntheticSceneConfig:
    """Size and sampling of the synthetic scene.

    Parameters
    ----------
    rows, cols : int
        Scene size (the real one is 349 x 1905).
    cells_per_class : int
        Voronoi cells per class (one is the training cell, the others test cells); >= 2.
    train_per_class, test_per_class : int
        Maximum training / test pixels sampled per class.
    seed : int
        Seed of the generator (the scene is a pure function of the config).
    """

    rows: int = 96
    cols: int = 256
    cells_per_class: int = 4
    train_per_class: int = 80
    test_per_class: int = 250
    seed: int = 2013

    def __post_init__(self) -> None:
        if self.rows < 16 or self.cols < 16:
            raise ValueError(f"synthetic scene must be at least 16 x 16, got {self.rows} x {self.cols}")
        if self.cells_per_class < 2:
            raise ValueError(f"cells_per_class must be >= 2 (one training cell and test cells), got "
                             f"{self.cells_per_class}")


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _gauss(centre: float, width: float) -> np.ndarray:
    return np.exp(-0.5 * ((WAVELENGTHS_NM - centre) / width) ** 2)


def _ramp() -> np.ndarray:
    return (WAVELENGTHS_NM - WAVELENGTHS_NM[0]) / (WAVELENGTHS_NM[-1] - WAVELENGTHS_NM[0])


def _vegetation(green: float, nir: float, edge: float) -> np.ndarray:
    return 0.03 + green * _gauss(550, 35) + nir * _sigmoid((WAVELENGTHS_NM - edge) / 14) - 0.04 * _gauss(970, 25)


def class_spectra() -> np.ndarray:
    """Mean reflectance curves ``[15, 144]`` of the synthetic classes (Houston 2013 order)."""
    ramp = _ramp()
    asphalt = 0.07 + 0.07 * ramp
    roof = 0.16 + 0.08 * ramp + 0.03 * _sigmoid((WAVELENGTHS_NM - 580) / 30)
    curves = [
        _vegetation(0.060, 0.44, 716),                       # Healthy grass
        _vegetation(0.058, 0.43, 714),                       # Stressed grass (close to healthy)
        _vegetation(0.064, 0.41, 718),                       # Synthetic grass (close too)
        _vegetation(0.045, 0.36, 706),                       # Trees
        0.08 + 0.22 * ramp + 0.03 * _gauss(600, 80),         # Soil
        0.02 + 0.06 * np.exp(-(WAVELENGTHS_NM - 364) / 140),  # Water
        roof,                                                # Residential
        roof * 1.02 + 0.003,                                 # Commercial (close to residential)
        asphalt,                                             # Road
        0.20 + 0.08 * ramp,                                  # Highway (concrete)
        0.10 + 0.05 * ramp + 0.03 * _gauss(700, 120),        # Railway (gravel)
        0.11 + 0.06 * ramp,                                  # Parking Lot 1
        0.11 + 0.06 * ramp + 0.002,                          # Parking Lot 2 (same surface, with cars)
        0.09 + 0.12 * _gauss(520, 40) + 0.10 * ramp,         # Tennis Court (green paint)
        0.06 + 0.24 * _sigmoid((WAVELENGTHS_NM - 600) / 20),  # Running Track (red)
    ]
    return np.stack(curves).astype(np.float64)


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int], scale: float) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    field = gaussian_filter(rng.standard_normal(shape), sigma=scale, mode="reflect")
    return field / (field.std() + 1e-12)


def generate_synthetic_scene(config: SyntheticSceneConfig | None = None
                             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Generate ``(hsi uint16 [144, r, c], dsm float32 [r, c], train labels, test labels)`` in memory."""
    from scipy.spatial import cKDTree

    cfg = config or SyntheticSceneConfig()
    rng = np.random.default_rng(cfg.seed)
    n_classes = len(HOUSTON13_CLASSES)
    rows, cols = cfg.rows, cfg.cols
    n_cells = n_classes * cfg.cells_per_class
    seeds = np.column_stack([rng.uniform(0, rows, n_cells), rng.uniform(0, cols, n_cells)])
    grid = np.stack(np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij"), axis=-1).reshape(-1, 2)
    cell = cKDTree(seeds).query(grid)[1].reshape(rows, cols)
    cell_class = rng.permutation(np.repeat(np.arange(n_classes), cfg.cells_per_class))
    klass = cell_class[cell]  # 0-based class of every pixel

    # -- spectra
    spectra = class_spectra()
    cell_gain = rng.normal(1.0, 0.06, n_cells)
    pixel_gain = rng.normal(1.0, 0.04, (rows, cols))
    knots = rng.normal(0.0, 0.008, (16, rows, cols))
    band_noise = np.empty((HOUSTON13_BANDS, rows, cols))
    positions = np.linspace(0, 15, HOUSTON13_BANDS)
    lo = np.floor(positions).astype(int).clip(0, 14)
    frac = (positions - lo)[:, None, None]
    band_noise[:] = knots[lo] * (1 - frac) + knots[lo + 1] * frac  # band-correlated noise
    reflectance = spectra[klass].transpose(2, 0, 1) * (cell_gain[cell] * pixel_gain)[None] + band_noise
    reflectance += rng.normal(0.0, 0.003, reflectance.shape)

    # -- heights
    r_idx, c_idx = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    dsm = 10.0 + 2.0 * c_idx / cols + 0.3 * _smooth_field(rng, (rows, cols), 12.0)
    cell_height = rng.uniform(0.0, 1.0, n_cells)
    rough = rng.standard_normal((rows, cols))
    canopy = _smooth_field(rng, (rows, cols), 2.0)
    add = np.zeros((rows, cols))
    is_ = {name: klass == k for k, name in enumerate(HOUSTON13_CLASSES)}
    add[is_["Healthy grass"]] = 0.05 + 0.08 * _smooth_field(rng, (rows, cols), 1.5)[is_["Healthy grass"]]
    add[is_["Stressed grass"]] = 0.10 + 0.30 * np.abs(rough[is_["Stressed grass"]])
    add[is_["Synthetic grass"]] = 0.02
    add[is_["Trees"]] = (6.0 + 8.0 * cell_height[cell] + 1.5 * canopy)[is_["Trees"]]
    add[is_["Water"]] = -1.5
    add[is_["Residential"]] = (4.0 + 4.0 * cell_height[cell] + 0.6 * ((c_idx % 6) < 3))[is_["Residential"]]
    add[is_["Commercial"]] = (12.0 + 12.0 * cell_height[cell])[is_["Commercial"]]
    add[is_["Railway"]] = (0.25 * (c_idx % 4 == 0))[is_["Railway"]]
    cars = (_smooth_field(rng, (rows, cols), 1.0) > 0.5) & is_["Parking Lot 2"]
    add[cars] = 1.5
    dsm = dsm + add
    dsm[~(is_["Water"] | is_["Synthetic grass"])] += rng.normal(0.0, 0.03, (rows, cols))[
        ~(is_["Water"] | is_["Synthetic grass"])]
    car_paint = rng.uniform(0.5, 2.5, (rows, cols))
    reflectance[:, cars] *= car_paint[cars][None]

    hsi = np.clip(np.round(reflectance * 10000.0), 0, 65535).astype(np.uint16)

    # -- ground truth: one training cell per class, the other cells give test pixels
    train = np.zeros((rows, cols), dtype=np.int64)
    test = np.zeros((rows, cols), dtype=np.int64)
    sizes = np.bincount(cell.ravel(), minlength=n_cells)
    for k in range(n_classes):
        cells_k = np.flatnonzero(cell_class == k)
        big = cells_k[sizes[cells_k] >= 0.4 * sizes.mean()]
        train_cell = rng.choice(big) if len(big) else cells_k[np.argmax(sizes[cells_k])]
        for target, chosen, limit in ((train, [train_cell], cfg.train_per_class),
                                      (test, [c for c in cells_k if c != train_cell], cfg.test_per_class)):
            pixels = np.flatnonzero(np.isin(cell.ravel(), chosen))
            pick = rng.choice(pixels, size=min(limit, len(pixels)), replace=False)
            target.ravel()[pick] = k + 1
    return hsi, dsm.astype(np.float32), train, test


def write_synthetic_houston13(out_dir: str | os.PathLike[str], config: SyntheticSceneConfig | None = None
                              ) -> Houston13Files:
    """Generate the synthetic scene and write it in the real release's formats.

    Parameters
    ----------
    out_dir : path-like
        Directory to write into (created).
    config : SyntheticSceneConfig, optional
        Size and seed.

    Returns
    -------
    Houston13Files
        The written paths (readable by :func:`pmrl_sci.data.houston13.load_houston13`).
    """
    import json

    require("rasterio", "geo", "writing GeoTIFF rasters")
    import rasterio
    from rasterio.crs import CRS
    from rasterio.transform import Affine

    cfg = config or SyntheticSceneConfig()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    hsi, dsm, train, test = generate_synthetic_scene(cfg)
    rows, cols = dsm.shape
    transform = Affine(2.5, 0.0, 268_000.0, 0.0, -2.5, 3_290_000.0)  # UTM 15N near Houston, 2.5 m pixels
    crs = CRS.from_epsg(26915)
    files = Houston13Files(out_dir / f"{PREFIX}CASI.tif", out_dir / f"{PREFIX}LiDAR.tif",
                           out_dir / f"{PREFIX}Samples_TR.txt", out_dir / f"{PREFIX}Samples_VA.txt")
    profile = dict(driver="GTiff", height=rows, width=cols, transform=transform, crs=crs)
    with rasterio.open(files.hsi, "w", count=hsi.shape[0], dtype="uint16", interleave="pixel", **profile) as dst:
        dst.write(hsi)
    with rasterio.open(files.lidar, "w", count=1, dtype="float32", **profile) as dst:
        dst.write(dsm[None])
    write_envi_roi(files.train, train, HOUSTON13_CLASSES)
    write_envi_roi(files.test, test, HOUSTON13_CLASSES)
    (out_dir / "synthetic_config.json").write_text(json.dumps(asdict(cfg), indent=2) + "\n", encoding="utf-8")
    return files

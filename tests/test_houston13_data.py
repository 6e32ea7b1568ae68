"""Houston 2013 data layer: readers, synthetic scene, patches and splits, the CNN encoders' dense path, metrics.

The task, the model helpers and the front end are tested in ``tests/test_houston13.py``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pmrl_sci.data.houston13 import (
    HOUSTON13_CLASSES,
    Houston13DataError,
    Houston13Files,
    PatchDataset,
    SyntheticSceneConfig,
    class_spectra,
    extract_patches,
    fit_band_stats,
    generate_synthetic_scene,
    labelled_pixels,
    load_houston13,
    read_envi_roi,
    standardize_scene,
    stratified_validation_split,
    write_envi_roi,
    write_synthetic_houston13,
)

torch.set_num_threads(1)

ROI_TEXT = """; ENVI Output of ROIs (4.7) [Mon Jan 07 2013]
; Number of ROIs: 3
; File Dimension: 5 x 4
;
; ROI name: grass_healthy
; ROI rgb value: {0, 205, 0}
; ROI npts: 2
;
; ROI name: water
; ROI npts: 1
;
; ROI name: road
; ROI npts: 3
;    ID     X     Y   Map X   Map Y
     1     1     1   268000.0  3290000.0
     2     5     4   268010.0  3289992.5

     3     3     2   268005.0  3289997.5

     4     1     4   268000.0  3289992.5
     5     2     4   268002.5  3289992.5
     6     5     1   268010.0  3290000.0
"""


def test_read_envi_roi_one_based_coordinates(tmp_path: Path) -> None:
    path = tmp_path / "roi.txt"
    path.write_text(ROI_TEXT)
    labels, names = read_envi_roi(path, (4, 5))
    assert names == ["grass_healthy", "water", "road"]
    assert labels.shape == (4, 5) and labels.dtype == np.int64
    expected = np.zeros((4, 5), dtype=np.int64)
    expected[0, 0] = 1  # X=1, Y=1 -> row 0, column 0
    expected[3, 4] = 1  # X=5, Y=4 -> row 3, column 4
    expected[1, 2] = 2
    expected[3, 0] = expected[3, 1] = expected[0, 4] = 3
    np.testing.assert_array_equal(labels, expected)


def test_envi_roi_round_trip_with_empty_class(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, size=(7, 9))
    labels[labels == 2] = 0  # class 2 has no pixel: its block is empty
    write_envi_roi(tmp_path / "r.txt", labels, ["a", "b", "c"])
    back, names = read_envi_roi(tmp_path / "r.txt", labels.shape)
    np.testing.assert_array_equal(back, labels)
    assert names == ["a", "b", "c"]


@pytest.mark.parametrize("text, match", [
    (ROI_TEXT.replace("     6     5     1", "     6     6     1"), "outside"),
    (ROI_TEXT.replace("; Number of ROIs: 3", "; Number of ROIs: 4"), "Number of ROIs"),
    (ROI_TEXT.replace("; ROI npts: 1", "; ROI npts: 2"), "npts"),
    (ROI_TEXT.replace("; File Dimension: 5 x 4", "; File Dimension: 5 x 7"), "File Dimension"),
    (ROI_TEXT.replace("     3     3     2", "     3     x     2"), "ID X Y"),
])
def test_read_envi_roi_bad_input_names_the_file(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "bad_roi.txt"
    path.write_text(text)
    with pytest.raises(Houston13DataError, match=match) as info:
        read_envi_roi(path, (4, 5))
    assert "bad_roi.txt" in str(info.value)


def test_read_envi_roi_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        read_envi_roi(tmp_path / "nope.txt", (4, 5))


# -- scenes on disk ----------------------------------------------------------------------------------------------

def _write_tif(path: Path, data: np.ndarray, nodata: float | None = None, transform=None) -> Path:
    import rasterio
    from rasterio.transform import Affine

    data = np.asarray(data)
    with rasterio.open(path, "w", driver="GTiff", height=data.shape[1], width=data.shape[2], count=data.shape[0],
                       dtype=data.dtype.name, transform=transform or Affine(1, 0, 100, 0, -1, 100),
                       nodata=nodata) as dst:
        dst.write(data)
    return path


def _small_scene(rows: int = 12, cols: int = 14, bands: int = 144, n_classes: int = 15, seed: int = 0):
    rng = np.random.default_rng(seed)
    hsi = rng.integers(100, 5000, size=(bands, rows, cols)).astype(np.uint16)
    dsm = rng.normal(10, 2, size=(1, rows, cols)).astype(np.float32)
    flat = rng.permutation(rows * cols)
    train = np.zeros(rows * cols, np.int64)
    test = np.zeros(rows * cols, np.int64)
    for k in range(n_classes):
        train[flat[2 * k]] = k + 1
        test[flat[2 * n_classes + 3 * k: 2 * n_classes + 3 * k + 3]] = k + 1
    return hsi, dsm, train.reshape(rows, cols), test.reshape(rows, cols)


def test_geotiff_and_roi_scene(tmp_path: Path) -> None:
    hsi, dsm, train, test = _small_scene()
    files = Houston13Files(_write_tif(tmp_path / "h.tif", hsi), _write_tif(tmp_path / "l.tif", dsm),
                           tmp_path / "tr.txt", tmp_path / "va.txt")
    write_envi_roi(files.train, train, [f"roi {k}" for k in range(15)])
    write_envi_roi(files.test, test, [f"roi {k}" for k in range(15)])
    scene = load_houston13(files=files)
    np.testing.assert_allclose(scene.hsi, hsi.astype(np.float32))
    np.testing.assert_allclose(scene.lidar, dsm)
    np.testing.assert_array_equal(scene.train_labels, train)
    np.testing.assert_array_equal(scene.test_labels, test)
    assert scene.class_names == list(HOUSTON13_CLASSES)  # 15 classes: the real names
    assert scene.roi_names[0] == "roi 0"


def test_label_geotiffs_and_nodata(tmp_path: Path) -> None:
    hsi, dsm, train, test = _small_scene()
    dsm[0, 0, 0] = -9999.0
    (tmp_path / "d").mkdir()
    d = tmp_path / "d"
    _write_tif(d / "2013_IEEE_GRSS_DF_Contest_CASI.tif", hsi)
    _write_tif(d / "2013_IEEE_GRSS_DF_Contest_LiDAR.tif", dsm, nodata=-9999.0)
    _write_tif(d / "2013_IEEE_GRSS_DF_Contest_Samples_TR.tif", train[None].astype(np.uint8))
    _write_tif(d / "2013_IEEE_GRSS_DF_Contest_Samples_VA.tif", test[None].astype(np.uint8))
    scene = load_houston13(d)
    np.testing.assert_array_equal(scene.train_labels, train)
    assert scene.nodata_mask[0, 0] and scene.nodata_mask.sum() == 1
    stats = fit_band_stats(scene)
    _, lidar = standardize_scene(scene, stats)
    assert lidar[0, 0, 0] == 0.0  # nodata filled with the training mean
    valid_train = (train > 0) & ~scene.nodata_mask
    assert stats.lidar_mean[0] == pytest.approx(dsm[0][valid_train].mean(), rel=1e-5)


@pytest.mark.parametrize("hdf5", [False, True])
def test_matlab_scene(tmp_path: Path, hdf5: bool) -> None:
    hsi, dsm, train, test = _small_scene()
    arrays = {"HSI": np.moveaxis(hsi, 0, -1).astype(np.float64), "LiDAR": dsm[0].astype(np.float64),
              "TRLabel": train.astype(np.uint8), "TSLabel": test.astype(np.uint8)}
    for name, array in arrays.items():
        path = tmp_path / f"{name}.mat"
        if hdf5:  # MATLAB v7.3: HDF5 with the axes reversed
            import h5py

            with h5py.File(path, "w") as handle:
                handle.create_dataset(name, data=array.T)
        else:
            from scipy.io import savemat

            savemat(path, {name: array})
    scene = load_houston13(tmp_path)
    np.testing.assert_allclose(scene.hsi, hsi.astype(np.float32))
    np.testing.assert_allclose(scene.lidar, dsm)
    np.testing.assert_array_equal(scene.test_labels, test)


def _write_files(d: Path, hsi, dsm, train, test, names_tr=HOUSTON13_CLASSES, names_va=HOUSTON13_CLASSES) -> None:
    d.mkdir(exist_ok=True)
    _write_tif(d / "2013_IEEE_GRSS_DF_Contest_CASI.tif", hsi)
    _write_tif(d / "2013_IEEE_GRSS_DF_Contest_LiDAR.tif", dsm)
    write_envi_roi(d / "2013_IEEE_GRSS_DF_Contest_Samples_TR.txt", train, names_tr)
    write_envi_roi(d / "2013_IEEE_GRSS_DF_Contest_Samples_VA.txt", test, names_va)


def test_bad_inputs_name_the_file(tmp_path: Path) -> None:
    hsi, dsm, train, test = _small_scene()
    # different grids
    _write_files(tmp_path / "grid", hsi, dsm, train, test)
    _write_tif(tmp_path / "grid" / "2013_IEEE_GRSS_DF_Contest_LiDAR.tif", dsm[:, :-1])
    with pytest.raises(Houston13DataError, match="LiDAR.tif.*grid"):
        load_houston13(tmp_path / "grid")
    # same size, different georeferencing
    from rasterio.transform import Affine

    _write_files(tmp_path / "shifted", hsi, dsm, train, test)
    _write_tif(tmp_path / "shifted" / "2013_IEEE_GRSS_DF_Contest_LiDAR.tif", dsm,
               transform=Affine(1, 0, 50, 0, -1, 100))
    with pytest.raises(Houston13DataError, match="LiDAR.tif: geotransform"):
        load_houston13(tmp_path / "shifted")
    # wrong band count
    _write_files(tmp_path / "bands", hsi[:100], dsm, train, test)
    with pytest.raises(Houston13DataError, match="CASI.tif: expected 144 hyperspectral bands, got 100"):
        load_houston13(tmp_path / "bands")
    # class counts disagree between TR and VA
    test14 = np.where(test == 15, 0, test)
    _write_files(tmp_path / "classes", hsi, dsm, train, test14, names_va=HOUSTON13_CLASSES[:14])
    with pytest.raises(Houston13DataError, match="Samples_VA.txt: 14 ROIs.*has 15"):
        load_houston13(tmp_path / "classes")
    # non-finite values
    bad = dsm.copy()
    bad[0, 3, 4] = np.nan
    _write_files(tmp_path / "nan", hsi, bad, train, test)
    with pytest.raises(Houston13DataError, match="LiDAR.tif: 1 pixel.*non-finite.*row 3, column 4"):
        load_houston13(tmp_path / "nan")
    # missing file
    _write_files(tmp_path / "missing", hsi, dsm, train, test)
    (tmp_path / "missing" / "2013_IEEE_GRSS_DF_Contest_Samples_VA.txt").unlink()
    with pytest.raises(FileNotFoundError, match="missing: no test labels file"):
        load_houston13(tmp_path / "missing")
    # ROI outside the raster
    _write_files(tmp_path / "outside", hsi, dsm, train, test)
    roi = tmp_path / "outside" / "2013_IEEE_GRSS_DF_Contest_Samples_TR.txt"
    roi.write_text(roi.read_text().replace("; File Dimension: 14 x 12\n", "") + "\n 99 15 1\n")
    with pytest.raises(Houston13DataError, match="Samples_TR.txt"):
        load_houston13(tmp_path / "outside")


# -- patches and splits ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("patch_size", [1, 3, 7])
def test_patch_extraction_reflects_at_borders(patch_size: int) -> None:
    rng = np.random.default_rng(1)
    cube = rng.normal(size=(3, 6, 8)).astype(np.float32)
    half = patch_size // 2
    padded = np.pad(cube, ((0, 0), (half, half), (half, half)), mode="reflect")
    rows = np.array([0, 0, 5, 5, 2, 3])
    cols = np.array([0, 7, 0, 7, 3, 1])
    patches = extract_patches(cube, rows, cols, patch_size)
    assert patches.shape == (6, 3, patch_size, patch_size)
    for i, (r, c) in enumerate(zip(rows, cols)):
        np.testing.assert_array_equal(patches[i], padded[:, r:r + patch_size, c:c + patch_size])
        assert patches[i, :, half, half].tolist() == cube[:, r, c].tolist()  # centred on the pixel


def test_patch_dataset_single_and_batch() -> None:
    cube = np.arange(2 * 5 * 5, dtype=np.float32).reshape(2, 5, 5)
    lidar = cube[:1] * 2
    ds = PatchDataset(cube, lidar, np.array([0, 4]), np.array([1, 2]), np.array([3, 1]), patch_size=3)
    one = ds[1]
    assert one["hsi"].shape == (2, 3, 3) and int(one["target"]) == 1
    batch = ds[[0, 1]]
    assert batch["hsi"].shape == (2, 2, 3, 3) and batch["lidar"].shape == (2, 1, 3, 3)
    torch.testing.assert_close(batch["hsi"][1], one["hsi"])
    with pytest.raises(ValueError, match="odd"):
        PatchDataset(cube, lidar, np.array([0]), np.array([0]), patch_size=4)


def test_stratified_validation_split_uses_training_pixels_only() -> None:
    y = np.repeat(np.arange(5), [40, 20, 10, 10, 1])
    fit, val = stratified_validation_split(y, 0.2, seed=0)
    assert len(np.intersect1d(fit, val)) == 0 and len(fit) + len(val) == len(y)
    assert set(np.unique(y[fit])) == set(range(5))  # the singleton class stays in fitting
    assert np.bincount(y[val], minlength=5)[:4].tolist() == [8, 4, 2, 2]


# -- encoders ----------------------------------------------------------------------------------------------------

def test_cnn_dense_path_equals_patches() -> None:
    from pmrl_sci.registry import build_encoder

    torch.manual_seed(0)
    p = 7
    rng = np.random.default_rng(2)
    cube = rng.normal(size=(6, 9, 10)).astype(np.float32)
    for name, kwargs, data in (("hsi_cnn", {"in_bands": 6, "spectral_channels": 8, "spatial_channels": (8, 8)},
                                cube), ("lidar_cnn", {"spatial_channels": (4, 8)}, cube[:1])):
        encoder = build_encoder(name, embed_dim=16, patch_size=p, **kwargs).eval()
        padded = np.pad(data, ((0, 0), (p // 2, p // 2), (p // 2, p // 2)), mode="reflect")
        with torch.no_grad():
            dense = encoder.forward_dense(torch.from_numpy(padded)[None])[0]  # [16, 9, 10]
            rows, cols = np.nonzero(np.ones(data.shape[1:]))
            patches = torch.from_numpy(extract_patches(data, rows, cols, p))
            per_patch = encoder(patches)
        assert dense.shape == (16, 9, 10)
        torch.testing.assert_close(dense.permute(1, 2, 0).reshape(-1, 16), per_patch, rtol=1e-4, atol=1e-5)
        with pytest.raises(ValueError, match="patches"):
            encoder.check_input(torch.zeros(2, data.shape[0], p + 2, p + 2), "hsi")


# -- synthetic scene ---------------------------------------------------------------------------------------------

def test_synthetic_scene_is_deterministic_and_needs_both_modalities() -> None:
    cfg = SyntheticSceneConfig(rows=48, cols=96, seed=5)
    hsi, dsm, train, test = generate_synthetic_scene(cfg)
    hsi2, dsm2, *_ = generate_synthetic_scene(cfg)
    np.testing.assert_array_equal(hsi, hsi2)
    np.testing.assert_array_equal(dsm, dsm2)
    assert hsi.shape == (144, 48, 96) and hsi.dtype == np.uint16 and dsm.dtype == np.float32
    assert set(np.unique(train)) == set(range(16)) and set(np.unique(test)) == set(range(16))
    assert not ((train > 0) & (test > 0)).any()
    names = list(HOUSTON13_CLASSES)
    spectra = class_spectra()

    def spectral_gap(a: str, b: str) -> float:
        return float(np.linalg.norm(spectra[names.index(a)] - spectra[names.index(b)]) / np.linalg.norm(
            spectra[names.index(a)]))

    # spectrally close pairs (under the 6% cell and 4% pixel gain variability) ...
    assert spectral_gap("Healthy grass", "Stressed grass") < 0.06
    assert spectral_gap("Parking Lot 1", "Parking Lot 2") < 0.06
    assert spectral_gap("Residential", "Commercial") < 0.06
    # ... but far apart in height or texture
    labels = np.where(train > 0, train, test)

    from scipy.ndimage import median_filter

    roughness = np.abs(dsm - median_filter(dsm, size=3, mode="reflect"))  # local texture, not the ground trend

    def height(name: str, values: np.ndarray = dsm) -> np.ndarray:
        return values[labels == names.index(name) + 1]

    assert height("Commercial").mean() - height("Residential").mean() > 4.0
    assert height("Stressed grass", roughness).mean() > 2 * height("Healthy grass", roughness).mean()
    assert height("Healthy grass", roughness).mean() > 2 * height("Synthetic grass", roughness).mean()
    assert height("Parking Lot 2", roughness).mean() > 2 * height("Parking Lot 1", roughness).mean()
    # flat classes are told apart by spectrum only
    assert spectral_gap("Road", "Highway") > 0.3 and spectral_gap("Soil", "Water") > 0.3


def test_synthetic_files_load_with_real_readers(tmp_path: Path) -> None:
    files = write_synthetic_houston13(tmp_path, SyntheticSceneConfig(rows=32, cols=48, seed=1))
    scene = load_houston13(tmp_path)
    assert scene.files == files
    assert scene.hsi.shape == (144, 32, 48) and scene.lidar.shape == (1, 32, 48)
    assert scene.class_names == list(HOUSTON13_CLASSES) and scene.roi_names == list(HOUSTON13_CLASSES)
    rows, cols, y = labelled_pixels(scene.train_labels)
    assert y.min() == 0 and y.max() == 14


# -- metrics -----------------------------------------------------------------------------------------------------

def test_multiclass_metrics_match_scikit_learn() -> None:
    from sklearn.metrics import accuracy_score, cohen_kappa_score, recall_score

    from pmrl_sci.metrics import multiclass_metrics

    rng = np.random.default_rng(3)
    y = rng.integers(0, 15, 500)
    pred = np.where(rng.random(500) < 0.6, y, rng.integers(0, 15, 500))
    m = multiclass_metrics(y, pred, list(HOUSTON13_CLASSES))
    assert m["oa"] == pytest.approx(accuracy_score(y, pred))
    assert m["kappa"] == pytest.approx(cohen_kappa_score(y, pred))
    recall = recall_score(y, pred, average=None, labels=list(range(15)))
    assert [m["per_class"][c] for c in HOUSTON13_CLASSES] == pytest.approx(recall.tolist())
    assert m["aa"] == pytest.approx(recall.mean())

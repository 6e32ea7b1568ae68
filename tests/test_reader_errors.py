"""Bad data files raise InputError naming the file and the problem: retrieval manifests and Houston 2013 readers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.io import wavfile

from pmrl_sci.data.houston13 import load_houston13, read_envi_roi, read_hsi, write_envi_roi
from pmrl_sci.data.manifest import LoadOptions, load_manifest_data, read_manifest, write_manifest
from pmrl_sci.errors import InputError


def _png(path: Path, rgb: tuple[int, int, int] = (200, 10, 10)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((6, 6, 3), rgb, np.uint8)).save(path)
    return path


# -- manifests ---------------------------------------------------------------------------------------------------

def test_missing_and_corrupt_image_name_the_row_column_and_file(tmp_path: Path) -> None:
    _png(tmp_path / "a.png")
    (tmp_path / "broken.png").write_bytes(_png(tmp_path / "b.png").read_bytes()[:40])  # a cut PNG
    path = write_manifest([{"vision": "a.png", "caption": "red"}, {"vision": "gone.png", "caption": "x"}],
                          tmp_path / "m.jsonl")
    with pytest.raises(InputError, match=r"m\.jsonl, row 2, column 'vision': file .*gone\.png does not exist"):
        read_manifest(path)
    path = write_manifest([{"vision": "a.png", "caption": "red"}, {"vision": "broken.png", "caption": "x"}],
                          tmp_path / "m.jsonl")
    with pytest.raises(InputError, match=r"m\.jsonl, row 2, column 'vision': cannot read image .*broken\.png"):
        load_manifest_data(read_manifest(path))


def test_audio_sample_rate_and_empty_audio(tmp_path: Path) -> None:
    wavfile.write(tmp_path / "ok.wav", 16000, np.zeros(400, np.int16))
    wavfile.write(tmp_path / "fast.wav", 44100, np.zeros(400, np.int16))
    wavfile.write(tmp_path / "empty.wav", 16000, np.zeros(0, np.int16))
    for name, match in (("fast.wav", r"row 2, column 'audio': audio .*fast\.wav is sampled at 44100 Hz; the audio "
                                     r"encoder takes 16000 Hz"),
                        ("empty.wav", r"row 2, column 'audio': audio .*empty\.wav: the file holds no samples")):
        path = write_manifest([{"audio": "ok.wav", "text": "a"}, {"audio": name, "text": "b"}], tmp_path / "m.csv")
        with pytest.raises(InputError, match=match):
            load_manifest_data(read_manifest(path), LoadOptions(sample_rate=16000))


def test_missing_manifest_columns_and_ragged_csv(tmp_path: Path) -> None:
    _png(tmp_path / "a.png")
    path = tmp_path / "m.csv"
    path.write_text("vision,caption\na.png,red\n")
    with pytest.raises(InputError, match=r"m\.csv: no column for modalities \['audio'\]; columns are "
                                         r"\['vision', 'caption'\]"):
        read_manifest(path, modalities=["vision", "audio"])
    path.write_text("vision,caption,label\na.png,red,cat\na.png,red\n")
    with pytest.raises(InputError, match=r"m\.csv, line 3: 2 cells, the header has 3"):
        read_manifest(path)
    path.write_text("vision,caption,label\na.png,red,cat,extra\n")
    with pytest.raises(InputError, match=r"m\.csv, line 2: 4 cells, the header has 3"):
        read_manifest(path)
    path.write_text("vision,,label\na.png,red,cat\n")
    with pytest.raises(InputError, match=r"m\.csv, line 1: header cell\(s\) \[2\] are blank"):
        read_manifest(path)
    path.write_text("vision,caption,label\na.png,,\n")  # a missing modality's blank cell keeps its comma: fine
    assert read_manifest(path).missing_counts()["caption"] == 1


def test_a_row_repeated_in_train_and_test_is_refused(tmp_path: Path) -> None:
    for name in ("a", "b", "c"):
        _png(tmp_path / f"{name}.png")
    rows = [{"id": "1", "vision": "a.png", "caption": "red", "split": "train"},
            {"id": "2", "vision": "b.png", "caption": "red", "split": "train"},
            {"id": "3", "vision": "c.png", "caption": "blue", "split": "test"},
            {"id": "4", "vision": "a.png", "caption": "red", "split": "test"}]
    path = write_manifest(rows, tmp_path / "m.jsonl")
    with pytest.raises(InputError, match=r"m\.jsonl: rows 1, 4 are the same instance \(vision='.*a\.png', "
                                         r"caption='red'\) but sit in different split parts \['test', 'train'\]"):
        read_manifest(path)
    # the same repeat inside one part, or with no split column, is kept and grouped for the splitter
    rows[3]["split"] = "train"
    manifest = read_manifest(write_manifest(rows, tmp_path / "m.jsonl"))
    assert manifest.duplicates == [[0, 3]] and manifest.row_groups().tolist() == [0, 1, 2, 0]
    unsplit = read_manifest(write_manifest([{k: v for k, v in r.items() if k != "split"} for r in rows],
                                           tmp_path / "u.jsonl"))
    assert unsplit.duplicates == [[0, 3]]
    data = load_manifest_data(unsplit, LoadOptions(image_size=4))
    assert data.groups.tolist() == [0, 1, 2, 0] and data.subset([3, 2]).groups.tolist() == [0, 2]
    # same image, other caption: a different instance (COCO-style captions), not a repeat
    assert read_manifest(write_manifest([rows[0], {**rows[1], "vision": "a.png", "caption": "a red square"}],
                                        tmp_path / "v.jsonl")
                         ).duplicates == []


# -- Houston 2013 ------------------------------------------------------------------------------------------------

def _tif(path: Path, data: np.ndarray) -> Path:
    import rasterio
    from rasterio.transform import Affine

    with rasterio.open(path, "w", driver="GTiff", height=data.shape[1], width=data.shape[2], count=data.shape[0],
                       dtype=data.dtype.name, transform=Affine(1, 0, 100, 0, -1, 100)) as dst:
        dst.write(data)
    return path


def test_empty_or_header_only_roi_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "roi.txt"
    path.write_text("")
    with pytest.raises(InputError, match=r"roi\.txt: no 'ID X Y' rows: an empty or header-only ROI export"):
        read_envi_roi(path, (4, 5))
    write_envi_roi(path, np.zeros((4, 5), np.int64), ["grass", "water"])  # header, no pixel
    with pytest.raises(InputError, match=r"roi\.txt: no 'ID X Y' rows.*declares 2 ROIs"):
        read_envi_roi(path, (4, 5))


def test_out_of_range_roi_coordinates(tmp_path: Path) -> None:
    labels = np.zeros((4, 5), np.int64)
    labels[1, 2] = 1
    path = tmp_path / "roi.txt"
    write_envi_roi(path, labels, ["grass"])
    path.write_text(path.read_text().replace("; File Dimension: 5 x 4\n", "").replace("     3     2", "     9     2"))
    with pytest.raises(InputError, match=r"roi\.txt: ROI 1 \(grass\) has 1 point\(s\) outside the 4 x 5 raster, "
                                         r"e\.g\. ID 1 at X=9, Y=2"):
        read_envi_roi(path, (4, 5))


def test_corrupt_and_wrong_band_rasters(tmp_path: Path) -> None:
    broken = tmp_path / "2013_IEEE_GRSS_DF_Contest_CASI.tif"
    broken.write_bytes(b"II*\x00 this is not a GeoTIFF")
    with pytest.raises(InputError, match=r"CASI\.tif: not a readable raster"):
        read_hsi(broken)
    broken.unlink()
    _tif(broken, np.ones((3, 4, 5), np.float32))
    with pytest.raises(InputError, match=r"CASI\.tif: expected 144 hyperspectral bands, got 3"):
        read_hsi(broken)


def test_scene_rasters_that_do_not_match(tmp_path: Path) -> None:
    labels = np.zeros((4, 5), np.int64)
    labels[0, 0], labels[1, 1] = 1, 2
    test = np.zeros((4, 5), np.int64)
    test[2, 2], test[3, 3] = 1, 2
    folder = tmp_path / "scene"
    folder.mkdir()
    _tif(folder / "HSI.tif", np.ones((6, 4, 5), np.float32))
    _tif(folder / "LiDAR.tif", np.ones((2, 4, 5), np.float32))
    _tif(folder / "TRLabel.tif", labels[None].astype(np.uint8))
    _tif(folder / "TSLabel.tif", test[None, :3].astype(np.uint8))
    with pytest.raises(InputError, match=r"LiDAR\.tif: expected a one-band DSM, got 2 bands"):
        load_houston13(folder, n_bands=6)
    _tif(folder / "LiDAR.tif", np.ones((1, 4, 5), np.float32))
    with pytest.raises(InputError, match=r"TSLabel\.tif: label raster is 3 x 5 \(rows x columns\), expected the "
                                         r"rasters' 4 x 5"):
        load_houston13(folder, n_bands=6)
    _tif(folder / "TSLabel.tif", test[None].astype(np.uint8))
    assert load_houston13(folder, n_bands=6).hsi.shape == (6, 4, 5)

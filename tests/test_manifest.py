"""Manifest reading (missing modalities, bad input) and the NYUDv2 / TVL readers on small files written here."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
from PIL import Image
from scipy.io import savemat, wavfile

from pmrl_sci.data.manifest import (
    LoadOptions,
    load_manifest_data,
    load_wav,
    read_manifest,
    write_manifest,
)
from pmrl_sci.data.nyudv2 import nyudv2_to_manifest
from pmrl_sci.data.tvl import clean_caption, tvl_to_manifest
from pmrl_sci.errors import InputError


def _png(path, rgb, size=(10, 8)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), rgb, np.uint8)).save(path)


def _media(tmp_path):
    _png(tmp_path / "img" / "a.png", (255, 0, 0))
    _png(tmp_path / "img" / "b.png", (0, 255, 0))
    for t in range(3):
        _png(tmp_path / "vid" / f"f{t}.png", (t * 100, 0, 0))
    np.save(tmp_path / "d.npy", np.full((6, 6), 2.5, np.float32))
    depth_png = np.full((6, 6), 1500, np.uint16)
    Image.fromarray(depth_png).save(tmp_path / "d.png")
    wavfile.write(tmp_path / "a.wav", 8000, (np.sin(np.arange(800) / 5) * 16000).astype(np.int16))
    np.save(tmp_path / "f.npy", np.arange(5, dtype=np.float32))


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_manifest_with_missing_modalities(tmp_path, suffix) -> None:
    _media(tmp_path)
    rows = [
        {"id": "x", "vision": "img/a.png", "video": "vid", "depth": "d.npy", "audio": "a.wav",
         "video_features": "f.npy", "caption": "a red thing", "label": "red", "split": "train"},
        {"id": "y", "vision": "img/b.png", "video": None, "depth": "d.png", "audio": None,
         "video_features": "f.npy", "caption": "", "label": "green", "split": "TEST"},
    ]
    path = write_manifest(rows, tmp_path / f"m{suffix}")
    manifest = read_manifest(path)
    assert manifest.modalities == ["vision", "video", "depth", "audio", "video_features", "caption"]
    assert manifest.kinds["video_features"] == "features" and manifest.kinds["caption"] == "text"
    assert manifest.missing_counts() == {"vision": 0, "video": 1, "depth": 0, "audio": 1, "video_features": 0,
                                         "caption": 1, "rows_with_missing": 1}
    assert manifest.splits == ["train", "test"] and manifest.split_indices("test") == [1]
    data = load_manifest_data(manifest, LoadOptions(image_size=4, num_frames=2, sample_rate=8000, num_samples=1000))
    assert data.arrays["vision"].shape == (2, 3, 4, 4)
    np.testing.assert_allclose(data.arrays["vision"][0, 0], 1.0)  # red channel of the red image
    assert data.arrays["video"].shape == (2, 2, 3, 4, 4) and np.all(data.arrays["video"][1] == 0)
    np.testing.assert_allclose(data.arrays["depth"][0], 2.5)
    np.testing.assert_allclose(data.arrays["depth"][1], 1.5)  # millimetre PNG to metres
    assert data.arrays["audio"].shape == (2, 1000) and np.all(data.arrays["audio"][0, 800:] == 0)
    assert data.arrays["caption"] == ["a red thing", ""]
    assert data.mask.tolist() == [[True] * 6, [True, False, True, False, True, False]]
    batch, mask = data.batch([1])
    assert batch["vision"].shape == (1, 3, 4, 4) and mask.shape == (1, 6) and batch["caption"] == [""]
    sub = manifest.select(["vision", "caption"]).subset([1])
    assert sub.modalities == ["vision", "caption"] and sub.ids == ["y"]


def test_manifest_bad_input_is_named(tmp_path) -> None:
    _media(tmp_path)
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps({"vision": "img/a.png", "smell": "x"}) + "\n")
    with pytest.raises(InputError, match=r"m\.jsonl.*'smell'.*not a known modality"):
        read_manifest(path)
    assert read_manifest(path, kinds={"smell": "text"}).kinds["smell"] == "text"
    path.write_text(json.dumps({"vision": "img/missing.png"}) + "\n")
    with pytest.raises(InputError, match=r"row 1, column 'vision'.*missing\.png"):
        read_manifest(path)
    with pytest.raises(FileNotFoundError, match="nothing.jsonl"):
        read_manifest(tmp_path / "nothing.jsonl")
    path.write_text(json.dumps({"audio": "a.wav"}) + "\n")
    with pytest.raises(InputError, match=r"a\.wav is sampled at 8000 Hz.*16000 Hz"):
        load_manifest_data(read_manifest(path), LoadOptions(sample_rate=16000))
    path.write_text(json.dumps({"vision": "img/a.png"}) + "\n")
    with pytest.raises(InputError, match="no column for modalities"):
        read_manifest(path, modalities=["audio"])
    (tmp_path / "bad.png").write_text("not an image")
    path.write_text(json.dumps({"vision": "bad.png"}) + "\n")
    with pytest.raises(InputError, match=r"cannot read image .*bad\.png"):
        load_manifest_data(read_manifest(path))


def test_load_wav_formats(tmp_path) -> None:
    stereo = np.stack([np.full(100, 0.5), np.full(100, -0.25)], axis=1).astype(np.float32)
    wavfile.write(tmp_path / "s.wav", 8000, stereo)
    np.testing.assert_allclose(load_wav(tmp_path / "s.wav", 8000), 0.125)
    wavfile.write(tmp_path / "i.wav", 8000, np.full(10, -32768, np.int16))
    np.testing.assert_allclose(load_wav(tmp_path / "i.wav", 8000, num_samples=4), -1.0)


def _write_nyu(tmp_path, n=5):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(n, 3, 8, 6), dtype=np.uint8)  # [N, 3, W, H] as h5py sees MATLAB data
    depths = rng.uniform(0.5, 9.0, size=(n, 8, 6)).astype(np.float32)
    names = ["bedroom", "living_room", "kitchen", "bedroom", "office"][:n]
    with h5py.File(tmp_path / "nyu.mat", "w") as f:
        f["images"] = images
        f["depths"] = depths
        refs = f.create_group("#refs#")
        ref_list = []
        for i, name in enumerate(names):
            refs[str(i)] = np.array([[ord(c)] for c in name], dtype=np.uint16)
            ref_list.append(refs[str(i)].ref)
        f.create_dataset("sceneTypes", data=np.array([ref_list], dtype=h5py.ref_dtype))
    savemat(tmp_path / "splits.mat", {"trainNdxs": np.array([[1], [3], [4]]), "testNdxs": np.array([[2], [5]])})
    return images, depths


def test_nyudv2_reader(tmp_path) -> None:
    images, depths = _write_nyu(tmp_path)
    path = nyudv2_to_manifest(tmp_path / "nyu.mat", tmp_path / "out", tmp_path / "splits.mat")
    manifest = read_manifest(path)
    assert manifest.modalities == ["vision", "depth", "text"]
    assert manifest.splits == ["train", "test", "train", "train", "test"]
    assert manifest.labels[1] == "living room" and manifest.values["text"][0] == "bedroom"
    rgb = np.asarray(Image.open(manifest.values["vision"][2]))
    np.testing.assert_array_equal(rgb, images[2].transpose(2, 1, 0))  # [H, W, 3]
    np.testing.assert_allclose(np.load(manifest.values["depth"][4]), depths[4].T)
    data = load_manifest_data(manifest, LoadOptions(image_size=6))
    assert data.arrays["depth"].shape == (5, 1, 6, 6)


def test_nyudv2_reader_errors(tmp_path) -> None:
    _write_nyu(tmp_path)
    savemat(tmp_path / "bad_splits.mat", {"trainNdxs": np.array([[1], [9]]), "testNdxs": np.array([[2]])})
    with pytest.raises(InputError, match=r"bad_splits\.mat.*'trainNdxs'.*\[1, 5\]"):
        nyudv2_to_manifest(tmp_path / "nyu.mat", tmp_path / "o1", tmp_path / "bad_splits.mat")
    savemat(tmp_path / "no_test.mat", {"trainNdxs": np.array([[1]])})
    with pytest.raises(InputError, match="'testNdxs' is missing"):
        nyudv2_to_manifest(tmp_path / "nyu.mat", tmp_path / "o2", tmp_path / "no_test.mat")
    with h5py.File(tmp_path / "nodepth.mat", "w") as f:
        f["images"] = np.zeros((1, 3, 4, 4), np.uint8)
    with pytest.raises(InputError, match=r"nodepth\.mat.*'depths' is missing"):
        nyudv2_to_manifest(tmp_path / "nodepth.mat", tmp_path / "o3")
    with pytest.raises(FileNotFoundError, match="absent.mat"):
        nyudv2_to_manifest(tmp_path / "absent.mat", tmp_path / "o4")


def test_tvl_reader(tmp_path) -> None:
    root = tmp_path / "tvl_dataset"
    (root / "hct" / "data1").mkdir(parents=True)
    (root / "ssvtp").mkdir(parents=True)
    _png(root / "hct" / "data1" / "0-1" / "vision" / "1.jpg", (10, 20, 30))
    _png(root / "hct" / "data1" / "0-1" / "tactile" / "1.jpg", (30, 20, 10))
    (root / "hct" / "data1" / "test.csv").write_text(
        'url,tactile,caption\n0-1/vision/1.jpg,0-1/tactile/1.jpg,"Smooth, hard, cold.\r\n"\n')
    _png(root / "ssvtp" / "images_rgb" / "image_0_rgb.jpg", (1, 2, 3))
    _png(root / "ssvtp" / "images_tac" / "image_0_tac.jpg", (3, 2, 1))
    (root / "ssvtp" / "test.csv").write_text("url,caption\nimages_rgb/image_0_rgb.jpg,\"soft,fuzzy\"\n")
    path = tvl_to_manifest(root, "test", out_path=tmp_path / "tvl_test.jsonl")
    manifest = read_manifest(path)
    assert manifest.modalities == ["vision", "touch", "text"]
    assert manifest.values["text"] == ["soft, fuzzy", "Smooth, hard, cold"]
    assert manifest.values["touch"][0].endswith("images_tac/image_0_tac.jpg")
    assert manifest.splits == ["test", "test"]
    assert clean_caption("a,\nb , c.") == "a, b, c"
    (root / "hct" / "data1" / "test.csv").write_text("url,tactile,caption\n0-1/vision/9.jpg,0-1/tactile/1.jpg,x\n")
    with pytest.raises(InputError, match=r"test\.csv, row 2: vision image .*9\.jpg"):
        tvl_to_manifest(root, "test", out_path=tmp_path / "t2.jsonl")
    blank = read_manifest(tvl_to_manifest(root, "test", out_path=tmp_path / "t3.jsonl", missing_files="blank"))
    assert blank.missing_counts()["vision"] == 1
    with pytest.raises(FileNotFoundError, match="no train.csv"):
        tvl_to_manifest(root, "train")

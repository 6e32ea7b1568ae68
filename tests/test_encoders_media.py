"""Vision, depth, touch, audio and feature encoders on tiny inputs; the log-mel against a NumPy reference."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pmrl_sci.encoders.audio import AudioEncoder, LogMelSpectrogram, mel_filterbank
from pmrl_sci.encoders.depth import DepthEncoder
from pmrl_sci.encoders.features import FeatureEncoder
from pmrl_sci.encoders.touch import TouchEncoder
from pmrl_sci.encoders.vision import VisionEncoder
from pmrl_sci.registry import build_encoder

torch.set_num_threads(1)


def _check_trains(encoder: torch.nn.Module, x: torch.Tensor, embed_dim: int) -> None:
    encoder.check_input(x, "m")
    out = encoder(x)
    assert out.shape == (x.shape[0], embed_dim)
    assert torch.isfinite(out).all()
    out.square().sum().backward()
    grads = [p.grad for p in encoder.parameters() if p.requires_grad]
    assert grads and all(g is not None for g in grads)
    assert any(float(g.abs().sum()) > 0 for g in grads)


@pytest.mark.parametrize("name", ["vision", "depth", "touch", "audio"])
def test_registered(name: str) -> None:
    encoder = build_encoder(name, embed_dim=8)
    assert encoder.embed_dim == 8


def test_vision_cnn_image_and_video() -> None:
    torch.manual_seed(0)
    encoder = VisionEncoder(embed_dim=16, width=4, num_blocks=2)
    _check_trains(encoder, torch.rand(3, 3, 20, 20), 16)
    encoder.zero_grad()
    video = torch.rand(2, 4, 3, 16, 16)
    _check_trains(encoder, video, 16)
    # frames are encoded one by one and averaged: the order of frames does not matter
    encoder.eval()
    with torch.no_grad():
        assert torch.allclose(encoder(video), encoder(video.flip(1)), atol=1e-5)


def test_vision_rejects_bad_inputs() -> None:
    encoder = VisionEncoder(embed_dim=8, width=4, num_blocks=1, image_size=16)
    with pytest.raises(ValueError, match="'img'.*16x16"):
        encoder.check_input(torch.rand(2, 3, 20, 20), "img")
    with pytest.raises(ValueError, match="channels|3"):
        encoder.check_input(torch.rand(2, 1, 16, 16), "img")
    with pytest.raises(ValueError, match="floating-point"):
        encoder.check_input(torch.zeros(2, 3, 16, 16, dtype=torch.uint8), "img")


def test_vision_transformers_model_from_local_path(tmp_path) -> None:
    from transformers import ViTConfig, ViTModel

    config = ViTConfig(image_size=16, patch_size=8, num_channels=3, hidden_size=16, num_hidden_layers=1,
                       num_attention_heads=2, intermediate_size=24)
    torch.manual_seed(0)
    ViTModel(config).save_pretrained(tmp_path / "vit")
    (tmp_path / "vit" / "preprocessor_config.json").write_text(
        json.dumps({"image_mean": [0.4, 0.4, 0.4], "image_std": [0.2, 0.2, 0.2]}))
    frozen = VisionEncoder(embed_dim=8, model_name_or_path=str(tmp_path / "vit"))
    assert frozen.backbone.out_features == 16
    _check_trains(frozen, torch.rand(2, 3, 24, 24), 8)  # resized to 16x16 inside
    assert all(p.grad is None for p in frozen.backbone.parameters())  # frozen backbone
    tuned = VisionEncoder(embed_dim=8, model_name_or_path=str(tmp_path / "vit"), trainable_backbone=True)
    _check_trains(tuned, torch.rand(2, 2, 3, 16, 16), 8)
    assert any(p.grad is not None for p in tuned.backbone.parameters())
    with pytest.raises(FileNotFoundError, match="config.json"):
        VisionEncoder(model_name_or_path=str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="channels"):
        VisionEncoder(in_channels=1, model_name_or_path=str(tmp_path / "vit"))


def test_depth_cnn_and_vision_backbone() -> None:
    torch.manual_seed(0)
    depth = torch.rand(2, 1, 16, 16) * 5.0
    depth[0, 0, 0, 0] = float("nan")  # missing depth pixels do not poison the output
    _check_trains(DepthEncoder(embed_dim=8, width=4, num_blocks=2), depth, 8)
    _check_trains(DepthEncoder(embed_dim=8, width=4, num_blocks=2, backbone="vision"), depth, 8)
    with pytest.raises(ValueError, match="depth maps"):
        DepthEncoder(embed_dim=8).check_input(torch.rand(2, 3, 16, 16), "depth")
    with pytest.raises(ValueError, match="backbone"):
        DepthEncoder(backbone="resnet")


def test_touch_removes_background_tint() -> None:
    torch.manual_seed(0)
    encoder = TouchEncoder(embed_dim=8, width=4, num_blocks=2)
    x = torch.rand(2, 3, 16, 16)
    _check_trains(encoder, x, 8)
    encoder.eval()
    with torch.no_grad():  # a constant per-channel tint (another sensor) does not change the embedding
        assert torch.allclose(encoder(x), encoder(x + torch.tensor([0.1, -0.05, 0.2]).view(1, 3, 1, 1)), atol=1e-5)


def test_features_projection() -> None:
    encoder = FeatureEncoder(in_features=12, embed_dim=6, hidden_dim=10)
    _check_trains(encoder, torch.randn(4, 12), 6)
    _check_trains(encoder, torch.randn(4, 5, 12), 6)
    with pytest.raises(ValueError, match="12"):
        encoder.check_input(torch.randn(4, 11), "features")


def _numpy_log_mel(x: np.ndarray, sr: int, n_fft: int, hop: int, n_mels: int) -> np.ndarray:
    """Independent reference: reflect padding, periodic Hann, rfft power, HTK triangles."""
    padded = np.pad(x, n_fft // 2, mode="reflect")
    n_frames = 1 + (len(padded) - n_fft) // hop
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)
    frames = np.stack([padded[t * hop: t * hop + n_fft] * window for t in range(n_frames)])
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2  # [frames, freqs]
    mel = lambda f: 2595 * np.log10(1 + f / 700)  # noqa: E731
    hz = lambda m: 700 * (10 ** (m / 2595) - 1)  # noqa: E731
    edges = hz(np.linspace(mel(0.0), mel(sr / 2), n_mels + 2))
    freqs = np.linspace(0, sr / 2, n_fft // 2 + 1)
    fb = np.zeros((len(freqs), n_mels))
    for m in range(n_mels):
        lo, c, hi = edges[m], edges[m + 1], edges[m + 2]
        for i, f in enumerate(freqs):
            if lo <= f <= c:
                fb[i, m] = (f - lo) / (c - lo)
            elif c < f <= hi:
                fb[i, m] = (hi - f) / (hi - c)
    return np.log(power @ fb + 1e-6).T  # [mels, frames]


def test_log_mel_matches_numpy_reference() -> None:
    rng = np.random.default_rng(0)
    sr, n_fft, hop, n_mels = 8000, 256, 80, 20
    t = np.arange(2000) / sr
    x = (0.5 * np.sin(2 * np.pi * 440 * t) + 0.1 * rng.standard_normal(t.size)).astype(np.float32)
    reference = _numpy_log_mel(x.astype(np.float64), sr, n_fft, hop, n_mels)
    ours = LogMelSpectrogram(sr, n_fft, hop, n_mels)(torch.from_numpy(x)[None])[0].numpy()
    assert ours.shape == reference.shape == (n_mels, 2000 // hop + 1)
    np.testing.assert_allclose(ours, reference, atol=2e-3, rtol=1e-3)
    # a 440 Hz tone peaks in the mel band containing 440 Hz
    fb = mel_filterbank(n_mels, n_fft, sr).numpy()
    assert np.argmax(ours.mean(axis=1)) == np.argmax(fb[round(440 / (sr / n_fft))])


def test_mel_filterbank_rejects_band_above_nyquist() -> None:
    with pytest.raises(ValueError, match="half the sample rate"):
        mel_filterbank(10, 256, 8000, f_max=6000)


def test_audio_cnn() -> None:
    torch.manual_seed(0)
    encoder = AudioEncoder(embed_dim=8, sample_rate=8000, n_mels=16, width=4, num_blocks=2)
    _check_trains(encoder, torch.randn(2, 4000), 8)
    with pytest.raises(ValueError, match="too short"):
        encoder.check_input(torch.randn(2, 50), "audio")
    with pytest.raises(ValueError, match="4000"):
        AudioEncoder(embed_dim=8, sample_rate=8000, num_samples=4000).check_input(torch.randn(2, 3000), "audio")


def test_audio_spectrogram_transformer_from_local_path(tmp_path) -> None:
    from transformers import ASTConfig, ASTModel

    config = ASTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=24,
                       patch_size=16, frequency_stride=8, time_stride=8, max_length=32, num_mel_bins=16)
    torch.manual_seed(0)
    ASTModel(config).save_pretrained(tmp_path / "ast")
    (tmp_path / "ast" / "preprocessor_config.json").write_text(json.dumps({"sampling_rate": 8000}))
    encoder = AudioEncoder(embed_dim=8, sample_rate=8000, model_name_or_path=str(tmp_path / "ast"),
                           trainable_backbone=True)
    _check_trains(encoder, torch.randn(2, 2000), 8)
    assert any(p.grad is not None for p in encoder.backbone.parameters())
    with pytest.raises(ValueError, match="8000 Hz"):
        AudioEncoder(sample_rate=16000, model_name_or_path=str(tmp_path / "ast"))

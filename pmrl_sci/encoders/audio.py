"""Audio encoder: mono waveform -> log-mel (computed with torch) -> a CNN, or a local ``transformers`` model.

The log-mel uses :func:`torch.stft` (Hann window, centred frames with reflect padding), the power
spectrum, and a triangular HTK-scale mel filterbank built here (no torchaudio). A ``transformers``
audio model is loaded from a local directory only: spectrogram models with ``num_mel_bins`` in their
config (the Audio Spectrogram Transformer) get this log-mel, padded or cropped to ``max_length``
frames; raw-waveform models (wav2vec 2.0, HuBERT, ...) get the normalised waveform.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pmrl_sci.encoders.base import Encoder, InputSpec, pooled_output
from pmrl_sci.encoders.vision import ConvBackbone
from pmrl_sci.extras import require
from pmrl_sci.registry import register_encoder


def hz_to_mel(frequency: torch.Tensor | float) -> torch.Tensor:
    """HTK mel scale: ``2595 log10(1 + f / 700)``."""
    return 2595.0 * torch.log10(1.0 + torch.as_tensor(frequency, dtype=torch.float64) / 700.0)


def mel_to_hz(mel: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`hz_to_mel`."""
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


def mel_filterbank(n_mels: int, n_fft: int, sample_rate: int, f_min: float = 0.0,
                   f_max: float | None = None) -> torch.Tensor:
    """Triangular mel filterbank ``[n_fft // 2 + 1, n_mels]`` (float32, unnormalised peaks of 1).

    Filter ``m`` rises linearly from mel point ``m`` to ``m + 1`` and falls to ``m + 2``, where the
    ``n_mels + 2`` points are equally spaced on the HTK mel scale between ``f_min`` and ``f_max``.

    Raises
    ------
    ValueError
        When the band is empty or above the Nyquist frequency.
    """
    f_max = sample_rate / 2.0 if f_max is None else float(f_max)
    if not 0.0 <= f_min < f_max <= sample_rate / 2.0:
        raise ValueError(f"mel band [{f_min}, {f_max}] Hz must lie within [0, {sample_rate / 2}] Hz "
                         f"(half the sample rate {sample_rate})")
    if n_mels < 1 or n_fft < 2:
        raise ValueError(f"need n_mels >= 1 and n_fft >= 2, got n_mels={n_mels}, n_fft={n_fft}")
    bin_hz = torch.linspace(0.0, sample_rate / 2.0, n_fft // 2 + 1, dtype=torch.float64)
    points = mel_to_hz(torch.linspace(float(hz_to_mel(f_min)), float(hz_to_mel(f_max)), n_mels + 2,
                                      dtype=torch.float64))
    lower, centre, upper = points[:-2], points[1:-1], points[2:]
    rising = (bin_hz[:, None] - lower[None]) / (centre - lower)[None]
    falling = (upper[None] - bin_hz[:, None]) / (upper - centre)[None]
    return torch.clamp(torch.minimum(rising, falling), min=0.0).to(torch.float32)


class LogMelSpectrogram(nn.Module):
    """``log(mel power + eps)`` of mono waveforms ``[batch, samples]`` -> ``[batch, n_mels, frames]``.

    Parameters
    ----------
    sample_rate : int
        Sample rate of the input in Hz.
    n_fft : int
        FFT size (= window length).
    hop_length : int
        Hop between frames in samples.
    n_mels : int
        Mel bands.
    f_min, f_max : float
        Band edges in Hz (``f_max`` defaults to half the sample rate).
    eps : float
        Added before the logarithm.
    """

    def __init__(self, sample_rate: int = 16000, n_fft: int = 400, hop_length: int = 160, n_mels: int = 64,
                 f_min: float = 0.0, f_max: float | None = None, eps: float = 1e-6) -> None:
        super().__init__()
        if sample_rate <= 0:
            raise ValueError(f"sample_rate must be positive, got {sample_rate}")
        self.sample_rate = int(sample_rate)
        self.n_fft = int(n_fft)
        self.hop_length = int(hop_length)
        self.n_mels = int(n_mels)
        self.eps = float(eps)
        self.register_buffer("window", torch.hann_window(self.n_fft, periodic=True), persistent=False)
        self.register_buffer("filterbank", mel_filterbank(n_mels, n_fft, sample_rate, f_min, f_max),
                             persistent=False)

    def num_frames(self, num_samples: int) -> int:
        """Frames produced for ``num_samples`` samples (centred framing)."""
        return num_samples // self.hop_length + 1

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        """Log-mel spectrogram ``[batch, n_mels, frames]`` (computed in float32)."""
        if waveform.shape[-1] <= self.n_fft // 2:
            raise ValueError(f"waveforms of {waveform.shape[-1]} samples are too short for n_fft={self.n_fft} "
                             f"(need more than {self.n_fft // 2})")
        spectrum = torch.stft(waveform.float(), self.n_fft, self.hop_length, self.n_fft, self.window, center=True,
                              pad_mode="reflect", return_complex=True)
        power = spectrum.real.square() + spectrum.imag.square()
        mel = torch.einsum("fm,bft->bmt", self.filterbank, power)
        return torch.log(mel + self.eps)


def _read_feature_config(path: Path) -> dict[str, Any]:
    config = path / "preprocessor_config.json"
    return json.loads(config.read_text(encoding="utf-8")) if config.is_file() else {}


class HFAudioBackbone(nn.Module):
    """A ``transformers`` audio model from a local directory, returning one vector per clip.

    Parameters
    ----------
    path : str or path-like
        Directory saved with ``save_pretrained`` (``config.json``, weights, optionally ``preprocessor_config.json``).
    sample_rate : int
        Sample rate of the waveforms given to :meth:`forward`; must equal the model's ``sampling_rate``
        when ``preprocessor_config.json`` declares one.
    """

    def __init__(self, path: str | os.PathLike[str], sample_rate: int) -> None:
        super().__init__()
        require("transformers", "text", "a Hugging Face audio backbone")
        from transformers import AutoConfig, AutoModel

        directory = Path(path).expanduser()
        if not (directory / "config.json").is_file():
            raise FileNotFoundError(f"audio model directory {directory} has no config.json: expected a Hugging Face "
                                    "model saved with save_pretrained() (models are loaded from disk only)")
        config = AutoConfig.from_pretrained(directory, local_files_only=True)
        self.model = AutoModel.from_pretrained(directory, local_files_only=True)
        features = _read_feature_config(directory)
        expected_rate = features.get("sampling_rate")
        if expected_rate is not None and int(expected_rate) != int(sample_rate):
            raise ValueError(f"audio model {directory} expects {expected_rate} Hz audio "
                             f"(preprocessor_config.json sampling_rate), the encoder was given "
                             f"sample_rate={sample_rate}")
        self.out_features = int(config.hidden_size)
        main_input = getattr(self.model, "main_input_name", "input_values")
        self.spectrogram_input = hasattr(config, "num_mel_bins")
        if main_input != "input_values":
            raise NotImplementedError(f"audio model {directory} ({type(self.model).__name__}) takes {main_input!r}; "
                                      "supported are spectrogram models with num_mel_bins (AST) and raw-waveform "
                                      "models taking 'input_values' (wav2vec 2.0, HuBERT, ...)")
        if self.spectrogram_input:
            self.max_length = int(getattr(config, "max_length", 1024))
            # Kaldi-style 25 ms windows, 10 ms hop, as the AST feature extractor
            self.logmel = LogMelSpectrogram(sample_rate, n_fft=int(round(0.025 * sample_rate)),
                                            hop_length=int(round(0.010 * sample_rate)),
                                            n_mels=int(config.num_mel_bins))
            self.norm_mean = float(features.get("mean", -4.2677393))
            self.norm_std = float(features.get("std", 4.5689974))
            self.normalise = bool(features.get("do_normalize", True))
        else:
            self.logmel = None
            self.normalise = bool(features.get("do_normalize", True))

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        """Map ``[batch, samples]`` to ``[batch, hidden]``."""
        if self.logmel is not None:
            spec = self.logmel(waveform).transpose(1, 2)  # [batch, frames, mels]
            frames = spec.shape[1]
            if frames < self.max_length:
                spec = F.pad(spec, (0, 0, 0, self.max_length - frames))
            spec = spec[:, : self.max_length]
            if self.normalise:
                spec = (spec - self.norm_mean) / (2.0 * self.norm_std)
            output = self.model(input_values=spec)
        else:
            x = waveform.float()
            if self.normalise:
                x = (x - x.mean(dim=-1, keepdim=True)) / torch.sqrt(x.var(dim=-1, keepdim=True) + 1e-7)
            output = self.model(input_values=x)
        return pooled_output(output)


@register_encoder("audio")
class AudioEncoder(Encoder):
    """Mono waveforms ``[batch, samples]`` to ``[batch, embed_dim]``.

    Parameters
    ----------
    embed_dim : int
        Output dimension.
    sample_rate : int
        Sample rate of the waveforms (Hz); files at another rate are rejected when loading.
    num_samples : int, optional
        Required clip length in samples; ``None`` accepts any length.
    n_fft, hop_length, n_mels : int
        Log-mel settings for the CNN (``n_fft`` defaults to 25 ms, ``hop_length`` to 10 ms).
    width, num_blocks : int
        CNN size.
    model_name_or_path : str, optional
        Local ``transformers`` audio model replacing the log-mel CNN.
    trainable_backbone : bool
        Fine-tune that model.
    """

    def __init__(self, embed_dim: int = 128, sample_rate: int = 16000, num_samples: int | None = None,
                 n_fft: int | None = None, hop_length: int | None = None, n_mels: int = 64, width: int = 32,
                 num_blocks: int = 3, model_name_or_path: str | None = None, trainable_backbone: bool = False) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.sample_rate = int(sample_rate)
        self.num_samples = num_samples
        self.trainable_backbone = trainable_backbone or model_name_or_path is None
        if model_name_or_path is None:
            n_fft = n_fft or 2 ** math.ceil(math.log2(0.025 * sample_rate))
            hop_length = hop_length or max(1, int(round(0.010 * sample_rate)))
            self.logmel = LogMelSpectrogram(sample_rate, n_fft, hop_length, n_mels)
            self.backbone: nn.Module = ConvBackbone(1, width, num_blocks)
        else:
            self.logmel = None
            self.backbone = HFAudioBackbone(model_name_or_path, sample_rate)
            for parameter in self.backbone.parameters():
                parameter.requires_grad_(trainable_backbone)
        length = "samples" if num_samples is None else num_samples
        self.input_spec = InputSpec("tensor", (length,), "float",
                                    f"mono waveforms [batch, {length}] at {self.sample_rate} Hz")
        self.projection = nn.Linear(self.backbone.out_features, embed_dim)

    def check_input(self, value: Any, modality: str = "input") -> None:
        """Validate ``[B, samples]`` float waveforms (and the length when ``num_samples`` is set)."""
        self.input_spec.check(value, modality)
        minimum = self.logmel.n_fft // 2 + 1 if self.logmel is not None else 1
        if value.shape[-1] < minimum:
            raise ValueError(f"modality {modality!r}: waveforms of {value.shape[-1]} samples are too short "
                             f"(at least {minimum} at {self.sample_rate} Hz)")

    def spectrogram(self, waveform: torch.Tensor) -> torch.Tensor:
        """Per-clip standardised log-mel ``[batch, 1, n_mels, frames]`` (CNN mode only)."""
        if self.logmel is None:
            raise RuntimeError("spectrogram() is for the log-mel CNN; this encoder uses a transformers model")
        spec = self.logmel(waveform)
        mean = spec.mean(dim=(1, 2), keepdim=True)
        std = spec.std(dim=(1, 2), keepdim=True).clamp_min(1e-3)
        return ((spec - mean) / std).unsqueeze(1)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        """Encode ``[B, samples]`` waveforms to ``[B, embed_dim]``."""
        if self.logmel is not None:
            return self.projection(self.backbone(self.spectrogram(waveform)))
        if self.trainable_backbone:
            return self.projection(self.backbone(waveform))
        self.backbone.eval()
        with torch.no_grad():
            features = self.backbone(waveform)
        return self.projection(features)

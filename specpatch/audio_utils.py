# Copyright 2025 The specpatch authors.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""
Small audio helpers shared by the feature extractor, the pipeline and the training scripts.

Layout convention used everywhere in specpatch: **time is the last axis** and multi-channel audio is
**channels-first**, i.e. a mono clip is `(samples,)`, a multi-channel clip is `(channels, samples)` and a batch of
multi-channel clips is `(batch, channels, samples)`. `soundfile` returns `(samples, channels)`; pass
`channels_last=True` to [`to_mono`] for that layout (nothing here guesses the layout from the shape).

Decoding uses `soundfile` (libsndfile: wav, flac, ogg/vorbis, opus, mp3 with libsndfile >= 1.1) and falls back to
`torchcodec` (FFmpeg libraries, no `ffmpeg` binary) for anything else; resampling uses `soxr`. These optional
libraries are imported lazily so that importing specpatch never requires them.
"""

from __future__ import annotations

import io
import os

import numpy as np
import torch

ArrayLike = np.ndarray | torch.Tensor


def _is_tensor(x) -> bool:
    return isinstance(x, torch.Tensor)


def validate_waveform(x: ArrayLike, name: str = "waveform", allowed_ndim: tuple[int, ...] = (1, 2)) -> ArrayLike:
    """
    Checks that `x` is usable audio and raises a `ValueError` saying what was expected otherwise.

    Checks, in order: `x` is a numpy array or torch tensor of a real numeric dtype (float or integer, not bool or
    complex), its number of dimensions is in `allowed_ndim`, it is not empty (no axis of size 0), and every value is
    finite (no NaN or +-inf).

    Args:
        x (`np.ndarray` or `torch.Tensor`):
            The audio. With the default `allowed_ndim=(1, 2)`: `(samples,)` mono or `(channels, samples)`.
        name (`str`, *optional*, defaults to `"waveform"`):
            Name used in the error messages.
        allowed_ndim (`tuple[int]`, *optional*, defaults to `(1, 2)`):
            Accepted numbers of dimensions (callers that take batches pass e.g. `(1, 2, 3)`).

    Returns:
        `x`, unchanged.
    """
    if _is_tensor(x):
        if x.is_complex() or x.dtype == torch.bool:
            raise ValueError(f"`{name}` must hold real numbers (float or integer samples), got dtype {x.dtype}.")
    elif isinstance(x, np.ndarray):
        if x.dtype == np.bool_ or not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
            raise ValueError(f"`{name}` must hold real numbers (float or integer samples), got dtype {x.dtype}.")
    else:
        raise ValueError(f"`{name}` must be a numpy array or a torch tensor, got {type(x).__name__}.")

    if x.ndim not in allowed_ndim:
        raise ValueError(
            f"`{name}` must have {' or '.join(str(n) for n in allowed_ndim)} dimensions (time last, channels first: "
            f"(samples,), (channels, samples), ...), got shape {tuple(x.shape)}."
        )
    if any(int(s) == 0 for s in x.shape):
        raise ValueError(f"`{name}` is empty (shape {tuple(x.shape)}); expected at least one sample.")

    is_float = x.is_floating_point() if _is_tensor(x) else np.issubdtype(x.dtype, np.floating)
    if is_float and not _all_finite(x):
        raise ValueError(f"`{name}` contains NaN or infinite values; expected finite audio samples.")
    return x


def _all_finite(x: ArrayLike) -> bool:
    # min / max propagate NaN and expose +-inf, without allocating a mask. CPU tensors are checked through numpy
    # (single-threaded, no intra-op synchronisation per clip).
    if _is_tensor(x) and x.device.type == "cpu" and x.dtype in (torch.float16, torch.float32, torch.float64):
        x = x.detach().numpy()
    if _is_tensor(x):
        low, high = torch.aminmax(x)
        return bool(torch.isfinite(low) & torch.isfinite(high))
    return bool(np.isfinite(x.min()) and np.isfinite(x.max()))


def to_mono(x: ArrayLike, channels_last: bool = False) -> ArrayLike:
    """
    Downmixes multi-channel audio to mono by averaging the channels.

    Args:
        x (`np.ndarray` or `torch.Tensor`):
            `(samples,)` (returned unchanged), or audio with a channel axis: channels-first `(..., channels, samples)`
            by default (specpatch's convention), or `(..., samples, channels)` when `channels_last=True` (the layout
            `soundfile.read` returns).
        channels_last (`bool`, *optional*, defaults to `False`):
            Whether the channel axis is the last axis instead of the one before it.

    Returns:
        The same type as `x` (torch tensors stay on their device), shape `(..., samples)`. Integer input is averaged
        in float32 (values are not rescaled).
    """
    if x.ndim < 1:
        raise ValueError(f"to_mono expects audio with at least one dimension, got shape {tuple(x.shape)}.")
    if x.ndim == 1:
        return x
    axis = -1 if channels_last else -2
    if _is_tensor(x):
        if not x.is_floating_point():
            x = x.to(torch.float32)
        return x.mean(dim=axis)
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float32)
    return x.mean(axis=axis, dtype=x.dtype)


def resample(x: ArrayLike, orig_sr: float, target_sr: float, quality: str = "HQ") -> ArrayLike:
    """
    Resamples audio along its last (time) axis with `soxr` (high-quality band-limited resampling).

    Args:
        x (`np.ndarray` or `torch.Tensor`):
            Audio of shape `(..., samples)` (any leading axes, e.g. channels or batch, are resampled independently).
            Torch tensors are moved to the CPU for soxr and the result is returned as a tensor on the input's device.
        orig_sr (`float`):
            Sampling rate of `x` in Hz.
        target_sr (`float`):
            Wanted sampling rate in Hz.
        quality (`str`, *optional*, defaults to `"HQ"`):
            soxr quality preset (`"QQ"`, `"LQ"`, `"MQ"`, `"HQ"`, `"VHQ"`).

    Returns:
        Resampled audio of the same type, float dtype (float64 stays float64, anything else becomes float32), shape
        `(..., round(samples * target_sr / orig_sr))`.
    """
    if orig_sr is None or target_sr is None or not orig_sr > 0 or not target_sr > 0:
        raise ValueError(f"Sampling rates must be positive numbers, got orig_sr={orig_sr}, target_sr={target_sr}.")
    if orig_sr == target_sr:
        return x
    try:
        import soxr
    except ImportError as err:  # pragma: no cover - soxr is a declared dependency
        raise ImportError("Resampling needs the `soxr` package: `pip install soxr`.") from err

    is_tensor = _is_tensor(x)
    device = x.device if is_tensor else None
    array = x.detach().cpu().numpy() if is_tensor else np.asarray(x)
    if array.ndim < 1 or array.shape[-1] == 0:
        raise ValueError(f"Cannot resample empty audio of shape {array.shape}.")
    if array.dtype != np.float64:
        array = array.astype(np.float32, copy=False)

    # soxr takes (frames, channels): put every leading axis into the channel axis.
    lead_shape = array.shape[:-1]
    flat = array.reshape(-1, array.shape[-1]).T
    out = soxr.resample(np.ascontiguousarray(flat), orig_sr, target_sr, quality=quality)
    out = np.ascontiguousarray(out.T).reshape(*lead_shape, -1)
    if is_tensor:
        return torch.from_numpy(out).to(device)
    return out


def _decode_soundfile(source) -> tuple[np.ndarray, int]:
    import soundfile as sf

    # always_2d gives (samples, channels) even for mono files.
    data, sr = sf.read(source, dtype="float32", always_2d=True)
    return np.ascontiguousarray(data.T), int(sr)


def _decode_torchcodec(source) -> tuple[np.ndarray, int]:
    from torchcodec.decoders import AudioDecoder

    samples = AudioDecoder(source).get_all_samples()
    # torchcodec already returns channels-first float32.
    return samples.data.to(torch.float32).numpy(), int(samples.sample_rate)


def load_audio(
    path_or_bytes: str | os.PathLike | bytes | bytearray | io.IOBase,
    sampling_rate: int | None = None,
    mono: bool = True,
) -> tuple[np.ndarray, int]:
    """
    Decodes an audio file (wav, flac, ogg, mp3, ...) to a float32 numpy array without the `ffmpeg` binary.

    `soundfile` (libsndfile) is tried first; if it cannot read the data, `torchcodec.decoders.AudioDecoder` (which
    links the FFmpeg libraries) is tried. The samples are returned as decoded (floats in [-1, 1] for PCM files).

    Args:
        path_or_bytes (`str`, `os.PathLike`, `bytes` or a binary file object):
            The encoded audio.
        sampling_rate (`int`, *optional*):
            If given and different from the file's rate, the audio is resampled to it with [`resample`].
        mono (`bool`, *optional*, defaults to `True`):
            Whether to downmix to mono (`(samples,)`); otherwise the result is channels-first `(channels, samples)`.

    Returns:
        `tuple(np.ndarray, int)`: the float32 audio and its sampling rate (`sampling_rate` when given).
    """
    if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
        payload = bytes(path_or_bytes)
        if len(payload) == 0:
            raise ValueError("load_audio got empty bytes; expected an encoded audio file.")

        def make_source():
            return io.BytesIO(payload)

        tc_source = payload
        label = f"<{len(payload)} bytes>"
    elif isinstance(path_or_bytes, (str, os.PathLike)):
        path = os.fspath(path_or_bytes)
        if not os.path.isfile(path):
            raise ValueError(f"load_audio: no such file: {path!r}.")

        def make_source():
            return path

        tc_source = path
        label = repr(path)
    elif hasattr(path_or_bytes, "read"):
        payload = path_or_bytes.read()
        return load_audio(payload, sampling_rate=sampling_rate, mono=mono)
    else:
        raise ValueError(
            f"load_audio expects a file path, bytes or a binary file object, got {type(path_or_bytes).__name__}."
        )

    errors = []
    audio = sr = None
    try:
        audio, sr = _decode_soundfile(make_source())
    except Exception as err:  # libsndfile raises several error types for unknown formats
        errors.append(f"soundfile: {err}")
        try:
            audio, sr = _decode_torchcodec(tc_source)
        except Exception as err2:  # noqa: BLE001 - report both decoders' reasons together
            errors.append(f"torchcodec: {err2}")
    if audio is None:
        raise ValueError(f"Could not decode audio from {label}. " + " | ".join(errors))

    validate_waveform(audio, name=f"decoded audio from {label}")
    if mono:
        audio = to_mono(audio)
    if sampling_rate is not None and sampling_rate != sr:
        audio = resample(audio, sr, sampling_rate)
        sr = int(sampling_rate)
    return np.ascontiguousarray(audio, dtype=np.float32), sr


__all__ = ["validate_waveform", "to_mono", "resample", "load_audio"]

"""Tests for specpatch.audio_utils: validation, downmix, soxr resampling and decoding."""

import io

import numpy as np
import pytest
import soundfile as sf
import torch

from specpatch import audio_utils
from specpatch.audio_utils import load_audio, resample, to_mono, validate_waveform


def _sine(freq, sr, seconds, amplitude=0.5):
    t = np.arange(int(sr * seconds)) / sr
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


# --------------------------------------------------------------------------------------------------------------------
# validate_waveform


@pytest.mark.parametrize("make", [np.asarray, torch.as_tensor])
def test_validate_accepts_float_and_int_audio(make):
    for x in (np.zeros(10, np.float32), np.zeros((2, 10), np.float64), np.zeros(10, np.int16)):
        x = make(x)
        assert validate_waveform(x) is x


@pytest.mark.parametrize("make", [np.asarray, torch.as_tensor])
@pytest.mark.parametrize(
    "bad, message",
    [
        (np.zeros(0, np.float32), "empty"),
        (np.zeros((2, 0), np.float32), "empty"),
        (np.array([0.0, np.nan], np.float32), "NaN or infinite"),
        (np.array([0.0, np.inf], np.float32), "NaN or infinite"),
        (np.array([-np.inf, 1.0]), "NaN or infinite"),
        (np.zeros((1, 2, 3), np.float32), "dimensions"),
        (np.zeros((), np.float32), "dimensions"),
        (np.zeros(4, bool), "real numbers"),
        (np.zeros(4, np.complex64), "real numbers"),
    ],
)
def test_validate_rejects_bad_audio(make, bad, message):
    with pytest.raises(ValueError, match=message):
        validate_waveform(make(bad), name="clip")


def test_validate_rejects_non_arrays_and_names_the_argument():
    with pytest.raises(ValueError, match="numpy array or a torch tensor"):
        validate_waveform([0.1, 0.2])
    with pytest.raises(ValueError, match="`my_audio`"):
        validate_waveform(np.array(["a", "b"]), name="my_audio")
    # allowed_ndim widens the accepted shapes
    validate_waveform(np.zeros((1, 2, 3), np.float32), allowed_ndim=(3,))


# --------------------------------------------------------------------------------------------------------------------
# to_mono


def test_to_mono_channels_first_and_last():
    rng = np.random.default_rng(0)
    stereo = rng.standard_normal((2, 50)).astype(np.float32)
    np.testing.assert_allclose(to_mono(stereo), 0.5 * (stereo[0] + stereo[1]), rtol=1e-6)
    np.testing.assert_allclose(to_mono(stereo.T, channels_last=True), to_mono(stereo), rtol=1e-6)
    mono = stereo[0]
    assert to_mono(mono) is mono
    batch = rng.standard_normal((3, 4, 20))  # (batch, channels, samples)
    np.testing.assert_allclose(to_mono(batch), batch.mean(axis=1))


def test_to_mono_torch_and_int():
    x = torch.tensor([[1, 3], [3, 5]], dtype=torch.int16)
    y = to_mono(x)
    assert isinstance(y, torch.Tensor) and y.dtype == torch.float32
    torch.testing.assert_close(y, torch.tensor([2.0, 4.0]))
    z = to_mono(np.array([[1, 2], [2, 4]], dtype=np.int32))
    assert z.dtype == np.float32
    np.testing.assert_array_equal(z, [1.5, 3.0])


# --------------------------------------------------------------------------------------------------------------------
# resample


def test_resample_sine_matches_analytic_signal():
    orig_sr, target_sr, freq = 22050, 16000, 1000.0
    x = _sine(freq, orig_sr, 1.0)
    y = resample(x, orig_sr, target_sr)
    assert isinstance(y, np.ndarray) and y.dtype == np.float32
    assert y.shape == (round(len(x) * target_sr / orig_sr),)
    expected = _sine(freq, target_sr, len(y) / target_sr)
    middle = slice(200, len(y) - 200)  # away from the filter's edge effects
    np.testing.assert_allclose(y[middle], expected[middle], atol=2e-3)


def test_resample_leading_axes_and_torch():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 4410)).astype(np.float32)
    y = resample(x, 44100, 16000)
    assert y.shape == (2, 3, 1600)
    np.testing.assert_allclose(y[1, 2], resample(x[1, 2], 44100, 16000), atol=1e-6)

    t = torch.from_numpy(x[0])
    yt = resample(t, 44100, 16000)
    assert isinstance(yt, torch.Tensor) and yt.device == t.device
    np.testing.assert_allclose(yt.numpy(), y[0], atol=1e-6)

    assert resample(x, 16000, 16000) is x
    assert resample(x.astype(np.float64), 44100, 16000).dtype == np.float64
    with pytest.raises(ValueError, match="positive"):
        resample(x, 0, 16000)


# --------------------------------------------------------------------------------------------------------------------
# load_audio


@pytest.mark.parametrize("fmt, subtype, ext, atol", [("WAV", "PCM_16", "wav", 1e-4), ("FLAC", None, "flac", 1e-4)])
def test_load_audio_lossless_roundtrip(tmp_path, fmt, subtype, ext, atol):
    rng = np.random.default_rng(2)
    stereo = (0.3 * rng.standard_normal((2, 8000))).clip(-1, 1).astype(np.float32)
    path = tmp_path / f"clip.{ext}"
    sf.write(path, stereo.T, 8000, format=fmt, subtype=subtype)  # soundfile writes (samples, channels)

    audio, sr = load_audio(path, mono=False)
    assert sr == 8000 and audio.dtype == np.float32 and audio.shape == (2, 8000)
    np.testing.assert_allclose(audio, stereo, atol=atol)

    mono, _ = load_audio(str(path))
    np.testing.assert_allclose(mono, stereo.mean(axis=0), atol=atol)

    from_bytes, _ = load_audio(path.read_bytes())
    np.testing.assert_array_equal(from_bytes, mono)
    with open(path, "rb") as handle:
        np.testing.assert_array_equal(load_audio(handle)[0], mono)


def test_load_audio_resamples(tmp_path):
    x = _sine(440.0, 22050, 0.5)
    path = tmp_path / "tone.wav"
    sf.write(path, x, 22050, subtype="FLOAT")
    audio, sr = load_audio(path, sampling_rate=16000)
    assert sr == 16000
    np.testing.assert_allclose(audio, resample(x, 22050, 16000), atol=1e-6)


@pytest.mark.parametrize("fmt, subtype, ext", [("OGG", "VORBIS", "ogg"), ("MP3", "MPEG_LAYER_III", "mp3")])
def test_load_audio_lossy_formats(tmp_path, fmt, subtype, ext):
    if fmt not in sf.available_formats():
        pytest.skip(f"libsndfile here cannot write {fmt}")
    x = _sine(440.0, 16000, 1.0)
    buffer = io.BytesIO()
    sf.write(buffer, x, 16000, format=fmt, subtype=subtype)
    audio, sr = load_audio(buffer.getvalue())
    assert sr == 16000 and audio.ndim == 1
    # Lossy codecs add a delay / padding; compare the tone's spectrum peak instead of samples.
    assert abs(len(audio) - len(x)) < 3000
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
    peak_hz = np.argmax(spectrum) * sr / len(audio)
    assert abs(peak_hz - 440.0) < 5.0


def test_load_audio_falls_back_to_torchcodec(tmp_path, monkeypatch):
    try:
        from torchcodec.decoders import AudioDecoder  # noqa: F401
    except Exception as err:  # ImportError, or FFmpeg libraries missing
        pytest.skip(f"torchcodec unavailable: {err}")
    x = _sine(300.0, 16000, 0.25)
    path = tmp_path / "clip.wav"
    sf.write(path, x, 16000, subtype="FLOAT")

    def refuse(_source):
        raise RuntimeError("soundfile refused")

    monkeypatch.setattr(audio_utils, "_decode_soundfile", refuse)
    audio, sr = load_audio(path)
    assert sr == 16000
    np.testing.assert_allclose(audio, x, atol=1e-6)
    audio, _ = load_audio(path.read_bytes())
    np.testing.assert_allclose(audio, x, atol=1e-6)


def test_load_audio_errors(tmp_path):
    with pytest.raises(ValueError, match="no such file"):
        load_audio(tmp_path / "missing.wav")
    with pytest.raises(ValueError, match="empty bytes"):
        load_audio(b"")
    with pytest.raises(ValueError, match="Could not decode"):
        load_audio(b"this is not audio at all" * 10)
    with pytest.raises(ValueError, match="file path, bytes"):
        load_audio(12345)

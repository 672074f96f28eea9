"""Tests for SpecPatchFeatureExtractor: parity with transformers' ASTFeatureExtractor (kaldi front end), a slow numpy
reference for the AaPE log-mel front end, input layouts, padding, resampling, errors and serialisation."""

import json
import warnings

import numpy as np
import pytest
import torch
from transformers import ASTFeatureExtractor
from transformers.audio_utils import spectrogram, window_function
from transformers.testing_utils import CaptureLogger
from transformers.utils import logging as hf_logging

from specpatch import cpu_kernels
from specpatch.audio_utils import resample
from specpatch.feature_extraction_specpatch import SpecPatchFeatureExtractor

SR = 16000
# Samples giving exactly 1024 kaldi frames (snip_edges): 1 + (n - 400) // 160 == 1024.
EXACT_1024 = 1023 * 160 + 400


def _noise(n, seed):
    return (0.1 * np.random.default_rng(seed).standard_normal(n)).astype(np.float32)


def _tonal(n, seed):
    """Two tones, a chirp and a faint noise floor (-60 dB), amplitude below 1."""
    t = np.arange(n) / SR
    x = 0.4 * np.sin(2 * np.pi * 440.0 * t) + 0.2 * np.sin(2 * np.pi * 3150.0 * t + 1.0)
    x += 0.2 * np.sin(2 * np.pi * (200.0 * t + 300.0 * t**2))
    x += 1e-3 * np.random.default_rng(seed).standard_normal(n)
    return x.astype(np.float32)


@pytest.fixture(scope="module")
def ast_extractor():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # transformers warns about AST's (empty) lowest kaldi mel filter
        return ASTFeatureExtractor()


def _ast_features(extractor, clip):
    return extractor(clip, sampling_rate=SR, return_tensors="np")["input_values"][0]


# --------------------------------------------------------------------------------------------------------------------
# kaldi front end == ASTFeatureExtractor


@pytest.mark.parametrize("signal", [_noise, _tonal])
@pytest.mark.parametrize("num_samples", [SR, EXACT_1024, 12 * SR + 77])
def test_kaldi_matches_ast_feature_extractor(ast_extractor, signal, num_samples):
    clip = signal(num_samples, seed=num_samples)
    ours = SpecPatchFeatureExtractor()(clip, sampling_rate=SR, return_tensors="np")["input_values"]
    expected = _ast_features(ast_extractor, clip)
    assert ours.shape == (1, 1024, 128) and ours.dtype == np.float32
    np.testing.assert_allclose(ours[0], expected, atol=1e-3, rtol=0)


def test_kaldi_batch_of_variable_lengths_matches_ast_per_clip(ast_extractor):
    clips = [_noise(SR // 2, 0), _tonal(3 * SR + 5, 1), _noise(401, 2), _tonal(7 * SR, 3)]
    extractor = SpecPatchFeatureExtractor(max_length=600)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ast_short = ASTFeatureExtractor(max_length=600)
    ours = extractor(clips, sampling_rate=SR, return_tensors="np", return_attention_mask=True)
    assert ours["input_values"].shape == (4, 600, 128)
    for i, clip in enumerate(clips):
        np.testing.assert_allclose(ours["input_values"][i], _ast_features(ast_short, clip), atol=1e-3, rtol=0)
    frames = [min(600, 1 + (len(c) - 400) // 160) for c in clips]
    np.testing.assert_array_equal(ours["attention_mask"].sum(axis=1), frames)


def test_kaldi_matches_ast_on_full_scale_pure_tone(ast_extractor):
    # An int16-scale pure tone: its far mel bands lie ~140 dB below the tone, where a float32 FFT's rounding would
    # change the log by up to 0.1; the front end's float64 FFT keeps them equal to the float64 numpy reference.
    t = np.arange(2 * SR) / SR
    clip = (32767 * np.sin(2 * np.pi * 1234.5 * t)).astype(np.float32)
    ours = SpecPatchFeatureExtractor()(clip, sampling_rate=SR)["input_values"]
    np.testing.assert_allclose(ours[0], _ast_features(ast_extractor, clip), atol=1e-4, rtol=0)


def test_padding_then_normalisation_like_ast():
    extractor = SpecPatchFeatureExtractor(max_length=200)
    features = extractor(_noise(SR // 2, 4), sampling_rate=SR)["input_values"][0]
    valid = 1 + (SR // 2 - 400) // 160
    # AST pads the log-mel with zeros and normalises afterwards.
    pad = (0.0 - extractor.mean) / (2 * extractor.std)
    np.testing.assert_allclose(features[valid:], pad, rtol=1e-6)
    assert np.abs(features[:valid] - pad).max() > 0.1
    raw = SpecPatchFeatureExtractor(max_length=200, do_normalize=False, padding_value=-3.0)
    raw_features = raw(_noise(SR // 2, 4), sampling_rate=SR)["input_values"][0]
    np.testing.assert_array_equal(raw_features[valid:], -3.0)
    np.testing.assert_allclose(
        raw_features[:valid] * 1.0, features[:valid] * 2 * extractor.std + extractor.mean, atol=1e-4
    )


def test_max_length_override_and_truncation():
    extractor = SpecPatchFeatureExtractor(max_length=300)
    clip = _noise(4 * SR, 5)
    full = extractor(clip, sampling_rate=SR)["input_values"]
    short = extractor(clip, sampling_rate=SR, max_length=50)["input_values"]
    assert full.shape == (1, 300, 128) and short.shape == (1, 50, 128)
    np.testing.assert_allclose(short[0], full[0, :50], atol=1e-6)


# --------------------------------------------------------------------------------------------------------------------
# logmel front end == slow numpy reference


def _logmel_reference(extractor, clip):
    """transformers' per-frame numpy STFT, configured like torch.stft(center=True) / torchaudio MelSpectrogram."""
    window = window_function(400, "hann", periodic=True, frame_length=1024, center=True)
    power = spectrogram(
        clip.astype(np.float64),
        window,
        frame_length=1024,
        hop_length=160,
        fft_length=1024,
        power=2.0,
        center=True,
        pad_mode="reflect",
        mel_filters=extractor.mel_filters(),
        mel_floor=0.0,
        dtype=np.float64,
    ).T
    log_mel = np.log(power + extractor.log_eps)
    frames = np.zeros((extractor.max_length, extractor.num_mel_bins))
    n = min(len(log_mel), extractor.max_length)
    frames[:n] = log_mel[:n]
    return (frames - extractor.mean) / extractor.std


def test_logmel_matches_numpy_reference():
    extractor = SpecPatchFeatureExtractor(frontend="logmel", max_length=160)
    assert (extractor.n_fft, extractor.win_length, extractor.hop_length, extractor.f_min) == (1024, 400, 160, 0.0)
    # Shorter than max_length (with a clip of a different length in the same batch: per-clip reflect padding),
    # exactly max_length frames, and longer.
    clips = [_noise(SR // 2 + 37, 6), _tonal(159 * 160, 7), _tonal(2 * SR, 8), _noise(600, 9)]
    ours = extractor(clips, sampling_rate=SR, return_tensors="np", return_attention_mask=True)
    for i, clip in enumerate(clips):
        np.testing.assert_allclose(ours["input_values"][i], _logmel_reference(extractor, clip), atol=1e-3, rtol=0)
    np.testing.assert_array_equal(ours["attention_mask"].sum(axis=1), [51, 160, 160, 4])


def test_logmel_defaults_and_normalisation():
    logmel = SpecPatchFeatureExtractor(frontend="logmel")
    kaldi = SpecPatchFeatureExtractor()
    assert (kaldi.mean, kaldi.std) == (-4.2677393, 4.5689974)
    assert logmel.normalization_scale == logmel.std and kaldi.normalization_scale == 2 * kaldi.std
    assert logmel.mel_filters().shape == (513, 128) and kaldi.mel_filters().shape == (257, 128)


def test_compute_normalization_stats_standardises():
    extractor = SpecPatchFeatureExtractor(frontend="logmel", max_length=100)
    clips = [_noise(SR // 4 + 160 * i, i) * (i + 1) for i in range(5)] + [_tonal(SR // 3, 9)]
    stats = extractor.compute_normalization_stats(clips, sampling_rate=SR, batch_size=4)
    extractor.mean, extractor.std = stats["mean"], stats["std"]
    out = extractor(clips, sampling_rate=SR, return_attention_mask=True, max_length=200)
    mask = out["attention_mask"].astype(bool)
    values = out["input_values"][mask]
    assert abs(values.mean()) < 1e-4 and abs(values.std() - 1.0) < 1e-4


# --------------------------------------------------------------------------------------------------------------------
# Input layouts, devices, resampling


def test_input_layouts_agree():
    extractor = SpecPatchFeatureExtractor(max_length=120)
    rng = np.random.default_rng(10)
    batch = (0.1 * rng.standard_normal((3, 2, SR))).astype(np.float32)  # (batch, channels, samples)
    mono = batch.mean(axis=1)

    reference = extractor(list(mono), sampling_rate=SR)["input_values"]
    from_2d = extractor(mono, sampling_rate=SR)["input_values"]
    from_3d = extractor(batch, sampling_rate=SR)["input_values"]
    from_channels_first_items = extractor(list(batch), sampling_rate=SR)["input_values"]
    single = extractor(mono[1], sampling_rate=SR)["input_values"]
    from_floats = extractor(mono[2].tolist(), sampling_rate=SR)["input_values"]
    assert reference.shape == (3, 120, 128)
    np.testing.assert_allclose(from_2d, reference, atol=1e-5)
    np.testing.assert_allclose(from_3d, reference, atol=1e-5)
    np.testing.assert_allclose(from_channels_first_items, reference, atol=1e-5)
    np.testing.assert_allclose(single[0], reference[1], atol=1e-5)
    np.testing.assert_allclose(from_floats[0], reference[2], atol=1e-5)


def test_return_types_follow_input_and_return_tensors():
    extractor = SpecPatchFeatureExtractor(max_length=64)
    clip = _noise(SR, 11)
    assert isinstance(extractor(clip, sampling_rate=SR)["input_values"], np.ndarray)
    out_t = extractor(torch.from_numpy(clip), sampling_rate=SR)["input_values"]
    assert isinstance(out_t, torch.Tensor) and out_t.dtype == torch.float32
    assert isinstance(extractor(clip, sampling_rate=SR, return_tensors="pt")["input_values"], torch.Tensor)
    out_np = extractor(torch.from_numpy(clip), sampling_rate=SR, return_tensors="np")["input_values"]
    assert isinstance(out_np, np.ndarray)
    np.testing.assert_allclose(out_np, out_t.numpy())
    # integer PCM is used as given (no rescaling), like ASTFeatureExtractor
    pcm = (clip * 1000).astype(np.int16)
    np.testing.assert_allclose(
        extractor(pcm, sampling_rate=SR)["input_values"],
        extractor(pcm.astype(np.float32), sampling_rate=SR)["input_values"],
    )


@pytest.mark.parametrize("frontend", ["kaldi", "logmel"])
def test_threaded_chunks_match_single_pass(monkeypatch, frontend):
    # Small chunks so that the worker threads split the frames; the result must not depend on the split.
    monkeypatch.setattr(SpecPatchFeatureExtractor, "_cpu_chunk_frames", 37)
    extractor = SpecPatchFeatureExtractor(frontend=frontend, max_length=150)
    clips = [_noise(SR, 17), _tonal(SR // 2, 18), _noise(2 * SR, 19)]
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        threaded = extractor(clips, sampling_rate=SR)["input_values"]
        assert torch.get_num_threads() == 2  # the caller's setting survives the worker threads
        monkeypatch.setattr(SpecPatchFeatureExtractor, "_thread_chunks", False)
        single = extractor(clips, sampling_rate=SR)["input_values"]
    finally:
        torch.set_num_threads(threads)
    np.testing.assert_allclose(threaded, single, atol=1e-6, rtol=0)  # 1 vs 2 intra-op threads: rounding only


@pytest.mark.parametrize("frontend", ["kaldi", "logmel"])
def test_fused_cpu_kernels_match_torch_ops(monkeypatch, frontend):
    # The numba framing / power kernels do the torch path's float64 arithmetic in the same order: identical features.
    if not cpu_kernels.is_compiled():
        pytest.skip("numba not importable: the torch ops run anyway")
    monkeypatch.setattr(SpecPatchFeatureExtractor, "_cpu_chunk_frames", 37)  # several chunks, a partial last one
    extractor = SpecPatchFeatureExtractor(frontend=frontend, max_length=150)
    clips = [_noise(SR, 21), _tonal(SR // 2 + 7, 22), _noise(2 * SR, 23)]
    fused = extractor(clips, sampling_rate=SR)["input_values"]
    monkeypatch.setattr(SpecPatchFeatureExtractor, "_fused_cpu_kernels", False)
    torch_ops = extractor(clips, sampling_rate=SR)["input_values"]
    np.testing.assert_array_equal(fused, torch_ops)


@pytest.mark.parametrize("preemphasis", [0.97, 0.0])
def test_frame_kernels_compiled_match_python(preemphasis):
    # The compiled kernels against their uncompiled source, and against a direct numpy statement of each formula.
    rng = np.random.default_rng(5)
    hop, win, n_fft, first, frames = 160, 400, 512, 3, 11
    signal = rng.standard_normal((first + frames) * hop + win).astype(np.float32)
    offsets = rng.standard_normal(first + frames)
    window = np.hanning(win)
    results = []
    for frame_kernel in (cpu_kernels.windowed_frames, cpu_kernels.PYTHON_FUNCTIONS["windowed_frames"]):
        buffer = np.full((frames, n_fft), 7.0)
        frame_kernel(signal, first, hop, preemphasis, offsets if preemphasis else np.empty(0), window, buffer)
        results.append(buffer)
    np.testing.assert_array_equal(results[0], results[1])
    x = np.stack([signal[(first + i) * hop : (first + i) * hop + win].astype(np.float64) for i in range(frames)])
    if preemphasis:
        x[:, 1:] = x[:, 1:] - preemphasis * x[:, :-1] - offsets[first:, None]
        x[:, 0] = 0.0
    np.testing.assert_allclose(results[0][:, :win], x * window, rtol=1e-15, atol=1e-15)
    assert (results[0][:, win:] == 7.0).all()  # the zero padding of the FFT buffer is not touched

    spectrum = np.fft.rfft(results[0], axis=-1)
    powers = []
    for power_kernel in (cpu_kernels.power_spectrum, cpu_kernels.PYTHON_FUNCTIONS["power_spectrum"]):
        out = np.empty(spectrum.shape, np.float32)
        power_kernel(spectrum.view(np.float64).reshape(*spectrum.shape, 2), out)
        powers.append(out)
    np.testing.assert_array_equal(powers[0], powers[1])
    np.testing.assert_array_equal(powers[0], (np.abs(spectrum) ** 2).astype(np.float32))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("frontend", ["kaldi", "logmel"])
def test_cuda_input_stays_on_cuda(frontend):
    extractor = SpecPatchFeatureExtractor(frontend=frontend, max_length=300)
    clips = [torch.from_numpy(_noise(SR, 12)), torch.from_numpy(_tonal(2 * SR + 3, 13))]
    cpu = extractor(clips, sampling_rate=SR)["input_values"]
    gpu = extractor([c.cuda() for c in clips], sampling_rate=SR)["input_values"]
    assert gpu.is_cuda
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-3, rtol=0)
    on_device = extractor([c.numpy() for c in clips], sampling_rate=SR, device="cuda", return_tensors="pt")
    assert on_device["input_values"].is_cuda


def test_resamples_other_rates_and_warns_without_rate():
    extractor = SpecPatchFeatureExtractor(max_length=100)
    clip_22k = _tonal(22050, 14)
    ours = extractor(clip_22k, sampling_rate=22050)["input_values"]
    expected = extractor(resample(clip_22k, 22050, SR), sampling_rate=SR)["input_values"]
    np.testing.assert_allclose(ours, expected, atol=1e-6)

    logger = hf_logging.get_logger("specpatch.feature_extraction_specpatch")
    with CaptureLogger(logger) as captured:
        extractor(_noise(SR, 15))
    assert "sampling_rate" in captured.out
    with CaptureLogger(logger) as captured:
        extractor(_noise(SR, 15), sampling_rate=SR)
    assert captured.out == ""


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.zeros(0, np.float32), "empty"),
        ([], "empty list"),
        (np.array([0.1, np.nan] * 400, np.float32), "NaN or infinite"),
        ([np.zeros(800, np.float32), np.full(800, np.inf, np.float32)], r"raw_speech\[1\].*NaN or infinite"),
        (np.zeros((2, 2, 2, 800), np.float32), "dimensions"),
        ([np.zeros((1, 2, 800), np.float32)], "dimensions"),
        (np.zeros(399, np.float32), "too short"),
        ([np.zeros((800, 2), np.float32)], "channels-first"),
        ("audio.wav", "numpy array, a torch tensor"),
        (np.zeros(800, bool), "real numbers"),
    ],
)
def test_bad_audio_raises_clear_value_error(bad, message):
    with pytest.raises(ValueError, match=message):
        SpecPatchFeatureExtractor()(bad, sampling_rate=SR)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"frontend": "mfcc"}, "frontend"),
        ({"f_max": 9000.0}, "f_max"),
        ({"win_length": 600, "n_fft": 512}, "n_fft"),
        ({"std": 0.0}, "std"),
    ],
)
def test_bad_config_raises(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SpecPatchFeatureExtractor(**kwargs)


# --------------------------------------------------------------------------------------------------------------------
# Serialisation


@pytest.mark.parametrize("frontend", ["kaldi", "logmel"])
def test_save_and_load_roundtrip(tmp_path, frontend):
    extractor = SpecPatchFeatureExtractor(frontend=frontend, max_length=128, mean=-5.5, std=3.25)
    clip = _tonal(SR, 16)
    before = extractor(clip, sampling_rate=SR)["input_values"]  # fills the private buffer cache
    extractor.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert config["frontend"] == frontend and config["mean"] == -5.5 and config["max_length"] == 128
    assert config["feature_extractor_type"] == "SpecPatchFeatureExtractor"
    assert not any(key.startswith("_") for key in config)

    loaded = SpecPatchFeatureExtractor.from_pretrained(tmp_path)
    assert loaded.to_dict() == extractor.to_dict()
    np.testing.assert_array_equal(loaded(clip, sampling_rate=SR)["input_values"], before)


def test_quiet_caller_runs_the_caller_single_threaded_and_restores():
    """While features are extracted on the CPU the calling thread runs torch on one thread and the chunk workers get
    its thread count (nested uses keep the outermost); the count is restored afterwards, also after an error, and
    the features equal a one-thread extraction."""
    from specpatch import feature_extraction_specpatch as fe

    if not fe._openmp_backend():
        pytest.skip("torch's thread count is per OS thread only under OpenMP")
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        seen = []
        with fe._quiet_caller():
            seen.append((torch.get_num_threads(), fe._CALLER.workers))
            with fe._quiet_caller():
                seen.append((torch.get_num_threads(), fe._CALLER.workers))
        assert seen == [(1, 2), (1, 2)] and torch.get_num_threads() == 2 and fe._CALLER.workers is None
        with pytest.raises(RuntimeError, match="boom"), fe._quiet_caller():
            raise RuntimeError("boom")
        assert torch.get_num_threads() == 2 and fe._CALLER.workers is None
        extractor = SpecPatchFeatureExtractor()
        clips = list(np.random.default_rng(0).standard_normal((3, 48_000)).astype(np.float32))
        two = extractor(clips, sampling_rate=16_000, return_tensors="np")["input_values"]
        assert torch.get_num_threads() == 2
        torch.set_num_threads(1)
        one = extractor(clips, sampling_rate=16_000, return_tensors="np")["input_values"]
        assert np.array_equal(one, two)
    finally:
        torch.set_num_threads(threads)

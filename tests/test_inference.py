"""Inference on audio of any length: windows, streamed decoding, the windowed pipeline, bad input, frame-level
outputs (token layout of every model) and embeddings."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import soundfile
import torch
from conftest import FRONTENDS, TINY_CONFIGS, tiny_config
from transformers import AutoModelForAudioClassification, pipeline

from specpatch import SpecPatchFeatureExtractor, inference
from specpatch.audio_utils import resample

MODEL_TYPES = sorted(TINY_CONFIGS)
LABELS = {0: "dog", 1: "rain", 2: "speech"}
RATE = 16000


def _model(model_type, **kwargs):
    config = tiny_config(model_type, id2label=LABELS, label2id={v: k for k, v in LABELS.items()}, **kwargs)
    model = AutoModelForAudioClassification.from_config(config).eval()
    extractor = SpecPatchFeatureExtractor(max_length=config.max_length, frontend=FRONTENDS[model_type])
    return model, extractor


def _save(directory, model_type, **kwargs):
    model, extractor = _model(model_type, **kwargs)
    model.save_pretrained(directory)
    extractor.save_pretrained(directory)
    return model, extractor


def _audio(seconds, seed=0, rate=RATE):
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    return (0.2 * np.sin(2 * np.pi * 440 * t * (1 + t)) + 0.05 * rng.standard_normal(t.shape)).astype(np.float32)


def test_window_starts():
    assert inference.window_starts(50, 100, 40) == [0]
    assert inference.window_starts(100, 100, 40) == [0]
    # regular starts while a window ends before the recording, then one window ending at the end
    assert inference.window_starts(250, 100, 40) == [0, 40, 80, 120, 150]
    assert inference.window_starts(240, 100, 40) == [0, 40, 80, 120, 140]
    assert inference.window_starts(250, 100, 40, align=20) == [0, 40, 80, 120, 140]  # last start on the grid
    with pytest.raises(ValueError, match="positive"):
        inference.window_starts(10, 0, 1)


@pytest.mark.parametrize("file_rate", [RATE, 22050])
def test_streamed_file_windows_equal_in_memory_windows(tmp_path, monkeypatch, file_rate):
    monkeypatch.setattr(inference, "FILE_BLOCK_SECONDS", 0.7)  # many blocks, not aligned with the windows
    audio = _audio(5.3, rate=file_rate)
    path = tmp_path / "clip.flac"
    soundfile.write(path, np.stack([audio, 0.5 * audio], axis=1), file_rate)  # stereo: downmixed
    decoded = soundfile.read(path, dtype="float32")[0].mean(axis=1)
    expected = decoded if file_rate == RATE else resample(decoded, file_rate, RATE)
    source = inference.make_source(str(path), RATE)
    streamed = list(source.windows(16000, 6000))
    in_memory = list(inference.AudioSource(expected.astype(np.float32)).windows(16000, 6000))
    assert source.num_samples == pytest.approx(expected.shape[0], abs=2)
    assert [s for s, _ in streamed] == [s for s, _ in in_memory] == inference.window_starts(len(expected), 16000, 6000)
    for (_, a), (_, b) in zip(streamed, in_memory):
        n = min(len(a), len(b))
        tolerance = 0 if file_rate == RATE else 2e-3  # the streaming resampler differs slightly at its block edges
        np.testing.assert_allclose(a[:n], b[:n], atol=tolerance, rtol=0)


@pytest.mark.parametrize("seconds", [3.0, 3.3])  # 3.0 s: the stream ends exactly at a block boundary
def test_streamed_torchcodec_windows_equal_whole_decoding(tmp_path, monkeypatch, seconds):
    from torchcodec.encoders import AudioEncoder

    from specpatch.audio_utils import load_audio

    monkeypatch.setattr(inference, "FILE_BLOCK_SECONDS", 0.75)
    path = str(tmp_path / "clip.m4a")  # AAC: libsndfile cannot read it, torchcodec (FFmpeg) decodes it
    AudioEncoder(torch.from_numpy(_audio(seconds))[None], sample_rate=RATE).to_file(path)
    with pytest.raises(soundfile.LibsndfileError):
        soundfile.read(path)
    whole, _ = load_audio(path, sampling_rate=RATE)
    source = inference.make_source(path, RATE)
    streamed = list(source.windows(16000, 6000))
    assert source.num_samples == len(whole)
    expected = list(inference.AudioSource(whole).windows(16000, 6000))
    assert [s for s, _ in streamed] == [s for s, _ in expected]
    for (_, a), (_, b) in zip(streamed, expected):
        np.testing.assert_allclose(a, b, atol=1e-6, rtol=0)


def test_file_windows_memory_stays_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr(inference, "FILE_BLOCK_SECONDS", 2.0)
    path = tmp_path / "long.wav"
    seconds = 300
    with soundfile.SoundFile(path, "w", RATE, 1, subtype="PCM_16") as handle:
        for _ in range(seconds // 10):
            handle.write(_audio(10.0))
    decoded_bytes = seconds * RATE * 4
    tracemalloc.start()
    count = 0
    for _, chunk in inference.make_source(str(path), RATE).windows(RATE, RATE // 2):
        count += chunk.shape[0] > 0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert count == 2 * seconds - 1
    assert peak < decoded_bytes / 10, f"peak {peak / 1e6:.1f} MB for {decoded_bytes / 1e6:.1f} MB of audio"


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_pipeline_scores_long_audio_window_by_window(tmp_path, model_type):
    model, extractor = _save(tmp_path, model_type, problem_type="multi_label_classification")
    classifier = pipeline("audio-classification", model=str(tmp_path))
    audio = _audio(3.0)
    output = classifier(audio, top_k=None, return_window_scores=True, batch_size=3)
    window = inference.model_window_samples(extractor)
    starts = inference.window_starts(len(audio), window, window - 2 * (window // 4))
    assert [round(w["start"] * RATE) for w in output["windows"]] == starts
    assert output["windows"][-1]["end"] == pytest.approx(3.0)
    # each window's scores are the model's on that slice of the recording
    with torch.no_grad():
        slices = [audio[s : s + window] for s in starts]
        expected = torch.sigmoid(model(**extractor(slices, sampling_rate=RATE, return_tensors="pt")).logits)
    for row, entry in zip(expected, output["windows"]):
        got = {d["label"]: d["score"] for d in entry["labels"]}
        for index, name in LABELS.items():
            assert got[name] == pytest.approx(row[index].item(), abs=1e-5)
    clip = {d["label"]: d["score"] for d in output["labels"]}
    for index, name in LABELS.items():  # multi-label default: max over windows
        assert clip[name] == pytest.approx(expected[:, index].max().item(), abs=1e-5)
    mean = {d["label"]: d["score"] for d in classifier(audio, top_k=None, aggregation="mean")}
    for index, name in LABELS.items():
        assert mean[name] == pytest.approx(expected[:, index].mean().item(), abs=1e-5)
    # chunk / stride in seconds as in the ASR pipeline: 1 s windows, 0.25 s on each side -> 0.5 s hop
    chunked = classifier(audio, top_k=1, chunk_length_s=1.0, stride_length_s=0.25, return_window_scores=True)
    assert [w["start"] for w in chunked["windows"]] == [0.0, 0.5, 1.0, 1.5, 2.0]
    with pytest.raises(ValueError, match="aggregation"):
        classifier(audio, aggregation="median")
    with pytest.raises(ValueError, match="stride_length_s"):
        classifier(audio, chunk_length_s=1.0, stride_length_s=0.5)


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_pipeline_bad_input(tmp_path, model_type):
    _save(tmp_path, model_type)
    classifier = pipeline("audio-classification", model=str(tmp_path))
    audio = _audio(1.0)
    stereo = np.stack([audio, 0.5 * audio])
    mono_scores = classifier(stereo.mean(axis=0), top_k=3)
    # channels-last stereo (samples, 2) is recognised, also as a tensor and in a dict
    for inputs in (stereo.T, stereo, torch.from_numpy(stereo.T), {"raw": stereo.T, "sampling_rate": RATE}):
        scores = classifier(inputs, top_k=3)
        assert [s["label"] for s in scores] == [s["label"] for s in mono_scores]
        np.testing.assert_allclose([s["score"] for s in scores], [s["score"] for s in mono_scores], atol=1e-6)
    # a clip shorter than the 25 ms analysis window is zero-padded, not refused
    short = audio[:100]
    padded = classifier(np.pad(short, (0, 300)), top_k=3)
    np.testing.assert_allclose([s["score"] for s in classifier(short, top_k=3)], [s["score"] for s in padded])
    # huge amplitudes: a clear error, never NaN scores; large but sane PCM-like values still work
    with pytest.raises(ValueError, match="not finite.*1e\\+30"):
        classifier(audio / np.abs(audio).max() * np.float32(1e30))
    assert all(np.isfinite(s["score"]) for s in classifier(audio * 32768, top_k=3))
    with pytest.raises(ValueError, match="NaN"):
        classifier(np.full(1000, np.nan, dtype=np.float32))


def test_pipeline_takes_a_torchcodec_decoder(tmp_path):
    from torchcodec.decoders import AudioDecoder

    _save(tmp_path, "fftp_ast")
    classifier = pipeline("audio-classification", model=str(tmp_path))
    path = tmp_path / "clip.wav"
    soundfile.write(path, np.stack([_audio(1.0, rate=22050)] * 2, axis=1), 22050)
    from_decoder = classifier(AudioDecoder(str(path)), top_k=3)
    from_path = classifier(str(path), top_k=3)
    assert [s["label"] for s in from_decoder] == [s["label"] for s in from_path]
    np.testing.assert_allclose([s["score"] for s in from_decoder], [s["score"] for s in from_path], atol=1e-4)


def _local_encoder(model):
    """Zeroes every residual branch, so each output token depends on its own patch only: a test of the token layout."""
    for name, parameter in model.named_parameters():
        if any(key in name for key in ("attention.proj.", "mlp.fc2.", "mixer.out_proj.")):
            torch.nn.init.zeros_(parameter)
    return model


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_frame_outputs_follow_the_token_layout(model_type):
    extra = {"patch_embedding_type": "standard"} if model_type == "aape_vit" else {}
    model, _ = _model(model_type, **extra)
    model = _local_encoder(model)
    patch, stride = inference.time_patching(model)
    frames = model.config.max_length
    num_tokens = (frames - patch) // stride + 1
    inputs = torch.randn(2, frames, 128)
    embeddings = inference.frame_embeddings(model, inputs)
    logits = inference.frame_logits(model, inputs)
    assert embeddings.shape == (2, num_tokens, model.config.hidden_size)
    assert logits.shape == (2, num_tokens, len(LABELS))
    # the head applied per token, and the pooled output is the model's own
    pooled, _ = inference.encode(model, inputs)
    with torch.no_grad():
        torch.testing.assert_close(model.classifier(pooled), model(inputs).logits)
        torch.testing.assert_close(logits, model.classifier(embeddings))
    # changing frames [a, b) changes exactly the tokens whose patches overlap them, in time order
    a, b = 30, 34
    changed_inputs = inputs.clone()
    changed_inputs[:, a:b] += 1.0
    changed = (inference.frame_embeddings(model, changed_inputs) - embeddings).abs().amax(dim=(0, 2)) > 1e-6
    overlaps = torch.tensor([t * stride < b and t * stride + patch > a for t in range(num_tokens)])
    assert torch.equal(changed, overlaps), (changed.nonzero().flatten(), overlaps.nonzero().flatten())


@pytest.mark.parametrize("cls_position", ["middle", "head", "tail"])
def test_aum_class_token_is_removed_wherever_it_sits(cls_position):
    model, _ = _model("fftp_aum", cls_position=cls_position)
    model = _local_encoder(model)
    inputs = torch.randn(1, model.config.max_length, 128)
    pooled, frames = inference.encode(model, inputs)
    with torch.no_grad():
        hidden = model.fftp_aum(inputs).last_hidden_state
    index = model.config.cls_token_index(frames.shape[1])
    torch.testing.assert_close(pooled, hidden[:, index])
    torch.testing.assert_close(frames, torch.cat([hidden[:, :index], hidden[:, index + 1 :]], dim=1))
    assert not any(torch.allclose(frames[0, t], pooled[0]) for t in range(frames.shape[1]))


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_timestamp_embeddings_are_stitched_on_one_grid(model_type):
    model, extractor = _model(model_type)
    audio = torch.from_numpy(np.stack([_audio(2.3, seed=1), _audio(2.3, seed=2)]))
    embeddings, timestamps = inference.timestamp_embeddings(model, extractor, audio)
    patch, stride = inference.time_patching(model)
    step_ms = stride * extractor.hop_length / RATE * 1000
    assert embeddings.dtype == torch.float32 and embeddings.shape[:2] == timestamps.shape
    np.testing.assert_allclose(np.diff(timestamps.numpy(), axis=1), step_ms, atol=1e-3)
    # every token equals the same token computed from the window it was taken from
    window, hop, stride_samples, tokens, frames = inference.token_plan(model, extractor)
    starts = inference.window_starts(audio.shape[1], window, hop, align=stride_samples)
    offsets = [s // stride_samples for s in starts]
    assert len(starts) > 2
    # up to the last token of the last window whose centre lies inside the recording
    last_window = inference.token_times(model, extractor, tokens, offset_samples=starts[-1])
    assert timestamps[0, -1].item() == pytest.approx(1000 * last_window[last_window < 2.3][-1], abs=1e-3)
    bounds = [0] + [(offsets[k] + offsets[k + 1] + tokens) // 2 for k in range(len(offsets) - 1)]
    for k, start in enumerate(starts):
        features = extractor(audio[:, start : start + window], sampling_rate=RATE, return_tensors="pt")
        direct = inference.frame_embeddings(model, features["input_values"])
        g0 = bounds[k]
        g1 = min(bounds[k + 1] if k + 1 < len(starts) else offsets[k] + tokens, embeddings.shape[1])
        torch.testing.assert_close(embeddings[:, g0:g1], direct[:, g0 - offsets[k] : g1 - offsets[k]])
    # the frame times of frame_scores are the same grid, in seconds
    scores, times = inference.frame_scores(model, extractor, audio[0])
    np.testing.assert_allclose(times * 1000, timestamps[0].numpy(), atol=1e-3)
    assert scores.shape == (len(times), len(LABELS))
    np.testing.assert_allclose(scores.sum(axis=1), 1.0, atol=1e-5)  # softmax for a single-label model


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_scene_embeddings_of_a_single_window(model_type):
    model, extractor = _model(model_type)
    audio = torch.from_numpy(_audio(0.3))
    scene = inference.scene_embeddings(model, extractor, audio)
    assert scene.shape == (1, 2 * model.config.hidden_size)
    features = extractor(audio, sampling_rate=RATE, return_tensors="pt")["input_values"]
    pooled, frames = inference.encode(model, features)
    _, times = inference.frame_scores(model, extractor, audio)
    expected = torch.cat([pooled, frames[:, : len(times)].mean(dim=1)], dim=-1)  # real frames only
    torch.testing.assert_close(scene, expected)

"""Sound events from scores: threshold + median filter on synthetic scores, and end to end on a synthetic recording
with known event positions, through a tiny model trained here to detect a tone."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import tiny_config
from transformers import pipeline

from specpatch import FFTPASTForAudioClassification, SpecPatchFeatureExtractor
from specpatch.events import events_from_windows, row_bounds, scores_to_events
from specpatch.inference import frame_scores, model_window_samples

RATE = 16000


def test_row_bounds_are_midpoints_clipped_to_the_recording():
    starts, ends = row_bounds(np.array([0.5, 1.5, 2.5]), duration=2.8)
    np.testing.assert_allclose(starts, [0.0, 1.0, 2.0])
    np.testing.assert_allclose(ends, [1.0, 2.0, 2.8])
    with pytest.raises(ValueError, match="increasing"):
        row_bounds(np.array([1.0, 0.5]))


def test_threshold_and_median_filter_on_known_scores():
    times = np.arange(40) * 0.1 + 0.05  # rows of 100 ms
    scores = np.zeros((40, 2))
    scores[10:20, 0] = 0.9  # class 0 from 1.0 s to 2.0 s ...
    scores[14, 0] = 0.1  # ... with a one-row dropout a median filter closes
    scores[30, 0] = 0.8  # an isolated spike the filter removes
    scores[25:35, 1] = 0.6  # class 1 from 2.5 s to 3.5 s
    raw = scores_to_events(scores, times, labels=["dog", "rain"])
    assert [(e["label"], round(e["onset"], 6), round(e["offset"], 6)) for e in raw] == [
        ("dog", 1.0, 1.4), ("dog", 1.5, 2.0), ("rain", 2.5, 3.5), ("dog", 3.0, 3.1)
    ]
    filtered = scores_to_events(scores, times, labels={0: "dog", 1: "rain"}, median_filter=3)
    assert [(e["label"], round(e["onset"], 6), round(e["offset"], 6)) for e in filtered] == [
        ("dog", 1.0, 2.0), ("rain", 2.5, 3.5)
    ]
    assert filtered[0]["score"] == pytest.approx(0.9)
    # per-class thresholds and a minimum duration
    assert scores_to_events(scores, times, threshold=np.array([0.95, 0.5])) == [
        {"label": 1, "onset": pytest.approx(2.5), "offset": pytest.approx(3.5), "score": pytest.approx(0.6)}
    ]
    assert scores_to_events(scores, times, median_filter=3, min_duration=1.01) == []
    with pytest.raises(ValueError, match="NaN"):
        scores_to_events(np.full((3, 1), np.nan), times[:3])


def _noise(rng, samples, level):
    return (level * rng.standard_normal(samples)).astype(np.float32)


def _tone(samples, frequency=1000.0, amplitude=0.3, phase=0.0):
    t = np.arange(samples) / RATE
    return (amplitude * np.sin(2 * np.pi * frequency * t + phase)).astype(np.float32)


@pytest.fixture(scope="module")
def tone_detector(tmp_path_factory):
    """A tiny multi-label FFTP-AST trained for a few seconds to tag a 1 kHz tone in noise (labels: tone)."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    config = tiny_config(
        "fftp_ast", num_labels=1, id2label={0: "tone"}, label2id={"tone": 0},
        problem_type="multi_label_classification",
    )
    model = FFTPASTForAudioClassification(config)
    extractor = SpecPatchFeatureExtractor(max_length=config.max_length)
    window = model_window_samples(extractor)
    clips, labels = [], []
    for _ in range(256):
        clip = _noise(rng, window, rng.uniform(0.01, 0.1))
        has_tone = rng.random() < 0.5
        if has_tone:
            clip += _tone(window, rng.uniform(900, 1100), rng.uniform(0.1, 0.5), rng.uniform(0, 6.28))
        clips.append(clip)
        labels.append([float(has_tone)])
    features = extractor(clips, sampling_rate=RATE, return_tensors="pt")["input_values"]
    labels = torch.tensor(labels)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(80):
        batch = torch.randint(0, len(clips), (16,))
        loss = model(features[batch], labels=labels[batch]).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    directory = tmp_path_factory.mktemp("tone_detector")
    model.save_pretrained(directory)
    extractor.save_pretrained(directory)
    return model, extractor, directory


def _recording(events, seconds, seed=1):
    rng = np.random.default_rng(seed)
    audio = _noise(rng, int(seconds * RATE), 0.03)
    for onset, offset in events:
        first, last = int(onset * RATE), int(offset * RATE)
        audio[first:last] += _tone(last - first)
    return audio


EVENTS = [(2.0, 4.5), (7.2, 8.4)]


def test_pipeline_window_events_match_known_positions(tone_detector):
    model, extractor, directory = tone_detector
    audio = _recording(EVENTS, 10.0)
    classifier = pipeline("audio-classification", model=str(directory))
    output = classifier(audio, top_k=None, return_window_scores=True, batch_size=16)
    windows = output["windows"]
    hop = windows[1]["start"] - windows[0]["start"]
    events = events_from_windows(windows, threshold=0.5, median_filter=3)
    assert [e["label"] for e in events] == ["tone", "tone"], events
    for event, (onset, offset) in zip(events, EVENTS):
        assert abs(event["onset"] - onset) <= hop, (event, hop)
        assert abs(event["offset"] - offset) <= hop, (event, hop)
    assert output["labels"][0]["score"] > 0.5  # max over windows: the recording is tagged ...
    silent = classifier(_recording([], 10.0), top_k=None, return_window_scores=True)
    assert silent["labels"][0]["score"] < 0.5  # ... and noise alone is not
    assert events_from_windows(silent["windows"], median_filter=3) == []


def test_frame_events_match_known_positions(tone_detector):
    model, extractor, _ = tone_detector
    audio = _recording(EVENTS, 10.0)
    scores, times = frame_scores(model, extractor, audio)
    assert scores.shape == (times.shape[0], 1)
    np.testing.assert_allclose(np.diff(times), 4 * extractor.hop_length / RATE)  # one token stride, 40 ms
    hop = model_window_samples(extractor) // 2 / RATE
    # The head was trained on the pooled token, so frame scores are not calibrated at 0.5: the threshold is the
    # midpoint of the median frame scores of two held-out recordings, noise only and tone throughout.
    noise_only, _ = frame_scores(model, extractor, _recording([], 5.0, seed=2))
    tone_only, _ = frame_scores(model, extractor, _recording([(0.0, 5.0)], 5.0, seed=3))
    threshold = (np.median(noise_only) + np.median(tone_only)) / 2
    assert np.median(tone_only) > np.median(noise_only)
    events = scores_to_events(scores, times, labels=["tone"], threshold=threshold, median_filter=11, duration=10.0)
    assert len(events) == 2, events
    for event, (onset, offset) in zip(events, EVENTS):
        assert abs(event["onset"] - onset) <= hop, (event, hop)
        assert abs(event["offset"] - offset) <= hop, (event, hop)

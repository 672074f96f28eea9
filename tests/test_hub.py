"""Every model: Auto classes, safetensors checkpoints, `trust_remote_code` loading without the package, pipeline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import soundfile
import torch
from conftest import FRONTENDS, TINY_CONFIGS, tiny_config
from transformers import AutoConfig, AutoFeatureExtractor, AutoModelForAudioClassification, pipeline

from specpatch import SpecPatchFeatureExtractor

MODEL_TYPES = sorted(TINY_CONFIGS)
LABELS = {0: "dog", 1: "rain", 2: "speech"}


def _save_checkpoint(directory, model_type, **config_kwargs):
    config = tiny_config(model_type, id2label=LABELS, label2id={v: k for k, v in LABELS.items()}, **config_kwargs)
    model = AutoModelForAudioClassification.from_config(config).eval()
    model.save_pretrained(directory)
    SpecPatchFeatureExtractor(max_length=config.max_length, frontend=FRONTENDS[model_type]).save_pretrained(
        directory
    )
    return model


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_auto_classes_and_safetensors_round_trip(tmp_path, model_type):
    model = _save_checkpoint(tmp_path, model_type)
    assert (tmp_path / "model.safetensors").exists()
    assert not list(tmp_path.glob("*.bin"))
    assert AutoConfig.from_pretrained(tmp_path).model_type == model_type
    reloaded = AutoModelForAudioClassification.from_pretrained(tmp_path).eval()
    assert type(reloaded) is type(model)
    assert isinstance(AutoFeatureExtractor.from_pretrained(tmp_path), SpecPatchFeatureExtractor)
    inputs = torch.randn(2, model.config.max_length, 128)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(inputs).logits, model(inputs).logits, rtol=0, atol=0)


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_remote_code_loads_in_a_process_without_the_package(tmp_path, model_type):
    checkpoint = tmp_path / "checkpoint"
    model = _save_checkpoint(checkpoint, model_type)
    config = json.loads((checkpoint / "config.json").read_text())
    assert "AutoModelForAudioClassification" in config["auto_map"]
    inputs = torch.randn(2, model.config.max_length, 128)
    np.save(tmp_path / "inputs.npy", inputs.numpy())
    with torch.no_grad():
        np.save(tmp_path / "expected.npy", model(inputs).logits.numpy())

    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["specpatch"] = None  # any `import specpatch` now raises ImportError
        import numpy as np, torch
        from transformers import AutoFeatureExtractor, AutoModelForAudioClassification
        try:
            import specpatch  # noqa: F401
            raise SystemExit("specpatch must not be importable here")
        except ImportError:
            pass
        model = AutoModelForAudioClassification.from_pretrained({str(checkpoint)!r}, trust_remote_code=True).eval()
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        extractor = AutoFeatureExtractor.from_pretrained({str(checkpoint)!r}, trust_remote_code=True)
        features = extractor(np.random.randn(16000).astype("float32"), sampling_rate=16000, return_tensors="pt")
        assert features["input_values"].shape[-1] == 128
        with torch.no_grad():
            logits = model(torch.from_numpy(np.load({str(tmp_path / "inputs.npy")!r}))).logits.numpy()
        np.testing.assert_array_equal(logits, np.load({str(tmp_path / "expected.npy")!r}))
        print("remote-ok")
        """
    )
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "remote-ok" in result.stdout


def _tone(frequency, sampling_rate, seconds=0.5):
    t = np.arange(int(sampling_rate * seconds)) / sampling_rate
    return (0.5 * np.sin(2 * np.pi * frequency * t)).astype(np.float32)


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_pipeline_inputs_and_labels(tmp_path, model_type):
    _save_checkpoint(tmp_path, model_type)
    classifier = pipeline("audio-classification", model=str(tmp_path))
    wav_path = tmp_path / "clip.wav"
    soundfile.write(wav_path, np.stack([_tone(440, 44100), _tone(660, 44100)], axis=1), 44100)  # stereo, 44.1 kHz

    for inputs in (_tone(440, 16000), {"raw": _tone(440, 22050), "sampling_rate": 22050}, str(wav_path)):
        predictions = classifier(inputs, top_k=3)
        assert [p["label"] for p in predictions] != []
        assert {p["label"] for p in predictions} == set(LABELS.values())
        assert abs(sum(p["score"] for p in predictions) - 1.0) < 1e-5  # softmax for single-label models

    # the dict input is resampled (not fed at the wrong rate): same audio at 16 kHz gives the same scores
    at_22050 = classifier({"raw": _tone(440, 22050), "sampling_rate": 22050}, top_k=3)
    at_16000 = classifier(_tone(440, 16000), top_k=3)
    assert at_22050[0]["label"] == at_16000[0]["label"]
    assert abs(at_22050[0]["score"] - at_16000[0]["score"]) < 0.05


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_pipeline_uses_sigmoid_for_multi_label_models(tmp_path, model_type):
    model = _save_checkpoint(tmp_path, model_type, problem_type="multi_label_classification")
    classifier = pipeline("audio-classification", model=str(tmp_path))
    audio = _tone(300, 16000)
    predictions = classifier(audio, top_k=3)
    extractor = SpecPatchFeatureExtractor.from_pretrained(tmp_path)
    with torch.no_grad():
        expected = torch.sigmoid(model(**extractor(audio, sampling_rate=16000, return_tensors="pt")).logits[0])
    scores = {p["label"]: p["score"] for p in predictions}
    for index, name in LABELS.items():
        assert abs(scores[name] - expected[index].item()) < 1e-5

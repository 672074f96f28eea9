"""specpatch.hear: the HEAR 2021 API on tiny checkpoints of every model. The same checks as the official
`hear-validator` run here without TensorFlow; the validator itself runs when `hearvalidator` is installed
(`pip install -e ".[hear]"`, see README "Inference")."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import FRONTENDS, TINY_CONFIGS, tiny_config
from transformers import AutoModelForAudioClassification

from specpatch import SpecPatchFeatureExtractor, hear

MODEL_TYPES = sorted(TINY_CONFIGS)


def _checkpoint(directory, model_type):
    config = tiny_config(model_type, num_labels=3)
    model = AutoModelForAudioClassification.from_config(config).eval()
    model.save_pretrained(directory)
    SpecPatchFeatureExtractor(max_length=config.max_length, frontend=FRONTENDS[model_type]).save_pretrained(directory)
    return model


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_hear_api_on_a_checkpoint(tmp_path, model_type):
    classifier = _checkpoint(tmp_path, model_type)
    model = hear.load_model(str(tmp_path))
    assert isinstance(model, torch.nn.Module)
    assert model.sample_rate == 16000
    assert model.timestamp_embedding_size == classifier.config.hidden_size
    assert model.scene_embedding_size == 2 * classifier.config.hidden_size
    # the checkpoint's encoder weights were loaded (not a fresh encoder)
    for name, parameter in model.model.base_model.named_parameters():
        torch.testing.assert_close(parameter, classifier.base_model.get_parameter(name))

    generator = torch.Generator().manual_seed(0)
    # the validator's inputs (16 x 2.0 s and 8 x 3.74 s of white noise in [-1, 1]), fewer sounds
    audio = torch.rand(4, 32000, generator=generator) * 2 - 1
    embeddings, timestamps = hear.get_timestamp_embeddings(audio, model)
    assert embeddings.dtype == torch.float32 and timestamps.dtype == torch.float32
    assert embeddings.shape[0] == 4 and embeddings.shape[:2] == timestamps.shape
    assert embeddings.shape[2] == model.timestamp_embedding_size
    steps = torch.diff(timestamps)
    assert torch.all((steps - steps.mean()).abs() < 1e-3)  # regular intervals
    assert 0 < timestamps.min() and timestamps.max() < 2000
    assert torch.isfinite(embeddings).all()
    # each sound is embedded independently of the others in the batch
    single, _ = hear.get_timestamp_embeddings(audio[3:4], model)
    torch.testing.assert_close(single[0], embeddings[3], atol=1e-5, rtol=1e-5)

    audio = torch.rand(3, int(3.74 * 16000), generator=generator) * 2 - 1
    scene = hear.get_scene_embeddings(audio, model)
    assert scene.dtype == torch.float32 and scene.shape == (3, model.scene_embedding_size)
    assert torch.isfinite(scene).all()
    assert not torch.allclose(scene[0], scene[1])


def test_hear_load_model_needs_a_checkpoint():
    with pytest.raises(ValueError, match="model_file_path"):
        hear.load_model()


@pytest.mark.hear
@pytest.mark.skipif(
    importlib.util.find_spec("hearvalidator") is None, reason="hearvalidator not installed (pip install -e '.[hear]')"
)
@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_official_hear_validator(tmp_path, model_type):
    _checkpoint(tmp_path, model_type)
    command = shutil.which("hear-validator", path=os.path.dirname(sys.executable)) or shutil.which("hear-validator")
    result = subprocess.run(
        [command, "specpatch.hear", "--model", str(tmp_path), "--device", "cpu"],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Checking get_scene_embeddings" in result.stdout


def test_hear_loads_a_bare_encoder_with_the_same_embeddings(tmp_path):
    classifier = _checkpoint(tmp_path / "classifier", "fftp_ast")
    classifier.base_model.save_pretrained(tmp_path / "encoder")
    SpecPatchFeatureExtractor.from_pretrained(tmp_path / "classifier").save_pretrained(tmp_path / "encoder")
    audio = torch.rand(2, 20000, generator=torch.Generator().manual_seed(1)) * 2 - 1
    from_classifier = hear.get_scene_embeddings(audio, hear.load_model(str(tmp_path / "classifier")))
    from_encoder = hear.get_scene_embeddings(audio, hear.load_model(str(tmp_path / "encoder")))
    torch.testing.assert_close(from_encoder, from_classifier)

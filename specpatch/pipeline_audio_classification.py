# Copyright 2026 The specpatch authors. Licensed under the Apache License, Version 2.0.
"""An audio-classification pipeline that needs neither torchaudio nor the `ffmpeg` binary.

transformers' `AudioClassificationPipeline` resamples `{"raw": ..., "sampling_rate": ...}` inputs only through
torchaudio (an ImportError on a machine without it) and decodes file paths and bytes by piping them through the
`ffmpeg` program. This subclass decodes with soundfile / torchcodec and resamples with soxr (see `audio_utils`),
downmixes multi-channel input, and hands everything else (feature extraction, forward, postprocessing with softmax
or, for `multi_label_classification` models, sigmoid scores) to the stock pipeline unchanged.

`import specpatch` makes it the implementation of the `"audio-classification"` task (`register_pipeline`), so
`pipeline("audio-classification", model=...)` uses it for every model; for inputs the stock pipeline already
handled, the behaviour is the same.
"""

from __future__ import annotations

import numpy as np
from transformers.pipelines.audio_classification import AudioClassificationPipeline

from .audio_utils import load_audio, resample, to_mono, validate_waveform


class SpecPatchAudioClassificationPipeline(AudioClassificationPipeline):
    """`AudioClassificationPipeline` with torchaudio-free resampling and ffmpeg-binary-free decoding.

    Accepts a 1-D numpy array / torch tensor at the feature extractor's sampling rate, a `(channels, samples)` array
    (downmixed to mono), a dict `{"raw" or "array": audio, "sampling_rate": int}` at any sampling rate, a path to an
    audio file, or the file's bytes.
    """

    def preprocess(self, inputs):
        target_rate = self.feature_extractor.sampling_rate
        if isinstance(inputs, (str, bytes, bytearray)):
            if isinstance(inputs, str) and inputs.startswith(("http://", "https://")):
                return super().preprocess(inputs)
            waveform, _ = load_audio(inputs, sampling_rate=target_rate, mono=True)
            return super().preprocess(waveform.astype(np.float32))
        if isinstance(inputs, dict):
            if "sampling_rate" not in inputs or not ("raw" in inputs or "array" in inputs):
                raise ValueError(
                    'A dict input needs the audio under "raw" (or "array", as `datasets` names it) and its '
                    f'"sampling_rate"; got keys {sorted(inputs)}.'
                )
            waveform = inputs["raw"] if "raw" in inputs else inputs["array"]
            waveform = self._as_mono_numpy(waveform)
            if inputs["sampling_rate"] != target_rate:
                waveform = resample(waveform, inputs["sampling_rate"], target_rate)
            return super().preprocess(np.ascontiguousarray(waveform, dtype=np.float32))
        if hasattr(inputs, "ndim") and inputs.ndim == 2:
            return super().preprocess(self._as_mono_numpy(inputs))
        return super().preprocess(inputs)

    @staticmethod
    def _as_mono_numpy(waveform) -> np.ndarray:
        if hasattr(waveform, "detach"):
            waveform = waveform.detach().cpu().numpy()
        waveform = validate_waveform(np.asarray(waveform))
        return to_mono(waveform).astype(np.float32, copy=False) if waveform.ndim == 2 else waveform


def register_pipeline() -> None:
    """Makes `SpecPatchAudioClassificationPipeline` the implementation of the `"audio-classification"` task.

    The registry entry is updated in place (rather than through `PIPELINE_REGISTRY.register_pipeline`, which logs an
    "overwriting" warning on every import); the task's default model and model classes are kept.
    """
    from transformers.pipelines import PIPELINE_REGISTRY

    task = PIPELINE_REGISTRY.supported_tasks["audio-classification"]
    task["impl"] = SpecPatchAudioClassificationPipeline

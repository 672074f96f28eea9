# Copyright 2026 The specpatch authors. Licensed under the Apache License, Version 2.0.
"""An audio-classification pipeline for recordings of any length that needs neither torchaudio nor `ffmpeg`.

transformers' `AudioClassificationPipeline` resamples `{"raw": ..., "sampling_rate": ...}` inputs only through
torchaudio (an ImportError on a machine without it), decodes file paths and bytes by piping them through the `ffmpeg`
program, and classifies only the first `max_length` frames of a longer recording. This subclass:

* decodes with soundfile / torchcodec and resamples with soxr (see `audio_utils` / `inference`); file paths and bytes
  are decoded block by block, so a 1-hour file never sits in memory as one array;
* accepts mono, channels-first `(channels, samples)` and channels-last `(samples, channels)` audio (the shorter axis
  is the channel axis unless `channels_last` says otherwise) and downmixes it;
* cuts recordings longer than one window into overlapping windows (`chunk_length_s`, `stride_length_s` as in the ASR
  pipeline; by default the model window, `max_length` frames, with a quarter-window stride on each side, i.e. 50 %
  overlap), runs them through the model `batch_size` windows at a time and aggregates the window scores (`"max"` by
  default for multi-label models, `"mean"` otherwise); `return_window_scores=True` also returns every window's scores
  with its start / end time;
* pads clips shorter than the front end's 25 ms analysis window, and raises a clear error for audio whose features
  are not finite (e.g. samples of 1e30) instead of returning NaN scores.

A clip no longer than one window is one window, featurised exactly as the stock pipeline does, so short-clip results
are unchanged. `import specpatch` makes this the implementation of the `"audio-classification"` task
(`register_pipeline`).
"""

from __future__ import annotations

import sys

import torch
from transformers.pipelines.audio_classification import AudioClassificationPipeline

from .inference import apply_activation, classify_windows, make_source, model_window_samples

AGGREGATIONS = ("mean", "max")


class SpecPatchAudioClassificationPipeline(AudioClassificationPipeline):
    """`AudioClassificationPipeline` for audio of any length, with torchaudio-free resampling and decoding.

    Accepts a 1-D numpy array / torch tensor at the feature extractor's sampling rate, 2-D multi-channel audio
    (downmixed), a dict `{"raw" or "array": audio, "sampling_rate": int}` at any sampling rate, a path to an audio
    file, or the file's bytes.

    Call arguments (besides the stock `top_k` and `function_to_apply`):
        chunk_length_s (`float`, *optional*): window length in seconds; defaults to the model window
            (`feature_extractor.max_length` frames). Longer windows are featurised to all their frames.
        stride_length_s (`float` or `(float, float)`, *optional*): overlap with the previous / next window in seconds
            (one number for both sides); the hop between windows is `chunk_length_s - left - right`. Defaults to
            `chunk_length_s / 4` on each side (50 % overlap).
        aggregation (`str`, *optional*): `"max"` or `"mean"` of the window scores; defaults to `"max"` for
            `multi_label_classification` models (a sound present anywhere tags the recording) and `"mean"` otherwise.
        return_window_scores (`bool`, *optional*, defaults to `False`): return `{"labels": [...], "windows": [...]}`,
            where each window is `{"start": s, "end": s, "labels": [...]}` (top `top_k` of that window).
        batch_size (`int`, *optional*, defaults to 8): windows per forward pass.
        channels_last (`bool`, *optional*): layout of 2-D audio; inferred from the shape when unset.
    """

    def __call__(self, inputs, batch_size: int | None = None, **kwargs):
        # `batch_size` batches the windows of one recording (the stock pipeline would collate whole inputs).
        if batch_size is not None:
            kwargs["window_batch_size"] = batch_size
        return super().__call__(inputs, **kwargs)

    def _sanitize_parameters(
        self,
        top_k=None,
        function_to_apply=None,
        chunk_length_s=None,
        stride_length_s=None,
        aggregation=None,
        return_window_scores=None,
        window_batch_size=None,
        channels_last=None,
        **kwargs,
    ):
        _, _, postprocess = super()._sanitize_parameters(top_k=top_k, function_to_apply=function_to_apply, **kwargs)
        preprocess, forward = {}, {}
        if chunk_length_s is not None:
            if not chunk_length_s > 0:
                raise ValueError(f"`chunk_length_s` must be positive, got {chunk_length_s}.")
            preprocess["chunk_length_s"] = float(chunk_length_s)
        if stride_length_s is not None:
            preprocess["stride_length_s"] = stride_length_s
        if channels_last is not None:
            preprocess["channels_last"] = bool(channels_last)
        if window_batch_size is not None:
            if int(window_batch_size) < 1:
                raise ValueError(f"`batch_size` must be a positive integer, got {window_batch_size}.")
            forward["batch_size"] = int(window_batch_size)
        if aggregation is not None:
            if aggregation not in AGGREGATIONS:
                raise ValueError(f"`aggregation` must be one of {AGGREGATIONS}, got {aggregation!r}.")
            postprocess["aggregation"] = aggregation
        if return_window_scores is not None:
            postprocess["return_window_scores"] = bool(return_window_scores)
        return preprocess, forward, postprocess

    def preprocess(self, inputs, chunk_length_s=None, stride_length_s=None, channels_last=None):
        extractor = self.feature_extractor
        rate = extractor.sampling_rate
        if isinstance(inputs, str) and inputs.startswith(("http://", "https://")):
            import httpx

            inputs = httpx.get(inputs, follow_redirects=True).content
        torchcodec = sys.modules.get("torchcodec")  # an AudioDecoder input means torchcodec is already imported
        if torchcodec is not None and isinstance(inputs, torchcodec.decoders.AudioDecoder):
            samples = inputs.get_all_samples()
            inputs = {"array": samples.data, "sampling_rate": samples.sample_rate}
        window = model_window_samples(extractor) if chunk_length_s is None else int(round(chunk_length_s * rate))
        if stride_length_s is None:
            left = right = window // 4
        else:
            pair = stride_length_s if isinstance(stride_length_s, (list, tuple)) else (stride_length_s, stride_length_s)
            if len(pair) != 2 or not all(s >= 0 for s in pair):
                raise ValueError(f"`stride_length_s` must be a non-negative number or pair, got {stride_length_s!r}.")
            left, right = (int(round(s * rate)) for s in pair)
        hop = window - left - right
        if hop < 1:
            raise ValueError(
                f"`stride_length_s` ({left / rate:g} s + {right / rate:g} s) leaves no hop in windows of "
                f"{window / rate:g} s; it must be shorter than half the window."
            )
        source = make_source(inputs, rate, channels_last=channels_last)
        return {"source": source, "window": window, "hop": hop}

    def _forward(self, model_inputs, batch_size: int = 8):
        scores = classify_windows(
            self.model,
            self.feature_extractor,
            model_inputs["source"],
            window=model_inputs["window"],
            hop=model_inputs["hop"],
            batch_size=batch_size,
            dtype=self.dtype,
        )
        return {"window_scores": scores}

    def postprocess(
        self, model_outputs, top_k=5, function_to_apply=None, aggregation=None, return_window_scores=False
    ):
        windows = model_outputs["window_scores"]
        config = self.model.config
        scores = apply_activation(torch.from_numpy(windows.logits), config, function_to_apply)
        if aggregation is None:
            aggregation = "max" if config.problem_type == "multi_label_classification" else "mean"
        clip = scores.max(dim=0).values if aggregation == "max" else scores.mean(dim=0)
        labels = self._top_k(clip, top_k)
        if not return_window_scores:
            return labels
        return {
            "labels": labels,
            "windows": [
                {"start": float(start), "end": float(end), "labels": self._top_k(row, top_k)}
                for start, end, row in zip(windows.starts, windows.ends, scores)
            ],
        }

    def _top_k(self, scores: torch.Tensor, top_k: int) -> list[dict]:
        values, ids = scores.topk(top_k)
        return [
            {"score": score, "label": self.model.config.id2label[index]}
            for score, index in zip(values.tolist(), ids.tolist())
        ]


def register_pipeline() -> None:
    """Makes `SpecPatchAudioClassificationPipeline` the implementation of the `"audio-classification"` task.

    The registry entry is updated in place (rather than through `PIPELINE_REGISTRY.register_pipeline`, which logs an
    "overwriting" warning on every import); the task's default model and model classes are kept.
    """
    from transformers.pipelines import PIPELINE_REGISTRY

    task = PIPELINE_REGISTRY.supported_tasks["audio-classification"]
    task["impl"] = SpecPatchAudioClassificationPipeline


__all__ = ["SpecPatchAudioClassificationPipeline", "register_pipeline"]

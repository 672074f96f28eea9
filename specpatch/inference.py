# Copyright 2026 The specpatch authors. Licensed under the Apache License, Version 2.0.
"""Inference on audio of any length: windows, frame-level scores and embeddings, for every specpatch model.

The models see one analysis window at a time (`feature_extractor.max_length` frames, 10 s for the AudioSet FFTP
models). Everything here cuts longer audio into overlapping windows, streams them through the model in batches and
puts the results back on the recording's time axis:

* [`classify_windows`]: the model's clip scores (logits) of every window, with its start / end time (what the
  `"audio-classification"` pipeline aggregates);
* [`frame_logits`] / [`frame_embeddings`]: per-time-step outputs of one batch of `input_values`. The encoder's patch
  tokens (after its final norm) with the special tokens removed: FFTP-AST's class and distillation tokens (the first
  two), FFTP-AuM's class token (in the middle of the sequence, `config.cls_token_index`), AaPE-ViT's class token (the
  first). Tokens are ordered frequency-major (`f * time_patches + t`); with FFTP there is one frequency row, so every
  token is a time slice, and 2-D grids (AaPE-ViT's 16 x 16 patches, square-patch AST) are averaged over the frequency
  patches of each time column. `frame_logits` applies the model's own classification head to every time column.
  The head was trained on the pooled (class) token, not per token: frame logits are a localisation read-out of a
  clip-level classifier (as PANNs' frame-wise output of a clip-trained model), not calibrated frame posteriors;
* [`frame_scores`] / [`timestamp_embeddings`] / [`scene_embeddings`]: the same over a whole recording, with
  timestamps (token centres) on one regular grid across windows (see [`stitch_windows`]).

Window layout ([`window_starts`]): windows start every `hop` samples while they end before the recording does, and
one last window ends at the recording's end (for frame outputs its start is rounded down to a whole token stride, so
every window's tokens lie on one grid); a recording no longer than one window is a single window, padded by the
feature extractor as a short clip is. Audio shorter than the front end's analysis window (25 ms) is zero-padded.

File paths are decoded in blocks (soundfile + a streaming soxr resampler, or torchcodec for formats libsndfile cannot
read), so only one block plus one batch of windows is in memory, whatever the recording's length.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from .audio_utils import resample, to_mono, validate_waveform

# Seconds of audio decoded at a time from a file (bounded memory for recordings of any length).
FILE_BLOCK_SECONDS = 30.0


# ----------------------------------------------------------------------------------------------------------------------
# Input layout
# ----------------------------------------------------------------------------------------------------------------------


def as_mono(audio, channels_last: bool | None = None, name: str = "audio") -> np.ndarray:
    """
    Validates one recording and downmixes it to a float32 mono numpy array `(samples,)`.

    Args:
        audio (`np.ndarray` or `torch.Tensor`):
            `(samples,)`, or 2-D multi-channel audio.
        channels_last (`bool`, *optional*):
            Layout of 2-D audio: `False` for channels-first `(channels, samples)` (specpatch's convention), `True` for
            channels-last `(samples, channels)` (what `soundfile.read` returns). When `None`, the shorter axis is the
            channel axis (audio has far more samples than channels), so stereo `(samples, 2)` is recognised; a square
            array is read channels-first.
    """
    if isinstance(audio, torch.Tensor):
        audio = audio.detach().cpu()
        audio = audio.float().numpy() if audio.dtype in (torch.float16, torch.bfloat16) else audio.numpy()
    elif not isinstance(audio, np.ndarray):
        try:
            audio = np.asarray(audio, dtype=np.float32)
        except (TypeError, ValueError) as err:
            raise ValueError(f"`{name}` must be an array, a tensor or a list of floats, got {type(audio).__name__}.") from err
    validate_waveform(audio, name=name, allowed_ndim=(1, 2))
    if audio.ndim == 2:
        if channels_last is None:
            channels_last = audio.shape[1] < audio.shape[0]
        audio = to_mono(audio, channels_last=channels_last)
    return np.ascontiguousarray(audio, dtype=np.float32)


# ----------------------------------------------------------------------------------------------------------------------
# Windows
# ----------------------------------------------------------------------------------------------------------------------


def model_window_samples(feature_extractor, num_frames: int | None = None) -> int:
    """The fewest samples for which the front end gives `num_frames` frames (defaults to `max_length`): the model's
    analysis window (9.995 s for 1000 kaldi frames of 10 ms)."""
    frames = int(num_frames if num_frames is not None else feature_extractor.max_length)
    hop, win = feature_extractor.hop_length, feature_extractor.win_length
    samples = max((frames - 1) * hop + (win if feature_extractor.frontend == "kaldi" else 0), win)
    while feature_extractor.num_frames(samples) < frames:  # only for a front end with other framing rules
        samples += 1
    return samples


def window_starts(num_samples: int, window: int, hop: int, align: int = 1) -> list[int]:
    """Start samples of the windows covering `num_samples` samples: `0, hop, 2 hop, ...` while a window ends before
    the recording does, then one last window ending at the recording's end (its start rounded down to a multiple of
    `align`, which keeps frame outputs on one grid). A recording no longer than `window` is one window."""
    if window < 1 or hop < 1 or align < 1:
        raise ValueError(f"Window, hop and align must be positive sample counts, got {window}, {hop}, {align}.")
    if num_samples <= window:
        return [0]
    starts = list(range(0, num_samples - window, hop))
    last = (num_samples - window) // align * align
    if last > starts[-1]:
        starts.append(last)
    return starts


class AudioSource:
    """A mono recording at the model's sampling rate, in memory or decoded from a file block by block.

    `windows(window, hop)` yields `(start_sample, samples)` pairs (the last window may be shorter); `num_samples` is
    known after the windows have been consumed (and at once for in-memory audio).
    """

    def __init__(self, audio: np.ndarray | None = None, path=None, sampling_rate: int = 16000):
        self.audio = audio
        self.path = path
        self.sampling_rate = int(sampling_rate)
        self.num_samples = None if audio is None else int(audio.shape[-1])

    @classmethod
    def from_file(cls, path_or_bytes, sampling_rate: int) -> AudioSource:
        if isinstance(path_or_bytes, (str, os.PathLike)) and not os.path.isfile(os.fspath(path_or_bytes)):
            raise ValueError(f"No such audio file: {os.fspath(path_or_bytes)!r}.")
        return cls(path=path_or_bytes, sampling_rate=sampling_rate)

    def blocks(self) -> Iterator[np.ndarray]:
        """Consecutive mono float32 blocks of the recording at `sampling_rate`."""
        if self.audio is not None:
            yield self.audio
            return
        yield from _decode_blocks(self.path, self.sampling_rate)

    def windows(self, window: int, hop: int, align: int = 1) -> Iterator[tuple[int, np.ndarray]]:
        """`(start, samples)` of the windows of [`window_starts`], decoded and emitted as the audio streams in."""
        buffer = np.zeros(0, dtype=np.float32)
        offset = 0  # sample index of buffer[0]
        total = 0
        k = 0  # next regular window
        for block in self.blocks():
            buffer = np.concatenate([buffer, block]) if buffer.size else block
            total += block.shape[-1]
            # A regular window is final once a sample after it has arrived (the recording goes on).
            while k * hop + window < total:
                start = k * hop - offset
                yield k * hop, buffer[start : start + window]
                k += 1
            # Keep everything from the last emitted window's start: the final window may begin there.
            drop = max(0, (k - 1) * hop - offset)
            if drop > 0:
                buffer, offset = buffer[drop:], offset + drop
        if total == 0:
            raise ValueError("The audio is empty; expected at least one sample.")
        self.num_samples = total
        for start in window_starts(total, window, hop, align)[k:]:
            yield start, buffer[start - offset : start - offset + window]


def _decode_blocks(source, sampling_rate: int) -> Iterator[np.ndarray]:
    """Mono float32 blocks of an audio file, resampled as a stream (soundfile + soxr, else torchcodec)."""
    import soundfile

    payload = None
    if isinstance(source, (bytes, bytearray, memoryview)):
        payload = bytes(source)
    try:
        handle = soundfile.SoundFile(_io_source(source, payload))
    except Exception as err:  # libsndfile cannot read this format: torchcodec (FFmpeg) decodes and resamples
        yield from _decode_blocks_torchcodec(source if payload is None else payload, sampling_rate, err)
        return
    with handle:
        rate = handle.samplerate
        block_frames = max(1, int(FILE_BLOCK_SECONDS * rate))
        resampler = None
        if rate != sampling_rate:
            import soxr

            resampler = soxr.ResampleStream(rate, sampling_rate, 1, dtype="float32", quality="HQ")
        while True:
            block = handle.read(block_frames, dtype="float32", always_2d=True)
            last = block.shape[0] < block_frames
            if block.shape[0]:
                validate_waveform(block, name=f"decoded audio from {_label(source)}")
            mono = np.ascontiguousarray(block.mean(axis=1, dtype=np.float32) if block.shape[1] > 1 else block[:, 0])
            if resampler is not None:
                mono = resampler.resample_chunk(mono, last=last).astype(np.float32, copy=False)
            if mono.size:
                yield mono
            if last:
                return


def _io_source(source, payload):
    import io

    if payload is not None:
        return io.BytesIO(payload)
    if hasattr(source, "read"):
        return source
    return os.fspath(source)


def _label(source) -> str:
    return repr(os.fspath(source)) if isinstance(source, (str, os.PathLike)) else "<bytes>"


def _decode_blocks_torchcodec(source, sampling_rate: int, soundfile_error: Exception) -> Iterator[np.ndarray]:
    try:
        from torchcodec.decoders import AudioDecoder

        decoder = AudioDecoder(os.fspath(source) if isinstance(source, os.PathLike) else source,
                               sample_rate=sampling_rate, num_channels=1)
    except Exception as err:  # noqa: BLE001 - report both decoders' reasons together
        raise ValueError(
            f"Could not decode audio from {_label(source)}. soundfile: {soundfile_error} | torchcodec: {err}"
        ) from err
    duration = decoder.metadata.duration_seconds_from_header  # may be missing or inexact
    start = 0.0
    while True:
        stop = start + FILE_BLOCK_SECONDS
        last = duration is not None and stop >= duration
        try:
            # The last block reads to the end of the stream (past the header's duration if there is more).
            samples = decoder.get_samples_played_in_range(start, None if last else stop).data
        except RuntimeError as err:
            if start > 0 and "No audio frames" in str(err):
                return  # the previous block ended the stream exactly
            raise
        block = samples.to(torch.float32).numpy().reshape(-1)
        if block.size == 0:
            return
        validate_waveform(block, name=f"decoded audio from {_label(source)}")
        yield block
        if last:
            return
        start = stop


def make_source(inputs, sampling_rate: int, channels_last: bool | None = None,
                input_sampling_rate: int | None = None) -> AudioSource:
    """An [`AudioSource`] from a file path / bytes (streamed), a `{"raw"|"array": audio, "sampling_rate": sr}` dict
    or an array / tensor at `input_sampling_rate` (default: `sampling_rate`)."""
    if isinstance(inputs, (str, os.PathLike, bytes, bytearray, memoryview)):
        return AudioSource.from_file(inputs, sampling_rate)
    if isinstance(inputs, dict):
        if "sampling_rate" not in inputs or not ("raw" in inputs or "array" in inputs):
            raise ValueError(
                'A dict input needs the audio under "raw" (or "array", as `datasets` names it) and its '
                f'"sampling_rate"; got keys {sorted(inputs)}.'
            )
        audio = inputs["raw"] if "raw" in inputs else inputs["array"]
        input_sampling_rate = inputs["sampling_rate"]
    else:
        audio = inputs
    mono = as_mono(audio, channels_last=channels_last)
    if input_sampling_rate is not None and input_sampling_rate != sampling_rate:
        mono = resample(mono, input_sampling_rate, sampling_rate).astype(np.float32, copy=False)
    return AudioSource(mono, sampling_rate=sampling_rate)


# ----------------------------------------------------------------------------------------------------------------------
# Features
# ----------------------------------------------------------------------------------------------------------------------


def featurize(feature_extractor, chunks: list, num_frames: int | None = None, device=None) -> torch.Tensor:
    """`input_values` `(len(chunks), num_frames, mel)` of mono chunks (numpy or torch, at the extractor's rate).

    Chunks shorter than the front end's analysis window are zero-padded to it (instead of the extractor's "too
    short" error). Raises a `ValueError` when the features are not finite, which happens for absurd amplitudes
    (e.g. 1e30, whose power spectrum overflows float32): samples are expected as floats in about [-1, 1].
    """
    win = feature_extractor.win_length
    padded = []
    for chunk in chunks:
        if chunk.shape[-1] < win:
            if isinstance(chunk, torch.Tensor):
                chunk = torch.nn.functional.pad(chunk, (0, win - chunk.shape[-1]))
            else:
                chunk = np.pad(chunk, (0, win - chunk.shape[-1]))
        padded.append(chunk)
    features = feature_extractor(
        padded,
        sampling_rate=feature_extractor.sampling_rate,
        return_tensors="pt",
        max_length=num_frames,
        device=device,
    )["input_values"]
    check_finite_features(features, chunks)
    return features


def check_finite_features(features: torch.Tensor, chunks) -> None:
    if not bool(torch.isfinite(features).all()):
        peak = max(float(np.abs(c.detach().cpu().numpy() if isinstance(c, torch.Tensor) else c).max()) for c in chunks)
        raise ValueError(
            f"The log-mel features of the audio are not finite (peak |sample| = {peak:.3g}): audio is expected as "
            "float samples in about [-1, 1] (or integer PCM values); rescale it."
        )


# ----------------------------------------------------------------------------------------------------------------------
# Token layout
# ----------------------------------------------------------------------------------------------------------------------


def _parts(model):
    """`(encoder, head)`: the bare encoder (`FFTPASTModel`, `FFTPAuMModel`, `AaPEViTModel`) and the classification
    head of an `...ForAudioClassification` model (`None` for a bare encoder)."""
    model_type = getattr(model.config, "model_type", None)
    if model_type not in ("fftp_ast", "fftp_aum", "aape_vit"):
        raise ValueError(f"Expected a specpatch model (fftp_ast, fftp_aum or aape_vit), got model_type {model_type!r}.")
    encoder = model.base_model
    head = getattr(model, "classifier", None) if encoder is not model else None
    return encoder, head


def _special_token_indices(model_type: str, config, num_patches: int) -> tuple[int, ...]:
    """Indices of the non-patch tokens in the encoder's sequence (see the module docstring)."""
    if model_type == "fftp_ast":
        return (0, 1)  # class and distillation tokens, prepended (modeling_fftp_ast.FFTPASTEmbeddings)
    if model_type == "fftp_aum":
        return (config.cls_token_index(num_patches),)  # AuM: one class token, in the middle by default
    return (0,)  # AaPE-ViT: class token first


def time_patching(model) -> tuple[int, int]:
    """`(patch_frames, stride_frames)` of the model's patch stem along time."""
    encoder, _ = _parts(model)
    stem = encoder.embeddings.patch_embeddings
    return int(stem.patch_size[1]), int(stem.stride[1])


@torch.no_grad()
def encode(model, input_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """
    Runs the encoder of `model` on `input_values` `(batch, frames, mel)`.

    Returns:
        `(pooled, frames)`: the encoder's pooled output `(batch, hidden)` (the input of the classification head: AST's
        mean of class and distillation tokens, AuM's and AaPE-ViT's class token) and the time-column embeddings
        `(batch, time_patches, hidden)` (patch tokens after the final norm, special tokens removed, averaged over
        frequency patches).
    """
    encoder, _ = _parts(model)
    outputs = encoder(input_values, return_dict=True)
    hidden = outputs.last_hidden_state
    num_f, num_t = encoder.embeddings.patch_embeddings.grid_size(input_values.shape[1])
    special = _special_token_indices(model.config.model_type, model.config, num_f * num_t)
    keep = torch.ones(hidden.shape[1], dtype=torch.bool, device=hidden.device)
    keep[list(special)] = False
    patches = hidden[:, keep]
    if patches.shape[1] != num_f * num_t:
        raise RuntimeError(
            f"Token layout mismatch: {patches.shape[1]} patch tokens for a {num_f} x {num_t} grid "
            f"({model.config.model_type})."
        )
    frames = patches.reshape(hidden.shape[0], num_f, num_t, hidden.shape[-1]).mean(dim=1)
    return outputs.pooler_output, frames


def frame_embeddings(model, input_values: torch.Tensor) -> torch.Tensor:
    """Time-column embeddings `(batch, time_patches, hidden)` of `input_values` (see [`encode`])."""
    return encode(model, input_values)[1]


@torch.no_grad()
def frame_logits(model, input_values: torch.Tensor) -> torch.Tensor:
    """
    Frame-level logits `(batch, time_patches, num_labels)`: the classification head of an
    `...ForAudioClassification` model applied to every time-column embedding (see the module docstring for what they
    mean). Token `t` covers frames `[t * stride, t * stride + patch)` (see [`token_times`]).
    """
    _, head = _parts(model)
    if head is None:
        raise ValueError("frame_logits needs a model with a classification head (an ...ForAudioClassification model).")
    return head(frame_embeddings(model, input_values))


def token_times(model, feature_extractor, num_tokens: int, offset_samples: int = 0) -> np.ndarray:
    """Centres in seconds of the first `num_tokens` time tokens of a window starting at sample `offset_samples`
    (the centre of the frames a token's patch covers; kaldi frames start at `f * hop`, logmel frames are centred on
    `f * hop`)."""
    patch, stride = time_patching(model)
    hop, win = feature_extractor.hop_length, feature_extractor.win_length
    frame_centre_offset = win / 2 if feature_extractor.frontend == "kaldi" else 0.0
    t = np.arange(num_tokens, dtype=np.float64)
    centres = offset_samples + (t * stride + (patch - 1) / 2) * hop + frame_centre_offset
    return centres / feature_extractor.sampling_rate


# ----------------------------------------------------------------------------------------------------------------------
# Whole recordings
# ----------------------------------------------------------------------------------------------------------------------


@dataclass
class WindowScores:
    """Clip logits of each window of a recording: `logits` `(windows, num_labels)`, `starts` / `ends` in seconds
    (`ends` clipped to the recording's end) and the recording's `duration` in seconds."""

    logits: np.ndarray
    starts: np.ndarray
    ends: np.ndarray
    duration: float


def _batched(iterable: Iterable, size: int) -> Iterator[list]:
    batch = []
    for item in iterable:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _model_device_dtype(model):
    parameter = next(model.parameters())
    return parameter.device, parameter.dtype


@torch.no_grad()
def classify_windows(
    model,
    feature_extractor,
    source: AudioSource,
    window: int | None = None,
    hop: int | None = None,
    batch_size: int = 8,
    dtype: torch.dtype | None = None,
) -> WindowScores:
    """
    Logits of every window of a recording, computed by the model's own forward, `batch_size` windows at a time.

    Args:
        model: an `...ForAudioClassification` specpatch model.
        feature_extractor ([`SpecPatchFeatureExtractor`]): its feature extractor.
        source ([`AudioSource`]): the recording (see [`make_source`]).
        window (`int`, *optional*): window length in samples; defaults to the model window
            ([`model_window_samples`]). A window longer than the model window is featurised to all its frames
            (the models interpolate their position embeddings), never truncated.
        hop (`int`, *optional*): samples between window starts; defaults to half the window.
    """
    window = window or model_window_samples(feature_extractor)
    hop = hop or max(1, window // 2)
    num_frames = max(feature_extractor.max_length, feature_extractor.num_frames(window))
    device, model_dtype = _model_device_dtype(model)
    logits, starts = [], []
    for batch in _batched(source.windows(window, hop), batch_size):
        features = featurize(feature_extractor, [chunk for _, chunk in batch], num_frames, device=device)
        output = model(input_values=features.to(dtype or model_dtype)).logits.float()
        if not bool(torch.isfinite(output).all()):
            raise ValueError("The model produced non-finite scores for this audio (check its amplitude and the model).")
        logits.append(output.cpu().numpy())
        starts.extend(start for start, _ in batch)
    rate = feature_extractor.sampling_rate
    starts = np.asarray(starts, dtype=np.float64)
    ends = np.minimum(starts + window, source.num_samples)
    return WindowScores(np.concatenate(logits), starts / rate, ends / rate, source.num_samples / rate)


def token_plan(model, feature_extractor, window: int | None = None, hop: int | None = None):
    """`(window, hop, stride_samples, tokens_per_window, num_frames)` for frame-level outputs: the hop is rounded down
    to a whole number of token strides (at least one), so every window's tokens lie on one regular grid."""
    window = window or model_window_samples(feature_extractor)
    num_frames = max(feature_extractor.max_length, feature_extractor.num_frames(window))
    patch, stride = time_patching(model)
    stride_samples = stride * feature_extractor.hop_length
    tokens = (num_frames - patch) // stride + 1
    hop = hop or window // 2
    hop = max(stride_samples, hop // stride_samples * stride_samples)
    if hop // stride_samples > tokens:
        raise ValueError(f"The hop ({hop} samples) is longer than the tokens of one window cover; use a shorter hop.")
    if tokens < 1:
        raise ValueError(f"A window of {num_frames} frames is shorter than one patch ({patch} frames).")
    return window, hop, stride_samples, tokens, num_frames


def stitch_windows(per_window: list[torch.Tensor], offsets: list[int]) -> torch.Tensor:
    """
    Joins the token sequences `(..., tokens, dim)` of consecutive windows into one sequence on the global token grid:
    window `k` starts `offsets[k]` tokens into the recording, so its token `t` is global token `offsets[k] + t`.

    Every global token is taken from the window in which it is most central: the boundary between windows `k` and
    `k + 1` is the midpoint of their centres (the overlap is split evenly, as the ASR pipeline's strides do). The
    result has `offsets[-1] + tokens` entries, one per grid position.
    """
    tokens = per_window[0].shape[-2]
    bounds = [0] + [(offsets[k] + offsets[k + 1] + tokens) // 2 for k in range(len(offsets) - 1)]
    bounds.append(offsets[-1] + tokens)
    pieces = [
        values[..., bounds[k] - offsets[k] : bounds[k + 1] - offsets[k], :] for k, values in enumerate(per_window)
    ]
    return torch.cat(pieces, dim=-2)


@torch.no_grad()
def _frame_outputs(model, feature_extractor, audio, window, hop, batch_size, want_logits: bool):
    """Frame-level embeddings (and logits) of a batch of equal-length recordings `(n_sounds, samples)` (tensor on any
    device), stitched over windows; returns `(pooled_mean (n, D), frames (n, T, D), logits (n, T, C) or None,
    times (T,) seconds)`."""
    if audio.ndim == 1:
        audio = audio.unsqueeze(0)
    n_sounds, num_samples = audio.shape
    window, hop, stride_samples, tokens, num_frames = token_plan(model, feature_extractor, window, hop)
    starts = window_starts(num_samples, window, hop, align=stride_samples)
    device, dtype = _model_device_dtype(model)
    _, head = _parts(model)
    jobs = [(i, k) for i in range(n_sounds) for k in range(len(starts))]
    pooled = torch.zeros(n_sounds, len(starts), model.config.hidden_size, device=device)
    frames = [[None] * len(starts) for _ in range(n_sounds)]
    for batch in _batched(jobs, batch_size):
        chunks = [audio[i, starts[k] : starts[k] + window].to(device=device, dtype=torch.float32) for i, k in batch]
        features = featurize(feature_extractor, chunks, num_frames, device=device)
        window_pooled, window_frames = encode(model, features.to(dtype))
        for row, (i, k) in enumerate(batch):
            pooled[i, k] = window_pooled[row].float()
            frames[i][k] = window_frames[row]
    offsets = [start // stride_samples for start in starts]
    frames = torch.stack([stitch_windows(per_sound, offsets) for per_sound in frames])
    times = token_times(model, feature_extractor, frames.shape[1])
    # Keep the tokens centred inside the recording (at least one): the rest only saw padding.
    keep = max(1, int(np.searchsorted(times, num_samples / feature_extractor.sampling_rate, side="left")))
    frames, times = frames[:, :keep], times[:keep]
    logits = head(frames).float() if want_logits and head is not None else None
    return pooled.mean(dim=1), frames.float(), logits, times


def _as_batch(audio, feature_extractor, sampling_rate):
    if isinstance(audio, (str, os.PathLike, bytes, bytearray)):
        raise ValueError("Pass the decoded audio (an array or tensor); use `specpatch.audio_utils.load_audio` for files.")
    if not isinstance(audio, torch.Tensor):
        audio = torch.from_numpy(np.asarray(audio, dtype=np.float32))
    validate_waveform(audio, name="audio", allowed_ndim=(1, 2))
    audio = audio.float()
    if sampling_rate is not None and sampling_rate != feature_extractor.sampling_rate:
        audio = resample(audio, sampling_rate, feature_extractor.sampling_rate)
    return audio if audio.ndim == 2 else audio.unsqueeze(0)


def frame_scores(
    model,
    feature_extractor,
    audio,
    sampling_rate: int | None = None,
    window: int | None = None,
    hop: int | None = None,
    batch_size: int = 8,
    function_to_apply: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """
    Frame-level scores of one mono recording of any length (see [`frame_logits`]).

    Args:
        audio (`np.ndarray` or `torch.Tensor` of shape `(samples,)`): the recording.
        sampling_rate (`int`, *optional*): its rate (resampled when it differs from the extractor's).
        window, hop (`int`, *optional*): window and hop in samples (defaults: the model window, half of it).
        function_to_apply (`str`, *optional*): `"sigmoid"`, `"softmax"` or `"none"`; defaults to sigmoid for
            `multi_label_classification` models and softmax otherwise.

    Returns:
        `(scores, times)`: `(frames, num_labels)` scores and the frames' centre times in seconds (a regular grid,
        one entry per token stride).
    """
    audio = _as_batch(audio, feature_extractor, sampling_rate)
    if audio.shape[0] != 1:
        raise ValueError(f"frame_scores takes one mono recording (samples,), got shape {tuple(audio.shape)}.")
    _, _, logits, times = _frame_outputs(model, feature_extractor, audio, window, hop, batch_size, want_logits=True)
    if logits is None:
        raise ValueError("frame_scores needs a model with a classification head (an ...ForAudioClassification model).")
    return apply_activation(logits[0], model.config, function_to_apply).cpu().numpy(), times


def apply_activation(logits: torch.Tensor, config, function_to_apply: str | None = None) -> torch.Tensor:
    """Scores from logits as transformers' audio-classification pipeline computes them (`function_to_apply` defaults
    to sigmoid for multi-label, none for regression, softmax otherwise)."""
    if function_to_apply is None:
        function_to_apply = {"multi_label_classification": "sigmoid", "regression": "none"}.get(
            config.problem_type, "softmax"
        )
    if function_to_apply == "sigmoid":
        return logits.sigmoid()
    if function_to_apply == "softmax":
        return logits.softmax(-1)
    if function_to_apply == "none":
        return logits
    raise ValueError(f"`function_to_apply` must be 'softmax', 'sigmoid' or 'none', got {function_to_apply!r}.")


def timestamp_embeddings(
    model, feature_extractor, audio, sampling_rate: int | None = None, window=None, hop=None, batch_size: int = 8
) -> tuple[torch.Tensor, torch.Tensor]:
    """
    Timestamped frame embeddings (the HEAR convention) of `audio` `(n_sounds, samples)` or `(samples,)`.

    Returns:
        `(embeddings, timestamps)`: float32 `(n_sounds, n_timestamps, hidden_size)` time-column embeddings (see
        [`encode`]) and their centre times in **milliseconds**, `(n_sounds, n_timestamps)`, on a regular grid of one
        token stride (40 ms for fftp-248, 10 ms for fftp-991, 160 ms for AaPE-ViT's 16-frame patches).
    """
    audio = _as_batch(audio, feature_extractor, sampling_rate)
    _, frames, _, times = _frame_outputs(model, feature_extractor, audio, window, hop, batch_size, want_logits=False)
    timestamps = torch.as_tensor(times * 1000.0, dtype=torch.float32, device=frames.device)
    return frames, timestamps.expand(frames.shape[0], -1).contiguous()


def scene_embeddings(
    model, feature_extractor, audio, sampling_rate: int | None = None, window=None, hop=None, batch_size: int = 8
) -> torch.Tensor:
    """
    Clip embeddings `(n_sounds, 2 * hidden_size)` of `audio` `(n_sounds, samples)` or `(samples,)`: the encoder's
    pooled output averaged over the windows, concatenated with the mean of the time-column embeddings of the real
    (non-padded) frames, the linear-probing features of M2D / EVAR that AaPE uses (`get_probe_features`).
    """
    audio = _as_batch(audio, feature_extractor, sampling_rate)
    pooled, frames, _, _ = _frame_outputs(model, feature_extractor, audio, window, hop, batch_size, want_logits=False)
    return torch.cat([pooled, frames.mean(dim=1)], dim=-1)


__all__ = [
    "AudioSource",
    "WindowScores",
    "apply_activation",
    "as_mono",
    "classify_windows",
    "encode",
    "featurize",
    "frame_embeddings",
    "frame_logits",
    "frame_scores",
    "make_source",
    "model_window_samples",
    "scene_embeddings",
    "stitch_windows",
    "timestamp_embeddings",
    "token_plan",
    "token_times",
    "window_starts",
]

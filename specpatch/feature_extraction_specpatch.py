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
Batched log-mel feature extractor for the specpatch models (FFTP-AST, FFTP-AuM, AaPE-ViT).

Two front ends, both computed as one batched torch graph (framing with `unfold`, `torch.fft.rfft`, a mel matmul) on
the device of the input tensor. On CPU the frames go through in cache-sized chunks that worker threads take from one
shared counter, and with numba (a dependency) the passes before and after the FFT (framing, pre-emphasis, DC removal
and window; power spectrum) are two compiled loops (`cpu_kernels.windowed_frames` / `power_spectrum`) that do the
torch ops' float64 arithmetic in the same order: identical features, one memory pass each.

- `"kaldi"`: the Kaldi-compatible fbank that AST and the FFTP paper use (fftp-specmask.txt Sec. IV, NOTES.md), equal
  to transformers' `ASTFeatureExtractor` (its numpy path, `torchaudio.compliance.kaldi.fbank` settings): 25 ms
  symmetric Hann ("hanning") window, 10 ms shift, `snip_edges` framing, per-frame DC removal, pre-emphasis 0.97,
  FFT size rounded up to a power of two, power spectrum, 128 triangular filters on Kaldi's mel scale from 20 Hz to
  Nyquist, `log(max(mel, float32 eps))`, no dither, no energy term (so `htk_compat=True` changes nothing; and AST's
  removal of the waveform mean is a no-op after the per-frame DC removal). Normalised with `(x - mean) / (2 * std)`.
- `"logmel"`: the log-mel spectrogram of AaPE (aape.txt Sec. IV): 400-sample Hann window, hop 160, n_fft 1024,
  128 mel bins, `log(mel + eps)`, standardised with `(x - mean) / std`. The unstated details follow
  `torchaudio.transforms.MelSpectrogram`'s defaults, the usual choice of the works AaPE follows (ATST, M2D):
  periodic Hann, centred frames with reflect padding (`1 + samples // hop` frames), HTK mel scale from 0 Hz to
  Nyquist without area normalisation.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import itertools
import math
import threading
import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from transformers.audio_utils import mel_filter_bank
from transformers.feature_extraction_sequence_utils import SequenceFeatureExtractor
from transformers.feature_extraction_utils import BatchFeature
from transformers.utils import TensorType, logging

from .audio_utils import resample, to_mono, validate_waveform
from .cpu_kernels import empty_host_tensor, power_spectrum, thread_pool, windowed_frames
from .cpu_kernels import is_compiled as cpu_kernels_compiled

logger = logging.get_logger(__name__)

FRONTENDS = ("kaldi", "logmel")

# AST's AudioSet statistics (used by ASTFeatureExtractor and NOTES.md) for the kaldi front end.
AUDIOSET_KALDI_MEAN = -4.2677393
AUDIOSET_KALDI_STD = 4.5689974
# Placeholders for the logmel front end: the AaPE paper's values were lost in extraction. These are NOT measured
# statistics, only numbers of the usual magnitude of AudioSet log-mel statistics (M2D, a work AaPE follows, uses about
# -7.1 / 4.2 for a similar log-mel). Recompute them on the training set with `compute_normalization_stats`.
LOGMEL_PLACEHOLDER_MEAN = -7.1
LOGMEL_PLACEHOLDER_STD = 4.2

# Kaldi fbank constants (kaldi/src/feat/feature-window.cc, feature-fbank.cc) used by AST.
KALDI_PREEMPHASIS = 0.97
FLOAT32_EPS = float(np.finfo(np.float32).eps)  # 1.1920929e-07, Kaldi's log floor


@functools.cache
def _openmp_backend() -> bool:
    """Whether torch's intra-op threads come from OpenMP (thread counts set per OS thread)."""
    return "parallel backend: OpenMP" in torch.__config__.parallel_info()


_CALLER = threading.local()  # `workers`: torch's thread count of the caller, set while `_quiet_caller` is active


@contextlib.contextmanager
def _quiet_caller():
    """The calling thread runs torch single-threaded while features are extracted on the CPU; the chunk workers
    (`_log_mel`) get its thread count. A parallel torch op in the caller leaves torch's OpenMP threads spinning for
    ~10 ms after it (libgomp's default wait policy), on the very cores the chunk workers are about to use; the
    caller's own ops (stacking, per-frame means, one copy) are memory-bound and lose little on one thread. Measured
    on 2 cores (32 x 10 s, two interleaved A/B runs): 57 -> 49 and 56 -> 55 ms back to back, 95 -> 72 and 77 -> 74 ms
    right after an `ASTFeatureExtractor` call. Under OpenMP the setting is per OS thread and is restored on exit;
    nested uses keep the outermost count."""
    threads = torch.get_num_threads()
    if getattr(_CALLER, "workers", None) is not None or threads == 1 or not _openmp_backend():
        yield
        return
    _CALLER.workers = threads
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        _CALLER.workers = None


class SpecPatchFeatureExtractor(SequenceFeatureExtractor):
    r"""
    Constructs a batched log-mel feature extractor for FFTP-AST, FFTP-AuM and AaPE-ViT.

    It takes [`ASTFeatureExtractor`]'s arguments and returns the same `input_values` layout `(batch, frames, mel)`;
    with the default `"kaldi"` front end its output equals `ASTFeatureExtractor`'s (to about 1e-5) but is
    computed as one batched torch graph that runs on CPU or GPU tensors.

    Order of operations (the same as `ASTFeatureExtractor`): log-mel -> pad with `padding_value` (in the log-mel
    domain) or truncate to `max_length` frames -> normalise. Padded frames therefore hold
    `(padding_value - mean) / scale` after normalisation, exactly as in AST.

    Input layout rule (time is always the last axis, channels come first; nothing is guessed from the shape):

    - a 1-D array/tensor or a list of floats: one mono clip;
    - a 2-D array/tensor: a batch of mono clips `(batch, samples)` (as in `ASTFeatureExtractor`);
    - a 3-D array/tensor: a batch of multi-channel clips `(batch, channels, samples)`, downmixed to mono;
    - a list/tuple of arrays/tensors (lengths may differ): each item is a clip, `(samples,)` mono or
      `(channels, samples)` multi-channel (downmixed). Wrap a single multi-channel clip in a list.

    Every clip needs at least `win_length` samples (25 ms). Values are used as given (integer PCM is not rescaled,
    as in `ASTFeatureExtractor`). Framing, window and FFT run in float64 in cache-sized chunks of frames (see
    `_log_mel`), the mel projection and the output in float32.

    Args:
        feature_size (`int`, *optional*, defaults to 1):
            The feature dimension of the raw input (mono audio).
        sampling_rate (`int`, *optional*, defaults to 16000):
            Sampling rate the models expect, in Hz. Input at another rate is resampled with soxr.
        num_mel_bins (`int`, *optional*, defaults to 128):
            Number of mel filters (the feature dimension of `input_values`).
        max_length (`int`, *optional*, defaults to 1024):
            Number of frames every example is padded or truncated to (1024 for AST's square baseline, 1000 for the
            FFTP AudioSet models, 128 for Speech Commands, 608 for AaPE pre-training).
        padding_value (`float`, *optional*, defaults to 0.0):
            Log-mel value of padded frames, before normalisation (AST pads with zeros).
        do_normalize (`bool`, *optional*, defaults to `True`):
            Whether to normalise the features with `mean` and `std`.
        mean (`float`, *optional*):
            Dataset mean of the log-mel. Defaults to AudioSet's -4.2677393 for `"kaldi"` (AST's value) and to a
            placeholder -7.1 for `"logmel"` (AaPE's value was lost; recompute it with
            [`~SpecPatchFeatureExtractor.compute_normalization_stats`]).
        std (`float`, *optional*):
            Dataset standard deviation of the log-mel. Defaults to AudioSet's 4.5689974 for `"kaldi"` and to a
            placeholder 4.2 for `"logmel"`. The kaldi front end divides by `2 * std` (AST's convention), the logmel
            front end by `std`.
        return_attention_mask (`bool`, *optional*, defaults to `False`):
            Whether to also return a frame-level `attention_mask` `(batch, frames)` (1 on real frames, 0 on padding).
        frontend (`str`, *optional*, defaults to `"kaldi"`):
            `"kaldi"` (AST / FFTP fbank) or `"logmel"` (AaPE log-mel).
        win_length (`int`, *optional*):
            Analysis window in samples. Defaults to 25 ms (400 samples at 16 kHz).
        hop_length (`int`, *optional*):
            Frame shift in samples. Defaults to 10 ms (160 samples at 16 kHz).
        n_fft (`int`, *optional*):
            FFT size. Defaults to the next power of two of `win_length` for `"kaldi"` (512, as Kaldi does) and to 1024
            for `"logmel"` (AaPE).
        f_min (`float`, *optional*):
            Lowest mel filter edge in Hz. Defaults to 20 (Kaldi) for `"kaldi"` and 0 (torchaudio) for `"logmel"`.
        f_max (`float`, *optional*):
            Highest mel filter edge in Hz. Defaults to `sampling_rate / 2`.
        log_eps (`float`, *optional*, defaults to 1.1920929e-07):
            Small constant of the log: floor `log(max(mel, log_eps))` for `"kaldi"` (Kaldi's float epsilon), offset
            `log(mel + log_eps)` for `"logmel"`.
    """

    model_input_names = ["input_values"]
    # Frames per chunk (a 2 MB float64 FFT buffer on CPU; 512 measured fastest at 1 thread): an implementation
    # detail, not a model setting.
    _cpu_chunk_frames = 512
    _gpu_chunk_frames = 65536
    _thread_chunks = True
    _fused_cpu_kernels = cpu_kernels_compiled()  # numba kernels for the passes around the FFT (else torch ops)

    def __init__(
        self,
        feature_size: int = 1,
        sampling_rate: int = 16000,
        num_mel_bins: int = 128,
        max_length: int = 1024,
        padding_value: float = 0.0,
        do_normalize: bool = True,
        mean: float | None = None,
        std: float | None = None,
        return_attention_mask: bool = False,
        frontend: str = "kaldi",
        win_length: int | None = None,
        hop_length: int | None = None,
        n_fft: int | None = None,
        f_min: float | None = None,
        f_max: float | None = None,
        log_eps: float = FLOAT32_EPS,
        **kwargs,
    ):
        super().__init__(feature_size=feature_size, sampling_rate=sampling_rate, padding_value=padding_value, **kwargs)
        if frontend not in FRONTENDS:
            raise ValueError(f"`frontend` must be one of {FRONTENDS}, got {frontend!r}.")
        is_kaldi = frontend == "kaldi"
        self.frontend = frontend
        self.num_mel_bins = int(num_mel_bins)
        self.max_length = int(max_length)
        self.do_normalize = bool(do_normalize)
        self.mean = float(mean if mean is not None else (AUDIOSET_KALDI_MEAN if is_kaldi else LOGMEL_PLACEHOLDER_MEAN))
        self.std = float(std if std is not None else (AUDIOSET_KALDI_STD if is_kaldi else LOGMEL_PLACEHOLDER_STD))
        self.return_attention_mask = bool(return_attention_mask)
        # Kaldi derives the window from milliseconds: int(sr * 0.001 * 25) and int(sr * 0.001 * 10).
        self.win_length = int(win_length if win_length is not None else int(sampling_rate * 0.025))
        self.hop_length = int(hop_length if hop_length is not None else int(sampling_rate * 0.010))
        if n_fft is None:
            n_fft = 1 << (self.win_length - 1).bit_length() if is_kaldi else 1024
        self.n_fft = int(n_fft)
        self.f_min = float(f_min if f_min is not None else (20.0 if is_kaldi else 0.0))
        self.f_max = float(f_max if f_max is not None else sampling_rate / 2)
        self.log_eps = float(log_eps)

        for name in ("sampling_rate", "num_mel_bins", "max_length", "win_length", "hop_length", "n_fft"):
            if not getattr(self, name) > 0:
                raise ValueError(f"`{name}` must be a positive integer, got {getattr(self, name)}.")
        if self.win_length > self.n_fft:
            raise ValueError(f"`win_length` ({self.win_length}) must not exceed `n_fft` ({self.n_fft}).")
        if not 0 <= self.f_min < self.f_max <= sampling_rate / 2:
            raise ValueError(
                f"Need 0 <= f_min < f_max <= sampling_rate / 2, got f_min={self.f_min}, f_max={self.f_max}, "
                f"sampling_rate={sampling_rate}."
            )
        if not self.std > 0:
            raise ValueError(f"`std` must be positive, got {self.std}.")
        if not self.log_eps > 0:
            raise ValueError(f"`log_eps` must be positive, got {self.log_eps}.")

        # Per-device cache of the window and the mel matrix; private, so never serialised (see `to_dict`).
        self._buffers: dict[Any, tuple[torch.Tensor, torch.Tensor]] = {}

    # ------------------------------------------------------------------------------------------------------------
    # Serialisation

    def to_dict(self) -> dict[str, Any]:
        """Serialises the public (JSON-serialisable) attributes; the cached window / mel tensors are left out."""
        output = {k: copy.deepcopy(v) for k, v in self.__dict__.items() if not k.startswith("_")}
        output["feature_extractor_type"] = self.__class__.__name__
        return output

    # ------------------------------------------------------------------------------------------------------------
    # Front ends

    @property
    def normalization_scale(self) -> float:
        """Divisor of the normalisation: `2 * std` for the kaldi front end (AST), `std` for the logmel one (AaPE)."""
        return 2.0 * self.std if self.frontend == "kaldi" else self.std

    def mel_filters(self) -> np.ndarray:
        """The `(n_fft // 2 + 1, num_mel_bins)` float64 mel filter bank of the front end (transformers' builder)."""
        is_kaldi = self.frontend == "kaldi"
        with warnings.catch_warnings():
            # With 128 Kaldi filters on a 512-point FFT the lowest filter is empty (all zeros); Kaldi, torchaudio
            # and ASTFeatureExtractor keep it (its log is the floor), so we keep it too and silence the warning.
            warnings.simplefilter("ignore", UserWarning)
            return mel_filter_bank(
                num_frequency_bins=self.n_fft // 2 + 1,
                num_mel_filters=self.num_mel_bins,
                min_frequency=self.f_min,
                max_frequency=self.f_max,
                sampling_rate=self.sampling_rate,
                norm=None,
                mel_scale="kaldi" if is_kaldi else "htk",
                # Kaldi builds its triangles in mel space; torchaudio's MelSpectrogram (logmel) in Hz.
                triangularize_in_mel_space=is_kaldi,
            )

    def window(self) -> np.ndarray:
        """The float64 analysis window: symmetric Hann for kaldi ("hanning"), periodic Hann for logmel."""
        return torch.hann_window(self.win_length, periodic=self.frontend != "kaldi", dtype=torch.float64).numpy()

    def _get_buffers(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, list]:
        if not hasattr(self, "_buffers"):
            self._buffers = {}
        key = str(device)
        if key not in self._buffers:
            # The window is applied in float64 (see `_log_mel`), the mel matrix in float32.
            window = torch.from_numpy(self.window()).to(device=device)
            mel = torch.from_numpy(self.mel_filters()).to(device=device, dtype=torch.float32)
            self._buffers[key] = (window, mel, self._mel_bands(mel))
        return self._buffers[key]

    _mel_band_filters = 16

    def _mel_bands(self, mel: torch.Tensor) -> list[tuple[int, int, int, int, torch.Tensor]]:
        """
        Splits the banded mel matrix into blocks of `_mel_band_filters` consecutive filters, each with the range of
        FFT bins where it is non-zero: `(bin_lo, bin_hi, filter_lo, filter_hi, mel[bin_lo:bin_hi, filters])`.

        Each triangular filter spans a few contiguous bins, so on CPU the blocks' small matmuls do about 1/8 of the
        dense matmul's work (the same products, summed in a different order). Blocks with no non-zero bin have an
        empty bin range (their log-mel is the floor).
        """
        bands = []
        for first in range(0, mel.shape[1], self._mel_band_filters):
            last = min(first + self._mel_band_filters, mel.shape[1])
            bins = torch.nonzero(mel[:, first:last].any(dim=1)).flatten().tolist()
            lo, hi = (bins[0], bins[-1] + 1) if bins else (0, 0)
            bands.append((lo, hi, first, last, mel[lo:hi, first:last].contiguous()))
        return bands

    def num_frames(self, num_samples: int) -> int:
        """Number of frames the front end produces for `num_samples` samples (before padding / truncation)."""
        if self.frontend == "kaldi":
            # Kaldi's snip_edges=True: only frames that fit entirely in the signal.
            return 0 if num_samples < self.win_length else 1 + (num_samples - self.win_length) // self.hop_length
        # Centred frames (torch.stft(center=True)).
        return 1 + num_samples // self.hop_length

    def _framing_source(self, waveforms: torch.Tensor, lengths: torch.Tensor, num_frames: int):
        """
        Lays the clips out in one flat buffer in which frame `t` of clip `b` is flat frame `b * slots + t`.

        Each clip gets `slots * hop_length` samples (`slots >= num_frames - 1 + ceil(win / hop)`), so one `unfold`
        over the flat buffer frames the whole batch at once and chunks of frames can be taken across clip borders
        (the few frames straddling two clips are computed and dropped). Returns the flat signal, the mean of each
        flat frame of the raw signal for the kaldi DC removal (`None` for logmel), and `slots`.
        """
        win, hop = self.win_length, self.hop_length
        slots = num_frames - 1 + -(-win // hop)
        width = slots * hop
        if self.frontend == "kaldi":
            # snip_edges framing starts at sample 0; frames past a clip's end only see zero padding and are masked.
            raw = waveforms[:, :width]
            if raw.shape[-1] < width:
                raw = torch.nn.functional.pad(raw, (0, width - raw.shape[-1]))
            raw = raw.reshape(-1)
            # Frame means for Kaldi's per-frame DC removal (applied in `_log_mel`): sums of blocks of
            # gcd(win, hop) samples, then of the win / gcd blocks of each frame, instead of one reduction per frame.
            block = math.gcd(win, hop)
            block_sums = raw.view(-1, block).sum(dim=1).to(torch.float64)
            means = block_sums.unfold(0, win // block, hop // block).sum(dim=1) / win
            return raw, means, slots

        # torch.stft(center=True, n_fft, win_length) pads n_fft // 2 on both sides and centres the window in the
        # n_fft buffer, so the non-zero part of frame t starts at sample t * hop - left with
        # left = n_fft // 2 - (n_fft - win) // 2. A frame shifted inside the FFT buffer only changes the phase, so
        # we frame win samples directly and zero-pad them to n_fft in the rfft. Each clip is reflect-padded at its
        # own end; `extra` slots per clip hold reflected samples that no kept frame reads.
        left = self.n_fft // 2 - (self.n_fft - win) // 2
        right = win - left
        extra = -(-right // hop)
        batch, available = waveforms.shape
        padded = torch.zeros(batch, (slots + extra) * hop, dtype=waveforms.dtype, device=waveforms.device)
        copied = min(available, width - left)
        padded[:, left : left + copied] = waveforms[:, :copied]
        padded[:, :left] = waveforms[:, 1 : left + 1].flip(-1)  # reflect at the start: x[left], ..., x[1]
        # reflect at the end: x[n - 2], x[n - 3], ... at positions left + n, left + n + 1, ...
        offsets = torch.arange(right, device=waveforms.device)
        ends = lengths.unsqueeze(1)
        source = torch.gather(waveforms, 1, ends - 2 - offsets)
        target = (left + ends + offsets).clamp(max=padded.shape[1] - 1)  # beyond `width`: only dropped frames
        padded.scatter_(1, target, source)
        return padded.reshape(-1), None, slots + extra

    def _log_mel(
        self, waveforms: torch.Tensor, lengths: torch.Tensor, num_frames: int, do_normalize: bool
    ) -> torch.Tensor:
        """
        Log-mel `(batch, num_frames, num_mel_bins)` (a strided view) of `waveforms` `(batch, samples)`, normalised
        when `do_normalize`.
        """
        window, mel_filters, mel_bands = self._get_buffers(waveforms.device)
        if not waveforms.is_cuda:
            mel_filters = mel_bands  # banded block matmuls on CPU; one dense matmul (one kernel) on GPU
        batch = waveforms.shape[0]
        win = self.win_length
        signal, means, slots = self._framing_source(waveforms, lengths, num_frames)
        frames = signal.unfold(0, win, self.hop_length)  # (total_frames, win), a strided view: no copy
        total = frames.shape[0]
        out = empty_host_tensor((batch * slots, self.num_mel_bins), torch.float32, signal.device)
        dc_offsets = None
        if means is not None:
            if float(window[0]) != 0.0:
                raise RuntimeError(
                    "The pre-emphasis below skips each frame's first sample, where Kaldi's window is 0."
                )
            # Kaldi removes each frame's mean m, then pre-emphasises: (x[i] - m) - 0.97 (x[i - 1] - m)
            # = x[i] - 0.97 x[i - 1] - 0.03 m.
            dc_offsets = ((1.0 - KALDI_PREEMPHASIS) * means).unsqueeze(1)

        # On CPU, work in cache-sized chunks of frames: big temporaries cost more in page faults and memory traffic
        # than the arithmetic. On GPU, chunks only bound the memory.
        chunk = min(total, self._gpu_chunk_frames if signal.is_cuda else self._cpu_chunk_frames)
        args = (signal, dc_offsets, out, window, mel_filters, chunk, do_normalize)
        threads = getattr(_CALLER, "workers", None) or torch.get_num_threads()
        num_chunks = -(-total // chunk)
        if signal.is_cuda or threads == 1 or num_chunks < 2 or not self._thread_chunks or not _openmp_backend():
            self._process_frames(range(0, total, chunk), total, *args)
        else:
            # Coarse-grained CPU parallelism: worker threads run the chunks' ops single-threaded, instead of every
            # small op synchronising torch's intra-op threads (which stalls badly when the machine is busy). The
            # schedule is dynamic: each worker takes the next chunk from one shared counter when it is free, so on a
            # busy machine a worker whose core is taken by another process holds back one chunk, not half the batch.
            # Under OpenMP, torch's thread count is per OS thread, so the caller's setting is untouched (with torch's
            # native thread pool it is global, so this path needs OpenMP); workers restore it on exit.
            workers = min(threads, num_chunks)
            starts = itertools.count(0, chunk)  # `next` on it is atomic under the GIL: a thread-safe work queue

            def run(_):
                torch.set_num_threads(1)
                try:
                    self._process_frames(starts, total, *args)
                finally:
                    torch.set_num_threads(threads)

            list(thread_pool(workers).map(run, range(workers)))
        return out.view(batch, slots, self.num_mel_bins)[:, :num_frames]

    def _process_frames(self, starts, end, signal, dc_offsets, out, window, mel_filters, chunk, do_normalize):
        """
        Runs the chunks of flat frames `[start, min(start + chunk, end))` for each `start` taken from `starts` (a
        range, or an iterator shared by worker threads; stops at the first `start >= end`) through pre-emphasis
        (kaldi), window, FFT, power, mel, log and normalisation, writing into `out[start:stop]`.

        Framing, pre-emphasis, window and FFT run in float64: a float32 FFT's rounding (about 1e-7 of a frame's
        energy) visibly changes the log of mel bands near the log floor next to loud tones (up to ~3e-3 after
        normalisation on tonal audio), while in cache-sized chunks float64 costs little more than float32. The FFT
        buffer's zero padding from win to n_fft (and, for kaldi, its unused first sample) is written once.
        """
        win, hop = self.win_length, self.hop_length
        device = signal.device
        # On CPU with numba, the passes before and after the FFT are two compiled loops (`cpu_kernels`): the same
        # float64 arithmetic, one pass each instead of ~7 torch ops over multi-MB temporaries.
        fused = (
            self._fused_cpu_kernels
            and device.type == "cpu"
            and signal.dtype == torch.float32
            and not signal.requires_grad
        )
        fft_buffer = torch.zeros(chunk, self.n_fft, dtype=torch.float64, device=device)
        # Preallocated FFT output: a fresh multi-MB result per chunk costs page faults.
        spectrum_buffer = torch.empty(chunk, self.n_fft // 2 + 1, dtype=torch.complex128, device=device)
        power = torch.empty(chunk, self.n_fft // 2 + 1, dtype=torch.float32, device=device)
        if fused:
            signal_np, window_np = signal.numpy(), window.numpy()
            offsets_np = dc_offsets.reshape(-1).numpy() if dc_offsets is not None else np.empty(0)
            preemphasis = KALDI_PREEMPHASIS if dc_offsets is not None else 0.0
        else:
            frames = signal.unfold(0, win, hop)  # (total_frames, win), a strided view: no copy
            power64 = torch.empty(chunk, self.n_fft // 2 + 1, dtype=torch.float64, device=device)
            if dc_offsets is not None:
                # Float64 copy and pre-emphasis of the flat samples under one chunk of frames.
                samples64 = torch.empty((chunk - 1) * hop + win, dtype=torch.float64, device=device)
                emphasized = torch.empty_like(samples64)
                emphasized[0] = 0.0
        for start in starts:
            if start >= end:
                break
            stop = min(start + chunk, end)
            size = stop - start
            if fused:
                windowed_frames(signal_np, start, hop, preemphasis, offsets_np, window_np, fft_buffer[:size].numpy())
            elif dc_offsets is None:
                torch.mul(frames[start:stop], window, out=fft_buffer[:size, :win])
            else:
                windowed = fft_buffer[:size, :win]
                # Kaldi's pre-emphasis x[i] - 0.97 x[i - 1], once on the chunk's samples rather than on each of the
                # overlapping frames: a frame's first sample (which would read the previous frame's sample) is
                # multiplied by the window's 0 and stays 0, so the frames of the pre-emphasised samples are exact.
                count = (size - 1) * hop + win
                flat = samples64[:count]
                flat.copy_(signal[start * hop : start * hop + count])
                torch.sub(flat[1:], flat[:-1], alpha=KALDI_PREEMPHASIS, out=emphasized[1:count])
                frame = emphasized[:count].unfold(0, win, hop)
                torch.sub(frame[:, 1:], dc_offsets[start:stop], out=windowed[:, 1:])
                windowed[:, 1:].mul_(window[1:])
            spectrum = torch.fft.rfft(fft_buffer[:size], dim=-1, out=spectrum_buffer[:size])
            # |X|^2 = re^2 + im^2 in float64, stored in float32.
            if fused:
                power_spectrum(torch.view_as_real(spectrum).numpy(), power[:size].numpy())
            else:
                # Squaring the interleaved (re, im) pairs in place is one contiguous pass (strided real / imag views
                # are much slower), then the pair sums, then the cast to float32.
                pairs = torch.view_as_real(spectrum).square_()
                torch.add(pairs[..., 0], pairs[..., 1], out=power64[:size])
                power[:size].copy_(power64[:size])
            mel = out[start:stop]
            if isinstance(mel_filters, torch.Tensor):
                torch.matmul(power[:size], mel_filters, out=mel)
            else:
                for lo, hi, first, last, block in mel_filters:
                    if hi > lo:
                        torch.matmul(power[:size, lo:hi], block, out=mel[:, first:last])
                    else:
                        mel[:, first:last] = 0.0
            if self.frontend == "kaldi":
                mel.clamp_(min=self.log_eps).log_()
            else:
                mel.add_(self.log_eps).log_()
            if do_normalize:
                mel.sub_(self.mean).div_(self.normalization_scale)

    def extract_features(
        self,
        waveforms: torch.Tensor,
        lengths: torch.Tensor | Sequence[int] | None = None,
        max_length: int | None = None,
        do_normalize: bool | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Batched front end on prepared mono audio, on the device of `waveforms` (no validation, no resampling).

        Args:
            waveforms (`torch.Tensor` of shape `(batch, samples)`):
                Float mono audio at `self.sampling_rate`, right-padded when the clips have different lengths.
            lengths (`torch.Tensor` or `list[int]`, *optional*):
                Number of real samples of each clip; defaults to the full width.
            max_length (`int`, *optional*):
                Frames to pad / truncate to; defaults to `self.max_length`. `-1` keeps the longest clip's frames.
            do_normalize (`bool`, *optional*):
                Overrides `self.do_normalize`.

        Returns:
            `tuple(torch.Tensor, torch.Tensor)`: float32 features `(batch, max_length, num_mel_bins)` and the
            number of valid (non-padded) frames of each clip `(batch,)`.
        """
        if waveforms.ndim != 2:
            raise ValueError(f"`waveforms` must be (batch, samples), got shape {tuple(waveforms.shape)}.")
        with _quiet_caller() if waveforms.device.type == "cpu" else contextlib.nullcontext():
            return self._extract_features(waveforms, lengths, max_length, do_normalize)

    def _extract_features(self, waveforms, lengths, max_length, do_normalize) -> tuple[torch.Tensor, torch.Tensor]:
        device = waveforms.device
        waveforms = waveforms.to(torch.float32)
        batch, width = waveforms.shape
        lengths_list = [width] * batch if lengths is None else [int(n) for n in torch.as_tensor(lengths).tolist()]
        if len(lengths_list) != batch or not all(0 < n <= width for n in lengths_list):
            raise ValueError(f"`lengths` must hold {batch} values in [1, {width}], got {lengths_list}.")
        lengths = torch.tensor(lengths_list, dtype=torch.long, device=device)
        max_length = self.max_length if max_length is None else int(max_length)
        do_normalize = self.do_normalize if do_normalize is None else do_normalize

        valid_list = [self.num_frames(n) for n in lengths_list]
        longest = max(valid_list)
        if max_length < 0:
            max_length = longest
        computed = min(max_length, longest)
        valid = torch.tensor(valid_list, dtype=torch.long, device=device)

        # AST pads the log-mel with zeros and normalises afterwards, so padded frames hold the normalised padding.
        pad = float(self.padding_value)
        if do_normalize:
            pad = (pad - self.mean) / self.normalization_scale
        features = empty_host_tensor((batch, max_length, self.num_mel_bins), torch.float32, device)
        if computed > 0:
            log_mel = self._log_mel(waveforms, lengths, computed, do_normalize)
            if min(valid_list) >= computed:
                features[:, :computed] = log_mel
            else:
                is_real = torch.arange(computed, device=device).unsqueeze(0) < valid.unsqueeze(1)
                features[:, :computed] = torch.where(is_real.unsqueeze(-1), log_mel, pad)
        features[:, computed:] = pad
        return features, valid.clamp(max=max_length)

    # ------------------------------------------------------------------------------------------------------------
    # Input handling

    def _prepare(
        self, raw_speech: Any, sampling_rate: int, device: torch.device | str | None
    ) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """Validates, downmixes, resamples and stacks the input into `(batch, samples)` on one device."""
        if isinstance(raw_speech, (np.ndarray, torch.Tensor)):
            validate_waveform(raw_speech, name="raw_speech", allowed_ndim=(1, 2, 3))
            if raw_speech.ndim == 1:
                clips = [raw_speech]
            elif raw_speech.ndim == 2:
                clips = [raw_speech]  # (batch, samples): kept as one block so it is resampled / moved once
            else:
                clips = [to_mono(raw_speech)]  # (batch, channels, samples)
            stacked = True
        elif isinstance(raw_speech, (list, tuple)):
            if len(raw_speech) == 0:
                raise ValueError("`raw_speech` is an empty list; expected at least one clip.")
            if all(isinstance(v, (int, float, np.number)) and not isinstance(v, bool) for v in raw_speech):
                clips = [np.asarray(raw_speech, dtype=np.float32)]  # a single clip as a list of floats
            else:
                clips = []
                for i, clip in enumerate(raw_speech):
                    if not isinstance(clip, (np.ndarray, torch.Tensor)):
                        try:
                            clip = np.asarray(clip, dtype=np.float32)
                        except (TypeError, ValueError) as err:
                            raise ValueError(
                                f"`raw_speech[{i}]` must be an array, a tensor or a list of floats; got "
                                f"{type(clip).__name__}."
                            ) from err
                    validate_waveform(clip, name=f"raw_speech[{i}]", allowed_ndim=(1, 2))
                    if clip.ndim == 2:
                        if clip.shape[0] > clip.shape[1]:
                            raise ValueError(
                                f"`raw_speech[{i}]` has shape {tuple(clip.shape)}: more channels than samples. "
                                "Multi-channel clips must be channels-first (channels, samples); transpose "
                                "(samples, channels) audio such as soundfile's."
                            )
                        clip = to_mono(clip)
                    clips.append(clip)
            stacked = False
        else:
            raise ValueError(
                "`raw_speech` must be a numpy array, a torch tensor, or a list of them (or a list of floats); got "
                f"{type(raw_speech).__name__}."
            )

        returns_torch = any(isinstance(c, torch.Tensor) for c in clips)
        if device is None:
            device = next((c.device for c in clips if isinstance(c, torch.Tensor)), torch.device("cpu"))
        device = torch.device(device)

        if sampling_rate != self.sampling_rate:
            clips = [resample(c, sampling_rate, self.sampling_rate) for c in clips]

        if device.type == "cpu":
            # Stack / pad in numpy: plain single-threaded copies, instead of one parallel torch op per clip.
            arrays = [
                (c.detach().cpu().to(torch.float32).numpy() if isinstance(c, torch.Tensor) else np.asarray(c))
                for c in clips
            ]
            arrays = [a.astype(np.float32, copy=False) for a in arrays]
            if stacked:
                waveforms = torch.from_numpy(np.ascontiguousarray(np.atleast_2d(arrays[0])))
                lengths = torch.full((waveforms.shape[0],), waveforms.shape[1], dtype=torch.long)
            else:
                lengths = torch.tensor([a.shape[-1] for a in arrays], dtype=torch.long)
                waveforms = torch.from_numpy(np.zeros((len(arrays), int(lengths.max())), np.float32))
                for row, array in zip(waveforms.numpy(), arrays):
                    row[: array.shape[-1]] = array
        else:
            tensors = [
                (c if isinstance(c, torch.Tensor) else torch.from_numpy(np.asarray(c))).to(
                    device=device, dtype=torch.float32
                )
                for c in clips
            ]
            if stacked:
                waveforms = tensors[0] if tensors[0].ndim == 2 else tensors[0].unsqueeze(0)
                lengths = torch.full((waveforms.shape[0],), waveforms.shape[1], dtype=torch.long)
            else:
                lengths = torch.tensor([t.shape[-1] for t in tensors], dtype=torch.long)
                waveforms = torch.nn.utils.rnn.pad_sequence(tensors, batch_first=True)

        shortest = int(lengths.min())
        if shortest < self.win_length:
            raise ValueError(
                f"Audio too short: a clip has {shortest} samples at {self.sampling_rate} Hz, the front end needs at "
                f"least one analysis window of {self.win_length} samples."
            )
        return waveforms, lengths.to(device), returns_torch

    def __call__(
        self,
        raw_speech: np.ndarray | torch.Tensor | list[float] | list[np.ndarray] | list[torch.Tensor],
        sampling_rate: int | None = None,
        return_tensors: str | TensorType | None = None,
        max_length: int | None = None,
        device: str | torch.device | None = None,
        return_attention_mask: bool | None = None,
        **kwargs,
    ) -> BatchFeature:
        """
        Featurises one clip or a batch of clips (see the class docstring for the accepted layouts).

        Args:
            raw_speech (`np.ndarray`, `torch.Tensor`, `list[float]`, or a list of arrays / tensors):
                The audio. Values are used as given (no rescaling of integer PCM, as in `ASTFeatureExtractor`).
            sampling_rate (`int`, *optional*):
                Sampling rate of `raw_speech`. If it differs from `self.sampling_rate` the audio is resampled with
                soxr. Pass it: when omitted, `self.sampling_rate` is assumed and a warning is logged.
            return_tensors (`str` or [`~utils.TensorType`], *optional*):
                `"pt"` for torch tensors (on the compute device), `"np"` for numpy arrays. When `None`, torch input
                gives torch tensors and anything else numpy arrays.
            max_length (`int`, *optional*):
                Frames to pad / truncate to; defaults to `self.max_length`.
            device (`str` or `torch.device`, *optional*):
                Device to compute on. Defaults to the device of the input tensor(s) (CUDA input stays on CUDA), or
                the CPU for numpy input.
            return_attention_mask (`bool`, *optional*):
                Whether to return the frame-level `attention_mask`; defaults to `self.return_attention_mask`.

        Returns:
            [`BatchFeature`] with `input_values` of shape `(batch, max_length, num_mel_bins)` (float32), and
            `attention_mask` of shape `(batch, max_length)` when requested.
        """
        if kwargs:
            logger.warning_once(f"{self.__class__.__name__} ignores the arguments {sorted(kwargs)}.")
        if sampling_rate is None:
            logger.warning(
                f"It is strongly recommended to pass the `sampling_rate` argument to `{self.__class__.__name__}()`. "
                "Failing to do so can result in silent errors that might be hard to debug."
            )
            sampling_rate = self.sampling_rate

        with _quiet_caller(), torch.no_grad():  # (the stacking in `_prepare` too: see `_quiet_caller`)
            waveforms, lengths, returns_torch = self._prepare(raw_speech, sampling_rate, device)
            features, valid = self.extract_features(waveforms, lengths, max_length=max_length)

        data = {"input_values": features}
        if self.return_attention_mask if return_attention_mask is None else return_attention_mask:
            frames = torch.arange(features.shape[1], device=features.device)
            data["attention_mask"] = (frames.unsqueeze(0) < valid.unsqueeze(1)).to(torch.int32)

        if return_tensors is None:
            return_tensors = TensorType.PYTORCH if returns_torch else TensorType.NUMPY
        if TensorType(return_tensors) == TensorType.PYTORCH:
            return BatchFeature(data)
        return BatchFeature({k: v.cpu().numpy() for k, v in data.items()}, tensor_type=return_tensors)

    # ------------------------------------------------------------------------------------------------------------
    # Dataset statistics

    def compute_normalization_stats(
        self,
        clips: Iterable[np.ndarray | torch.Tensor],
        sampling_rate: int | None = None,
        batch_size: int = 32,
        device: str | torch.device | None = None,
    ) -> dict[str, float]:
        """
        Mean and standard deviation of the un-normalised log-mel over every real (non-padded) frame of `clips`.

        Use it to replace the placeholder `mean` / `std` of the logmel front end (or to get dataset-specific kaldi
        statistics): `extractor.mean, extractor.std = stats["mean"], stats["std"]`. Note that the kaldi front end
        divides by `2 * std` (AST's convention) and the statistic returned here is the plain standard deviation.

        Args:
            clips (iterable of arrays / tensors):
                Mono `(samples,)` or channels-first `(channels, samples)` clips.
            sampling_rate (`int`, *optional*):
                Sampling rate of the clips; defaults to `self.sampling_rate`.
            batch_size (`int`, *optional*, defaults to 32):
                Clips featurised together.
            device (`str` or `torch.device`, *optional*):
                Compute device.

        Returns:
            `dict` with float `mean` and `std`.
        """
        sampling_rate = self.sampling_rate if sampling_rate is None else sampling_rate
        total = total_sq = count = 0.0

        def consume(batch):
            nonlocal total, total_sq, count
            waveforms, lengths, _ = self._prepare(list(batch), sampling_rate, device)
            with torch.no_grad():
                feats, valid = self.extract_features(waveforms, lengths, max_length=-1, do_normalize=False)
            mask = torch.arange(feats.shape[1], device=feats.device).unsqueeze(0) < valid.unsqueeze(1)
            values = feats[mask].to(torch.float64)
            total += float(values.sum())
            total_sq += float(values.square().sum())
            count += values.numel()

        batch = []
        for clip in clips:
            batch.append(clip)
            if len(batch) == batch_size:
                consume(batch)
                batch = []
        if batch:
            consume(batch)
        if count == 0:
            raise ValueError("compute_normalization_stats got no audio.")
        mean = total / count
        std = max(total_sq / count - mean * mean, 0.0) ** 0.5
        return {"mean": mean, "std": std}


__all__ = ["SpecPatchFeatureExtractor"]

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
Training-time augmentations shared by every specpatch model.

- [`SpecMask`]: the patch-aligned spectrogram masking of the FFTP paper (Algorithm 1), batched and vectorised.
- [`spec_mask_reference`]: a plain per-sample pure-Python transcription of Algorithm 1 (slow, obviously correct;
  the tests' oracle; benchmarks/bench_specmask.py times SpecMask against a per-sample numpy loop instead).
- [`SpecAugment`]: torchaudio-style frequency / time masking with per-sample independent masks.
- [`WaveformMixup`]: AST-style waveform mixup (mix with probability `prob`, lambda ~ Beta(alpha, alpha)).

The spectrogram augmentations are `torch.nn.Module`s that take and return the models' `input_values` layout
`(batch, frames, mel)` (time first, mel last), as produced by `SpecPatchFeatureExtractor`. They **apply whenever
they are called**: they do not look at `self.training`, so the training code decides when to call them (do not
call them at evaluation time). Every `forward` takes an optional `generator: torch.Generator`; the same generator
state gives the same output. SpecAugment and mixup draw on the generator's device (CPU when no generator is given,
using torch's global CPU generator); SpecMask draws one seed from it for its own random stream. Either way a CPU
generator gives identical masks for CPU and CUDA inputs; the per-cell work (painting the masks, filling) runs on the
input's device.
"""

from __future__ import annotations

import functools
import math
import random
import warnings
from typing import NamedTuple

import numpy as np
import scipy.special
import torch
from torch import nn

from .cpu_kernels import empty_host_tensor, empty_outputs, mask_spectrograms, paint_boxes, place_masks, run_over_batch

# ----------------------------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------------------------


def _random_device(generator: torch.Generator | None) -> torch.device:
    """Device on which the random numbers are drawn: the generator's, else CPU (torch's global CPU generator)."""
    return generator.device if generator is not None else torch.device("cpu")


def _uniform_int(low: int | torch.Tensor, high: torch.Tensor, shape: tuple, generator, device) -> torch.Tensor:
    """
    Integers uniform in `[low, high]` (inclusive), with per-row bounds: `high` has shape `shape[:high.dim()]`.

    Drawn as `low + floor(u * (high - low + 1))` with `u` a float64 uniform in [0, 1): torch.randint only takes
    scalar bounds. The float64 grid (2**-53) makes the bias negligible for any spectrogram size.
    """
    u = torch.rand(shape, generator=generator, device=device, dtype=torch.float64)
    n = (high - low + 1).to(torch.float64)
    while n.dim() < len(shape):
        n = n.unsqueeze(-1)
    offset = torch.floor(u * n).long()
    offset = torch.minimum(offset, n.long() - 1)  # guard against u * n rounding up to n
    low_t = low if isinstance(low, int) else low.view(low.shape + (1,) * (len(shape) - low.dim()))
    return low_t + offset


def _check_spectrogram(input_values: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(input_values, torch.Tensor):
        raise ValueError(f"{name} expects a torch.Tensor of shape (batch, frames, mel), got {type(input_values)}.")
    if input_values.dim() not in (2, 3):
        raise ValueError(
            f"{name} expects input_values of shape (batch, frames, mel) or (frames, mel), "
            f"got shape {tuple(input_values.shape)}."
        )
    if not input_values.is_floating_point():
        raise ValueError(f"{name} expects a floating-point spectrogram, got dtype {input_values.dtype}.")
    if input_values.shape[-1] == 0 or input_values.shape[-2] == 0:
        raise ValueError(f"{name} got an empty spectrogram of shape {tuple(input_values.shape)}.")
    return input_values


def _check_mask_value(mask_value, name: str):
    if isinstance(mask_value, str):
        if mask_value != "mean":
            raise ValueError(f'{name}: mask_value must be "mean" or a float, got {mask_value!r}.')
        return mask_value
    if isinstance(mask_value, bool) or not isinstance(mask_value, (int, float)) or not math.isfinite(mask_value):
        raise ValueError(f'{name}: mask_value must be "mean" or a finite float, got {mask_value!r}.')
    return float(mask_value)


def _check_positive_int(value, name: str, allow_zero: bool = False) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < (0 if allow_zero else 1):
        kind = "a non-negative" if allow_zero else "a positive"
        raise ValueError(f"{name} must be {kind} integer, got {value!r}.")
    return int(value)


def _fill_values(input_values: torch.Tensor, mask_value) -> torch.Tensor:
    """(batch, 1, 1) fill values: each spectrogram's own mean (computed before masking) or the constant."""
    if mask_value == "mean":
        # accumulate half-precision inputs in float32
        dtype = torch.float32 if input_values.element_size() < 4 else input_values.dtype
        return input_values.mean(dim=(1, 2), keepdim=True, dtype=dtype).to(input_values.dtype)
    return torch.full((1, 1, 1), mask_value, dtype=input_values.dtype, device=input_values.device)


def _ragged_ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenation of `arange(s, s + n)` for every `(s, n)` pair."""
    values = np.repeat(starts - (np.cumsum(lengths) - lengths), lengths)
    values += _arange(values.size)
    return values


@functools.lru_cache(maxsize=4)
def _arange_cache(size: int) -> np.ndarray:
    out = np.arange(size)
    out.flags.writeable = False
    return out


def _arange(size: int) -> np.ndarray:
    """`np.arange(size)` as a read-only view of a cached array (saves allocating and faulting in a fresh one)."""
    return _arange_cache(max(1 << 16, 1 << (size - 1).bit_length()))[:size]


class _Boxes(NamedTuple):
    """Placed masks as flat indices: whole `(frame)` rows of the full-frequency masks (into `batch * frames`) and
    single cells of the local masks (into `batch * frames * mel`), with the sample each one belongs to."""

    rows: np.ndarray
    row_sample: np.ndarray
    cells: np.ndarray
    cell_sample: np.ndarray


def _box_indices(sample, t0, t1, f0, f1, full, num_frames: int, num_mel: int) -> _Boxes:
    """Flat indices of the cells covered by (non-overlapping) boxes given as 1-D numpy arrays."""
    width = t1 - t0
    rows = _ragged_ranges(sample[full] * num_frames + t0[full], width[full])
    row_sample = np.repeat(sample[full], width[full])
    local = ~full
    per_row = [np.repeat(v[local], width[local]) for v in (sample, f0, f1 - f0)]  # one entry per local-box row
    local_rows = _ragged_ranges(sample[local] * num_frames + t0[local], width[local])
    cells = _ragged_ranges(local_rows * num_mel + per_row[1], per_row[2])
    return _Boxes(rows, row_sample, cells, np.repeat(per_row[0], per_row[2]))


def _empty_like(x: torch.Tensor) -> torch.Tensor:
    """A contiguous uninitialised tensor like `x`; on CPU backed by a numpy array (huge pages for a fresh batch-sized
    output, see `cpu_kernels.empty_host_tensor`: page faults otherwise dominate SpecMask's time)."""
    return empty_host_tensor(x.shape, x.dtype, x.device)


def _paint(target: torch.Tensor, values: torch.Tensor, placement: _Placement, on_host: bool | None = None) -> None:
    """Sets the placed boxes' cells of the contiguous `(batch, frames, mel)` `target` to `values[sample]` (`values`:
    `(batch,)`, target's dtype) in place.

    On CPU (`on_host`, the default there) the compiled `cpu_kernels.paint_boxes` writes one slice per box into a
    numpy view of the memory (a bit pattern of the same width, so any dtype works, bfloat16 included). On other
    devices the boxes become flat indices that travel in one (pinned, non-blocking) copy and two scatters (whole
    frame rows of the full-frequency masks, then the local masks' cells), so painting adds no host synchronisation."""
    batch, frames, mel = target.shape
    if on_host if on_host is not None else target.device.type == "cpu":
        int_type = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[target.element_size()]
        bits, value_bits = target.detach().view(int_type).numpy(), values.detach().view(int_type).numpy()
        paint_boxes(bits, value_bits, placement.boxes, placement.count)
        return
    boxes = placement.flat(frames, mel)
    sizes = [len(a) for a in boxes]
    packed = torch.from_numpy(np.concatenate(boxes).astype(np.int64))
    packed = packed.pin_memory() if target.is_cuda else packed
    rows, row_sample, cells, cell_sample = packed.to(target.device, non_blocking=True).split(sizes)
    target.view(batch * frames, mel).index_put_((rows,), values[row_sample, None].expand(-1, mel))
    target.view(-1).index_put_((cells,), values[cell_sample])


# ----------------------------------------------------------------------------------------------------------------
# SpecMask
# ----------------------------------------------------------------------------------------------------------------


class SpecMaskDraw(NamedTuple):
    """
    The masks drawn by [`SpecMask.sample_masks`] for a batch.

    Attributes:
        mask (`torch.BoolTensor` of shape `(batch, frames, mel)`): `True` where a cell is masked.
        boxes (`torch.LongTensor` of shape `(batch, max_masks, 4)`): the placed masks as
            `(frame_start, mel_start, width, height)`, width along frames and height along mel, in placement order.
        full_frequency (`torch.BoolTensor` of shape `(batch, max_masks)`): whether each mask is a full-frequency one.
        placed (`torch.BoolTensor` of shape `(batch, max_masks)`): `True` for the rows of `boxes` that hold a mask
            (samples that needed fewer masks than `max_masks` have padding rows, all zeros).
        area (`torch.LongTensor` of shape `(batch,)`): masked cells per sample (sum of the placed boxes' areas).
        draws (`torch.LongTensor` of shape `(batch,)`): masks drawn per sample, placed or dropped.
    """

    mask: torch.Tensor
    boxes: torch.Tensor
    full_frequency: torch.Tensor
    placed: torch.Tensor
    area: torch.Tensor
    draws: torch.Tensor


class _Placement(NamedTuple):
    """Result of `cpu_kernels.place_masks` for a batch (numpy arrays, see there)."""

    boxes: np.ndarray  # (batch, capacity, 4) int64: frame_start, mel_start, width, height
    full: np.ndarray  # (batch, capacity) bool
    count: np.ndarray  # (batch,) masks placed
    area: np.ndarray  # (batch,) cells masked
    draws: np.ndarray  # (batch,) masks drawn, placed or dropped

    def flat(self, num_frames: int, num_mel: int) -> _Boxes:
        """The placed boxes as flat cell indices (for painting on other devices than the CPU)."""
        placed = np.arange(self.boxes.shape[1]) < self.count[:, None]
        sample = np.nonzero(placed)[0]
        t0, f0, w, h = (self.boxes[..., i][placed] for i in range(4))
        return _box_indices(sample, t0, t0 + w, f0, f0 + h, self.full[placed], num_frames, num_mel)


class SpecMask(nn.Module):
    r"""
    SpecMask, the patch-aligned spectrogram masking of the FFTP paper (Algorithm 1), batched.

    For each spectrogram, masks are drawn until the masked area reaches `budget` cells (Algorithm 1, lines 8-20):
    with probability `full_frequency_prob` (0.7) a *full-frequency* mask (height = all mel bins, width uniform in
    `1..max_width` frames), otherwise a *local* mask (height uniform in `1..max_height` mel bins, width uniform in
    `1..max_width` frames). A mask is placed at a position drawn uniformly among those where it fits inside the
    spectrogram; the position is accepted only if none of its cells is masked yet (no overlap), with up to
    `max_tries` positions per mask. A mask with no valid position among its `max_tries` is dropped and a new mask is
    drawn. Masked cells are set to the spectrogram's own mean (per sample, over all its cells, padding included,
    computed before masking; `mask_value="mean"`, line 6) or to the float `mask_value`. Height is along mel, width
    along frames; the input layout is `(batch, frames, mel)`. The last mask may overshoot the budget (the loop stops
    once `area >= budget`).

    **Prose vs. algorithm.** The paper's prose says that "70 % of masked area" is full-frequency, but Algorithm 1
    draws a full-frequency mask with probability 0.7 *per mask*. Full-frequency masks are taller (all mel bins
    against `U(1, max_height)`), so the full-frequency share of the masked **area** is larger: by Wald's identity it
    is `p H / (p H + (1 - p) E[h])` when no mask is dropped, e.g. `0.7 * 128 / (0.7 * 128 + 0.3 * 64.5) = 0.822`
    for the AudioSet preset. This class implements Algorithm 1 (70 % of the *masks*), as the paper's code would.

    **Implementation.** Masks never overlap, so a sample's mask map is fully described by its few placed
    rectangles, and Algorithm 1 runs on those rectangles (an interval test of each candidate position against the
    sample's placed masks), never on the spectrogram; each placed rectangle is then written as one slice. Both loops
    (`specpatch/cpu_kernels.py`) are compiled with numba (once per machine, cached on disk) and take tens of
    microseconds per batch, so what remains is the per-sample mean and, unless `inplace=True`, the copy of the batch.
    Without numba the same Python functions run, slower, with the same results.

    **Randomness.** One 63-bit seed is drawn from `generator` (torch's global CPU generator when none is given) and
    seeds a SplitMix64 stream (`cpu_kernels.uniform`) that makes every draw, sample after sample in Algorithm 1's
    order: the same generator state gives the same masks, on any device. On CUDA the placement runs on the host and
    the indices are copied once (pinned, non-blocking), so the masks cost no host synchronisation beyond reading the
    seed of a CUDA `generator` (one per batch).

    **Unreachable budgets.** `budget > frames * mel` raises a `ValueError` (as do `max_height > mel` and
    `max_width > frames`). Otherwise the budget is always reachable in principle (a 1 x 1 local mask fits any free
    cell), but may take very many draws when the free space is fragmented and the budget close to the whole area, so
    at most `max_draws` masks (placed or dropped) are drawn per sample; samples still under budget then are returned
    as they are, with a `RuntimeWarning`.

    The module applies whenever it is called (it ignores `self.training`); call it from the training loop only.

    Args:
        budget (`int`): masking budget `A`, in cells (e.g. 25,600 = 20 % of 128 x 1000).
        max_height (`int`): maximum mask height `max_h`, in mel bins.
        max_width (`int`): maximum mask width `max_w`, in frames.
        full_frequency_prob (`float`, *optional*, defaults to 0.7): probability that a mask is full-frequency.
        max_tries (`int`, *optional*, defaults to 100): random placements tried per mask.
        mask_value (`"mean"` or `float`, *optional*, defaults to `"mean"`): fill value.
        max_draws (`int`, *optional*, defaults to 1000): maximum number of masks drawn per sample.

    Example:

    ```python
    >>> import torch
    >>> from specpatch import SpecMask
    >>> spec_mask = SpecMask.audioset()  # budget 25,600, max 128 x 128
    >>> input_values = torch.randn(32, 1000, 128)  # (batch, frames, mel)
    >>> masked = spec_mask(input_values, generator=torch.Generator().manual_seed(0))
    ```
    """

    AUDIOSET = {"budget": 25_600, "max_height": 128, "max_width": 128}
    """AudioSet preset of the paper: 20 % of 128 x 1000, masks up to 128 mel x 128 frames."""
    SPEECH_COMMANDS = {"budget": 1_024, "max_height": 128, "max_width": 16}
    """Speech Commands preset of the paper (128 x 128 inputs): 1,024 cells, masks up to 128 mel x 16 frames."""

    def __init__(
        self,
        budget: int,
        max_height: int,
        max_width: int,
        full_frequency_prob: float = 0.7,
        max_tries: int = 100,
        mask_value: str | float = "mean",
        max_draws: int = 1000,
    ):
        super().__init__()
        self.budget = _check_positive_int(budget, "SpecMask: budget (in cells)", allow_zero=True)
        self.max_height = _check_positive_int(max_height, "SpecMask: max_height (mel bins)")
        self.max_width = _check_positive_int(max_width, "SpecMask: max_width (frames)")
        if isinstance(full_frequency_prob, bool) or not (0.0 <= float(full_frequency_prob) <= 1.0):
            raise ValueError(f"SpecMask: full_frequency_prob must be in [0, 1], got {full_frequency_prob!r}.")
        self.full_frequency_prob = float(full_frequency_prob)
        self.max_tries = _check_positive_int(max_tries, "SpecMask: max_tries")
        self.mask_value = _check_mask_value(mask_value, "SpecMask")
        self.max_draws = _check_positive_int(max_draws, "SpecMask: max_draws")

    @classmethod
    def audioset(cls, **kwargs) -> SpecMask:
        """SpecMask with the paper's AudioSet settings (budget 25,600, max 128 x 128); `kwargs` override them."""
        return cls(**{**cls.AUDIOSET, **kwargs})

    @classmethod
    def speech_commands(cls, **kwargs) -> SpecMask:
        """SpecMask with the paper's Speech Commands settings (budget 1,024, max 128 x 16); `kwargs` override them."""
        return cls(**{**cls.SPEECH_COMMANDS, **kwargs})

    def extra_repr(self) -> str:
        return (
            f"budget={self.budget}, max_height={self.max_height}, max_width={self.max_width}, "
            f"full_frequency_prob={self.full_frequency_prob}, max_tries={self.max_tries}, "
            f"mask_value={self.mask_value!r}"
        )

    def _check_shape(self, num_frames: int, num_mel: int):
        if self.budget > num_frames * num_mel:
            raise ValueError(
                f"SpecMask: budget {self.budget} cells cannot be reached on a {num_frames} x {num_mel} "
                f"(frames x mel) spectrogram of {num_frames * num_mel} cells."
            )
        if self.max_height > num_mel:
            raise ValueError(f"SpecMask: max_height {self.max_height} exceeds the number of mel bins {num_mel}.")
        if self.max_width > num_frames:
            raise ValueError(f"SpecMask: max_width {self.max_width} exceeds the number of frames {num_frames}.")

    @staticmethod
    def _seed(generator: torch.Generator | None) -> int:
        """The batch's seed in [0, 2^63 - 1), one draw from `generator` (torch's global CPU generator when `None`)."""
        return int(torch.randint(0, 2**63 - 1, (), generator=generator, device=_random_device(generator)))

    def _place(self, batch: int, T: int, F: int, seed: int) -> _Placement:
        """Algorithm 1 for the whole batch on rectangles (`cpu_kernels.place_masks`, random numbers from `seed`)."""
        outputs = empty_outputs(batch, min(self.max_draws, self.budget))
        place_masks(
            seed, T, F, self.budget, self.max_height, self.max_width, self.full_frequency_prob, self.max_tries,
            self.max_draws, *outputs,
        )  # fmt: skip
        return _Placement(*outputs)

    def sample_masks(
        self,
        batch_size: int,
        num_frames: int,
        num_mel: int,
        generator: torch.Generator | None = None,
        device: str | torch.device | None = None,
    ) -> SpecMaskDraw:
        """
        Draws the SpecMask masks for a batch of `(num_frames, num_mel)` spectrograms without applying them.

        The returned tensors are on `device` (defaults to the generator's device, CPU without one).
        `forward(x, generator=g)` uses exactly these masks for the same generator state.
        """
        batch_size = _check_positive_int(batch_size, "SpecMask: batch_size")
        self._check_shape(num_frames, num_mel)
        placement = self._draw(batch_size, num_frames, num_mel, generator)
        out_device = torch.device(device) if device is not None else _random_device(generator)
        mask = torch.zeros(batch_size, num_frames, num_mel, dtype=torch.bool, device=out_device)
        _paint(mask, torch.ones(batch_size, dtype=torch.bool, device=out_device), placement)
        max_masks = int(placement.count.max())
        placed = np.arange(max_masks) < placement.count[:, None]
        boxes = np.where(placed[..., None], placement.boxes[:, :max_masks], 0)  # padding rows: zeros
        return SpecMaskDraw(
            mask=mask,
            boxes=torch.from_numpy(boxes).to(out_device),
            full_frequency=torch.from_numpy(np.ascontiguousarray(placement.full[:, :max_masks])).to(out_device),
            placed=torch.from_numpy(placed).to(out_device),
            area=torch.from_numpy(placement.area).to(out_device),
            draws=torch.from_numpy(placement.draws).to(out_device),
        )

    def _draw(self, batch: int, T: int, F: int, generator) -> _Placement:
        placement = self._place(batch, T, F, self._seed(generator))
        short = placement.area < self.budget
        if short.any():
            warnings.warn(
                f"SpecMask: {int(short.sum())} of {batch} samples did not reach the budget of {self.budget} cells "
                f"after max_draws={self.max_draws} masks; they are returned with less masked area.",
                RuntimeWarning,
                stacklevel=3,
            )
        return placement

    def forward(
        self,
        input_values: torch.Tensor,
        generator: torch.Generator | None = None,
        return_mask: bool = False,
        inplace: bool = False,
    ):
        """
        Masks a batch of spectrograms.

        Args:
            input_values (`torch.Tensor` of shape `(batch, frames, mel)` or `(frames, mel)`): the spectrograms.
            generator (`torch.Generator`, *optional*): source of randomness (same state, same masks).
            return_mask (`bool`, *optional*, defaults to `False`): also return the boolean mask, same shape as
                `input_values`, `True` where a cell was masked.
            inplace (`bool`, *optional*, defaults to `False`): write the masks into `input_values` (which must be
                contiguous and not require grad) and return it, instead of a new tensor: saves a copy of the batch.

        Returns:
            The masked spectrograms (same shape, dtype and device), and the mask if `return_mask`.
        """
        input_values = _check_spectrogram(input_values, "SpecMask")
        squeeze = input_values.dim() == 2
        x = input_values.unsqueeze(0) if squeeze else input_values
        B, T, F = x.shape
        self._check_shape(T, F)
        if inplace and not x.is_contiguous():
            raise ValueError("SpecMask(inplace=True) needs a contiguous input_values tensor.")
        if x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64) and x.is_contiguous():
            # One compiled pass per sample: copy (unless in place), the sample's mean, its masks, on numpy views of
            # the memory (outside autograd, no torch op on the way: with the caches cold, as in a training step,
            # each op costs tens of microseconds).
            placement = self._draw(B, T, F, generator)
            source = (x.detach() if x.requires_grad else x).numpy()
            out = x if inplace else _empty_like(x)
            use_mean = self.mask_value == "mean"
            fill = np.full(B, 0.0 if use_mean else self.mask_value, dtype=source.dtype)
            # memory-bound on large batches: split over torch's threads (each sample stays with one thread)
            threads = torch.get_num_threads() if x.numel() >= 2**20 else 1
            run_over_batch(
                mask_spectrograms, B, threads, source, source if inplace else out.numpy(), fill, not inplace,
                use_mean, placement.boxes, placement.count,
            )  # fmt: skip
        else:
            with torch.no_grad():
                placement = self._draw(B, T, F, generator)
                fill = _fill_values(x, self.mask_value).reshape(-1).expand(B).contiguous()
                out = x if inplace else _empty_like(x).copy_(x)
                _paint(out, fill, placement)
        if return_mask:
            mask = torch.zeros(B, T, F, dtype=torch.bool, device=x.device)
            _paint(mask, torch.ones(B, dtype=torch.bool, device=x.device), placement)
        if squeeze:
            out = out[0]
            mask = mask[0] if return_mask else None
        return (out, mask) if return_mask else out


def spec_mask_reference(
    spectrogram: torch.Tensor,
    budget: int,
    max_height: int,
    max_width: int,
    full_frequency_prob: float = 0.7,
    max_tries: int = 100,
    mask_value: str | float = "mean",
    rng: random.Random | int | None = None,
    max_draws: int = 1000,
    return_boxes: bool = False,
):
    """
    Plain per-sample pure-Python transcription of the FFTP paper's Algorithm 1 (SpecMask), for one spectrogram.

    Slow and obviously correct: nested Python lists for the spectrogram and the mask map `M`, Python's `random`,
    and cell-by-cell overlap checks. The tests compare [`SpecMask`]'s statistics with it.

    Args:
        spectrogram (`torch.Tensor` of shape `(frames, mel)`): one spectrogram in the models' layout.
        budget, max_height, max_width, full_frequency_prob, max_tries, mask_value, max_draws: as in [`SpecMask`].
        rng (`random.Random` or `int`, *optional*): Python random generator or seed.
        return_boxes (`bool`, *optional*, defaults to `False`): also return the placed masks as a list of
            `(frame_start, mel_start, width, height, full_frequency)` tuples.

    Returns:
        The masked spectrogram (new tensor, same dtype and device), and the boxes if `return_boxes`.
    """
    if not isinstance(spectrogram, torch.Tensor) or spectrogram.dim() != 2:
        raise ValueError("spec_mask_reference expects one spectrogram as a torch.Tensor of shape (frames, mel).")
    # Reuse SpecMask's argument checks so both functions accept exactly the same inputs.
    checked = SpecMask(budget, max_height, max_width, full_frequency_prob, max_tries, mask_value, max_draws)
    checked._check_shape(*spectrogram.shape)
    if not isinstance(rng, random.Random):
        rng = random.Random(rng)

    num_frames, num_mel = spectrogram.shape
    values = spectrogram.tolist()  # values[t][f]: frame t, mel bin f
    # Lines 3-7.
    occupied = [[False] * num_mel for _ in range(num_frames)]
    masked_area = 0
    if checked.mask_value == "mean":
        fill = sum(sum(row) for row in values) / (num_frames * num_mel)
    else:
        fill = checked.mask_value
    boxes = []
    draws = 0
    # Lines 8-20.
    while masked_area < budget and draws < max_draws:
        draws += 1
        if rng.random() < full_frequency_prob:
            full = True
            height = num_mel  # full-frequency mask
            width = rng.randint(1, max_width)
        else:
            full = False
            height = rng.randint(1, max_height)
            width = rng.randint(1, max_width)
        position = None
        for _ in range(max_tries):
            t0 = rng.randint(0, num_frames - width)
            f0 = rng.randint(0, num_mel - height)
            if all(not occupied[t][f] for t in range(t0, t0 + width) for f in range(f0, f0 + height)):
                position = (t0, f0)
                break
        if position is None:
            continue  # no free placement in max_tries: drop this mask and draw another
        t0, f0 = position
        for t in range(t0, t0 + width):
            for f in range(f0, f0 + height):
                values[t][f] = fill
                occupied[t][f] = True
        masked_area += height * width
        boxes.append((t0, f0, width, height, full))
    if masked_area < budget:
        warnings.warn(
            f"spec_mask_reference: the budget of {budget} cells was not reached after max_draws={max_draws} masks.",
            RuntimeWarning,
            stacklevel=2,
        )
    out = torch.tensor(values, dtype=spectrogram.dtype, device=spectrogram.device)
    return (out, boxes) if return_boxes else out


# ----------------------------------------------------------------------------------------------------------------
# SpecAugment
# ----------------------------------------------------------------------------------------------------------------


class SpecAugment(nn.Module):
    """
    SpecAugment frequency and time masking (torchaudio's `FrequencyMasking` / `TimeMasking` with `iid_masks=True`),
    batched, with masks drawn independently per sample.

    Each mask's width is an integer uniform in `[0, param]` (torchaudio draws a real `v ~ U(0, param)` and masks
    the integer cells between `floor(start)` and `floor(start + v)`; the integer draw here has the same range and
    makes the limit exact) and its start is uniform among the positions where it fits. Frequency masks cover all
    frames of a band of mel bins, time masks all mel bins of a band of frames; several masks may overlap, as in
    SpecAugment. With the FFTP limits: AudioSet time <= 400 frames and frequency <= 5 bins, Speech Commands 15 / 5
    ([`SpecAugment.audioset`], [`SpecAugment.speech_commands`]).

    AST masks its fbank with 0 *before* normalisation; on normalised `input_values` the default `mask_value=0.0`
    fills with the dataset mean instead. `mask_value="mean"` uses each spectrogram's own mean.

    The module applies whenever it is called (it ignores `self.training`); call it from the training loop only.

    Args:
        freq_mask_param (`int`): maximum width of a frequency mask, in mel bins.
        time_mask_param (`int`): maximum width of a time mask, in frames.
        num_freq_masks (`int`, *optional*, defaults to 1): frequency masks per sample.
        num_time_masks (`int`, *optional*, defaults to 1): time masks per sample.
        mask_value (`float` or `"mean"`, *optional*, defaults to 0.0): fill value.
    """

    AUDIOSET = {"freq_mask_param": 5, "time_mask_param": 400}
    """FFTP limits for AudioSet: frequency masks <= 5 mel bins, time masks <= 400 frames."""
    SPEECH_COMMANDS = {"freq_mask_param": 5, "time_mask_param": 15}
    """FFTP limits for Speech Commands: frequency masks <= 5 mel bins, time masks <= 15 frames."""

    def __init__(
        self,
        freq_mask_param: int,
        time_mask_param: int,
        num_freq_masks: int = 1,
        num_time_masks: int = 1,
        mask_value: str | float = 0.0,
    ):
        super().__init__()
        self.freq_mask_param = _check_positive_int(freq_mask_param, "SpecAugment: freq_mask_param", allow_zero=True)
        self.time_mask_param = _check_positive_int(time_mask_param, "SpecAugment: time_mask_param", allow_zero=True)
        self.num_freq_masks = _check_positive_int(num_freq_masks, "SpecAugment: num_freq_masks", allow_zero=True)
        self.num_time_masks = _check_positive_int(num_time_masks, "SpecAugment: num_time_masks", allow_zero=True)
        self.mask_value = _check_mask_value(mask_value, "SpecAugment")

    @classmethod
    def audioset(cls, **kwargs) -> SpecAugment:
        """SpecAugment with the FFTP AudioSet limits (time <= 400 frames, frequency <= 5 bins)."""
        return cls(**{**cls.AUDIOSET, **kwargs})

    @classmethod
    def speech_commands(cls, **kwargs) -> SpecAugment:
        """SpecAugment with the FFTP Speech Commands limits (time <= 15 frames, frequency <= 5 bins)."""
        return cls(**{**cls.SPEECH_COMMANDS, **kwargs})

    def extra_repr(self) -> str:
        return (
            f"freq_mask_param={self.freq_mask_param}, time_mask_param={self.time_mask_param}, "
            f"num_freq_masks={self.num_freq_masks}, num_time_masks={self.num_time_masks}, "
            f"mask_value={self.mask_value!r}"
        )

    @staticmethod
    def _bands(batch: int, size: int, param: int, num: int, generator, rdev, device) -> torch.Tensor:
        """(batch, size) bool: union of `num` bands per sample, width uniform in [0, param], start where it fits."""
        width = torch.randint(0, param + 1, (batch, num), generator=generator, device=rdev)
        start = _uniform_int(0, size - width, (batch, num), generator, rdev)
        start, width = start.to(device), width.to(device)
        pos = torch.arange(size, device=device)
        inside = (pos >= start[..., None]) & (pos < (start + width)[..., None])  # (batch, num, size)
        return inside.any(1)

    def forward(
        self,
        input_values: torch.Tensor,
        generator: torch.Generator | None = None,
        return_mask: bool = False,
    ):
        """
        Masks a batch of spectrograms `(batch, frames, mel)` (or one `(frames, mel)`); returns a new tensor, and the
        boolean mask (`True` where masked) if `return_mask`.
        """
        input_values = _check_spectrogram(input_values, "SpecAugment")
        squeeze = input_values.dim() == 2
        x = input_values.unsqueeze(0) if squeeze else input_values
        B, T, F = x.shape
        if self.freq_mask_param > F:
            raise ValueError(f"SpecAugment: freq_mask_param {self.freq_mask_param} exceeds the {F} mel bins.")
        if self.time_mask_param > T:
            raise ValueError(f"SpecAugment: time_mask_param {self.time_mask_param} exceeds the {T} frames.")
        rdev = _random_device(generator)
        with torch.no_grad():
            freq = self._bands(B, F, self.freq_mask_param, self.num_freq_masks, generator, rdev, x.device)
            time = self._bands(B, T, self.time_mask_param, self.num_time_masks, generator, rdev, x.device)
            mask = time[:, :, None] | freq[:, None, :]
            fill = _fill_values(x, self.mask_value)
        out = torch.where(mask, fill, x)
        if squeeze:
            out, mask = out[0], mask[0]
        return (out, mask) if return_mask else out


# ----------------------------------------------------------------------------------------------------------------
# Waveform mixup
# ----------------------------------------------------------------------------------------------------------------


def sample_beta(alpha: float, beta: float, shape, generator: torch.Generator | None = None) -> torch.Tensor:
    """
    Reproducible Beta(alpha, beta) samples (float64, CPU) by inverse CDF: `betaincinv(alpha, beta, u)` with
    `u ~ U(0, 1)` drawn from `generator`.

    `torch.distributions.Beta` and `torch._standard_gamma` take no generator, so they cannot be seeded per call;
    the inverse of the regularised incomplete beta function (`scipy.special.betaincinv`) turns seeded uniforms into
    exact Beta samples.
    """
    u = torch.rand(shape, generator=generator, device=_random_device(generator), dtype=torch.float64).cpu()
    return torch.from_numpy(np.asarray(scipy.special.betaincinv(alpha, beta, u.numpy()), dtype=np.float64))


class WaveformMixup(nn.Module):
    """
    Waveform mixup as in AST's AudioSet recipe ("mixup 0.5", lambda ~ Beta(10, 10)), batched.

    Each sample of the batch is mixed with probability `prob` with a partner drawn uniformly among the *other*
    samples of the batch (AST draws a random clip of the dataset): `x_i <- lam_i x_i + (1 - lam_i) x_j`,
    `y_i <- lam_i y_i + (1 - lam_i) y_j`, with `lam_i ~ Beta(alpha, alpha)`. Partners contribute their original
    (unmixed) waveforms. Unmixed samples keep `lam_i = 1`. A batch of one sample is returned unmixed.

    Lambda is drawn by inverse CDF ([`sample_beta`]) so that a `torch.Generator` makes the whole draw
    reproducible (torch's Beta sampler takes no generator). The module applies whenever it is called (it ignores
    `self.training`); call it from the training loop only.

    Args:
        prob (`float`, *optional*, defaults to 0.5): probability that a sample is mixed.
        alpha (`float`, *optional*, defaults to 10.0): Beta(alpha, alpha) parameter.
        num_classes (`int`, *optional*): needed when labels are given as class indices (converted to one-hot).
    """

    def __init__(self, prob: float = 0.5, alpha: float = 10.0, num_classes: int | None = None):
        super().__init__()
        if isinstance(prob, bool) or not (0.0 <= float(prob) <= 1.0):
            raise ValueError(f"WaveformMixup: prob must be in [0, 1], got {prob!r}.")
        if isinstance(alpha, bool) or not (float(alpha) > 0.0 and math.isfinite(alpha)):
            raise ValueError(f"WaveformMixup: alpha must be a positive finite float, got {alpha!r}.")
        self.prob = float(prob)
        self.alpha = float(alpha)
        self.num_classes = None if num_classes is None else _check_positive_int(num_classes, "num_classes")

    def extra_repr(self) -> str:
        return f"prob={self.prob}, alpha={self.alpha}, num_classes={self.num_classes}"

    def _labels_as_float(self, labels: torch.Tensor, batch: int) -> torch.Tensor:
        if not isinstance(labels, torch.Tensor):
            raise ValueError(f"WaveformMixup expects labels as a torch.Tensor, got {type(labels)}.")
        if labels.is_floating_point():
            if labels.dim() != 2 or labels.shape[0] != batch:
                raise ValueError(
                    f"WaveformMixup expects float labels of shape (batch={batch}, classes), got {tuple(labels.shape)}."
                )
            return labels
        if labels.dtype in (torch.bool, torch.complex64, torch.complex128) or labels.dim() != 1:
            raise ValueError(
                "WaveformMixup expects labels as multi-hot / soft floats (batch, classes) or integer class indices "
                f"(batch,), got dtype {labels.dtype} and shape {tuple(labels.shape)}."
            )
        if labels.shape[0] != batch:
            raise ValueError(f"WaveformMixup: {labels.shape[0]} labels for a batch of {batch} waveforms.")
        if self.num_classes is None:
            raise ValueError("WaveformMixup: class-index labels need num_classes=... to build one-hot targets.")
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
            raise ValueError(f"WaveformMixup: class indices must be in [0, {self.num_classes}).")
        return nn.functional.one_hot(labels.long(), self.num_classes).float()

    def forward(
        self,
        waveforms: torch.Tensor,
        labels: torch.Tensor,
        generator: torch.Generator | None = None,
        return_params: bool = False,
    ):
        """
        Mixes a batch.

        Args:
            waveforms (`torch.Tensor` of shape `(batch, samples)` or `(batch, channels, samples)`): float audio.
            labels (`torch.Tensor`): multi-hot / soft float labels `(batch, classes)`, or class indices `(batch,)`
                (then `num_classes` must be set; they become one-hot floats).
            generator (`torch.Generator`, *optional*): source of randomness.
            return_params (`bool`, *optional*, defaults to `False`): also return `lam` `(batch,)` and `partner`
                `(batch,)` (index of the sample mixed in; `lam == 1` for unmixed samples).

        Returns:
            `(mixed_waveforms, mixed_labels)` (new tensors), plus `(lam, partner)` if `return_params`.
        """
        if (
            not isinstance(waveforms, torch.Tensor)
            or waveforms.dim() not in (2, 3)
            or not waveforms.is_floating_point()
        ):
            raise ValueError(
                "WaveformMixup expects float waveforms of shape (batch, samples) or (batch, channels, samples), got "
                f"{type(waveforms).__name__} {tuple(getattr(waveforms, 'shape', ()))}."
            )
        batch = waveforms.shape[0]
        targets = self._labels_as_float(labels, batch)
        rdev = _random_device(generator)
        # Always the same draws, whatever prob and the batch content, so a generator state fixes the result.
        mixed = torch.rand(batch, generator=generator, device=rdev) < self.prob
        shift = torch.randint(1, max(batch, 2), (batch,), generator=generator, device=rdev)
        lam = sample_beta(self.alpha, self.alpha, (batch,), generator)
        if batch == 1:
            mixed = torch.zeros_like(mixed)
        partner = (torch.arange(batch, device=rdev) + shift) % batch  # uniform among the other samples
        lam = torch.where(mixed.cpu(), lam, torch.ones_like(lam))
        partner = torch.where(mixed, partner, torch.arange(batch, device=rdev))

        partner_w = partner.to(waveforms.device)
        lam_w = lam.to(device=waveforms.device, dtype=waveforms.dtype).view(-1, *([1] * (waveforms.dim() - 1)))
        out_waveforms = lam_w * waveforms + (1 - lam_w) * waveforms[partner_w]
        partner_y = partner.to(targets.device)
        lam_y = lam.to(device=targets.device, dtype=targets.dtype)[:, None]
        out_labels = lam_y * targets + (1 - lam_y) * targets[partner_y]
        if return_params:
            return out_waveforms, out_labels, lam, partner
        return out_waveforms, out_labels


__all__ = [
    "SpecMask",
    "SpecMaskDraw",
    "spec_mask_reference",
    "SpecAugment",
    "WaveformMixup",
    "sample_beta",
]

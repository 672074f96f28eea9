# Copyright 2026 The specpatch authors. Licensed under the Apache License, Version 2.0.
"""Token masking for masked teacher-student pre-training (AaPE, aape.txt Sec. III-D and IV-B).

* `inverse_block_mask`: EAT's *inverse block* multi-mask. Instead of masking blocks, the *visible* tokens are chosen
  as square blocks of patches and everything else is masked, so the student keeps a few contiguous
  time-frequency regions and has to predict large connected areas. Every row masks exactly
  `round(mask_ratio * tokens)` tokens (the block union is topped up with random tokens), so all views of a batch have
  the same number of visible tokens and can be gathered into one dense tensor. Several independent masks ("views")
  are drawn per clip, all in one batch (the multi-mask strategy).
* `sample_masked_subset`: a random subset of the masked positions of every row (the predictor's queries, 75 % of the
  masked tokens as in CrossMAE).
* `mask_to_indices`: the sorted visible and masked token indices of equal-count masks.

All functions are batched torch code (no Python loop over rows) and take an optional `torch.Generator`, so a seeded
generator reproduces the masks exactly.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def _check_grid(grid: Sequence[int]) -> tuple[int, int]:
    if len(grid) != 2 or any(isinstance(g, bool) or int(g) != g or g < 1 for g in grid):
        raise ValueError(f"`grid` must be a (frequency_patches, time_patches) pair of positive ints, got {grid!r}.")
    return int(grid[0]), int(grid[1])


def num_masked_tokens(num_tokens: int, mask_ratio: float) -> int:
    """`round(mask_ratio * num_tokens)` with halves rounded up (304 tokens at 0.8 -> 243 masked, 61 visible)."""
    return int(mask_ratio * num_tokens + 0.5)


def inverse_block_mask(
    batch: int,
    grid: Sequence[int],
    mask_ratio: float = 0.8,
    num_views: int = 1,
    block_size_range: Sequence[int] = (3, 5),
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Inverse block masks for `batch` clips with `num_views` independent masks each (EAT's inverse block multi-mask).

    For every view independently:

    1. a square block side `b` is drawn uniformly from `block_size_range` (inclusive, in patches; clipped to the
       grid);
    2. `floor(V / b**2)` blocks of `b x b` patches, with `V = tokens - round(mask_ratio * tokens)` the number of
       visible tokens, are placed uniformly at random *inside* the grid (they may overlap) and made visible;
    3. the remaining `V - |union of blocks|` visible tokens are drawn uniformly at random from the rest, so exactly
       `round(mask_ratio * tokens)` tokens are masked in every row.

    Args:
        batch (`int`): number of clips.
        grid (`(int, int)`): patch grid `(frequency_patches, time_patches)`; tokens are numbered frequency-major,
            `index = f * time_patches + t` (the order of `Conv2d(...).flatten(2)`).
        mask_ratio (`float`, *optional*, defaults to 0.8): share of masked tokens, in `[0, 1)`.
        num_views (`int`, *optional*, defaults to 1): independent masks per clip.
        block_size_range (`(int, int)`, *optional*, defaults to `(3, 5)`): smallest and largest block side.
        generator (`torch.Generator`, *optional*): CPU random generator, for reproducible masks.
        device (*optional*): device of the returned mask (masks are drawn on the CPU).

    Returns:
        `torch.BoolTensor` of shape `(batch * num_views, frequency_patches * time_patches)`, `True` = masked. Row
        `i * num_views + v` is view `v` of clip `i` (the order of `Tensor.repeat_interleave(num_views, 0)`).
    """
    num_f, num_t = _check_grid(grid)
    if isinstance(batch, bool) or int(batch) != batch or batch < 1:
        raise ValueError(f"`batch` must be a positive int, got {batch!r}.")
    if isinstance(num_views, bool) or int(num_views) != num_views or num_views < 1:
        raise ValueError(f"`num_views` must be a positive int, got {num_views!r}.")
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"`mask_ratio` must lie in [0, 1), got {mask_ratio!r}.")
    if len(block_size_range) != 2 or not 1 <= block_size_range[0] <= block_size_range[1]:
        raise ValueError(f"`block_size_range` must be (min, max) with 1 <= min <= max, got {block_size_range!r}.")

    rows, num_tokens = int(batch) * int(num_views), num_f * num_t
    num_visible = num_tokens - num_masked_tokens(num_tokens, mask_ratio)
    largest = min(int(block_size_range[1]), num_f, num_t)
    smallest = min(int(block_size_range[0]), largest)

    sides = torch.randint(smallest, largest + 1, (rows,), generator=generator)
    num_blocks = num_visible // sides.square()  # the union of the blocks never exceeds the visible budget
    max_blocks = int(num_blocks.max())
    visible = torch.zeros(rows, num_tokens + 1)  # the last column collects unused block cells
    if max_blocks > 0:
        corners = torch.rand(rows, max_blocks, 2, generator=generator)
        # top-left corners uniform over the positions where a b x b block lies inside the grid
        top = (corners[..., 0] * (num_f - sides + 1)[:, None]).floor().long()
        left = (corners[..., 1] * (num_t - sides + 1)[:, None]).floor().long()
        offsets = torch.arange(largest)
        cell_f = top[:, :, None, None] + offsets[:, None]  # (rows, blocks, largest, largest)
        cell_t = left[:, :, None, None] + offsets[None, :]
        inside = (offsets[:, None] < sides[:, None, None, None]) & (offsets[None, :] < sides[:, None, None, None])
        used = torch.arange(max_blocks)[None, :, None, None] < num_blocks[:, None, None, None]
        cells = torch.where(inside & used, cell_f * num_t + cell_t, num_tokens)
        visible.scatter_(1, cells.flatten(1), 1.0)
    visible = visible[:, :num_tokens]
    # Block cells rank first (score >= 2), random tokens fill the rest of the visible budget.
    scores = torch.rand(rows, num_tokens, generator=generator) + 2.0 * visible
    keep = scores.topk(num_visible, dim=1).indices
    mask = torch.ones(rows, num_tokens, dtype=torch.bool).scatter_(1, keep, False)
    return mask if device is None else mask.to(device)


def mask_to_indices(bool_masked_pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted `(visible_indices, masked_indices)` of a `(rows, tokens)` boolean mask with the same number of masked
    tokens in every row (as `inverse_block_mask` gives); shapes `(rows, visible)` and `(rows, masked)`."""
    if bool_masked_pos.dtype != torch.bool or bool_masked_pos.ndim != 2:
        raise ValueError(
            f"`bool_masked_pos` must be a boolean tensor of shape (rows, tokens), got {bool_masked_pos.dtype} "
            f"{tuple(bool_masked_pos.shape)}."
        )
    counts = bool_masked_pos.sum(1)
    if bool(counts.ne(counts[0]).any()):
        raise ValueError(
            "Every row of `bool_masked_pos` must mask the same number of tokens (dropped tokens are gathered into a "
            f"dense batch); got counts from {int(counts.min())} to {int(counts.max())}."
        )
    num_masked = int(counts[0]) if counts.numel() else 0
    # A stable sort on the mask puts visible (False) tokens first, each group in increasing index order.
    order = torch.sort(bool_masked_pos.to(torch.uint8), dim=1, stable=True).indices
    num_visible = bool_masked_pos.shape[1] - num_masked
    return order[:, :num_visible], order[:, num_visible:]


def sample_masked_subset(
    masked_indices: torch.Tensor, ratio: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """A uniformly random subset of `round(ratio * masked)` positions of every row of `masked_indices` (`(rows,
    masked)`, e.g. from `mask_to_indices`), returned sorted, shape `(rows, round(ratio * masked))`. The predictor
    queries these positions only (CrossMAE: 75 % of the masked tokens)."""
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"`ratio` must lie in (0, 1], got {ratio!r}.")
    rows, num_masked = masked_indices.shape
    count = max(1, num_masked_tokens(num_masked, ratio)) if num_masked else 0
    scores = torch.rand(rows, num_masked, generator=generator).to(masked_indices.device)
    chosen = scores.topk(count, dim=1).indices.sort(dim=1).values
    return masked_indices.gather(1, chosen)


__all__ = ["inverse_block_mask", "mask_to_indices", "num_masked_tokens", "sample_masked_subset"]

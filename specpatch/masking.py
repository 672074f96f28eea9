# Copyright 2026 The specpatch authors. Licensed under the Apache License, Version 2.0.
"""Token masking for masked teacher-student pre-training (AaPE, aape.txt Sec. III-D and IV-B).

* `inverse_block_mask`: EAT's *inverse block* multi-mask. Instead of masking blocks, the *visible* tokens are chosen
  as square blocks of patches and everything else is masked, so the student keeps a few contiguous
  time-frequency regions and has to predict large connected areas. Every row masks exactly
  `round(mask_ratio * tokens)` tokens, so all views of a batch have the same number of visible tokens and can be
  gathered into one dense tensor. EAT (`utils/data_utils.py` `compute_block_mask_2d`, `inverse_mask=True`,
  `require_same_masks=True`) *over-places* visible blocks (`mask_prob_adjust`) and then masks random cells of their
  union down to the visible budget, which leaves few isolated visible tokens; the older placement (`"inside"`)
  under-places whole blocks and tops the union up with isolated random tokens. Several independent masks ("views")
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


BLOCK_PLACEMENTS = ("eat", "inside")


def inverse_block_mask(
    batch: int,
    grid: Sequence[int],
    mask_ratio: float = 0.8,
    num_views: int = 1,
    block_size_range: Sequence[int] = (3, 5),
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    mask_prob_adjust: float = 0.07,
    placement: str = "eat",
) -> torch.Tensor:
    """Inverse block masks for `batch` clips with `num_views` independent masks each (EAT's inverse block multi-mask).

    For every view independently, with `V = tokens - round(mask_ratio * tokens)` visible tokens:

    1. a square block side `b` is drawn uniformly from `block_size_range` (inclusive, in patches; clipped to the
       grid);
    2. blocks of `b x b` patches are made visible:

       * `placement="eat"` (EAT's `compute_block_mask_2d` with `inverse_mask=True`): `int(tokens * (V / tokens +
         mask_prob_adjust) / b**2)` block centres are drawn uniformly over the whole grid (with replacement); each
         block spans `centre - b // 2 .. centre - b // 2 + b - 1` on both axes, clamped to the grid (edge blocks
         are cut off). `mask_prob_adjust` over-places blocks so that their union usually exceeds `V`;
       * `placement="inside"` (the earlier specpatch rule): `floor(V / b**2)` blocks placed uniformly *inside* the
         grid, so the union never exceeds `V`;

    3. the visible set is cut to exactly `V` tokens: when the union of the blocks is larger, `V` of its cells are
       kept at random (EAT masks random block cells, which makes holes inside blocks rather than isolated visible
       tokens); when it is smaller, the missing visible tokens are drawn at random from the rest of the grid.

    Args:
        batch (`int`): number of clips.
        grid (`(int, int)`): patch grid `(frequency_patches, time_patches)`; tokens are numbered frequency-major,
            `index = f * time_patches + t` (the order of `Conv2d(...).flatten(2)`).
        mask_ratio (`float`, *optional*, defaults to 0.8): share of masked tokens, in `[0, 1)`.
        num_views (`int`, *optional*, defaults to 1): independent masks per clip.
        block_size_range (`(int, int)`, *optional*, defaults to `(3, 5)`): smallest and largest block side (EAT:
            a fixed `mask_length` of 5; the AaPE paper draws it from a range whose values were lost).
        generator (`torch.Generator`, *optional*): CPU random generator, for reproducible masks.
        device (*optional*): device of the returned mask (masks are drawn on the CPU).
        mask_prob_adjust (`float`, *optional*, defaults to 0.07): EAT's `mask_prob_adjust`, extra share of the grid
            covered by block centres (`placement="eat"` only).
        placement (`str`, *optional*, defaults to `"eat"`): `"eat"` or `"inside"`, see step 2.

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
    if placement not in BLOCK_PLACEMENTS:
        raise ValueError(f"`placement` must be one of {BLOCK_PLACEMENTS}, got {placement!r}.")
    if not mask_prob_adjust >= 0.0:
        raise ValueError(f"`mask_prob_adjust` must be >= 0, got {mask_prob_adjust!r}.")

    rows, num_tokens = int(batch) * int(num_views), num_f * num_t
    num_visible = num_tokens - num_masked_tokens(num_tokens, mask_ratio)
    largest = min(int(block_size_range[1]), num_f, num_t)
    smallest = min(int(block_size_range[0]), largest)

    sides = torch.randint(smallest, largest + 1, (rows,), generator=generator)
    if placement == "eat":
        # EAT: int(L * (mask_prob + mask_prob_adjust) / mask_length**2) centres, mask_prob the visible share here.
        num_blocks = ((num_visible + mask_prob_adjust * num_tokens) / sides.square()).floor().long()
    else:
        num_blocks = num_visible // sides.square()  # the union of the blocks never exceeds the visible budget
    max_blocks = int(num_blocks.max())
    visible = torch.zeros(rows, num_tokens + 1)  # the last column collects unused block cells
    if max_blocks > 0:
        corners = torch.rand(rows, max_blocks, 2, generator=generator)
        offsets = torch.arange(largest)
        if placement == "eat":
            # centres uniform over the grid, blocks centre - b // 2 .. + b - 1, clamped to the grid (EAT)
            top = (corners[..., 0] * num_f).floor().long() - (sides // 2)[:, None]
            left = (corners[..., 1] * num_t).floor().long() - (sides // 2)[:, None]
            cell_f = (top[:, :, None, None] + offsets[:, None]).clamp(0, num_f - 1)  # (rows, blocks, largest, 1)
            cell_t = (left[:, :, None, None] + offsets[None, :]).clamp(0, num_t - 1)
        else:
            # top-left corners uniform over the positions where a b x b block lies inside the grid
            top = (corners[..., 0] * (num_f - sides + 1)[:, None]).floor().long()
            left = (corners[..., 1] * (num_t - sides + 1)[:, None]).floor().long()
            cell_f = top[:, :, None, None] + offsets[:, None]
            cell_t = left[:, :, None, None] + offsets[None, :]
        inside = (offsets[:, None] < sides[:, None, None, None]) & (offsets[None, :] < sides[:, None, None, None])
        used = torch.arange(max_blocks)[None, :, None, None] < num_blocks[:, None, None, None]
        cells = torch.where(inside & used, cell_f * num_t + cell_t, num_tokens)
        visible.scatter_(1, cells.flatten(1), 1.0)
    visible = visible[:, :num_tokens]
    # Block cells rank first (score >= 2): a random V of them when the union is larger than V (EAT masks random
    # block cells down to the target), random other tokens fill the rest when it is smaller.
    scores = torch.rand(rows, num_tokens, generator=generator) + 2.0 * visible
    keep = scores.topk(num_visible, dim=1).indices
    mask = torch.ones(rows, num_tokens, dtype=torch.bool).scatter_(1, keep, False)
    return mask if device is None else mask.to(device)


def isolated_visible_share(bool_masked_pos: torch.Tensor, grid: Sequence[int]) -> float:
    """Share of the visible tokens with no visible 4-neighbour (above, below, left, right) on the patch grid: a
    measure of how block-like a mask is (EAT's masks on an 8 x 38 grid: about 6 %)."""
    num_f, num_t = _check_grid(grid)
    visible = (~bool_masked_pos).float().view(-1, 1, num_f, num_t)
    cross = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]).view(1, 1, 3, 3)
    neighbours = torch.nn.functional.conv2d(visible, cross.to(visible), padding=1)
    isolated = (visible > 0) & (neighbours == 0)
    return float(isolated.sum() / visible.sum().clamp_min(1))


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


__all__ = [
    "inverse_block_mask",
    "isolated_visible_share",
    "mask_to_indices",
    "num_masked_tokens",
    "sample_masked_subset",
]

"""Inverse block multi-masking (AaPE / EAT): exact ratio, blocks inside the grid, independent views, reproducibility."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from specpatch.masking import (
    inverse_block_mask,
    isolated_visible_share,
    mask_to_indices,
    num_masked_tokens,
    sample_masked_subset,
)


def _generator(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize(
    "grid, ratio, expected",
    [((8, 38), 0.8, 243), ((8, 4), 0.8, 26), ((4, 8), 0.5, 16), ((3, 5), 0.0, 0), ((8, 38), 0.75, 228)],
)
def test_exact_number_of_masked_tokens_in_every_view(grid, ratio, expected):
    mask = inverse_block_mask(6, grid, ratio, num_views=5, block_size_range=(2, 5), generator=_generator())
    assert mask.shape == (30, grid[0] * grid[1]) and mask.dtype == torch.bool
    assert num_masked_tokens(grid[0] * grid[1], ratio) == expected
    assert mask.sum(1).tolist() == [expected] * 30


def _contains_full_square(visible: torch.Tensor, grid, side: int) -> torch.Tensor:
    """Per row: does the visible map contain a whole `side x side` square of visible patches?"""
    image = visible.float().view(-1, 1, *grid)
    return (F.avg_pool2d(image, side, stride=1) > 1 - 1e-6).flatten(1).any(1)


def test_inside_placement_gives_one_block_inside_the_grid_when_the_budget_is_one_block():
    # 304 tokens with 16 visible and 4 x 4 blocks: the visible set must be exactly one 4 x 4 square placed inside the
    # grid (a block crossing the time edge would wrap onto the next frequency row and fail this).
    grid = (8, 38)
    mask = inverse_block_mask(200, grid, 1 - 16 / 304, 1, (4, 4), generator=_generator(1), placement="inside")
    visible = ~mask
    assert visible.sum(1).eq(16).all()
    assert _contains_full_square(visible, grid, 4).all()
    corners = visible.view(-1, *grid).float().flatten(1).argmax(1)  # first visible cell = top-left corner
    top, left = corners // grid[1], corners % grid[1]
    assert top.max() == grid[0] - 4 and left.max() == grid[1] - 4 and top.min() == 0 and left.min() == 0


def _eat_reference_mask(grid, visible_budget, side, adjust, generator):
    """EAT's `compute_block_mask_2d(inverse_mask=True, require_same_masks=True)` transcribed cell by cell for one
    row (cwx-worst-one/EAT utils/data_utils.py): block centres, clamped blocks, then random cells of the kept set
    masked (or random cells added) to reach the budget. Returns the visible map (True = visible)."""
    num_f, num_t = grid
    tokens = num_f * num_t
    keep = torch.zeros(num_f, num_t, dtype=torch.bool)
    count = int(tokens * (visible_budget / tokens + adjust) / side**2)
    centres = torch.randint(0, tokens, (count,), generator=generator).tolist()
    for centre in set(centres):
        row, col = divmod(centre, num_t)
        for i in range(side):
            for j in range(side):
                keep[min(max(row + i - side // 2, 0), num_f - 1), min(max(col + j - side // 2, 0), num_t - 1)] = True
    flat = keep.flatten()
    n = int(flat.sum())
    if n > visible_budget:
        drop = torch.multinomial(flat.float(), n - visible_budget, generator=generator)
        flat[drop] = False
    elif n < visible_budget:
        add = torch.multinomial((~flat).float(), visible_budget - n, generator=generator)
        flat[add] = True
    return flat


def test_eat_placement_leaves_as_few_isolated_visible_tokens_as_eat():
    """EAT over-places visible blocks and masks random block cells down to the budget; its masks on the 8 x 38 grid
    leave about 6 % of the visible tokens without a visible neighbour. Ours must match that (an independent
    cell-by-cell transcription of EAT's loop), and the older "inside" placement, which tops whole blocks up with
    random single tokens, is well above it."""
    grid = (8, 38)
    generator = _generator(5)
    reference = torch.stack([_eat_reference_mask(grid, 61, 5, 0.07, generator) for _ in range(400)])
    expected = isolated_visible_share(~reference, grid)
    ours = inverse_block_mask(2000, grid, 0.8, 1, (5, 5), generator=_generator(6))
    inside = inverse_block_mask(2000, grid, 0.8, 1, (5, 5), generator=_generator(6), placement="inside")
    assert 0.03 < expected < 0.09
    assert isolated_visible_share(ours, grid) == pytest.approx(expected, abs=0.015)
    assert isolated_visible_share(inside, grid) > 0.12
    # the same blockiness by another measure: the share of visible tokens with all 4 neighbours visible
    def interior(visible):
        image = visible.float().view(-1, 1, *grid)
        cross = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]).view(1, 1, 3, 3)
        full = F.conv2d(F.pad(image, (1, 1, 1, 1), value=1.0), cross) == 4
        return float((full & (image > 0)).sum() / image.sum())

    assert interior(~ours) == pytest.approx(interior(reference), abs=0.03)


def test_isolated_visible_share_on_hand_made_masks():
    visible = torch.zeros(1, 3, 4, dtype=torch.bool)
    visible[0, 0, 0] = visible[0, 2, 3] = True  # two isolated tokens
    visible[0, 1, 1] = visible[0, 1, 2] = True  # a pair
    assert isolated_visible_share(~visible.view(1, 12), (3, 4)) == pytest.approx(0.5)


def test_visible_tokens_contain_a_block_unlike_random_masking():
    grid = (8, 38)
    mask = inverse_block_mask(64, grid, 0.8, 1, (3, 3), generator=_generator(2))
    assert _contains_full_square(~mask, grid, 3).all()
    # A uniformly random 61-of-304 set almost never holds a 3 x 3 visible square: the test tells blocks from noise.
    random_visible = torch.rand(64, 304, generator=_generator(3)).argsort(1) < 61
    assert _contains_full_square(random_visible, grid, 3).float().mean() < 0.2


def test_views_are_independent():
    grid, views = (8, 38), 4
    mask = inverse_block_mask(300, grid, 0.8, views, (3, 5), generator=_generator(4)).view(300, views, -1).float()
    # Agreement between two views of the same clip matches agreement between views of different clips.
    same_clip = (mask[:, 0] == mask[:, 1]).float().mean()
    other_clip = (mask[:, 0] == mask.roll(1, dims=0)[:, 1]).float().mean()
    assert abs(same_clip - other_clip) < 0.01
    assert not any(torch.equal(mask[i, 0], mask[i, 1]) for i in range(300))
    # Every position is visible in some view: blocks and random fill reach the whole grid.
    assert (mask == 0).any(0).any(0).all()


def test_reproducible_with_a_generator_and_different_without():
    kwargs = dict(batch=3, grid=(8, 38), mask_ratio=0.8, num_views=4, block_size_range=(3, 5))
    first = inverse_block_mask(**kwargs, generator=_generator(7))
    again = inverse_block_mask(**kwargs, generator=_generator(7))
    other = inverse_block_mask(**kwargs, generator=_generator(8))
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_block_sizes_larger_than_the_grid_are_clipped():
    mask = inverse_block_mask(4, (2, 3), 0.5, 2, (5, 9), generator=_generator())
    assert mask.sum(1).eq(3).all()


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(batch=0, grid=(8, 38)),
        dict(batch=2, grid=(8,)),
        dict(batch=2, grid=(8, 38), mask_ratio=1.0),
        dict(batch=2, grid=(8, 38), num_views=0),
        dict(batch=2, grid=(8, 38), block_size_range=(5, 3)),
    ],
)
def test_invalid_arguments_raise(kwargs):
    with pytest.raises(ValueError):
        inverse_block_mask(**kwargs)


def test_mask_to_indices_matches_an_explicit_reference():
    mask = inverse_block_mask(5, (4, 6), 0.75, 2, (2, 3), generator=_generator())
    visible, masked = mask_to_indices(mask)
    for row in range(mask.shape[0]):
        assert visible[row].tolist() == torch.nonzero(~mask[row]).flatten().tolist()
        assert masked[row].tolist() == torch.nonzero(mask[row]).flatten().tolist()
    with pytest.raises(ValueError, match="same number"):
        mask_to_indices(torch.tensor([[True, False], [True, True]]))
    with pytest.raises(ValueError, match="boolean"):
        mask_to_indices(torch.zeros(2, 3))


def test_sample_masked_subset_takes_a_random_share_of_the_masked_positions():
    mask = inverse_block_mask(8, (8, 38), 0.8, 1, (3, 5), generator=_generator())
    _, masked = mask_to_indices(mask)
    queries = sample_masked_subset(masked, 0.75, generator=_generator(1))
    assert queries.shape == (8, 182)  # round(0.75 * 243)
    for row in range(8):
        chosen = queries[row].tolist()
        assert chosen == sorted(set(chosen)) and set(chosen) <= set(masked[row].tolist())
    assert not torch.equal(queries[0], sample_masked_subset(masked, 0.75, generator=_generator(2))[0])
    assert torch.equal(sample_masked_subset(masked, 1.0), masked)

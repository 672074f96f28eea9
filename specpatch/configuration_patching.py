# Copyright 2026 The specpatch authors. Licensed under the Apache License, Version 2.0.
"""Patch configurations shared by the FFTP-AST and FFTP-AuM configurations (FFTP paper, Table II)."""

from __future__ import annotations

# Table II of fftp-specmask.txt: patch size (frequency, time), stride (frequency, time), input frames and the
# resulting number of patches on a 128-bin log-mel. The square row is AST's default input (1024 frames).
TABLE_II_PRESETS: dict[str, dict] = {
    "square-1212": {"patch_size": (16, 16), "frequency_stride": 10, "time_stride": 10, "max_length": 1024},
    "fftp-96": {"patch_size": (128, 50), "frequency_stride": 128, "time_stride": 10, "max_length": 1000},
    "fftp-196": {"patch_size": (128, 25), "frequency_stride": 128, "time_stride": 5, "max_length": 1000},
    "fftp-248": {"patch_size": (128, 10), "frequency_stride": 128, "time_stride": 4, "max_length": 1000},
    "fftp-496": {"patch_size": (128, 10), "frequency_stride": 128, "time_stride": 2, "max_length": 1000},
    "fftp-991": {"patch_size": (128, 10), "frequency_stride": 128, "time_stride": 1, "max_length": 1000},
}
TABLE_II_NUM_PATCHES = {"square-1212": 1212, "fftp-96": 96, "fftp-196": 196, "fftp-248": 248, "fftp-496": 496, "fftp-991": 991}


def patch_pair(patch_size) -> tuple[int, int]:
    """`(frequency, time)` from an int (square patch) or a pair (a list after a JSON round trip)."""
    if isinstance(patch_size, int):
        return (patch_size, patch_size)
    if isinstance(patch_size, (list, tuple)) and len(patch_size) == 2 and all(isinstance(p, int) for p in patch_size):
        return (int(patch_size[0]), int(patch_size[1]))
    raise ValueError(f"`patch_size` must be an int or a (frequency, time) pair of ints, got {patch_size!r}.")


class PatchingConfigMixin:
    """Patch-grid helpers for configurations with `num_mel_bins`, `max_length`, `patch_size`, `frequency_stride`
    and `time_stride` fields."""

    def _validate_patching(self) -> None:
        patch_frequency, patch_time = patch_pair(self.patch_size)
        if not 0 < patch_frequency <= self.num_mel_bins:
            raise ValueError(
                f"The frequency patch size ({patch_frequency}) must be between 1 and num_mel_bins ({self.num_mel_bins})."
            )
        if not 0 < patch_time <= self.max_length:
            raise ValueError(f"The time patch size ({patch_time}) must be between 1 and max_length ({self.max_length}).")
        if self.frequency_stride < 1 or self.time_stride < 1:
            raise ValueError(f"Strides must be positive, got ({self.frequency_stride}, {self.time_stride}).")

    @property
    def patch_grid(self) -> tuple[int, int]:
        """`(frequency_patches, time_patches)` for a `num_mel_bins x max_length` input."""
        patch_frequency, patch_time = patch_pair(self.patch_size)
        return (
            (self.num_mel_bins - patch_frequency) // self.frequency_stride + 1,
            (self.max_length - patch_time) // self.time_stride + 1,
        )

    @property
    def num_patches(self) -> int:
        frequency_patches, time_patches = self.patch_grid
        return frequency_patches * time_patches

    @property
    def is_full_frequency(self) -> bool:
        """True for FFTP: every patch spans all mel bins, so there is one token per temporal position."""
        return patch_pair(self.patch_size)[0] == self.num_mel_bins

    @classmethod
    def from_preset(cls, name: str, **kwargs):
        """A configuration with one of the Table II patchings (`"square-1212"`, `"fftp-96"`, `"fftp-196"`,
        `"fftp-248"`, `"fftp-496"`, `"fftp-991"`); `kwargs` override any field."""
        if name not in TABLE_II_PRESETS:
            raise ValueError(f"Unknown preset {name!r}; choose one of {sorted(TABLE_II_PRESETS)}.")
        return cls(**{**TABLE_II_PRESETS[name], **kwargs})

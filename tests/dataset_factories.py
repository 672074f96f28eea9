# Copyright 2026 The specpatch authors. Licensed under the Apache License, Version 2.0.
"""Tiny local datasets in the exact schemas of the hub datasets the scripts train on, written as parquet with the audio
embedded as FLAC bytes (`{"bytes": ..., "path": ...}`, as the hub's parquet files hold it).

- AudioSet (`agkphysics/AudioSet`): `video_id`, `audio`, `labels` (ontology ids), `human_labels`; splits train / test.
- ESC-50 (`ashraq/esc50`): `filename`, `fold`, `target`, `category`, `esc10`, `src_file`, `take`, `audio`; one train
  split, folds in a column.

Clips are short tones whose pitch depends on the class (so a model can learn them), at a sampling rate other than
16 kHz (so resampling runs). Selected rows hold bytes that are not audio, to test that corrupt clips are skipped.
"""

from __future__ import annotations

import io
import os

import numpy as np

# Four real AudioSet classes (ontology id, display name) used by the tiny AudioSet copy.
AUDIOSET_SUBSET = (
    ("/m/09x0r", "Speech"),
    ("/m/04rlf", "Music"),
    ("/m/0jbk", "Animal"),
    ("/m/07yv9", "Vehicle"),
)
ESC50_SUBSET = ("dog", "rooster", "rain")
CORRUPT_BYTES = b"this is not an audio file"


def flac_bytes(audio: np.ndarray, sampling_rate: int) -> bytes:
    import soundfile as sf

    buffer = io.BytesIO()
    sf.write(buffer, audio.astype(np.float32), sampling_rate, format="FLAC", subtype="PCM_16")
    return buffer.getvalue()


def tone_clip(class_indices, sampling_rate: int, duration: float, rng: np.random.Generator) -> np.ndarray:
    """A sum of tones, one per class (class k at 300 * 2**k Hz), plus a little noise; peak 0.5."""
    t = np.arange(int(sampling_rate * duration)) / sampling_rate
    x = 0.05 * rng.standard_normal(t.shape[0])
    for k in class_indices:
        x += np.sin(2 * np.pi * 300 * 2**k * t + rng.uniform(0, 2 * np.pi))
    return (0.5 * x / np.abs(x).max()).astype(np.float32)


def make_audioset_parquet(
    root: str,
    num_train: int = 8,
    num_test: int = 4,
    sampling_rate: int = 32000,
    duration: float = 0.7,
    corrupt_train_rows: tuple[int, ...] = (3,),
    seed: int = 0,
) -> str:
    """Writes `root/data/{train,test}-00000-of-00001.parquet` in AudioSet's schema; returns `root`."""
    from datasets import Audio, Dataset, Features, List, Value

    rng = np.random.default_rng(seed)
    features = Features(
        {
            "video_id": Value("string"),
            "audio": Audio(sampling_rate=sampling_rate),
            "labels": List(Value("string")),
            "human_labels": List(Value("string")),
        }
    )
    os.makedirs(os.path.join(root, "data"), exist_ok=True)
    for split, count in (("train", num_train), ("test", num_test)):
        rows = {"video_id": [], "audio": [], "labels": [], "human_labels": []}
        for i in range(count):
            # Every clip has one or two classes; every class appears in both splits.
            classes = sorted({i % len(AUDIOSET_SUBSET), (i * 3 + 1) % len(AUDIOSET_SUBSET)} if i % 2 else {i % 4})
            video_id = f"{split[:2]}{i:09d}"
            if split == "train" and i in corrupt_train_rows:
                payload = CORRUPT_BYTES
            else:
                payload = flac_bytes(tone_clip(classes, sampling_rate, duration, rng), sampling_rate)
            rows["video_id"].append(video_id)
            rows["audio"].append({"bytes": payload, "path": f"{video_id}.flac"})
            rows["labels"].append([AUDIOSET_SUBSET[c][0] for c in classes])
            rows["human_labels"].append([AUDIOSET_SUBSET[c][1] for c in classes])
        Dataset.from_dict(rows, features=features).to_parquet(
            os.path.join(root, "data", f"{split}-00000-of-00001.parquet")
        )
    return root


def make_esc50_parquet(
    root: str,
    folds: tuple[int, ...] = (1, 2),
    clips_per_class_per_fold: int = 2,
    sampling_rate: int = 44100,
    duration: float = 0.6,
    corrupt_rows: tuple[int, ...] = (),
    seed: int = 0,
) -> str:
    """Writes `root/data/train-00000-of-00001.parquet` in ESC-50's schema (one split, folds in a column)."""
    from datasets import Audio, Dataset, Features, Value

    rng = np.random.default_rng(seed)
    features = Features(
        {
            "filename": Value("string"),
            "fold": Value("int64"),
            "target": Value("int64"),
            "category": Value("string"),
            "esc10": Value("bool"),
            "src_file": Value("int64"),
            "take": Value("string"),
            "audio": Audio(sampling_rate=sampling_rate),
        }
    )
    rows = {name: [] for name in features}
    row = 0
    for fold in folds:
        for target, category in enumerate(ESC50_SUBSET):
            for take in range(clips_per_class_per_fold):
                src = 100000 + row
                filename = f"{fold}-{src}-{'ABCDEFGH'[take]}-{target}.wav"
                payload = CORRUPT_BYTES if row in corrupt_rows else flac_bytes(
                    tone_clip([target], sampling_rate, duration, rng), sampling_rate
                )
                for name, value in (
                    ("filename", filename),
                    ("fold", fold),
                    ("target", target),
                    ("category", category),
                    ("esc10", target == 0),
                    ("src_file", src),
                    ("take", "ABCDEFGH"[take]),
                    ("audio", {"bytes": payload, "path": filename}),
                ):
                    rows[name].append(value)
                row += 1
    os.makedirs(os.path.join(root, "data"), exist_ok=True)
    Dataset.from_dict(rows, features=features).to_parquet(os.path.join(root, "data", "train-00000-of-00001.parquet"))
    return root

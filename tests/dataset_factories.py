# Copyright 2026 The specpatch authors. Licensed under the Apache License, Version 2.0.
"""Tiny local datasets in the exact schemas of the hub datasets the scripts train on, written as parquet with the audio
embedded as FLAC bytes (`{"bytes": ..., "path": ...}`, as the hub's parquet files hold it).

- AudioSet (`agkphysics/AudioSet`): `video_id`, `audio` (FLAC, 48 kHz 24-bit as most of the real clips),
  `labels` (ontology ids), `human_labels`; the hub's layout `data/{bal_train,unbal_train,eval}/*.parquet` and its
  dataset card's configs: `balanced` (train / test = bal_train / eval, the default), `unbalanced` (train / test =
  unbal_train / eval) and `full` (bal_train / unbal_train / eval).
- Speech Commands V2: the original archive layout (word folders, `_background_noise_`, `validation_list.txt`,
  `testing_list.txt`), and the hub copy `google/speech_commands` v0.02 (a `_silence_` class, a 12-class test split).
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


def flac_bytes(audio: np.ndarray, sampling_rate: int, subtype: str = "PCM_16") -> bytes:
    import soundfile as sf

    buffer = io.BytesIO()
    sf.write(buffer, audio.astype(np.float32), sampling_rate, format="FLAC", subtype=subtype)
    return buffer.getvalue()


def wav_bytes(audio: np.ndarray, sampling_rate: int) -> bytes:
    import soundfile as sf

    buffer = io.BytesIO()
    sf.write(buffer, audio.astype(np.float32), sampling_rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def tone_clip(class_indices, sampling_rate: int, duration: float, rng: np.random.Generator) -> np.ndarray:
    """A sum of tones, one per class (class k at 300 * 2**k Hz), plus a little noise; peak 0.5."""
    t = np.arange(int(sampling_rate * duration)) / sampling_rate
    x = 0.05 * rng.standard_normal(t.shape[0])
    for k in class_indices:
        x += np.sin(2 * np.pi * 300 * 2**k * t + rng.uniform(0, 2 * np.pi))
    return (0.5 * x / np.abs(x).max()).astype(np.float32)


AUDIOSET_CARD = """---
configs:
- config_name: balanced
  default: true
  data_files:
  - split: train
    path: data/bal_train/*.parquet
  - split: test
    path: data/eval/*.parquet
- config_name: unbalanced
  data_files:
  - split: train
    path: data/unbal_train/*.parquet
  - split: test
    path: data/eval/*.parquet
- config_name: full
  data_files:
  - split: bal_train
    path: data/bal_train/*.parquet
  - split: unbal_train
    path: data/unbal_train/*.parquet
  - split: eval
    path: data/eval/*.parquet
---
# AudioSet (tiny local copy in agkphysics/AudioSet's layout)
"""


def make_audioset_parquet(
    root: str,
    num_train: int = 8,
    num_test: int = 4,
    num_unbal_train: int = 4,
    sampling_rate: int = 48000,
    duration: float = 0.7,
    corrupt_train_rows: tuple[int, ...] = (3,),
    seed: int = 0,
) -> str:
    """Writes `agkphysics/AudioSet`'s layout under `root` (`data/{bal_train,unbal_train,eval}/*.parquet` and the
    dataset card's configs): `num_train` balanced training clips (`corrupt_train_rows` of them not audio),
    `num_unbal_train` unbalanced ones and `num_test` evaluation clips, 24-bit FLAC at `sampling_rate`. Returns `root`."""
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
    for split, count in (("bal_train", num_train), ("unbal_train", num_unbal_train), ("eval", num_test)):
        rows = {"video_id": [], "audio": [], "labels": [], "human_labels": []}
        for i in range(count):
            # Every clip has one or two classes; every class appears in every split of 4 clips or more.
            classes = sorted({i % len(AUDIOSET_SUBSET), (i * 3 + 1) % len(AUDIOSET_SUBSET)} if i % 2 else {i % 4})
            video_id = f"{split[:2]}{i:09d}"
            if split == "bal_train" and i in corrupt_train_rows:
                payload = CORRUPT_BYTES
            else:
                payload = flac_bytes(tone_clip(classes, sampling_rate, duration, rng), sampling_rate, "PCM_24")
            rows["video_id"].append(video_id)
            rows["audio"].append({"bytes": payload, "path": f"audio/{split}/{video_id}.flac"})
            rows["labels"].append([AUDIOSET_SUBSET[c][0] for c in classes])
            rows["human_labels"].append([AUDIOSET_SUBSET[c][1] for c in classes])
        os.makedirs(os.path.join(root, "data", split), exist_ok=True)
        Dataset.from_dict(rows, features=features).to_parquet(os.path.join(root, "data", split, "00.parquet"))
    with open(os.path.join(root, "README.md"), "w") as f:
        f.write(AUDIOSET_CARD)
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


SPEECH_COMMANDS_HUB_NAMES = (
    "yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go", "zero", "one", "two", "three", "four",
    "five", "six", "seven", "eight", "nine", "bed", "bird", "cat", "dog", "happy", "house", "marvin", "sheila",
    "tree", "wow", "backward", "forward", "follow", "learn", "visual", "_silence_",
)  # fmt: skip  (google/speech_commands v0.02's ClassLabel: 35 words and _silence_)


def make_speech_commands_archive(
    root: str,
    words: tuple[str, ...] = ("yes", "no", "backward", "zero"),
    speakers: tuple[str, ...] = ("0a1b2c3d", "1b2c3d4e", "2c3d4e5f", "3d4e5f60"),
    sampling_rate: int = 16000,
    duration: float = 0.5,
    seed: int = 0,
) -> tuple[str, dict[str, list[str]]]:
    """The original Speech Commands V2 layout under `root`: a folder per word with `<speaker>_nohash_<n>.wav` clips
    (two per speaker), `_background_noise_` recordings, and `validation_list.txt` / `testing_list.txt` (speaker 1 is
    validation, speaker 2 test, as the archive assigns whole speakers). Returns `root` and the expected splits."""
    rng = np.random.default_rng(seed)
    expected = {"train": [], "validation": [], "test": []}
    for k, word in enumerate(words):
        os.makedirs(os.path.join(root, word), exist_ok=True)
        for s_index, speaker in enumerate(speakers):
            for n in range(2):
                relative = f"{word}/{speaker}_nohash_{n}.wav"
                with open(os.path.join(root, relative), "wb") as f:
                    f.write(wav_bytes(tone_clip([k], sampling_rate, duration, rng), sampling_rate))
                expected[{1: "validation", 2: "test"}.get(s_index, "train")].append(relative)
    os.makedirs(os.path.join(root, "_background_noise_"), exist_ok=True)
    for name in ("white_noise.wav", "running_tap.wav"):
        with open(os.path.join(root, "_background_noise_", name), "wb") as f:
            f.write(wav_bytes(0.1 * rng.standard_normal(sampling_rate * 2), sampling_rate))
    for split, name in (("validation", "validation_list.txt"), ("test", "testing_list.txt")):
        with open(os.path.join(root, name), "w") as f:
            f.write("\n".join(expected[split]) + "\n")
    with open(os.path.join(root, "LICENSE"), "w") as f:
        f.write("CC-BY-4.0\n")
    return root, {k: sorted(v) for k, v in expected.items()}


def make_hub_speech_commands_parquet(root: str, seed: int = 0) -> str:
    """`google/speech_commands` v0.02's schema and splits (`file`, `audio`, `label` with a `_silence_` class,
    `is_unknown`, `speaker_id`, `utterance_id`): train and validation with `_silence_` rows, and a test split in the
    style of the 12-class test archive (`_silence_` rows too)."""
    from datasets import Audio, ClassLabel, Dataset, Features, Value

    rng = np.random.default_rng(seed)
    features = Features({
        "file": Value("string"),
        "audio": Audio(sampling_rate=16000),
        "label": ClassLabel(names=list(SPEECH_COMMANDS_HUB_NAMES)),
        "is_unknown": Value("bool"),
        "speaker_id": Value("string"),
        "utterance_id": Value("int8"),
    })
    os.makedirs(os.path.join(root, "data"), exist_ok=True)
    for split, words in (("train", ("yes", "no", "backward", "_silence_")), ("validation", ("yes", "no", "_silence_")),
                         ("test", ("yes", "no", "_silence_"))):
        rows = {name: [] for name in features}
        for i, word in enumerate(words * 2):
            label = SPEECH_COMMANDS_HUB_NAMES.index(word)
            path = f"{word}/{i:08x}_nohash_0.wav"
            for name, value in (("file", path), ("audio", {"bytes": wav_bytes(tone_clip([label % 5], 16000, 0.5, rng),
                                                                               16000), "path": path}),
                                ("label", label), ("is_unknown", label >= 10 and word != "_silence_"),
                                ("speaker_id", f"{i:08x}"), ("utterance_id", 0)):
                rows[name].append(value)
        Dataset.from_dict(rows, features=features).to_parquet(
            os.path.join(root, "data", f"{split}-00000-of-00001.parquet"))
    return root


def make_converted_speech_commands(root: str, mislabeled_validation: bool = False, **archive_kwargs) -> str:
    """A Speech Commands V2 folder as `python -m specpatch.speech_commands` writes it (`data/{train,validation,test}`
    parquet, 35-word `ClassLabel`), converted from a tiny archive of [`make_speech_commands_archive`] under
    `root/archive`; returns the converted folder `root/scv2`.

    `mislabeled_validation=True` rotates the validation split's labels among the archive's words (a clip of word `k`
    is labelled word `k + 1`), for model-selection tests: the better a model learns the training words, the worse it
    scores on that split, so the best-validation state is an early one and differs from the final one."""
    from datasets import load_dataset

    from specpatch.speech_commands import SPEECH_COMMANDS_V2_WORDS, convert_speech_commands

    archive, _ = make_speech_commands_archive(os.path.join(root, "archive"), **archive_kwargs)
    out = os.path.join(root, "scv2")
    convert_speech_commands(archive, out)
    if mislabeled_validation:
        words = archive_kwargs.get("words", ("yes", "no", "backward", "zero"))
        indices = [SPEECH_COMMANDS_V2_WORDS.index(w) for w in words]
        rotate = {a: b for a, b in zip(indices, indices[1:] + indices[:1])}
        path = os.path.join(out, "data", "validation-00000-of-00001.parquet")
        split = load_dataset("parquet", data_files=path, split="train", cache_dir=os.path.join(root, "cache"))
        split = split.map(lambda label: {"label": rotate[label]}, input_columns=["label"])
        split.to_parquet(path + ".tmp")
        os.replace(path + ".tmp", path)
    return out

"""An offline spoken-keyword task with held-out speakers, for the learning benchmarks.

Speech Commands cannot be downloaded here, so the learning benchmarks (`bench_from_scratch.py`,
`bench_ssl_probe.py`) synthesise a stand-in with the same structure: the 35 Speech Commands words, 1 s clips at
16 kHz, spoken by many "speakers" and classified on speakers never seen in training. A speaker is an espeak-ng voice:
an accent (dialect), a voice variant (formant set, breathiness, vibrato), a base pitch and a base rate; every clip
jitters pitch and rate, places the word at a random offset, scales it, and mixes it with coloured noise and a quiet
babble of other words (other speakers) at a random SNR. Nothing about a test speaker's voice is in the training set.

Needs the `espeak-ng` program (Debian package `espeak-ng`, installed by scripts/install.sh). Generation is
deterministic for a seed and cached as an .npz file (a few seconds to a minute on 2 cores).

    task = make_keyword_task(num_words=35)
    task.train_audio.shape   # (n_train, 16000) float32
    write_parquet_dataset(task, "/tmp/kw")   # train / test splits for the scripts: --dataset_name /tmp/kw
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import soundfile as sf
import soxr

SAMPLING_RATE = 16_000

# The 35 words of Speech Commands V2 (its test protocol has no `_silence_` class).
SPEECH_COMMANDS_WORDS = (
    "yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go",
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
    "bed", "bird", "cat", "dog", "happy", "house", "marvin", "sheila", "tree", "wow",
    "backward", "forward", "follow", "learn", "visual",
)  # fmt: skip

DIALECTS = ("en-us", "en-gb", "en-gb-scotland", "en-029", "en-gb-x-rp", "en-us-nyc", "en-gb-x-gbcwmd")
# espeak-ng voice variants that sound like a human speaker (robotic / whispered / novelty variants left out).
VARIANTS = (
    "m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "f1", "f2", "f3", "f4", "f5",
    "adam", "Alex", "Alicia", "Andrea", "Andy", "Annie", "antonio", "aunty", "belinda", "benjamin", "boris",
    "caleb", "david", "Denis", "ed", "edward", "Gene", "gustave", "Hugo", "iven", "Jacky", "john", "Lee",
    "linda", "max", "Michael", "michel", "Mike", "norbert", "pablo", "paul", "quincy", "rob", "robert",
    "steph", "travis", "victor", "zac", "anika", "grandpa", "grandma", "klatt", "klatt3",
)  # fmt: skip


@dataclass
class Speaker:
    dialect: str
    variant: str
    pitch: int  # espeak-ng -p, 0-99
    rate: int  # espeak-ng -s, words per minute


@dataclass
class KeywordTask:
    words: list[str]
    train_audio: np.ndarray  # (n, 16000) float32
    train_labels: np.ndarray  # (n,) int64
    train_speakers: np.ndarray  # (n,) int64, speaker index
    test_audio: np.ndarray
    test_labels: np.ndarray
    test_speakers: np.ndarray

    @property
    def num_labels(self) -> int:
        return len(self.words)


def _check_espeak() -> str:
    path = shutil.which("espeak-ng")
    if path is None:
        raise RuntimeError("The keyword task needs the `espeak-ng` program: `apt-get install espeak-ng`.")
    return path


def make_speakers(num_speakers: int, rng: np.random.Generator) -> list[Speaker]:
    """Distinct (dialect, variant) pairs, each with its own base pitch and rate."""
    pairs = [(d, v) for d in DIALECTS for v in VARIANTS]
    if num_speakers > len(pairs):
        raise ValueError(f"At most {len(pairs)} speakers, got {num_speakers}.")
    chosen = rng.choice(len(pairs), size=num_speakers, replace=False)
    return [
        Speaker(pairs[i][0], pairs[i][1], int(rng.integers(25, 76)), int(rng.integers(120, 200))) for i in chosen
    ]


def synthesize(word: str, speaker: Speaker, pitch: int, rate: int, espeak: str) -> np.ndarray:
    """One utterance at 16 kHz, float32, peak-normalised, leading / trailing silence trimmed."""
    wav = subprocess.run(
        [espeak, "-v", f"{speaker.dialect}+{speaker.variant}", "-p", str(pitch), "-s", str(rate), "--stdout", word],
        check=True,
        capture_output=True,
    ).stdout
    audio, sr = sf.read(io.BytesIO(wav), dtype="float32")
    audio = soxr.resample(audio, sr, SAMPLING_RATE)
    loud = np.flatnonzero(np.abs(audio) > 0.02 * np.abs(audio).max())
    audio = audio[loud[0] : loud[-1] + 1] if len(loud) else audio
    return audio / max(np.abs(audio).max(), 1e-6)


def _coloured_noise(num: int, rng: np.random.Generator) -> np.ndarray:
    """Gaussian noise with a random spectral tilt (white to brown-ish) and a random low-pass."""
    spectrum = np.fft.rfft(rng.standard_normal(num))
    freqs = np.fft.rfftfreq(num, 1 / SAMPLING_RATE)
    tilt = rng.uniform(0.0, 1.0)  # power ~ f^-tilt
    cutoff = rng.uniform(2000, 8000)
    shaped = spectrum / np.maximum(freqs, 50.0) ** (tilt / 2) / (1 + (freqs / cutoff) ** 4)
    noise = np.fft.irfft(shaped, num)
    return noise / (noise.std() + 1e-9)


def _place(utterance: np.ndarray, num: int, rng: np.random.Generator) -> np.ndarray:
    out = np.zeros(num, np.float32)
    if len(utterance) >= num:  # long word at a slow rate: keep a random 1 s of it
        start = int(rng.integers(0, len(utterance) - num + 1))
        return utterance[start : start + num].copy()
    start = int(rng.integers(0, num - len(utterance) + 1))
    out[start : start + len(utterance)] = utterance
    return out


def _mix(word: np.ndarray, babble: np.ndarray, rng: np.random.Generator, snr_db: tuple[float, float]) -> np.ndarray:
    num = len(word)
    signal_power = np.mean(word**2) + 1e-9
    noise = _coloured_noise(num, rng) + 0.5 * babble / (np.std(babble) + 1e-9)
    snr = rng.uniform(*snr_db)
    noise *= np.sqrt(signal_power / (np.mean(noise**2) + 1e-9) / 10 ** (snr / 10))
    clip = (word + noise) * 10 ** (rng.uniform(-20, 0) / 20)
    return (clip / max(1.0, np.abs(clip).max())).astype(np.float32)


def make_keyword_task(
    num_words: int = 35,
    num_train_speakers: int = 48,
    num_test_speakers: int = 12,
    train_takes: int = 2,
    test_takes: int = 2,
    snr_db: tuple[float, float] = (5.0, 20.0),
    seed: int = 0,
    cache_dir: str | None = None,
    num_threads: int = 4,
) -> KeywordTask:
    """Builds (or loads from the cache) the keyword task.

    Each of `num_train_speakers` / `num_test_speakers` disjoint speakers says every one of the first `num_words`
    Speech Commands words `train_takes` / `test_takes` times, with per-take pitch / rate jitter, random placement,
    gain, and noise at an SNR drawn from `snr_db`. Defaults: 35 words x 48 speakers x 2 takes = 3,360 training
    clips, 35 x 12 x 2 = 840 test clips.
    """
    if not 2 <= num_words <= len(SPEECH_COMMANDS_WORDS):
        raise ValueError(f"num_words must be in [2, {len(SPEECH_COMMANDS_WORDS)}], got {num_words}.")
    key = repr((num_words, num_train_speakers, num_test_speakers, train_takes, test_takes, snr_db, seed, 1))
    cache_dir = cache_dir or os.path.join(os.path.expanduser("~"), ".cache", "specpatch", "keyword_task")
    cache = os.path.join(cache_dir, hashlib.sha1(key.encode()).hexdigest()[:16] + ".npz")
    words = list(SPEECH_COMMANDS_WORDS[:num_words])
    if os.path.exists(cache):
        with np.load(cache) as f:
            return KeywordTask(words, *(f[k] for k in ("train_audio", "train_labels", "train_speakers",
                                                        "test_audio", "test_labels", "test_speakers")))  # fmt: skip

    espeak = _check_espeak()
    rng = np.random.default_rng(seed)
    speakers = make_speakers(num_train_speakers + num_test_speakers, rng)
    jobs = []  # (split, speaker index, label, pitch, rate, clip seed)
    for s, speaker in enumerate(speakers):
        takes = train_takes if s < num_train_speakers else test_takes
        for label in range(num_words):
            for _ in range(takes):
                pitch = int(np.clip(speaker.pitch + rng.integers(-6, 7), 0, 99))
                rate = int(np.clip(speaker.rate * rng.uniform(0.85, 1.15), 80, 400))
                jobs.append((s, label, pitch, rate, int(rng.integers(2**31))))
    with ThreadPoolExecutor(num_threads) as pool:
        utterances = list(pool.map(lambda j: synthesize(words[j[1]], speakers[j[0]], j[2], j[3], espeak), jobs))

    clips = np.empty((len(jobs), SAMPLING_RATE), np.float32)
    for i, ((s, _label, _, _, clip_seed), utterance) in enumerate(zip(jobs, utterances)):
        clip_rng = np.random.default_rng(clip_seed)
        # Babble: another word by another speaker of the same split, quietly underneath.
        # (a different speaker where the split has several, so babble never leaks a test voice into training).
        split_speakers = num_train_speakers if s < num_train_speakers else num_test_speakers
        while True:
            other = int(clip_rng.integers(len(jobs)))
            same_split = (jobs[other][0] < num_train_speakers) == (s < num_train_speakers)
            if same_split and other != i and (jobs[other][0] != s or split_speakers == 1):
                break
        babble = _place(utterances[other], SAMPLING_RATE, clip_rng)
        clips[i] = _mix(_place(utterance, SAMPLING_RATE, clip_rng), babble, clip_rng, snr_db)

    speaker_ids = np.array([j[0] for j in jobs], np.int64)
    labels = np.array([j[1] for j in jobs], np.int64)
    train = speaker_ids < num_train_speakers
    task = KeywordTask(
        words, clips[train], labels[train], speaker_ids[train], clips[~train], labels[~train], speaker_ids[~train]
    )
    os.makedirs(cache_dir, exist_ok=True)
    tmp = cache + f".{os.getpid()}.tmp.npz"
    np.savez(tmp, **{k: getattr(task, k) for k in ("train_audio", "train_labels", "train_speakers",
                                                   "test_audio", "test_labels", "test_speakers")})  # fmt: skip
    os.replace(tmp, cache)
    return task


def write_parquet_dataset(task: KeywordTask, folder: str) -> str:
    """Writes `task` as a local `datasets` folder (parquet shards `train` / `test`; columns `audio` (16 kHz FLAC),
    `label` (ClassLabel with the words), `speaker_id`) that the scripts read with `--dataset_name <folder>`."""
    from datasets import Audio, ClassLabel, Dataset, Features, Value

    features = Features({"audio": Audio(sampling_rate=SAMPLING_RATE), "label": ClassLabel(names=task.words),
                         "speaker_id": Value("int64")})  # fmt: skip
    os.makedirs(os.path.join(folder, "data"), exist_ok=True)
    for split, audio, labels, speakers in (
        ("train", task.train_audio, task.train_labels, task.train_speakers),
        ("test", task.test_audio, task.test_labels, task.test_speakers),
    ):
        rows = {"audio": [], "label": labels.tolist(), "speaker_id": speakers.tolist()}
        for i, clip in enumerate(audio):
            buffer = io.BytesIO()
            sf.write(buffer, clip, SAMPLING_RATE, format="FLAC", subtype="PCM_16")
            rows["audio"].append({"bytes": buffer.getvalue(), "path": f"{split}_{i:05d}.flac"})
        Dataset.from_dict(rows, features=features).to_parquet(os.path.join(folder, "data", f"{split}-00000-of-00001.parquet"))
    return folder


if __name__ == "__main__":
    import argparse
    import time

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num_words", type=int, default=35)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--parquet_dir", help="Also write the task as a local dataset folder here.")
    args = parser.parse_args()
    t0 = time.time()
    task = make_keyword_task(num_words=args.num_words, seed=args.seed)
    print(f"{len(task.train_audio)} train / {len(task.test_audio)} test clips, {task.num_labels} words, "
          f"{len(np.unique(task.train_speakers))} / {len(np.unique(task.test_speakers))} speakers, {time.time() - t0:.1f} s")  # fmt: skip
    if args.parquet_dir:
        print("written:", write_parquet_dataset(task, args.parquet_dir))

"""A synthetic instrument-family task with held-out instruments, a second probe task for the learning benchmarks.

Clip-level spectral content decides the class here (harmonic series, spectral tilt, formant, decay, vibrato), unlike
the keyword task, where the word is the temporal order of phonemes: a probe on pooled features (class token, token
mean) can reach the class when the encoder's tokens describe the spectrum. Eight families (saw-like "brass",
"flute" with breath noise, odd-harmonic "clarinet", "plucked" with frequency-dependent decay, inharmonic "bell",
"bowed" with vibrato and noise, "organ" with octave partials, pitched "drum"); every instrument of a family draws its
own tilt, formant, decay, vibrato, attack and noise; every clip draws a pitch (MIDI 45-79), an onset, a duration,
and white or brown noise at 5-25 dB SNR. Test instruments are never seen in training.

    task = make_instrument_task()   # a KeywordTask: `words` are the family names, `*_speakers` the instrument ids
"""

from __future__ import annotations

import numpy as np
from keyword_task import SAMPLING_RATE, KeywordTask

FAMILIES = ("brass", "flute", "clarinet", "plucked", "bell", "bowed", "organ", "drum")


def _instrument(rng: np.random.Generator) -> dict:
    return {"tilt": rng.uniform(0.7, 1.5), "formant": rng.uniform(600, 3000), "formant_width": rng.uniform(300, 1200),
            "decay": rng.uniform(2, 8), "vibrato": rng.uniform(0, 0.012), "attack": rng.uniform(0.005, 0.08),
            "noise": rng.uniform(0.02, 0.3)}  # fmt: skip


def _clip(family: int, ins: dict, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(SAMPLING_RATE) / SAMPLING_RATE
    f0 = 440.0 * 2.0 ** ((rng.integers(45, 80) - 69) / 12)
    onset, duration = rng.uniform(0, 0.3), rng.uniform(0.4, 0.7)
    since = np.clip(t - onset, 0, None)
    sounding = t >= onset
    envelope = np.minimum(since / ins["attack"], 1.0) * sounding * (t < onset + duration)
    phase = 2 * np.pi * np.cumsum(1 + ins["vibrato"] * np.sin(2 * np.pi * rng.uniform(4, 7) * t)) / SAMPLING_RATE
    name = FAMILIES[family]
    k = np.arange(1, 40, dtype=float)
    ratios = np.array([1, 2.76, 5.40, 8.93, 13.3]) if name == "bell" else k
    amplitudes = {
        "brass": k ** -ins["tilt"], "flute": k ** -(2.5 + ins["tilt"]), "clarinet": (k % 2 == 1) * k ** -ins["tilt"],
        "plucked": k ** -ins["tilt"], "bell": ratios ** -ins["tilt"], "bowed": k ** -ins["tilt"] * (1 + 0.5 * np.sin(k)),
        "organ": np.isin(k, [1, 2, 4, 8, 16]) * 1.0, "drum": (k == 1) * 1.0,
    }[name]  # fmt: skip
    freqs = f0 * ratios
    keep = freqs < SAMPLING_RATE / 2 - 200
    freqs, amplitudes = freqs[keep], amplitudes[keep]
    amplitudes = amplitudes * (1 + 2 * np.exp(-0.5 * ((freqs - ins["formant"]) / ins["formant_width"]) ** 2))
    if name in ("plucked", "bell"):
        decays = ins["decay"] * (1 + freqs / 2000)
        x = (amplitudes[:, None] * np.exp(-decays[:, None] * since) * np.sin(freqs[:, None] * phase)).sum(0) * sounding
    elif name == "drum":
        sweep = 2 * np.pi * np.cumsum(f0 * 0.5 * (1 + np.exp(-20 * since))) / SAMPLING_RATE
        x = np.sin(sweep) * np.exp(-2 * ins["decay"] * since) * sounding
        x = x + 0.5 * rng.standard_normal(SAMPLING_RATE) * np.exp(-4 * ins["decay"] * since) * sounding
    else:
        x = (amplitudes[:, None] * np.sin(freqs[:, None] * phase)).sum(0) * envelope
        if name in ("flute", "bowed"):
            x = x + ins["noise"] * rng.standard_normal(SAMPLING_RATE) * envelope * np.abs(x).max()
    x = x / (np.abs(x).max() + 1e-6)
    noise = rng.standard_normal(SAMPLING_RATE)
    if rng.random() < 0.5:
        noise = np.cumsum(noise)  # brown noise
    noise = (noise - noise.mean()) / (noise.std() + 1e-9)
    x = x + noise * x.std() * 10 ** (-rng.uniform(5, 25) / 20)
    return (x / (np.abs(x).max() + 1e-6)).astype(np.float32)


def make_instrument_task(
    train_instruments: int = 14, test_instruments: int = 6, clips_per_instrument: int = 40, seed: int = 0
) -> KeywordTask:
    """`train_instruments` / `test_instruments` per family (disjoint), `clips_per_instrument` 1 s clips each."""
    rng = np.random.default_rng(seed)
    splits = []
    for count in (train_instruments, test_instruments):
        audio, labels, instruments = [], [], []
        for family in range(len(FAMILIES)):
            for _ in range(count):
                ins, ins_id = _instrument(rng), len(set(instruments)) + 1000 * len(splits)
                for _ in range(clips_per_instrument):
                    audio.append(_clip(family, ins, rng))
                    labels.append(family)
                    instruments.append(ins_id)
        splits.append((np.stack(audio), np.array(labels, dtype=np.int64), np.array(instruments, dtype=np.int64)))
    (train_audio, train_labels, train_ids), (test_audio, test_labels, test_ids) = splits
    return KeywordTask(list(FAMILIES), train_audio, train_labels, train_ids, test_audio, test_labels, test_ids)

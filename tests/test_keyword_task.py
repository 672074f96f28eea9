"""The learning benchmarks' offline keyword task (benchmarks/keyword_task.py)."""

import os
import shutil
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
keyword_task = pytest.importorskip("keyword_task")

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs espeak-ng (scripts/install.sh)")


def _tiny(tmp_path, seed=0):
    return keyword_task.make_keyword_task(
        num_words=3, num_train_speakers=2, num_test_speakers=1, train_takes=1, test_takes=2, seed=seed,
        cache_dir=str(tmp_path),
    )


def test_splits_speakers_and_shapes(tmp_path):
    task = _tiny(tmp_path)
    assert task.words == ["yes", "no", "up"]
    assert task.train_audio.shape == (3 * 2, 16000) and task.test_audio.shape == (3 * 1 * 2, 16000)
    assert task.train_audio.dtype == np.float32
    assert set(task.train_speakers).isdisjoint(task.test_speakers)  # held-out speakers
    assert sorted(np.bincount(task.train_labels)) == [2, 2, 2]
    for audio in (task.train_audio, task.test_audio):
        assert np.isfinite(audio).all() and np.abs(audio).max() <= 1.0
        assert (audio.std(axis=1) > 1e-3).all()  # every clip holds sound


def test_deterministic_and_cached(tmp_path):
    a = _tiny(tmp_path / "a")
    b = _tiny(tmp_path / "b")
    np.testing.assert_array_equal(a.train_audio, b.train_audio)
    assert len(os.listdir(tmp_path / "a")) == 1  # the .npz cache
    again = _tiny(tmp_path / "a")  # read back from the cache
    np.testing.assert_array_equal(again.test_audio, a.test_audio)
    other = _tiny(tmp_path / "c", seed=1)
    assert not np.array_equal(other.train_audio, a.train_audio)


def test_parquet_folder_loads_with_datasets(tmp_path):
    from datasets import load_dataset

    task = _tiny(tmp_path / "cache")
    folder = keyword_task.write_parquet_dataset(task, str(tmp_path / "kw"))
    ds = load_dataset(folder)
    assert set(ds) == {"train", "test"}
    assert ds["train"].features["label"].names == task.words
    assert ds["test"]["label"] == task.test_labels.tolist()
    decoded = ds["train"][0]["audio"]
    samples = decoded["array"] if isinstance(decoded, dict) else decoded.get_all_samples().data.numpy()[0]
    np.testing.assert_allclose(np.asarray(samples).ravel(), task.train_audio[0], atol=1 / 2**15 + 1e-6)


def test_instrument_task_holds_out_instruments():
    instrument_task = pytest.importorskip("instrument_task")
    task = instrument_task.make_instrument_task(train_instruments=2, test_instruments=1, clips_per_instrument=2)
    families = len(instrument_task.FAMILIES)
    assert task.train_audio.shape == (families * 2 * 2, 16000) and task.test_audio.shape == (families * 2, 16000)
    assert set(task.train_speakers).isdisjoint(task.test_speakers)  # held-out instruments
    assert len(set(task.train_speakers)) == families * 2 and sorted(set(task.test_labels)) == list(range(families))
    assert np.isfinite(task.train_audio).all() and (task.train_audio.std(axis=1) > 1e-3).all()
    again = instrument_task.make_instrument_task(train_instruments=2, test_instruments=1, clips_per_instrument=2)
    np.testing.assert_array_equal(again.test_audio, task.test_audio)

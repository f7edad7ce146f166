"""Tests of timecraft_jax.samples_io: sample files, sidecars and reference arrays."""

import json
import logging

import numpy as np
import pytest

from timecraft_jax import samples_io
from timecraft_jax.samples_io import SeriesInputError


def _samples(n=6, t=24, c=3, seed=0):
    return np.random.default_rng(seed).normal(size=(n, t, c))


def test_save_load_round_trip(tmp_path):
    samples = _samples()
    metadata = {"space": "raw", "domain": "electricity", "step": np.int64(1200), "eta": 0.0,
                "config": tmp_path / "config.py"}
    path = samples_io.save_samples(tmp_path / "run" / "samples.npy", samples, metadata)
    loaded, loaded_metadata = samples_io.load_samples(path)

    assert path == tmp_path / "run" / "samples.npy"
    assert loaded.dtype == np.float32
    np.testing.assert_array_equal(loaded, samples.astype(np.float32))
    assert loaded_metadata["space"] == "raw"
    assert loaded_metadata["domain"] == "electricity"
    assert loaded_metadata["step"] == 1200
    assert loaded_metadata["config"] == str(tmp_path / "config.py")
    assert "shape" not in metadata, "save_samples must not modify the caller's dict"


def test_sidecar_content(tmp_path):
    path = samples_io.save_samples(tmp_path / "gen.npy", _samples(n=5, t=12, c=1), {"space": "normalized"})
    sidecar = tmp_path / "gen.json"
    assert samples_io.sidecar_path(path) == sidecar
    content = json.loads(sidecar.read_text())
    assert content["space"] == "normalized"
    assert content["layout"] == "NTC"
    assert content["shape"] == [5, 12, 1]
    assert content["created_at"].endswith("+00:00")
    assert "version" in content


@pytest.mark.parametrize("bad_value, message", [(np.nan, "2 NaN and 0 infinite"), (np.inf, "0 NaN and 2 infinite")])
def test_save_rejects_non_finite(tmp_path, bad_value, message):
    samples = _samples()
    samples[1, 3:5, 0] = bad_value
    with pytest.raises(SeriesInputError, match=message):
        samples_io.save_samples(tmp_path / "bad.npy", samples, {"space": "raw"})
    assert not (tmp_path / "bad.npy").exists()
    assert not (tmp_path / "bad.json").exists()


def test_save_rejects_float32_overflow(tmp_path):
    samples = _samples()
    samples[0, 0, 0] = 1e300
    with pytest.raises(SeriesInputError, match="1 sample values exceed the float32 range"):
        samples_io.save_samples(tmp_path / "big.npy", samples, {"space": "raw"})


@pytest.mark.parametrize("samples, metadata, path, message", [
    (np.zeros((4, 24)), {"space": "raw"}, "a.npy", r"expected a 3-D array \(N, T, C\)"),
    (np.zeros((2, 4, 24, 1)), {"space": "raw"}, "a.npy", r"expected a 3-D array \(N, T, C\)"),
    (np.zeros((2, 4, 1)), {}, "a.npy", "space None"),
    (np.zeros((2, 4, 1)), {"space": "scaled"}, "a.npy", "space 'scaled'"),
    (np.zeros((2, 4, 1)), {"space": "raw", "layout": "NCT"}, "a.npy", "layout 'NCT'"),
    (np.zeros((2, 4, 1)), {"space": "raw", "extra": object()}, "a.npy", "not JSON-serialisable"),
    (np.zeros((2, 4, 1)), {"space": "raw"}, "a.npz", "must end in .npy"),
])
def test_save_rejects_invalid_input(tmp_path, samples, metadata, path, message):
    with pytest.raises(SeriesInputError, match=message):
        samples_io.save_samples(tmp_path / path, samples, metadata)
    assert list(tmp_path.iterdir()) == []


def test_load_without_sidecar(tmp_path):
    path = tmp_path / "bare.npy"
    np.save(path, _samples().astype(np.float32))
    with pytest.raises(SeriesInputError, match="bare.json not found"):
        samples_io.load_samples(path)
    samples, metadata = samples_io.load_samples(path, allow_missing_sidecar=True)
    assert samples.shape == (6, 24, 3)
    assert metadata["space"] is None
    assert metadata["shape"] == [6, 24, 3]


def test_load_rejects_mismatched_sidecar(tmp_path):
    path = samples_io.save_samples(tmp_path / "gen.npy", _samples(n=6), {"space": "raw"})
    np.save(path, _samples(n=7).astype(np.float32))
    with pytest.raises(SeriesInputError, match=r"records shape \[6, 24, 3\] .* has shape \[7, 24, 3\]"):
        samples_io.load_samples(path)


def test_load_missing_samples_file(tmp_path):
    with pytest.raises(SeriesInputError, match="not found"):
        samples_io.load_samples(tmp_path / "missing.npy")


def test_reference_2d_gets_channel_axis(tmp_path, caplog):
    path = tmp_path / "ref.npy"
    windows = np.arange(40.0).reshape(5, 8)
    np.save(path, windows)
    with caplog.at_level(logging.INFO):
        reference = samples_io.load_series_array(path)
    assert reference.shape == (5, 8, 1)
    np.testing.assert_array_equal(reference[:, :, 0], windows)
    assert "(N, T) univariate windows" in caplog.text


def test_reference_3d_unchanged(tmp_path):
    path = tmp_path / "ref.npy"
    np.save(path, _samples())
    np.testing.assert_array_equal(samples_io.load_series_array(path), _samples())


@pytest.mark.parametrize("shape", [(2, 5, 8, 1), (40,)])
def test_reference_other_ranks_rejected(tmp_path, shape):
    path = tmp_path / "ref.npy"
    np.save(path, np.zeros(shape))
    with pytest.raises(SeriesInputError, match=r"expected \(N, T, C\) windows"):
        samples_io.load_series_array(path)


def test_reference_non_numeric_rejected(tmp_path):
    path = tmp_path / "ref.npy"
    np.save(path, np.array([["a", "b"]]))
    with pytest.raises(SeriesInputError, match="expected real numbers"):
        samples_io.load_series_array(path)

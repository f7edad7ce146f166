"""Tests of timecraft_jax.metrics: parity with the PyTorch reference and metric properties."""

import numpy as np
import pytest

from timecraft_jax import metrics
from timecraft_jax.samples_io import SeriesInputError

PARITY_RTOL = 1e-4


@pytest.fixture(scope="module")
def parity_arrays(parity_dir):
    with np.load(parity_dir / "metrics.npz") as data:
        return {key: data[key] for key in data.files}


def _random_pair(n_real=120, n_gen=90, t=16, c=3, shift=0.0, seed=0):
    rng = np.random.default_rng(seed)
    real = rng.normal(size=(n_real, t, c))
    gen = rng.normal(size=(n_gen, t, c)) + shift
    return real, gen


def _mdd_by_distance(real, gen, n_bins=20):
    """Compute MDD as the reference code states it: loops over (t, c) and distances to bin centres."""
    n_time, n_channels = real.shape[1:]
    per_component = []
    for c in range(n_channels):
        for t in range(n_time):
            x, y = real[:, t, c], gen[:, t, c]
            low, high = x.min(), x.max()
            if high == low:
                high = low + 0.01
            delta = (high - low) / n_bins
            counts = np.zeros(n_bins)
            for value in x:
                counts[min(int((value - low) // delta), n_bins - 1)] += 1
            real_density = counts / (delta * len(x))
            gen_density = np.zeros(n_bins)
            for k in range(n_bins):
                centre = low + (k + 0.5) * delta
                hits = (np.abs(y - centre) < delta / 2) | (y == low + k * delta)
                gen_density[k] = hits.sum() / (delta * len(y))
            per_component.append(np.abs(gen_density - real_density).mean())
    return np.mean(per_component)


@pytest.mark.parametrize("name, function", [
    ("mdd", metrics.mdd),
    ("flat_kl", metrics.flat_kl),
    ("mmd_rbf", metrics.mmd_rbf),
])
def test_parity_with_reference(parity_arrays, name, function):
    value = function(parity_arrays["ori"], parity_arrays["gen"])
    np.testing.assert_allclose(value, parity_arrays[f"{name}_f64"], rtol=PARITY_RTOL)
    np.testing.assert_allclose(value, parity_arrays[name], rtol=PARITY_RTOL)


def test_parity_identical_flat_kl_mmd(parity_arrays):
    ori = parity_arrays["ori"]
    # Both reference values are at or near 0 (flat KL is only the 1e-9 offset of the generated
    # density), so a relative tolerance is meaningless and the check is absolute.
    np.testing.assert_allclose(metrics.flat_kl(ori, ori), parity_arrays["flat_kl_same_f64"], rtol=0, atol=1e-12)
    assert metrics.mmd_rbf(ori, ori) == 0.0
    assert parity_arrays["mmd_rbf_same_f64"] == 0.0


def test_parity_identical_mdd(parity_arrays):
    ori = parity_arrays["ori"]
    value = metrics.mdd(ori, ori)

    # With identical arrays only the real maximum of each (t, c) is missing on the generated side,
    # because it lies exactly on the open right edge of the last bin. Each missing point lowers
    # one bin by 1 / (delta * N), i.e. the (t, c) term by 1 / (delta * N * n_bins).
    ori64 = ori.astype(np.float64)
    delta = (ori64.max(axis=0) - ori64.min(axis=0)) / 20
    per_point = 1.0 / (delta * ori.shape[0] * 20)
    np.testing.assert_allclose(value, per_point.mean(), rtol=1e-12)

    # The float32 reference decides edge membership by rounding, because |x - centre| < delta / 2
    # in float32 keeps or drops the extreme points of some (t, c). Its value therefore differs
    # from the exact one by those points, and the check allows one such point per (t, c).
    assert abs(value - parity_arrays["mdd_same_f64"]) <= per_point.mean()


def test_mdd_matches_per_component_loop():
    real, gen = _random_pair(n_real=60, n_gen=45, t=5, c=2, shift=0.3)
    np.testing.assert_allclose(metrics.mdd(real, gen), _mdd_by_distance(real, gen), rtol=1e-9)


def test_mdd_constant_real_component():
    real, gen = _random_pair(n_real=50, n_gen=50, t=4, c=1)
    real[:, 2, 0] = 1.5
    gen[:, 2, 0] = 1.5
    value = metrics.mdd(real, gen)
    assert np.isfinite(value)
    np.testing.assert_allclose(value, _mdd_by_distance(real, gen), rtol=1e-9)


def test_flat_kl_matches_scipy_entropy():
    stats = pytest.importorskip("scipy.stats")
    real, gen = _random_pair(shift=0.4)
    real_density, edges = np.histogram(real.ravel(), bins=50, density=True)
    gen_density, _ = np.histogram(gen.ravel(), bins=edges, density=True)
    expected = stats.entropy(real_density, gen_density + 1e-9)
    np.testing.assert_allclose(metrics.flat_kl(real, gen), expected, rtol=1e-10)


def test_flat_kl_infinite_without_overlap():
    real, gen = _random_pair()
    assert metrics.flat_kl(real, gen + 100.0) == np.inf


def test_mmd_matches_full_kernel_matrix():
    real, gen = _random_pair(n_real=metrics.MMD_CHUNK_ROWS + 37, n_gen=70, t=3, c=2, shift=0.2)
    for gamma in (None, 0.05):
        width = 1.0 / 6 if gamma is None else gamma
        x = real.reshape(len(real), -1)
        y = gen.reshape(len(gen), -1)

        def kernel_mean(a, b):
            return np.exp(-width * ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)).mean()

        expected = kernel_mean(x, x) + kernel_mean(y, y) - 2 * kernel_mean(x, y)
        np.testing.assert_allclose(metrics.mmd_rbf(real, gen, gamma=gamma), expected, rtol=1e-10)


def test_identical_arrays_give_near_zero():
    real, _ = _random_pair()
    assert metrics.mmd_rbf(real, real) == 0.0
    assert metrics.flat_kl(real, real) < 1e-8
    assert metrics.mdd(real, real) < 0.05


@pytest.mark.parametrize("name", ["mdd", "flat_kl", "mmd_rbf"])
def test_metrics_grow_with_shift(name):
    function = getattr(metrics, name)
    values = [function(*_random_pair(shift=shift)) for shift in (0.0, 0.5, 1.5)]
    assert values[0] < values[1] < values[2], values


def test_compute_metrics_unequal_counts():
    real, gen = _random_pair(n_real=37, n_gen=211, c=1)
    result = metrics.compute_metrics(real, gen)
    assert result["n_real"] == 37
    assert result["n_gen"] == 211
    assert result["scale"] == "zscore"
    for name in ("mdd", "flat_kl", "mmd_rbf"):
        assert np.isfinite(result[name])
        assert result[name] > 0


def test_compute_metrics_affine_invariant():
    real, gen = _random_pair(shift=0.5)
    # z-scoring with statistics of the real values removes a common affine map of both arrays,
    # up to the 1e-7 added to the standard deviation.
    moved = metrics.compute_metrics(real * 40.0 + 7.0, gen * 40.0 + 7.0)
    original = metrics.compute_metrics(real, gen)
    for name in ("mdd", "flat_kl", "mmd_rbf"):
        np.testing.assert_allclose(moved[name], original[name], rtol=1e-5)


def test_compute_metrics_subsampling_recorded():
    real, gen = _random_pair(n_real=300, n_gen=50)
    first = metrics.compute_metrics(real, gen, max_samples=100, seed=3)
    again = metrics.compute_metrics(real, gen, max_samples=100, seed=3)
    other = metrics.compute_metrics(real, gen, max_samples=100, seed=4)
    assert first["n_real"] == 100
    assert first["n_gen"] == 50
    assert first["n_real_total"] == 300
    assert first["max_samples"] == 100
    assert first["seed"] == 3
    assert first["mmd_rbf"] == again["mmd_rbf"]
    assert first["mmd_rbf"] != other["mmd_rbf"]


@pytest.mark.parametrize("scale", metrics.SCALES)
def test_scale_pair_uses_real_statistics(scale):
    real, gen = _random_pair()
    real = real * 3.0 + 10.0
    real_scaled, gen_scaled = metrics.scale_pair(real, gen, scale)
    if scale == "zscore":
        np.testing.assert_allclose(real_scaled.mean(), 0.0, atol=1e-12)
        np.testing.assert_allclose(real_scaled.std(), 1.0, rtol=1e-6)
    elif scale == "minmax":
        np.testing.assert_allclose([real_scaled.min(), real_scaled.max()], [0.0, 1.0], atol=1e-6)
    elif scale == "robust_zscore":
        np.testing.assert_allclose(np.median(real_scaled), 0.0, atol=1e-12)
        np.testing.assert_allclose(1.4826 * np.median(np.abs(real_scaled)), 1.0, rtol=1e-6)
    else:
        np.testing.assert_array_equal(real_scaled, real)
        np.testing.assert_array_equal(gen_scaled, gen)


def test_scale_pair_unknown_scale():
    real, gen = _random_pair()
    with pytest.raises(ValueError, match="unknown scale 'log'"):
        metrics.scale_pair(real, gen, "log")


@pytest.mark.parametrize("which", ["real", "gen"])
def test_nan_rejected_with_count(which):
    real, gen = _random_pair()
    target = real if which == "real" else gen
    target[0, :3, 0] = np.nan
    with pytest.raises(SeriesInputError, match=f"{which} contains 3 NaN values"):
        metrics.compute_metrics(real, gen)


def test_layout_mismatch_rejected():
    real, _ = _random_pair(t=16)
    _, gen = _random_pair(t=12)
    with pytest.raises(SeriesInputError, match=r"\(T, C\) = \(16, 3\).*\(T, C\) = \(12, 3\)"):
        metrics.mdd(real, gen)
    with pytest.raises(SeriesInputError, match="expected a 3-D array"):
        metrics.mmd_rbf(real[:, :, 0], real[:, :, 0])

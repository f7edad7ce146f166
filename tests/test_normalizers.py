"""Normalizers: ECDF semantics, exact inverses, pooling, edge cases and serialization."""

import numpy as np
import pytest

from timecraft_jax.data import DataError, NORMALIZER_KINDS, Normalizer, fit_normalizer, registry
from timecraft_jax.data.windows import split_windows


def _windows(seed=0, shape=(50, 24, 3)):
    rng = np.random.default_rng(seed)
    return rng.gamma(2.0, size=shape) * np.array([1.0, 10.0, 100.0])[: shape[-1]]


def test_centered_pit_ecdf_edges():
    values = np.array([3.0, 1.0, 2.0, 2.0, 5.0]).reshape(1, 5, 1)  # n = 5, unique minimum 1
    normalizer = fit_normalizer("centered_pit", values)
    u = normalizer.transform(np.array([0.5, 1.0, 2.0, 4.0, 5.0, 9.0])[:, None])[:, 0]
    np.testing.assert_allclose(u, [-1.0, 2 / 5 - 1, 2 * 3 / 5 - 1, 2 * 4 / 5 - 1, 1.0, 1.0])


def test_pit_matches_right_sided_ecdf():
    values = np.array([0.0, 0.0, 1.0, 2.0]).reshape(1, 4, 1)
    u = fit_normalizer("pit", values).transform(np.array([[-1.0], [0.0], [0.5], [2.0]]))[:, 0]
    np.testing.assert_allclose(u, [0.0, 0.5, 0.5, 1.0])


def test_ecdf_inverse_interpolates_between_knots():
    values = np.array([10.0, 20.0, 30.0, 40.0]).reshape(1, 4, 1)
    normalizer = fit_normalizer("pit", values)
    u = np.array([[-0.5], [0.0], [0.125], [0.375], [0.625], [1.0], [2.0]])
    x = normalizer.inverse_transform(u)[:, 0]
    # Knots (k/4, v_(k)) with v_(0) = v_(1) = 10; clamped outside [0, 1].
    np.testing.assert_allclose(x, [10.0, 10.0, 10.0, 15.0, 25.0, 40.0, 40.0])


@pytest.mark.parametrize("kind", NORMALIZER_KINDS)
@pytest.mark.parametrize("per_channel", [False, True])
def test_round_trip_exact_on_fitted_values(kind, per_channel):
    windows = _windows()
    normalizer = fit_normalizer(kind, windows, per_channel=per_channel)
    restored = normalizer.inverse_transform(normalizer.transform(windows))
    np.testing.assert_allclose(restored, windows, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", ["zscore", "robust", "minmax"])
def test_affine_round_trip_on_new_values(kind):
    normalizer = fit_normalizer(kind, _windows())
    x = np.random.default_rng(1).normal(size=(4, 24, 3)) * 50
    np.testing.assert_allclose(normalizer.inverse_transform(normalizer.transform(x)), x, rtol=1e-12, atol=1e-9)


def test_zscore_statistics():
    windows = _windows()
    z = fit_normalizer("zscore", windows).transform(windows)
    assert abs(z.mean()) < 1e-9
    assert abs(z.std() - 1.0) < 1e-6


def test_minmax_range():
    windows = _windows()
    u = fit_normalizer("minmax", windows).transform(windows)
    assert u.min() == 0.0
    assert 1.0 - 1e-9 < u.max() <= 1.0


def test_per_channel_differs_from_pooled():
    windows = _windows()
    pooled = fit_normalizer("centered_pit", windows).transform(windows)
    per_channel = fit_normalizer("centered_pit", windows, per_channel=True).transform(windows)
    # Pooled: the small-scale channel 0 sits low in the shared ECDF; per channel it spans [-1, 1].
    assert pooled[..., 0].mean() < -0.3
    assert abs(per_channel[..., 0].mean()) < 0.05
    assert per_channel[..., 2].max() == 1.0


def test_per_channel_rejects_wrong_channel_count():
    normalizer = fit_normalizer("zscore", _windows(), per_channel=True)
    with pytest.raises(DataError, match="3 channels"):
        normalizer.transform(np.zeros((2, 24, 2)))


@pytest.mark.parametrize("kind,expected", [
    ("centered_pit", 1.0), ("pit", 1.0), ("zscore", 0.0), ("robust", 0.0), ("minmax", 0.5),
])
def test_constant_series(kind, expected):
    windows = np.full((4, 8, 1), 7.5)
    normalizer = fit_normalizer(kind, windows)
    u = normalizer.transform(windows)
    assert np.isfinite(u).all()
    np.testing.assert_allclose(u, expected)
    np.testing.assert_allclose(normalizer.inverse_transform(u), 7.5)


@pytest.mark.parametrize("kind", ["centered_pit", "pit"])
def test_constant_series_ecdf_inverts_any_u(kind):
    normalizer = fit_normalizer(kind, np.full((4, 8, 1), 7.5))
    np.testing.assert_array_equal(normalizer.inverse_transform(np.array([[-1.0], [0.3], [1.0]])), 7.5)


@pytest.mark.parametrize("kind", NORMALIZER_KINDS)
def test_nan_ignored_by_fit_and_kept_by_transform(kind):
    windows = _windows()
    with_nan = windows.copy()
    with_nan[0, :5, 1] = np.nan
    normalizer = fit_normalizer(kind, with_nan)
    finite_values = with_nan[~np.isnan(with_nan)]
    reference = fit_normalizer(kind, finite_values.reshape(1, -1, 1))
    u = normalizer.transform(with_nan)
    assert np.isnan(u[0, :5, 1]).all()
    assert np.isfinite(u[1:]).all()
    np.testing.assert_allclose(u[1:], reference.transform(windows[1:]), rtol=1e-12)
    assert np.isnan(normalizer.inverse_transform(u)[0, :5, 1]).all()


def test_all_nan_fit_rejected():
    with pytest.raises(DataError, match="no finite values"):
        fit_normalizer("zscore", np.full((2, 4, 1), np.nan))


def test_unknown_kind_rejected():
    with pytest.raises(DataError, match="unknown normalizer 'quantile'"):
        fit_normalizer("quantile", _windows())


@pytest.mark.parametrize("kind", NORMALIZER_KINDS)
@pytest.mark.parametrize("per_channel", [False, True])
def test_state_dict_round_trip(tmp_path, kind, per_channel):
    windows = _windows()
    normalizer = fit_normalizer(kind, windows, per_channel=per_channel)
    path = tmp_path / "normalizer.npz"
    np.savez(path, **normalizer.state_dict())
    restored = Normalizer.from_state_dict(dict(np.load(path)))
    assert restored.kind == kind
    assert restored.per_channel == per_channel
    x = _windows(seed=3, shape=(2, 24, 3))
    np.testing.assert_array_equal(restored.transform(x), normalizer.transform(x))
    u = np.linspace(-1, 1, 72).reshape(1, 24, 3)
    np.testing.assert_array_equal(restored.inverse_transform(u), normalizer.inverse_transform(u))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_rain_zero_share_survives(dtype):
    # Hourly rain is zero-inflated; the ECDF keeps the zero mass as one exact value.
    split = split_windows(registry.load_domain("rain").series, seq_len=24)
    normalizer = fit_normalizer("centered_pit", split.train)
    zero_share = np.mean(split.val == 0)
    assert zero_share > 0.9
    restored = normalizer.inverse_transform(normalizer.transform(split.val).astype(dtype))
    assert np.mean(restored == 0) == zero_share
    # Any u at or below the zero mass inverts to exactly zero.
    u_zero = normalizer.transform(np.zeros((1, 1, 12)))[0, 0, 0]
    below = np.linspace(-1.0, u_zero, 50)[:, None]
    assert (normalizer.inverse_transform(below) == 0).all()


def test_state_dict_accepts_bytes_kind():
    normalizer = fit_normalizer("robust", _windows())
    state = normalizer.state_dict()
    state["kind"] = np.bytes_(b"robust")
    state["per_channel"] = np.asarray(False)
    restored = Normalizer.from_state_dict(state)
    assert restored.kind == "robust"
    x = _windows(seed=5, shape=(1, 24, 3))
    np.testing.assert_array_equal(restored.transform(x), normalizer.transform(x))

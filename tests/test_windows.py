"""Windowing, chronological per-series splits and NaN policies."""

import numpy as np
import pytest

from timecraft_jax.data import DataError
from timecraft_jax.data.windows import (
    all_windows,
    as_series_list,
    interpolate_gaps,
    num_val_windows,
    sliding_windows,
    split_windows,
)


def test_sliding_windows_stride():
    series = np.arange(10.0)[:, None]
    windows = sliding_windows(series, seq_len=4, stride=3)
    assert windows.shape == (3, 4, 1)
    assert windows[:, 0, 0].tolist() == [0.0, 3.0, 6.0]
    assert windows[-1, :, 0].tolist() == [6.0, 7.0, 8.0, 9.0]


def test_sliding_windows_keep_channels():
    series = np.stack([np.arange(6.0), -np.arange(6.0)], axis=1)
    windows = sliding_windows(series, seq_len=3, stride=3)
    assert windows.shape == (2, 3, 2)
    assert windows[1].tolist() == [[3, -3], [4, -4], [5, -5]]


@pytest.mark.parametrize("n,expected", [(0, 0), (1, 0), (2, 1), (19, 1), (20, 2), (105, 10)])
def test_num_val_windows(n, expected):
    assert num_val_windows(n) == expected


def test_split_is_chronological_per_series():
    first = np.arange(100.0)[:, None]  # 10 windows: 9 train, 1 val
    second = 1000 + np.arange(30.0)[:, None]  # 3 windows: 2 train, 1 val
    split = split_windows([first, second], seq_len=10)
    assert split.train.shape == (11, 10, 1)
    assert split.val.shape == (2, 10, 1)
    assert split.val[:, 0, 0].tolist() == [90.0, 1020.0]
    assert split.train[:, 0, 0].max() == 1010.0


def test_split_never_empties_train():
    split = split_windows(np.arange(15.0), seq_len=10)  # one window
    assert split.train.shape == (1, 10, 1)
    assert split.val.shape == (0, 10, 1)


def test_one_long_series_accepted():
    split = split_windows(np.random.default_rng(0).normal(size=(240, 3)), seq_len=24)
    assert split.train.shape == (9, 24, 3)
    assert split.val.shape == (1, 24, 3)


def test_too_short_series_raises():
    with pytest.raises(DataError, match=r"window length 96 exceeds the longest series \(50 steps\)"):
        split_windows(np.zeros((50, 1)), seq_len=96)


def test_short_series_skipped_and_counted():
    split = split_windows([np.zeros((5, 1)), np.zeros((40, 1))], seq_len=10)
    assert split.series_too_short == 1
    assert len(split.train) + len(split.val) == 4


def test_nan_drop_policy():
    series = np.arange(40.0)
    series[15] = np.nan
    split = split_windows(series, seq_len=10, nan_policy="drop")
    assert split.windows_dropped_nan == 1
    assert split.train[:, 0, 0].tolist() == [0.0, 20.0]
    assert split.val[:, 0, 0].tolist() == [30.0]
    assert not np.isnan(split.train).any()


def test_nan_interpolate_within_max_gap():
    series = np.arange(40.0)
    series[12:14] = np.nan  # gap of 2
    series[25:29] = np.nan  # gap of 4
    split = split_windows(series, seq_len=10, nan_policy="interpolate", max_gap=3)
    assert split.windows_dropped_nan == 1
    np.testing.assert_allclose(split.train[1, :, 0], np.arange(10.0, 20.0))


def test_interpolate_keeps_edges_nan():
    series = np.array([np.nan, 1.0, np.nan, 3.0, np.nan])[:, None]
    filled = interpolate_gaps(series, max_gap=5)
    assert np.isnan(filled[[0, 4], 0]).all()
    assert filled[2, 0] == 2.0


def test_all_nan_domain_raises_with_requirement():
    series = np.full((30, 1), np.nan)
    with pytest.raises(DataError, match="no training windows of length 10 remain"):
        split_windows(series, seq_len=10)


def test_invalid_nan_policy_rejected():
    with pytest.raises(DataError, match="nan_policy"):
        split_windows(np.zeros(20), seq_len=10, nan_policy="zero")


def test_all_windows_stride_one():
    windows, dropped = all_windows(np.arange(12.0), seq_len=10, stride=1)
    assert windows.shape == (3, 10, 1)
    assert dropped == 0


def test_as_series_list_rejects_mixed_channels():
    with pytest.raises(DataError, match="different channel counts"):
        as_series_list([np.zeros((5, 1)), np.zeros((5, 2))])

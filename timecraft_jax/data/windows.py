"""Cut series into fixed-length windows and split them chronologically into train and validation."""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from timecraft_jax.data.readers import DataError

NAN_POLICIES = ("drop", "interpolate")


def as_series_list(data: np.ndarray | Sequence[np.ndarray]) -> list[np.ndarray]:
    """Return `data` as a list of float64 `(T_i, C)` series.

    Accepts one series `(T,)` or `(T, C)`, a stack of series `(N, T, C)`, or a list of 1-D/2-D arrays.
    """
    if isinstance(data, np.ndarray):
        if data.ndim == 3:
            return [np.asarray(s, dtype=np.float64) for s in data]
        data = [data]
    series = []
    for i, s in enumerate(data):
        s = np.asarray(s, dtype=np.float64)
        if s.ndim == 1:
            s = s[:, None]
        if s.ndim != 2:
            raise DataError(
                f"series {i} has shape {s.shape}; expected (T,) or (T, C), or pass all series as one (N, T, C) array"
            )
        series.append(s)
    channels = {s.shape[1] for s in series}
    if len(channels) > 1:
        raise DataError(f"series have different channel counts {sorted(channels)}; every series needs the same C")
    return series


def sliding_windows(series: np.ndarray, seq_len: int, stride: int) -> np.ndarray:
    """Return windows `series[i : i + seq_len]` for i = 0, stride, ...; a shorter tail is dropped.

    Args:
      series: `(T, C)` array with T >= seq_len.

    Returns:
      `(n, seq_len, C)` copy with n = (T - seq_len) // stride + 1.
    """
    if seq_len < 1 or stride < 1:
        raise DataError(f"seq_len and stride must be >= 1, got seq_len={seq_len}, stride={stride}")
    if series.shape[0] < seq_len:
        raise DataError(
            f"window length {seq_len} exceeds the series length {series.shape[0]}; "
            f"use seq_len <= {series.shape[0]} or provide a longer series"
        )
    view = np.lib.stride_tricks.sliding_window_view(series, seq_len, axis=0)  # [T - L + 1, C, L]
    return np.ascontiguousarray(view[::stride].transpose(0, 2, 1))


def interpolate_gaps(series: np.ndarray, max_gap: int) -> np.ndarray:
    """Fill interior NaN runs of at most `max_gap` steps by linear interpolation, per channel.

    Leading and trailing NaN and longer runs stay NaN.
    """
    filled = np.array(series, dtype=np.float64, copy=True)
    if max_gap < 1:
        return filled
    steps = np.arange(filled.shape[0])
    for c in range(filled.shape[1]):
        column = filled[:, c]
        missing = np.isnan(column)
        if not missing.any() or missing.all():
            continue
        # Label each NaN run, then keep runs that are interior and short enough.
        edges = np.diff(np.concatenate([[0], missing.astype(np.int8), [0]]))
        starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
        fillable = np.zeros_like(missing)
        for start, end in zip(starts, ends):
            if start > 0 and end < len(column) and end - start <= max_gap:
                fillable[start:end] = True
        column[fillable] = np.interp(steps[fillable], steps[~missing], column[~missing])
    return filled


def num_val_windows(num_windows: int) -> int:
    """Return how many of a series' `num_windows` go to validation: max(1, floor(0.1 n)), 0 if n < 2."""
    if num_windows < 2:
        return 0
    return max(1, num_windows // 10)


def _checked_series(
    data: np.ndarray | Sequence[np.ndarray], seq_len: int, stride: int, nan_policy: str, max_gap: int, name: str
) -> list[np.ndarray]:
    if seq_len < 1 or stride < 1:
        raise DataError(f"seq_len and stride must be >= 1, got seq_len={seq_len}, stride={stride}")
    if nan_policy not in NAN_POLICIES:
        raise DataError(f"unknown nan_policy {nan_policy!r}; expected one of {NAN_POLICIES}")
    if max_gap < 0:
        raise DataError(f"max_gap must be >= 0, got {max_gap}")
    series_list = as_series_list(data)
    longest = max((s.shape[0] for s in series_list), default=0)
    if longest < seq_len:
        raise DataError(
            f"{name}: window length {seq_len} exceeds the longest series ({longest} steps); "
            f"use seq_len <= {longest} or provide longer series"
        )
    return series_list


def _finite_windows(
    series: np.ndarray, seq_len: int, stride: int, nan_policy: str, max_gap: int
) -> tuple[np.ndarray, int]:
    """Return the windows of one series without NaN, and how many were dropped for NaN."""
    if nan_policy == "interpolate":
        series = interpolate_gaps(series, max_gap)
    windows = sliding_windows(series, seq_len, stride)
    finite = ~np.isnan(windows).any(axis=(1, 2))
    return windows[finite], int((~finite).sum())


def all_windows(
    data: np.ndarray | Sequence[np.ndarray],
    seq_len: int,
    stride: int | None = None,
    nan_policy: str = "drop",
    max_gap: int = 0,
    name: str = "data",
) -> tuple[np.ndarray, int]:
    """Window every series without a split; arguments as in `split_windows`.

    Returns:
      `(N, seq_len, C)` windows in series order, and the number of windows dropped for NaN.
    """
    stride = seq_len if stride is None else stride
    series_list = _checked_series(data, seq_len, stride, nan_policy, max_gap, name)
    parts, dropped = [], 0
    for series in series_list:
        if series.shape[0] >= seq_len:
            windows, num_dropped = _finite_windows(series, seq_len, stride, nan_policy, max_gap)
            parts.append(windows)
            dropped += num_dropped
    windows = np.concatenate(parts)
    if len(windows) == 0:
        raise DataError(
            f"{name}: every window of length {seq_len} contains NaN ({dropped} dropped); "
            f"use a shorter seq_len or nan_policy='interpolate'"
        )
    return windows, dropped


@dataclasses.dataclass
class WindowSplit:
    """Windows of one domain split chronologically per series."""

    train: np.ndarray  # [N_train, L, C]
    val: np.ndarray  # [N_val, L, C]
    windows_dropped_nan: int
    series_too_short: int


def split_windows(
    data: np.ndarray | Sequence[np.ndarray],
    seq_len: int,
    stride: int | None = None,
    nan_policy: str = "drop",
    max_gap: int = 0,
    name: str = "data",
) -> WindowSplit:
    """Window every series and split each series' windows chronologically into train and validation.

    Per series, the last max(1, floor(0.1 n)) of its n windows go to validation, except that a series
    with fewer than 2 windows puts all of them in train. Series shorter than `seq_len` are skipped.
    NOTE: with stride < seq_len the last training windows overlap the first validation window.

    Args:
      data: one `(T, C)` series, an `(N, T, C)` stack, or a list of `(T_i, C)` series.
      seq_len: window length L.
      stride: step between window starts; None means `seq_len` (non-overlapping windows).
      nan_policy: 'drop' removes windows containing NaN; 'interpolate' first fills interior gaps of
        at most `max_gap` steps linearly, then removes windows that still contain NaN.
      max_gap: maximum gap, in steps, that 'interpolate' fills.
      name: domain name used in error messages.

    Raises:
      DataError: if no series is as long as `seq_len`, or no training window remains.
    """
    stride = seq_len if stride is None else stride
    series_list = _checked_series(data, seq_len, stride, nan_policy, max_gap, name)

    train_parts, val_parts = [], []
    dropped = 0
    too_short = 0
    for series in series_list:
        if series.shape[0] < seq_len:
            too_short += 1
            continue
        windows, num_dropped = _finite_windows(series, seq_len, stride, nan_policy, max_gap)
        dropped += num_dropped
        num_val = num_val_windows(len(windows))
        train_parts.append(windows[: len(windows) - num_val])
        val_parts.append(windows[len(windows) - num_val :])

    train = np.concatenate(train_parts)
    val = np.concatenate(val_parts)
    if len(train) == 0:
        raise DataError(
            f"{name}: no training windows of length {seq_len} remain ({dropped} dropped for NaN). "
            f"Each domain needs at least one series with {seq_len} consecutive finite steps "
            f"({seq_len + stride} steps for one train and one validation window); "
            f"use a shorter seq_len, nan_policy='interpolate', or more data"
        )
    return WindowSplit(train, val, dropped, too_short)

"""Per-domain value normalizers, fitted on training windows and stored with the checkpoint.

Kinds (all run on host in numpy):

* `centered_pit` (default): u = 2 F(x) - 1 in [-1, 1], F the empirical CDF of the fitted values
  with statsmodels `ECDF(side='right')` semantics, F(x) = #{v_i <= x} / n. A unique minimum maps to
  2/n - 1, values below the minimum to -1, values at or above the maximum to +1. The inverse
  interpolates linearly between the points (k/n, v_(k)), k = 0..n with v_(0) = v_(1), and clamps,
  so inverted values stay in [min v, max v].
* `pit`: u = F(x) in [0, 1], same inverse.
* `zscore`: (x - mean) / (std + 1e-8), population std.
* `robust`: (x - median) / (IQR + 1e-8), IQR = P75 - P25 (linear percentiles).
* `minmax`: (x - min) / (max - min + 1e-8), in [0, 1].

The affine kinds invert with the same divisor they divide by, so the round trip is exact. The
PyTorch reference omits the 1e-8 in the inverse, a relative difference of 1e-8 / scale.

Edge cases, on purpose:

* A zero scale (constant data, or an IQR of 0 when more than half of the values are equal) uses a
  divisor of 1 instead of 1e-8: the constant maps to 0 (`minmax`: to the mid-range 0.5) and the
  inverse returns the constant. ECDF kinds need no special case: the constant maps to +1 (`pit`: 1)
  and every u inverts to the constant.
* NaN: fitting ignores NaN, and transforms keep NaN at the same positions.

One normalizer pools all channels (the reference) unless `per_channel=True`, which fits one map
per channel of the last axis.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from timecraft_jax.data.readers import DataError

NORMALIZER_KINDS = ("centered_pit", "pit", "zscore", "robust", "minmax")
ECDF_KINDS = ("centered_pit", "pit")
# Added to the scale of the affine kinds, as in the reference.
SCALE_EPS = 1e-8


class Normalizer:
    """A fitted per-domain value map with an exact inverse.

    Build one with `fit_normalizer` or `Normalizer.from_state_dict`. Parameters are stored per
    group: one group when pooled, one per channel when `per_channel`.
    """

    def __init__(self, kind: str, per_channel: bool, params: dict[str, np.ndarray]):
        if kind not in NORMALIZER_KINDS:
            raise DataError(f"unknown normalizer {kind!r}; expected one of {NORMALIZER_KINDS}")
        self.kind = kind
        self.per_channel = per_channel
        self.params = params

    @property
    def num_groups(self) -> int:
        return len(self.params["counts"] if self.kind in ECDF_KINDS else self.params["shift"])

    def state_dict(self) -> dict[str, np.ndarray | str | bool]:
        """Return the arrays and settings needed to rebuild this normalizer."""
        return {"kind": self.kind, "per_channel": self.per_channel, **{k: v.copy() for k, v in self.params.items()}}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> "Normalizer":
        """Rebuild a normalizer from `state_dict()` output, also after an npz or Orbax round trip."""
        kind = np.asarray(state["kind"]).item()
        kind = kind.decode() if isinstance(kind, bytes) else str(kind)
        per_channel = bool(np.asarray(state["per_channel"]))
        keys = ("sorted_values", "counts") if kind in ECDF_KINDS else ("shift", "divisor", "offset")
        missing = [k for k in keys if k not in state]
        if missing:
            raise DataError(f"normalizer state for {kind!r} lacks {missing}; it was not written by state_dict()")
        return cls(kind, per_channel, {k: np.asarray(state[k]) for k in keys})

    def _check_channels(self, x: np.ndarray) -> None:
        if self.per_channel and (x.ndim == 0 or x.shape[-1] != self.num_groups):
            raise DataError(
                f"per-channel normalizer fitted on {self.num_groups} channels got an array of shape {x.shape}; "
                f"the last axis must have {self.num_groups} channels"
            )

    def _apply(self, x: np.ndarray, group_fn) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        self._check_channels(x)
        if not self.per_channel:
            return group_fn(x, 0)
        out = np.empty_like(x)
        for c in range(self.num_groups):
            out[..., c] = group_fn(x[..., c], c)
        return out

    def transform(self, x: np.ndarray) -> np.ndarray:
        """Map raw values `x` (..., C) to normalized float64 values; NaN stays NaN."""
        if self.kind in ECDF_KINDS:
            return self._apply(x, self._ecdf_forward)
        return self._apply(x, self._affine_forward)

    def inverse_transform(self, u: np.ndarray) -> np.ndarray:
        """Map normalized values `u` (..., C) back to raw float64 values; NaN stays NaN."""
        dtype = np.asarray(u).dtype
        eps = np.finfo(dtype).eps if np.issubdtype(dtype, np.floating) else np.finfo(np.float64).eps
        if self.kind in ECDF_KINDS:
            return self._apply(u, lambda v, g: self._ecdf_inverse(v, g, eps))
        return self._apply(u, self._affine_inverse)

    def _group_values(self, group: int) -> np.ndarray:
        return self.params["sorted_values"][group, : int(self.params["counts"][group])]

    def _ecdf_forward(self, x: np.ndarray, group: int) -> np.ndarray:
        values = self._group_values(group)
        u = np.searchsorted(values, x, side="right") / len(values)
        if self.kind == "centered_pit":
            u = 2.0 * u - 1.0
        return np.where(np.isnan(x), np.nan, u)

    def _ecdf_inverse(self, u: np.ndarray, group: int, eps: float) -> np.ndarray:
        values = self._group_values(group)
        n = len(values)
        if self.kind == "centered_pit":
            u = (u + 1.0) / 2.0
        # Position on the knot grid k = 0..n. A position within the rounding error of the input
        # dtype from a knot is snapped to it, so transformed data inverts exactly (ties such as
        # exact zeros included) even after a float32 round trip.
        position = np.clip(u, 0.0, 1.0) * n
        nearest = np.rint(position)
        position = np.where(np.abs(position - nearest) <= n * eps / 2, nearest, position)
        knots = np.concatenate([values[:1], values])  # [n + 1]
        return np.interp(position, np.arange(n + 1), knots)

    def _affine_forward(self, x: np.ndarray, group: int) -> np.ndarray:
        p = self.params
        return (x - p["shift"][group]) / p["divisor"][group] + p["offset"][group]

    def _affine_inverse(self, u: np.ndarray, group: int) -> np.ndarray:
        p = self.params
        return (u - p["offset"][group]) * p["divisor"][group] + p["shift"][group]

    def __repr__(self) -> str:
        return f"Normalizer(kind={self.kind!r}, per_channel={self.per_channel}, groups={self.num_groups})"


def _fit_affine(kind: str, values: np.ndarray) -> tuple[float, float, float]:
    """Return (shift, divisor, offset) for one group of finite values."""
    if kind == "zscore":
        shift, scale = values.mean(), values.std()
    elif kind == "robust":
        q25, shift, q75 = np.percentile(values, [25, 50, 75])
        scale = q75 - q25
    else:
        shift, scale = values.min(), values.max() - values.min()
    if scale == 0:
        return float(shift), 1.0, 0.5 if kind == "minmax" else 0.0
    return float(shift), float(scale + SCALE_EPS), 0.0


def fit_normalizer(kind: str, windows: np.ndarray, per_channel: bool = False) -> Normalizer:
    """Fit a normalizer of `kind` on training windows.

    Args:
      kind: one of `NORMALIZER_KINDS`.
      windows: `(N, T, C)` training windows of one domain (any array whose last axis is C works).
      per_channel: fit one map per channel instead of one map pooled over all channels.

    Raises:
      DataError: for an unknown kind, an empty array, or a group without finite values.
    """
    if kind not in NORMALIZER_KINDS:
        raise DataError(f"unknown normalizer {kind!r}; expected one of {NORMALIZER_KINDS}")
    windows = np.asarray(windows, dtype=np.float64)
    if windows.size == 0:
        raise DataError(f"cannot fit a normalizer on an empty array of shape {windows.shape}")
    if np.isinf(windows).any():
        raise DataError("cannot fit a normalizer on data with infinite values; replace them with NaN or remove them")

    groups = [windows[..., c].ravel() for c in range(windows.shape[-1])] if per_channel else [windows.ravel()]
    groups = [g[~np.isnan(g)] for g in groups]
    for c, g in enumerate(groups):
        if g.size == 0:
            where = f"channel {c}" if per_channel else "the data"
            raise DataError(f"cannot fit a normalizer: {where} has no finite values")

    if kind in ECDF_KINDS:
        counts = np.array([g.size for g in groups], dtype=np.int64)
        sorted_values = np.full((len(groups), counts.max()), np.nan)
        for c, g in enumerate(groups):
            sorted_values[c, : g.size] = np.sort(g)
        params = {"sorted_values": sorted_values, "counts": counts}
    else:
        fitted = np.array([_fit_affine(kind, g) for g in groups])  # [groups, 3]
        params = {"shift": fitted[:, 0], "divisor": fitted[:, 1], "offset": fitted[:, 2]}
    return Normalizer(kind, per_channel, params)

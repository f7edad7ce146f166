"""Host-side batches drawn from several domains, reproducible from (seed, step)."""

from __future__ import annotations

from typing import Iterator, Mapping

import numpy as np

from timecraft_jax.data.readers import DataError


def to_univariate(windows: np.ndarray) -> np.ndarray:
    """Flatten `(N, T, C)` windows to `(N*C, T, 1)`, sample-major: all channels of window 0 come first."""
    windows = np.asarray(windows)
    if windows.ndim != 3:
        raise DataError(f"expected windows of shape (N, T, C), got shape {windows.shape}")
    n, t, c = windows.shape
    return windows.transpose(0, 2, 1).reshape(n * c, t, 1)


def _stack_domains(domain_windows: Mapping[str, np.ndarray]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Return domain names, the concatenated float32 windows and each domain's start offset."""
    if not domain_windows:
        raise DataError("no domains given; pass a dict of domain name -> (N, T, C) windows")
    names = list(domain_windows)
    arrays = []
    for name in names:
        windows = np.asarray(domain_windows[name])
        if windows.ndim != 3:
            raise DataError(f"domain {name!r}: expected windows of shape (N, T, C), got shape {windows.shape}")
        if windows.shape[0] == 0:
            raise DataError(f"domain {name!r} has no windows; prepare more data or drop the domain")
        arrays.append(windows)
    shapes = {a.shape[1:] for a in arrays}
    if len(shapes) > 1:
        listed = ", ".join(f"{n}: {a.shape[1:]}" for n, a in zip(names, arrays))
        raise DataError(f"every domain needs the same (T, C) window shape to share a batch, got {listed}")
    counts = np.array([len(a) for a in arrays], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
    return names, np.concatenate(arrays).astype(np.float32), offsets


class MultiDomainBatcher:
    """Draw training batches from several domains with replacement.

    `batch(step)` depends only on `(seed, step)`, so a resumed run gets the same batches. With
    `reweight`, each element picks a domain uniformly and then a window of it uniformly, so every
    domain is equally likely per draw whatever its size. Without it, every window is equally likely.
    """

    def __init__(self, domain_windows: Mapping[str, np.ndarray], batch_size: int, reweight: bool, seed: int):
        if int(batch_size) < 1:
            raise DataError(f"batch_size must be >= 1, got {batch_size}")
        self.domain_names, self._windows, self._offsets = _stack_domains(domain_windows)
        self._counts = np.diff(np.concatenate([self._offsets, [len(self._windows)]]))
        self.batch_size = int(batch_size)
        self.reweight = bool(reweight)
        self.seed = int(seed)

    @property
    def num_domains(self) -> int:
        return len(self.domain_names)

    @property
    def num_windows(self) -> int:
        return len(self._windows)

    def batch(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """Return `(x, domain_index)`: float32 `(B, T, C)` windows and their int32 `(B,)` domain positions."""
        rng = np.random.default_rng([self.seed, int(step)])
        if self.reweight:
            domain = rng.integers(self.num_domains, size=self.batch_size)
            within = rng.integers(0, self._counts[domain])
            index = self._offsets[domain] + within
        else:
            index = rng.integers(self.num_windows, size=self.batch_size)
            domain = np.searchsorted(self._offsets, index, side="right") - 1
        return self._windows[index], domain.astype(np.int32)


def iterate_eval_batches(
    domain_windows: Mapping[str, np.ndarray], batch_size: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield every window once, in domain order and without shuffling, as `(x, domain_index)` batches.

    The last batch contains the remainder and can be smaller than `batch_size`.
    """
    if int(batch_size) < 1:
        raise DataError(f"batch_size must be >= 1, got {batch_size}")
    _, windows, offsets = _stack_domains(domain_windows)
    domain = np.searchsorted(offsets, np.arange(len(windows)), side="right") - 1
    for start in range(0, len(windows), batch_size):
        stop = start + batch_size
        yield windows[start:stop], domain[start:stop].astype(np.int32)

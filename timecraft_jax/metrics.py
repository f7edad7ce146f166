"""Distribution metrics between real and generated time series.

The three metrics follow the TimeCraft evaluation code (`metrics/feature_distance_eval.py`):

* MDD: per (time step, channel) histogram difference, as in `HistoLoss` with 20 bins.
* Flat KL: KL divergence between 50-bin histograms of all values, flattened.
* MMD: squared maximum mean discrepancy with an RBF kernel, biased V-statistic.

Reference behaviour kept deliberately: MDD ignores generated mass outside the range of the real
values at each (t, c); flat KL drops generated values outside the real bin edges; MMD includes the
kernel diagonals and uses gamma = 1 / (T * C). Everything is computed in float64 with numpy.
"""

import math

import numpy as np

from timecraft_jax.samples_io import SeriesInputError

SCALES = ("zscore", "minmax", "robust_zscore", "raw")

# Added to the divisor of every scale map so that a constant real array does not divide by zero.
SCALE_EPS = 1e-7
# Added to the generated density before normalising, as TimeCraft's flat_kl does, so that empty
# generated bins give a large but finite KL term.
KL_EPS = 1e-9
# Consistency constant that turns the median absolute deviation into a standard deviation
# estimate for normal data.
MAD_TO_STD = 1.4826
# Rows of the first argument processed at once by `mmd_rbf`, so one kernel block takes
# O(MMD_CHUNK_ROWS * N) memory.
MMD_CHUNK_ROWS = 512


def check_series_pair(real, gen):
    """Validate two (N, T, C) arrays for comparison and return them as float64.

    Raises:
      SeriesInputError: if either array is not 3-D, is empty, contains NaN or inf, or if T or C
        differ between the two.
    """
    arrays = []
    for name, x in (("real", real), ("gen", gen)):
        x = np.asarray(x)
        if x.ndim != 3:
            raise SeriesInputError(
                f"{name} has shape {x.shape}; expected a 3-D array (N, T, C) with time before channels"
            )
        if x.shape[0] == 0:
            raise SeriesInputError(f"{name} contains no series (shape {x.shape})")
        if not np.issubdtype(x.dtype, np.number) or np.iscomplexobj(x):
            raise SeriesInputError(f"{name} has dtype {x.dtype}; expected a real floating-point array")
        x = x.astype(np.float64)
        n_nan = int(np.isnan(x).sum())
        if n_nan:
            raise SeriesInputError(
                f"{name} contains {n_nan} NaN values out of {x.size}; metrics are undefined for NaN series"
            )
        n_inf = int(np.isinf(x).sum())
        if n_inf:
            raise SeriesInputError(f"{name} contains {n_inf} infinite values out of {x.size}")
        arrays.append(x)

    real, gen = arrays
    if real.shape[1:] != gen.shape[1:]:
        raise SeriesInputError(
            f"real has (T, C) = {real.shape[1:]} but gen has (T, C) = {gen.shape[1:]}; "
            "both arrays must be (N, T, C) with the same window length T and channel count C"
        )
    return real, gen


def _bin_index(x, low, high, n_bins):
    """Return floor((x - low) * n_bins / (high - low)), the bin of x on equal bins over [low, high]."""
    return np.floor((x - low) * n_bins / (high - low)).astype(np.int64)


def _bin_counts(bin_index, n_bins):
    """Count the entries of `bin_index` [N, T, C] equal to each of 0 .. n_bins - 1, per (t, c)."""
    return np.stack([(bin_index == k).sum(axis=0) for k in range(n_bins)])  # [n_bins, T, C]


def mdd(real, gen, n_bins=20):
    """Compute the marginal distribution difference (MDD) between real and generated series.

    For every time step t and channel c, the real values are binned into `n_bins` equal bins over
    [min, max], with the maximum in the last bin (`torch.histc` rule); when min == max the range is
    [min, min + 0.01]. A generated value counts in bin k when it lies in [left edge, right edge),
    i.e. closer than half a bin width to the centre or exactly on the left edge. Generated values
    outside the real range, and those equal to the real maximum, count nowhere. MDD is the mean
    absolute density difference over bins, then over (t, c).

    Args:
      real: (N_r, T, C) real series.
      gen: (N_g, T, C) generated series; N_g may differ from N_r.
      n_bins: number of histogram bins per (t, c).

    Returns:
      MDD as a Python float. Identical arrays give 1 / (delta * N * n_bins) averaged over (t, c),
      not 0, because the real maximum is never counted on the generated side.
    """
    real, gen = check_series_pair(real, gen)
    if n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins}")

    low = real.min(axis=0)  # [T, C]
    high = real.max(axis=0)
    high = np.where(high == low, low + 0.01, high)
    delta = (high - low) / n_bins  # [T, C]

    # Real and generated values share one bin-index formula, so a value gets the same bin on
    # both sides. Only the real side folds the maximum (index n_bins) into the last bin.
    real_index = np.minimum(_bin_index(real, low, high, n_bins), n_bins - 1)  # [N_r, T, C]
    gen_index = _bin_index(gen, low, high, n_bins)  # [N_g, T, C]; out-of-range bins never match
    real_density = _bin_counts(real_index, n_bins) / (delta * real.shape[0])  # [n_bins, T, C]
    gen_density = _bin_counts(gen_index, n_bins) / (delta * gen.shape[0])
    return float(np.abs(gen_density - real_density).mean(axis=0).mean())


def _kl_divergence(p, q):
    """Return sum p log(p / q) after normalising p and q to sum to 1; p = 0 terms contribute 0."""
    p = p / p.sum()
    q = q / q.sum()
    positive = p > 0
    return float(np.sum(p[positive] * np.log(p[positive] / q[positive])))


def flat_kl(real, gen, bins=50):
    """Compute KL(real || gen) between histograms of all values, flattened.

    The bin edges are `bins` equal bins over the range of the real values (numpy's histogram
    rule, so a constant real array gets the range [v - 0.5, v + 0.5]). Generated values outside the
    edges are dropped and the generated density is renormalised over what remains.

    Returns:
      KL divergence in nats as a Python float. `inf` when no generated value falls inside the
      real range, because the two histograms then share no mass.
    """
    real, gen = check_series_pair(real, gen)
    real_density, edges = np.histogram(real.ravel(), bins=bins, density=True)
    gen_counts, _ = np.histogram(gen.ravel(), bins=edges)
    n_inside = gen_counts.sum()
    if n_inside == 0:
        return math.inf
    gen_density = gen_counts / (n_inside * np.diff(edges))
    return _kl_divergence(real_density, gen_density + KL_EPS)


def _mean_rbf_kernel(x, y, gamma):
    """Return the mean of exp(-gamma * ||x_i - y_j||^2) over all pairs (i, j)."""
    x_sq = np.einsum("ij,ij->i", x, x)  # [N_x]
    y_sq = np.einsum("ij,ij->i", y, y)  # [N_y]
    total = 0.0
    for start in range(0, x.shape[0], MMD_CHUNK_ROWS):
        x_chunk = x[start : start + MMD_CHUNK_ROWS]
        sq_dist = x_sq[start : start + MMD_CHUNK_ROWS, None] + y_sq[None, :] - 2.0 * (x_chunk @ y.T)
        np.maximum(sq_dist, 0.0, out=sq_dist)
        total += np.exp(-gamma * sq_dist).sum()
    return total / (x.shape[0] * y.shape[0])


def mmd_rbf(real, gen, gamma=None):
    """Compute the squared MMD between real and generated series with an RBF kernel.

    Each series is flattened to a vector of length T * C and the kernel is
    k(x, y) = exp(-gamma * ||x - y||^2). The estimate is the biased V-statistic
    mean(K_rr) + mean(K_gg) - 2 mean(K_rg), diagonals included. Kernel blocks are computed
    `MMD_CHUNK_ROWS` rows at a time, so 5000 x 5000 series need about 20 MB per block.

    Args:
      real: (N_r, T, C) real series.
      gen: (N_g, T, C) generated series.
      gamma: kernel width; defaults to 1 / (T * C).

    Returns:
      Squared MMD as a Python float.
    """
    real, gen = check_series_pair(real, gen)
    real_flat = real.reshape(real.shape[0], -1)  # [N_r, T * C]
    gen_flat = gen.reshape(gen.shape[0], -1)  # [N_g, T * C]
    if gamma is None:
        gamma = 1.0 / real_flat.shape[1]
    if gamma <= 0:
        raise ValueError(f"gamma must be positive, got {gamma}")
    return float(
        _mean_rbf_kernel(real_flat, real_flat, gamma)
        + _mean_rbf_kernel(gen_flat, gen_flat, gamma)
        - 2.0 * _mean_rbf_kernel(real_flat, gen_flat, gamma)
    )


def zscore_scale(real, gen):
    """Scale both arrays by the mean and population standard deviation of all real values.

    The statistics are global scalars over every real value; the divisor is std + 1e-7.
    """
    real, gen = check_series_pair(real, gen)
    mean = real.mean()
    scale = real.std() + SCALE_EPS
    return (real - mean) / scale, (gen - mean) / scale


def scale_pair(real, gen, scale="zscore"):
    """Scale real and generated series with statistics of the real values.

    Args:
      real: (N_r, T, C) real series.
      gen: (N_g, T, C) generated series.
      scale: one of `SCALES`:
        'zscore': (x - mean) / (std + 1e-7), population std;
        'minmax': (x - min) / (max - min + 1e-7);
        'robust_zscore': (x - median) / (1.4826 * MAD + 1e-7);
        'raw': unchanged.
        All statistics are global scalars over every real value.

    Returns:
      (real_scaled, gen_scaled) as float64 arrays.
    """
    if scale == "zscore":
        return zscore_scale(real, gen)
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}; expected one of {', '.join(SCALES)}")

    real, gen = check_series_pair(real, gen)
    if scale == "raw":
        return real, gen
    if scale == "minmax":
        offset = real.min()
        divisor = real.max() - offset + SCALE_EPS
    else:
        offset = np.median(real)
        divisor = MAD_TO_STD * np.median(np.abs(real - offset)) + SCALE_EPS
    return (real - offset) / divisor, (gen - offset) / divisor


def _subsample(x, max_samples, rng):
    """Return at most `max_samples` series of `x`, drawn without replacement."""
    if x.shape[0] <= max_samples:
        return x
    index = np.sort(rng.choice(x.shape[0], size=max_samples, replace=False))
    return x[index]


def compute_metrics(real, gen, scale="zscore", max_samples=None, seed=0):
    """Scale both arrays with statistics of `real`, then compute MDD, flat KL and MMD.

    Args:
      real: (N_r, T, C) real series.
      gen: (N_g, T, C) generated series; N_g may differ from N_r.
      scale: scale map name, see `scale_pair`.
      max_samples: if set, each array with more series than this is subsampled without
        replacement to `max_samples` series before scaling.
      seed: seed of the subsampling draw.

    Returns:
      dict with keys mdd, flat_kl, mmd_rbf (floats), n_real and n_gen (series used), scale,
      n_real_total and n_gen_total (series given), max_samples and seed.
    """
    real, gen = check_series_pair(real, gen)
    n_real_total, n_gen_total = real.shape[0], gen.shape[0]
    if max_samples is not None:
        if max_samples < 1:
            raise ValueError(f"max_samples must be a positive integer or None, got {max_samples}")
        rng = np.random.default_rng(seed)
        real = _subsample(real, max_samples, rng)
        gen = _subsample(gen, max_samples, rng)

    real_scaled, gen_scaled = scale_pair(real, gen, scale)
    return {
        "mdd": mdd(real_scaled, gen_scaled),
        "flat_kl": flat_kl(real_scaled, gen_scaled),
        "mmd_rbf": mmd_rbf(real_scaled, gen_scaled),
        "n_real": int(real.shape[0]),
        "n_gen": int(gen.shape[0]),
        "scale": scale,
        "n_real_total": int(n_real_total),
        "n_gen_total": int(n_gen_total),
        "max_samples": max_samples,
        "seed": seed,
    }

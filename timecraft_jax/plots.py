"""Figures that compare real and generated series.

Figures are built with `matplotlib.figure.Figure` and written by the Agg renderer, so no display
and no pyplot state are involved.
"""

import math
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

HISTOGRAM_BINS = 50


def _pick_series(x, n_series, rng):
    """Return up to `n_series` series of x [N, T, C], drawn without replacement."""
    count = min(n_series, x.shape[0])
    return x[np.sort(rng.choice(x.shape[0], size=count, replace=False))]


def plot_real_vs_generated(real, gen, path, title, n_series=8, seed=0):
    """Write a PNG comparing real and generated series.

    The top of the figure shows up to `n_series` random real series on the left and as many
    generated series on the right, all with the same y-limits. Each panel draws every channel of
    one series. The bottom panel overlays the density histograms of all real and all generated
    values.

    Args:
      real: (N_r, T, C) real series.
      gen: (N_g, T, C) generated series.
      path: destination .png; parent folders are created.
      title: figure title.
      n_series: number of series drawn on each side.
      seed: seed of the series draw.

    Returns:
      The path of the written PNG.
    """
    real = np.asarray(real, dtype=np.float64)
    gen = np.asarray(gen, dtype=np.float64)
    if real.ndim != 3 or gen.ndim != 3:
        raise ValueError(f"expected (N, T, C) arrays, got real {real.shape} and gen {gen.shape}")
    if n_series < 1:
        raise ValueError(f"n_series must be a positive integer, got {n_series}")

    rng = np.random.default_rng(seed)
    real_shown = _pick_series(real, n_series, rng)
    gen_shown = _pick_series(gen, n_series, rng)
    shown_values = np.concatenate([real_shown.ravel(), gen_shown.ravel()])
    y_min, y_max = shown_values.min(), shown_values.max()
    margin = 0.05 * (y_max - y_min) or 0.5
    y_limits = (y_min - margin, y_max + margin)

    # Each side is a block of 2 columns, which the series panels fill row by row.
    n_rows = math.ceil(n_series / 2)
    fig = Figure(figsize=(12, 1.6 * n_rows + 3.2), layout="constrained")
    grid = fig.add_gridspec(n_rows + 2, 4)
    fig.suptitle(title)
    time = np.arange(real.shape[1])
    sides = (
        (0, "real", "tab:blue", real_shown, real.shape[0]),
        (2, "generated", "tab:orange", gen_shown, gen.shape[0]),
    )
    for column_offset, label, color, series, n_total in sides:
        for i in range(n_series):
            ax = fig.add_subplot(grid[i // 2, column_offset + i % 2])
            if i >= series.shape[0]:
                ax.set_axis_off()
                continue
            ax.plot(time, series[i], linewidth=1.0, color=color)
            ax.set_ylim(*y_limits)
            ax.tick_params(labelsize=7)
            if i == 0:
                ax.set_title(f"{label} ({series.shape[0]} of {n_total})", fontsize=9, loc="left")

    ax = fig.add_subplot(grid[n_rows:, :])
    all_values = np.concatenate([real.ravel(), gen.ravel()])
    edges = np.histogram_bin_edges(all_values, bins=HISTOGRAM_BINS)
    ax.hist(real.ravel(), bins=edges, density=True, alpha=0.5, color="tab:blue", label="real")
    ax.hist(gen.ravel(), bins=edges, density=True, alpha=0.5, color="tab:orange", label="generated")
    ax.set_xlabel("value")
    ax.set_ylabel("density")
    ax.legend(fontsize=8)

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=100)
    return path

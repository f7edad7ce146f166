"""Few-shot domain prompting (TimeDP): generate from user prompt windows and inspect their prototype logits.

A prompt file contains k example series of a domain the model may never have seen:

* `.npy`: (k, T, C) windows, (k, T) univariate windows, or one (T,) series.
* `.csv` (also `.tsv`, `.txt`): rows are time steps and each column is one univariate series; the
  header row is optional and empty cells at the end of a column end a shorter series. For a model
  with C > 1 channels that was not trained univariate, the C columns are the channels of one series.
* `.tsf` (Monash) or GluonTS `.jsonl`: each series is one univariate prompt.

Every prompt must have the model's window length L, unless `window=True` cuts each series into
non-overlapping windows of length L (a shorter tail is dropped). As in TimeDP's unseen-domain
protocol, the prompts get a normalizer fitted on the prompts themselves, and sample j is conditioned
on prompt j mod k alone. With the ECDF normalizers (`centered_pit`, `pit`) the inverse map clamps,
so every generated value lies within [min, max] of the prompt values.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import math
from pathlib import Path
from typing import Sequence

import ml_collections
import numpy as np
from matplotlib import colormaps
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from timecraft_jax import sampling
from timecraft_jax.data import DataError
from timecraft_jax.data.batching import to_univariate
from timecraft_jax.data.normalizers import Normalizer, fit_normalizer
from timecraft_jax.data.readers import file_format, read_delimited, read_series
from timecraft_jax.generation import (SamplingBundle, check_finite_samples, draw_prompts, encode_prompts,
                                      generate_from_prompts, make_sample_fn, training_windows)

# Super-domains of the twelve TimeDP training domains, used to colour the second embedding plot.
SUPER_DOMAINS = {
    "electricity": "Energy", "solar": "Energy", "wind": "Energy",
    "traffic": "Transport", "taxi": "Transport", "pedestrian": "Transport",
    "air": "Nature", "temperature": "Nature", "rain": "Nature",
    "nn5": "Econ", "fred_md": "Econ", "exchange": "Econ",
}
EMBEDDINGS = ("tsne", "pca")
# t-SNE perplexity and iterations of the reference's visualisation; the perplexity is lowered for
# small prompt sets.
TSNE_PERPLEXITY = 40.0
TSNE_ITERATIONS = 500
# t-SNE needs a few points; smaller sets are embedded with PCA.
TSNE_MIN_POINTS = 5


class PromptError(DataError):
    """Invalid prompt file or prompt set, with the value at fault and the fix."""


# ----------------------------------------------------------------------------
# Reading prompt files.


def _read_npy_prompts(path: Path) -> tuple[list[np.ndarray], list[str]]:
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise PromptError(f"prompt file {path} is not a readable numeric .npy array: {error}") from None
    if not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
        raise PromptError(f"prompt file {path} has dtype {array.dtype}; expected a real numeric array")
    if array.ndim == 1:
        array = array[None, :, None]
    elif array.ndim == 2:
        array = array[:, :, None]
    elif array.ndim != 3:
        raise PromptError(f"prompt file {path} has shape {array.shape}; expected (k, T, C), (k, T) or (T,)")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise PromptError(f"prompt file {path} contains no values (shape {array.shape})")
    return list(array.astype(np.float64)), [f"row {i}" for i in range(array.shape[0])]


def _strip_trailing_nan(column: np.ndarray) -> np.ndarray:
    finite = np.flatnonzero(~np.isnan(column[:, 0]))
    return column[: finite[-1] + 1] if finite.size else column[:0]


def _read_delimited_prompts(path: Path, columns: Sequence[str | int] | None,
                            columns_are_channels: bool) -> tuple[list[np.ndarray], list[str]]:
    # Selecting the columns while reading lets a file carry date or label columns beside the prompts.
    table = read_delimited(path, columns=list(columns) if columns else None)
    values, names = table.series[0], table.channel_names  # [T, C_selected]
    if columns_are_channels:
        return [values], [f"{path.name} (columns {', '.join(names)})"]
    series = [_strip_trailing_nan(values[:, [j]]) for j in range(values.shape[1])]
    return series, [f"column {name!r}" for name in names]


def read_prompt_series(path: str | Path, columns: Sequence[str | int] | None = None,
                       columns_are_channels: bool = False) -> tuple[list[np.ndarray], list[str]]:
    """Read the series of a prompt file as float64 (T_i, C) arrays with a name for each.

    Args:
      path: .npy, .csv/.tsv/.txt, .tsf or .jsonl file (see the module docstring).
      columns: columns of a delimited file to keep, by name or 0-based position; None keeps all.
      columns_are_channels: read a delimited file as one series whose columns are its channels.
    """
    path = Path(path)
    if not path.is_file():
        raise PromptError(f"prompt file not found: {path}")
    kind = file_format(path)
    if columns and kind != "delimited":
        raise PromptError(f"column selection applies to .csv/.tsv/.txt prompt files, not to {path.name}")
    if kind == "npy":
        return _read_npy_prompts(path)
    if kind == "delimited":
        return _read_delimited_prompts(path, columns, columns_are_channels)
    collection = read_series(path)
    return collection.series, [f"series {name!r}" for name in collection.series_names]


def _check_values(series: np.ndarray, name: str, path: Path) -> None:
    bad = np.flatnonzero(~np.isfinite(series).all(axis=1))
    if bad.size:
        raise PromptError(f"prompt {name} in {path} has {bad.size} time steps with NaN or infinite values "
                          f"(first at step {bad[0]}); prompts must be complete, so fill or remove the gaps")


def _cut_windows(series: np.ndarray, seq_len: int) -> np.ndarray:
    """Non-overlapping windows [n, L, C] from the start of `series`; a shorter tail is dropped."""
    num_windows = series.shape[0] // seq_len
    return series[: num_windows * seq_len].reshape(num_windows, seq_len, series.shape[1])


def load_prompt_file(path: str | Path, seq_len: int, channels: int, univariate: bool, window: bool = False,
                     columns: Sequence[str | int] | None = None) -> np.ndarray:
    """Read and check the prompts of a file for a model with window length `seq_len` and `channels`.

    Args:
      path: prompt file (formats in the module docstring).
      seq_len: the model's window length L.
      channels: the model's input channels C.
      univariate: the model was trained on univariate windows, so prompts with several channels
        are flattened to one univariate prompt per channel, as training does.
      window: cut series longer than L into non-overlapping windows of length L.
      columns: columns of a delimited file to use, by name or 0-based position.

    Returns:
      float64 prompts [k, L, C].

    Raises:
      PromptError: for a missing or unreadable file, NaN or infinite values, a series of the wrong
        length (shorter than L with `window`), or a channel count the model cannot take.
    """
    path = Path(path)
    flatten = univariate and channels == 1
    series_list, names = read_prompt_series(path, columns, columns_are_channels=channels > 1 and not flatten)

    windows = []
    for series, name in zip(series_list, names):
        _check_values(series, name, path)
        length = series.shape[0]
        if window and length < seq_len:
            raise PromptError(f"prompt {name} in {path} has {length} time steps, fewer than the model's "
                              f"window length L={seq_len}; give series of at least {seq_len} steps")
        if not window and length != seq_len:
            raise PromptError(f"prompt {name} in {path} has length {length}, but the model's window length is "
                              f"L={seq_len}; give windows of exactly {seq_len} steps, or pass --window_prompts "
                              f"to cut longer series into non-overlapping windows of length {seq_len}")
        windows.append(_cut_windows(series, seq_len) if window else series[None])
    prompts = np.concatenate(windows)  # [k, L, C_file]

    if flatten and prompts.shape[2] > 1:
        logging.info("flattening %d prompts with %d channels to univariate prompts, as the model was trained",
                     len(prompts), prompts.shape[2])
        prompts = to_univariate(prompts)
    if prompts.shape[2] != channels:
        raise PromptError(f"prompts in {path} have {prompts.shape[2]} channels, but the model takes {channels}; "
                          f"give {channels}-channel prompts (for a .csv, {channels} columns)")
    if window:
        logging.info("cut %d series of %s into %d windows of length %d", len(series_list), path, len(prompts),
                     seq_len)
    return prompts


def load_prompts_for_model(bundle: SamplingBundle, path: str | Path, window: bool = False,
                           columns: Sequence[str | int] | None = None) -> np.ndarray:
    """`load_prompt_file` with the window length, channels and univariate flag of `bundle`'s model."""
    return load_prompt_file(path, bundle.seq_len, bundle.channels, bool(bundle.config.data.univariate), window,
                            columns)


def fit_prompt_normalizer(prompts: np.ndarray, kind: str = "centered_pit", per_channel: bool = False) -> Normalizer:
    """Fit a normalizer of `kind` on the prompt values [k, L, C] themselves (all k * L values pooled)."""
    return fit_normalizer(kind, prompts, per_channel)


def fit_prompt_normalizer_for_model(bundle: SamplingBundle, prompts: np.ndarray) -> Normalizer:
    """`fit_prompt_normalizer` with the normalizer kind and channel pooling the model was trained with."""
    data_config = bundle.config.data
    return fit_prompt_normalizer(prompts, data_config.normalizer, bool(data_config.per_channel_normalizer))


# ----------------------------------------------------------------------------
# Prototype logits and generation.


def require_prototype_conditioner(bundle: SamplingBundle) -> None:
    """Raise PromptError unless the model conditions on prototypes (TimeDP's PAM)."""
    conditioner = bundle.config.model.conditioner
    if conditioner != "prototype":
        raise PromptError(f"the checkpoint's model uses conditioner {conditioner!r}; prototype logits exist only "
                          "for models trained with model.conditioner='prototype'")


def prototype_logits(bundle: SamplingBundle, prompts_normalized: np.ndarray) -> np.ndarray:
    """Return the prototype logits [k, M] of normalized prompts [k, L, C], with BatchNorm in inference mode."""
    require_prototype_conditioner(bundle)
    return np.asarray(encode_prompts(bundle, prompts_normalized).logits)


def prompt_file_logits(bundle: SamplingBundle, path: str | Path, window: bool = False,
                       columns: Sequence[str | int] | None = None) -> np.ndarray:
    """Return the prototype logits [k, M] of a prompt file's prompts, normalized by a fit on themselves."""
    require_prototype_conditioner(bundle)
    prompts = load_prompts_for_model(bundle, path, window, columns)
    normalizer = fit_prompt_normalizer_for_model(bundle, prompts)
    return prototype_logits(bundle, normalizer.transform(prompts))


def domain_logits(bundle: SamplingBundle, domain: str, num_windows: int, seed: int) -> np.ndarray:
    """Return the prototype logits [num_windows, M] of random training windows of a trained domain.

    The windows are normalized with the domain's training normalizer, as during training.
    """
    require_prototype_conditioner(bundle)
    if domain not in bundle.normalizers:
        raise PromptError(f"domain {domain!r} was not part of training; the checkpoint has "
                          f"{sorted(bundle.normalizers)}")
    if num_windows < 1:
        raise ValueError(f"the number of windows per domain must be >= 1, got {num_windows}")
    windows = draw_prompts(training_windows(bundle, domain), num_windows, seed)
    return prototype_logits(bundle, bundle.normalizers[domain].transform(windows))


def save_prototype_weights(out_dir: str | Path, label: str, logits: np.ndarray) -> tuple[Path, Path]:
    """Write logits [k, M] to `{label}_prototype_weights.npy` and `.csv` (header prototype_0 ...)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    npy_path = out_dir / f"{label}_prototype_weights.npy"
    csv_path = npy_path.with_suffix(".csv")
    np.save(npy_path, logits.astype(np.float32))
    header = ",".join(f"prototype_{p}" for p in range(logits.shape[1]))
    np.savetxt(csv_path, logits, delimiter=",", header=header, comments="", fmt="%.7g")
    return npy_path, csv_path


@dataclasses.dataclass
class PromptGeneration:
    """Samples drawn from a prompt set; sample j follows prompt j mod k."""

    samples: np.ndarray  # [N, L, C] in the units of the prompts.
    samples_normalized: np.ndarray  # [N, L, C] in the prompt normalizer's space.
    prompts: np.ndarray  # [k, L, C] raw prompt windows.
    normalizer: Normalizer  # Fitted on the prompts.


def generate_from_prompt_file(bundle: SamplingBundle, path: str | Path, num_samples: int,
                              sampling_config: ml_collections.ConfigDict, seed: int, window: bool = False,
                              columns: Sequence[str | int] | None = None) -> PromptGeneration:
    """Generate `num_samples` series conditioned on the prompts of a file.

    The prompts are normalized with a normalizer fitted on them (kind from `config.data.normalizer`),
    encoded in inference mode, repeated round-robin to exactly `num_samples` conditions, sampled,
    and mapped back with the same normalizer.

    Raises:
      PromptError: for invalid prompts, or a model without a prompt conditioner.
      FloatingPointError: if a generated value is NaN or infinite.
    """
    if bundle.config.model.conditioner == "none":
        raise PromptError("the checkpoint's model is unconditional (conditioner 'none') and ignores prompts; "
                          "sample it with --domain instead")
    prompts = load_prompts_for_model(bundle, path, window, columns)
    if num_samples < len(prompts):
        logging.warning("%d prompts but only %d samples: prompts %d..%d condition no sample", len(prompts),
                        num_samples, num_samples, len(prompts) - 1)
    normalizer = fit_prompt_normalizer_for_model(bundle, prompts)
    logging.info("sampling %d series from %d prompts of %s (values %.4g..%.4g, %s prompt normalizer)",
                 num_samples, len(prompts), path, prompts.min(), prompts.max(), normalizer.kind)
    normalized = generate_from_prompts(bundle, normalizer.transform(prompts), num_samples, sampling_config, seed)
    samples = normalizer.inverse_transform(normalized)
    check_finite_samples(samples, f"prompts {path}")
    return PromptGeneration(samples=samples, samples_normalized=normalized, prompts=prompts, normalizer=normalizer)


def prototype_semantics(bundle: SamplingBundle, sampling_config: ml_collections.ConfigDict, num_samples: int,
                        seed: int) -> np.ndarray:
    """Return the mean normalized sample [M, L, C] of each prototype attended alone.

    For prototype p the logits are -1 everywhere and +1 at p. The cross-attention masks logits <= 0,
    so every token except p is masked out.
    """
    require_prototype_conditioner(bundle)
    if num_samples < 1:
        raise ValueError(f"the number of samples per prototype must be >= 1, got {num_samples}")
    zeros = np.zeros((1, bundle.seq_len, bundle.channels), np.float32)
    prototypes = np.asarray(encode_prompts(bundle, zeros).context[0])  # [M, D]
    num_prototypes = prototypes.shape[0]
    one_hot = 2.0 * np.eye(num_prototypes, dtype=np.float32) - 1.0  # [M, M]
    cond = sampling.Conditioning(
        context=np.broadcast_to(prototypes, (num_prototypes * num_samples,) + prototypes.shape),
        logits=np.repeat(one_hot, num_samples, axis=0),
    )
    sample_fn = make_sample_fn(bundle, sampling_config)
    samples = sampling.generate(sample_fn, bundle.variables, cond, num_prototypes * num_samples,
                                sampling_config.batch_size, seed)
    return samples.reshape(num_prototypes, num_samples, bundle.seq_len, bundle.channels).mean(axis=1)


# ----------------------------------------------------------------------------
# 2-D embeddings and figures of prototype logits.


def embed_2d(points: np.ndarray, method: str = "tsne", seed: int = 0) -> tuple[np.ndarray, str]:
    """Embed points [n, M] in 2-D and return (coordinates [n, 2], the method used).

    't-SNE' needs scikit-learn and at least `TSNE_MIN_POINTS` points; otherwise this falls back
    to PCA, computed with an SVD of the centred points.
    """
    if method not in EMBEDDINGS:
        raise ValueError(f"unknown embedding {method!r}; expected one of {EMBEDDINGS}")
    points = np.asarray(points, dtype=np.float64)
    if method == "tsne" and len(points) >= TSNE_MIN_POINTS:
        try:
            from sklearn.manifold import TSNE
        except ImportError:
            logging.warning("scikit-learn is not installed, so the embedding uses PCA instead of t-SNE")
        else:
            perplexity = min(TSNE_PERPLEXITY, (len(points) - 1) / 3)
            # scikit-learn 1.5 renamed n_iter to max_iter.
            iterations = "max_iter" if "max_iter" in inspect.signature(TSNE).parameters else "n_iter"
            tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed,
                        **{iterations: TSNE_ITERATIONS})
            return tsne.fit_transform(points), "t-SNE"
    elif method == "tsne":
        logging.info("%d points are too few for t-SNE; using PCA", len(points))
    centred = points - points.mean(axis=0)
    u, s, _ = np.linalg.svd(centred, full_matrices=False)
    coordinates = np.zeros((len(points), 2))
    num_components = min(2, len(s))
    coordinates[:, :num_components] = u[:, :num_components] * s[:num_components]
    return coordinates, "PCA"


def _save(figure: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    return path


def plot_embedding(coordinates: np.ndarray, labels: Sequence[str], path: str | Path, title: str) -> Path:
    """Write a scatter plot of 2-D points [n, 2], one colour per distinct label, to a PNG."""
    labels = np.asarray(labels)
    distinct = list(dict.fromkeys(labels.tolist()))
    colours = colormaps["tab20" if len(distinct) > 10 else "tab10"]
    figure = Figure(figsize=(7, 6), layout="constrained")
    axes = figure.add_subplot()
    for i, label in enumerate(distinct):
        chosen = labels == label
        axes.scatter(coordinates[chosen, 0], coordinates[chosen, 1], s=14, alpha=0.8,
                     color=colours(i % colours.N), label=f"{label} ({int(chosen.sum())})")
    axes.set_title(title)
    axes.legend(fontsize="small", markerscale=1.5, loc="best")
    return _save(figure, Path(path))


def plot_logit_heatmaps(logits_by_label: dict[str, np.ndarray], path: str | Path) -> Path:
    """Write one heatmap of prompts x prototypes per label, coolwarm with 0 at the centre of the scale."""
    limit = max(float(np.abs(logits).max()) for logits in logits_by_label.values()) or 1.0
    norm = Normalize(vmin=-limit, vmax=limit)
    num_panels = len(logits_by_label)
    num_columns = min(num_panels, 4)
    num_rows = math.ceil(num_panels / num_columns)
    figure = Figure(figsize=(3.6 * num_columns + 1, 3.4 * num_rows), layout="constrained")
    axes_grid = figure.subplots(num_rows, num_columns, squeeze=False)
    image = None
    for axes, (label, logits) in zip(axes_grid.flat, logits_by_label.items()):
        image = axes.imshow(logits, aspect="auto", cmap="coolwarm", norm=norm, interpolation="nearest")
        axes.set_title(f"{label} (k={len(logits)})")
        axes.set_xlabel("prototype")
        axes.set_ylabel("prompt")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.yaxis.set_major_locator(MaxNLocator(integer=True))
    for axes in list(axes_grid.flat)[num_panels:]:
        axes.set_visible(False)
    figure.colorbar(image, ax=axes_grid, label="prototype logit")
    return _save(figure, Path(path))


def plot_prototype_semantics(means: np.ndarray, path: str | Path, num_samples: int) -> Path:
    """Write one small panel per prototype with its mean normalized sample [M, L, C]."""
    num_prototypes = means.shape[0]
    num_columns = min(num_prototypes, 4)
    num_rows = math.ceil(num_prototypes / num_columns)
    figure = Figure(figsize=(3.0 * num_columns, 2.0 * num_rows), layout="constrained")
    figure.suptitle(f"mean of {num_samples} samples with one prototype attended (normalized space)")
    axes_grid = figure.subplots(num_rows, num_columns, squeeze=False, sharex=True, sharey=True)
    for p, axes in enumerate(axes_grid.flat):
        if p >= num_prototypes:
            axes.set_visible(False)
            continue
        for c in range(means.shape[2]):
            axes.plot(means[p, :, c], linewidth=1.2)
        axes.set_title(f"prototype {p}", fontsize="small")
    return _save(figure, Path(path))

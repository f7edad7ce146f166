"""Files of generated samples and reference series.

Generated samples are stored as `FILE.npy`, a float32 (N, T, C) array, next to a JSON sidecar
`FILE.json` that records at least:

* `space`: 'raw' (data units, after the inverse normalizer) or 'normalized' (model space);
* `layout`: 'NTC';
* `shape`: [N, T, C].

Any other JSON-serialisable fields (domain, checkpoint step, seed, sampler, num_steps, eta,
guidance_scale, config path) are stored as given. `created_at` and `version` are filled in when
missing.
"""

import datetime
import importlib.metadata
import json
import logging
from pathlib import Path

import numpy as np

SPACES = ("raw", "normalized")
LAYOUT = "NTC"


class SeriesInputError(ValueError):
    """Invalid series array, sample file or metadata given by the user."""


def sidecar_path(path):
    """Return the JSON sidecar path of a samples file: `FILE.npy` -> `FILE.json`."""
    return Path(path).with_suffix(".json")


def _package_version():
    try:
        return importlib.metadata.version("timecraft-jax")
    except importlib.metadata.PackageNotFoundError:
        # NOTE: a source checkout that was never pip-installed has no version metadata.
        return None


def _json_default(value):
    """Convert numpy scalars and arrays and paths for `json.dumps`."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"metadata value {value!r} of type {type(value).__name__} is not JSON-serialisable")


def _check_space(space, source):
    if space not in SPACES:
        raise SeriesInputError(f"{source} has space {space!r}; expected one of {', '.join(SPACES)}")


def save_samples(path, samples, metadata):
    """Write samples to `path` (.npy, float32) and their metadata to the JSON sidecar.

    Args:
      path: destination ending in `.npy`; parent folders are created.
      samples: (N, T, C) array of finite values.
      metadata: dict with at least `space` ('raw' or 'normalized'); `layout`, `shape`,
        `created_at` (UTC, ISO 8601) and `version` are set by this function unless given.

    Returns:
      The path of the .npy file.

    Raises:
      SeriesInputError: if the array is not (N, T, C), contains NaN or inf, exceeds the float32
        range, or if the metadata is invalid.
    """
    path = Path(path)
    if path.suffix != ".npy":
        raise SeriesInputError(f"samples path {path} must end in .npy")

    samples = np.asarray(samples)
    if samples.ndim != 3:
        raise SeriesInputError(
            f"samples have shape {samples.shape}; expected a 3-D array (N, T, C) with time before channels"
        )
    if not np.issubdtype(samples.dtype, np.number) or np.iscomplexobj(samples):
        raise SeriesInputError(f"samples have dtype {samples.dtype}; expected real numbers")
    n_nan = int(np.isnan(samples).sum())
    n_inf = int(np.isinf(samples).sum())
    if n_nan or n_inf:
        raise SeriesInputError(
            f"samples contain {n_nan} NaN and {n_inf} infinite values out of {samples.size}; "
            f"{path} was not written"
        )
    float32_max = np.finfo(np.float32).max
    n_overflow = int((np.abs(samples) > float32_max).sum())
    if n_overflow:
        raise SeriesInputError(
            f"{n_overflow} sample values exceed the float32 range (+-{float32_max:.3g}); {path} was not written"
        )
    samples = samples.astype(np.float32)

    metadata = dict(metadata)
    _check_space(metadata.get("space"), "metadata")
    layout = metadata.setdefault("layout", LAYOUT)
    if layout != LAYOUT:
        raise SeriesInputError(f"metadata has layout {layout!r}; samples are always stored as {LAYOUT!r}")
    metadata["shape"] = list(samples.shape)
    metadata.setdefault("created_at", datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
    metadata.setdefault("version", _package_version())
    try:
        sidecar_text = json.dumps(metadata, indent=2, sort_keys=True, default=_json_default)
    except TypeError as error:
        raise SeriesInputError(str(error)) from error

    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, samples)
    sidecar_path(path).write_text(sidecar_text + "\n")
    return path


def _load_npy(path, role):
    path = Path(path)
    if path.suffix != ".npy":
        raise SeriesInputError(f"{role} file {path} is not a .npy file; save the array with numpy.save")
    if not path.is_file():
        raise SeriesInputError(f"{role} file {path} not found")
    try:
        array = np.load(path, allow_pickle=False)
    except ValueError as error:
        raise SeriesInputError(f"{role} file {path} could not be read as a numeric .npy array: {error}") from error
    if not np.issubdtype(array.dtype, np.number) or np.iscomplexobj(array):
        raise SeriesInputError(f"{role} file {path} has dtype {array.dtype}; expected real numbers")
    return array


def load_samples(path, allow_missing_sidecar=False):
    """Read samples written by `save_samples`.

    Args:
      path: the .npy file.
      allow_missing_sidecar: accept a .npy file without a sidecar; its metadata then has
        `space` None, because the space of such a file is unknown.

    Returns:
      (samples, metadata): the (N, T, C) array as stored and the sidecar dict.

    Raises:
      SeriesInputError: if a file is missing or the sidecar does not match the array.
    """
    path = Path(path)
    samples = _load_npy(path, "samples")
    if samples.ndim != 3:
        raise SeriesInputError(
            f"samples file {path} has shape {samples.shape}; expected a 3-D array (N, T, C) with time before channels"
        )

    metadata = load_metadata(path)
    if metadata is None:
        if not allow_missing_sidecar:
            raise SeriesInputError(
                f"metadata sidecar {sidecar_path(path)} not found; samples need a sidecar that records their "
                "space (write them with timecraft_jax.samples_io.save_samples)"
            )
        return samples, {"space": None, "layout": LAYOUT, "shape": list(samples.shape)}

    json_path = sidecar_path(path)
    _check_space(metadata.get("space"), f"metadata sidecar {json_path}")
    if metadata.get("layout") != LAYOUT:
        raise SeriesInputError(
            f"metadata sidecar {json_path} has layout {metadata.get('layout')!r}; expected {LAYOUT!r}"
        )
    if metadata.get("shape") != list(samples.shape):
        raise SeriesInputError(
            f"metadata sidecar {json_path} records shape {metadata.get('shape')} but {path} has shape "
            f"{list(samples.shape)}; the two files do not belong together"
        )
    return samples, metadata


def load_metadata(path):
    """Return the JSON sidecar of `path` as a dict, or None when the sidecar does not exist."""
    json_path = sidecar_path(path)
    if not json_path.is_file():
        return None
    try:
        metadata = json.loads(json_path.read_text())
    except json.JSONDecodeError as error:
        raise SeriesInputError(f"metadata sidecar {json_path} is not valid JSON: {error}") from error
    if not isinstance(metadata, dict):
        raise SeriesInputError(f"metadata sidecar {json_path} must contain a JSON object")
    return metadata


def load_series_array(path):
    """Read a reference array from a .npy file as (N, T, C).

    A 2-D array is read as (N, T) univariate windows and gets a channel axis of size 1.

    Raises:
      SeriesInputError: if the file is missing, not numeric, or not 2-D or 3-D.
    """
    path = Path(path)
    array = _load_npy(path, "reference")
    if array.ndim == 2:
        logging.info("Reading %s of shape %s as (N, T) univariate windows, i.e. (N, T, 1).", path, array.shape)
        return array[:, :, None]
    if array.ndim != 3:
        raise SeriesInputError(
            f"reference file {path} has shape {array.shape}; expected (N, T, C) windows with time before "
            "channels, or (N, T) for one channel"
        )
    return array

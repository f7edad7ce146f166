"""Write and read the prepared window files that training and evaluation load.

Layout under `data_root`:

* `{domain}_{L}_train.npy`, `{domain}_{L}_val.npy`: float32 `(N, L, C)` windows of a training
  domain, split chronologically per series.
* `{domain}_{L}_all.npy`: float32 `(N, L, 1)` windows of an unseen domain (stock, web), no split.
* `manifest.json`: one entry per (domain, L) with the source, licence and window counts.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import logging
import os
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from timecraft_jax.data.batching import to_univariate
from timecraft_jax.data.readers import DataError, file_format, read_series
from timecraft_jax.data.registry import DOMAINS, get_domain, list_domains, load_domain
from timecraft_jax.data.windows import NAN_POLICIES, all_windows, split_windows

logger = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = 1
_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def prepared_path(data_root: str | Path, domain: str, seq_len: int, split: str) -> Path:
    """Return the path of the `split` ('train', 'val' or 'all') windows of `domain` at length `seq_len`."""
    return Path(data_root) / f"{domain}_{seq_len}_{split}.npy"


def _package_version() -> str:
    try:
        return "timecraft_jax " + importlib.metadata.version("timecraft-jax")
    except importlib.metadata.PackageNotFoundError:
        return "timecraft_jax (not installed)"


def read_manifest(data_root: str | Path) -> dict[str, Any]:
    """Return the manifest of `data_root`, or an empty one if it does not exist."""
    path = Path(data_root) / MANIFEST_NAME
    if not path.is_file():
        return {"format": MANIFEST_FORMAT, "datasets": {}}
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise DataError(f"{path} is not valid JSON ({error}); delete it and prepare the data again") from None
    if manifest.get("format") != MANIFEST_FORMAT or "datasets" not in manifest:
        raise DataError(f"{path} has an unknown layout; delete it and prepare the data again")
    return manifest


def _write_manifest_entry(data_root: Path, entry: dict[str, Any]) -> None:
    """Merge `entry` into the manifest, replacing any entry of the same (domain, seq_len)."""
    manifest = read_manifest(data_root)
    manifest["datasets"].setdefault(entry["domain"], {})[str(entry["seq_len"])] = entry
    temporary = data_root / (MANIFEST_NAME + ".tmp")
    temporary.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    os.replace(temporary, data_root / MANIFEST_NAME)


def _save(path: Path, windows: np.ndarray) -> None:
    temporary = path.with_name(path.name + ".tmp.npy")
    np.save(temporary, windows.astype(np.float32))
    os.replace(temporary, path)


def _validate_options(seq_len: int, nan_policy: str, max_gap: int) -> None:
    if not isinstance(seq_len, (int, np.integer)) or seq_len < 1:
        raise DataError(f"seq_len must be a positive integer, got {seq_len!r}")
    if nan_policy not in NAN_POLICIES:
        raise DataError(f"unknown nan_policy {nan_policy!r}; expected one of {NAN_POLICIES}")
    if max_gap < 0:
        raise DataError(f"max_gap must be >= 0, got {max_gap}")


def _write_split_domain(
    name: str,
    series: list[np.ndarray],
    seq_len: int,
    stride: int,
    nan_policy: str,
    max_gap: int,
    data_root: Path,
    entry: dict[str, Any],
) -> dict[str, Any]:
    split = split_windows(series, seq_len, stride, nan_policy, max_gap, name=name)
    files = {}
    for part, windows in (("train", split.train), ("val", split.val)):
        path = prepared_path(data_root, name, seq_len, part)
        _save(path, windows)
        files[part] = path.name
    entry.update(
        files=files,
        windows={"train": len(split.train), "val": len(split.val)},
        windows_dropped_nan=split.windows_dropped_nan,
        series_too_short=split.series_too_short,
        num_channels=int(split.train.shape[2]),
    )
    return entry


def _write_unseen_domain(
    spec_name: str,
    series: list[np.ndarray],
    seq_len: int,
    stride: int,
    first_value_scaling: bool,
    nan_policy: str,
    max_gap: int,
    data_root: Path,
    entry: dict[str, Any],
) -> dict[str, Any]:
    windows, dropped = all_windows(series, seq_len, stride, nan_policy, max_gap, name=spec_name)
    if first_value_scaling:
        windows = windows[:, :, :1]  # The reference keeps only channel 0 (stock: Open).
        first = windows[:, :1, :]
        if (first == 0).any():
            raise DataError(f"{spec_name}: a window starts at 0, so it cannot be divided by its first value")
        windows = windows / first
    num_channels = windows.shape[2]
    windows = to_univariate(windows)
    path = prepared_path(data_root, spec_name, seq_len, "all")
    _save(path, windows)
    entry.update(
        files={"all": path.name},
        windows={"all": len(windows)},
        windows_dropped_nan=dropped,
        series_too_short=sum(s.shape[0] < seq_len for s in series),
        num_channels=num_channels,
        univariate=True,
        first_value_scaling=first_value_scaling,
    )
    return entry


def _existing_entry(data_root: Path, name: str, seq_len: int, splits: Sequence[str]) -> dict[str, Any] | None:
    entry = read_manifest(data_root)["datasets"].get(name, {}).get(str(seq_len))
    if entry is None or not all(prepared_path(data_root, name, seq_len, s).is_file() for s in splits):
        return None
    return entry


def prepare_domains(
    domains: Sequence[str] | None,
    seq_len: int,
    data_root: str | Path,
    *,
    nan_policy: str = "drop",
    max_gap: int = 0,
    overwrite: bool = False,
) -> dict[str, dict[str, Any]]:
    """Window bundled domains and write their `.npy` files and manifest entries into `data_root`.

    Training domains are cut into non-overlapping windows and split per series (last 10 % of each
    series' windows, at least one, go to validation). Unseen domains write all windows,
    univariate: stock uses stride-1 windows of its Open price divided by each window's first
    value, web uses non-overlapping windows of every series.

    Args:
      domains: bundled domain names; None prepares every bundled domain.
      seq_len: window length L.
      data_root: output folder, created if needed.
      nan_policy: 'drop' or 'interpolate' (see `split_windows`). A domain whose spec sets
        `fill_gaps` (nn5, air) is interpolated with max_gap >= fill_gaps under either policy; the
        manifest records the policy applied.
      max_gap: maximum NaN gap, in steps, that 'interpolate' fills.
      overwrite: rewrite files that already exist; otherwise existing (domain, L) files are kept.

    Returns:
      The manifest entry of each domain.
    """
    _validate_options(seq_len, nan_policy, max_gap)
    names = list_domains() if domains is None else list(domains)
    specs = [get_domain(name) for name in names]
    data_root = Path(data_root)
    data_root.mkdir(parents=True, exist_ok=True)

    entries = {}
    for spec in specs:
        splits = ("train", "val") if spec.seen else ("all",)
        existing = None if overwrite else _existing_entry(data_root, spec.name, seq_len, splits)
        if existing is not None:
            logger.info("%s: %s_%d files exist, kept (pass overwrite=True to rebuild)", spec.name, spec.name, seq_len)
            entries[spec.name] = existing
            continue

        collection = load_domain(spec.name)
        stride = spec.stride or seq_len
        domain_policy, domain_gap = nan_policy, max_gap
        if spec.fill_gaps > max_gap:
            domain_policy, domain_gap = "interpolate", spec.fill_gaps
        entry = {
            "domain": spec.name,
            "seq_len": seq_len,
            "split": spec.split,
            "source_files": [spec.file],
            "licence": spec.licence,
            "description": spec.description,
            "frequency": spec.frequency,
            "num_series": collection.num_series if not spec.stack else len(collection.channel_names),
            "stride": stride,
            "nan_policy": domain_policy,
            "max_gap": domain_gap,
            "created_by": _package_version(),
            "created_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }
        if spec.seen:
            entry = _write_split_domain(
                spec.name, collection.series, seq_len, stride, domain_policy, domain_gap, data_root, entry
            )
        else:
            entry = _write_unseen_domain(
                spec.name, collection.series, seq_len, stride, spec.first_value_scaling,
                domain_policy, domain_gap, data_root, entry,
            )
        _write_manifest_entry(data_root, entry)
        logger.info("%s: wrote %s windows of length %d to %s", spec.name, entry["windows"], seq_len, data_root)
        entries[spec.name] = entry
    return entries


def prepare_user_file(
    input_path: str | Path,
    name: str,
    seq_len: int,
    data_root: str | Path,
    *,
    columns: Sequence[str | int] | None = None,
    stride: int | None = None,
    date_column: str | int | None = None,
    sep: str | None = None,
    nan_policy: str = "drop",
    max_gap: int = 0,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Window a user's own file into `{name}_{L}_{train|val}.npy` plus a manifest entry.

    Args:
      input_path: any file `read_series` reads (.csv/.txt/.tsv, .tsf, .npy, .json/.jsonl, optionally .gz).
      name: dataset name used in the file names; letters, digits, '_', '.', '-', and no bundled domain name.
      columns: channels to keep, by name or position; None keeps all.
      stride: step between window starts; None means `seq_len`.
      date_column: delimited files only: a date/time column to remove.
      sep: delimited files only: the column separator; None detects it.
      Other arguments as in `prepare_domains`.

    Returns:
      The manifest entry.
    """
    _validate_options(seq_len, nan_policy, max_gap)
    if not _NAME_PATTERN.match(name):
        raise DataError(f"invalid dataset name {name!r}; use letters, digits, '_', '.' and '-'")
    if name in DOMAINS:
        raise DataError(f"dataset name {name!r} is a bundled domain; choose another name for your own data")
    data_root = Path(data_root)
    if not overwrite and any(prepared_path(data_root, name, seq_len, s).exists() for s in ("train", "val")):
        raise DataError(
            f"{prepared_path(data_root, name, seq_len, 'train')} already exists; pass --overwrite to replace it"
        )

    reader_kwargs: dict[str, Any] = {}
    fmt = file_format(input_path)
    if fmt == "delimited":
        reader_kwargs.update(sep=sep, date_column=date_column)
    elif sep is not None or date_column is not None:
        raise DataError(f"sep and date_column apply to delimited text files only, not to {input_path}")
    if columns is not None:
        if fmt == "tsf":
            raise DataError(".tsf series are univariate; select series instead of columns")
        reader_kwargs["columns"] = columns
    collection = read_series(input_path, **reader_kwargs)

    data_root.mkdir(parents=True, exist_ok=True)
    stride = stride or seq_len
    entry = {
        "domain": name,
        "seq_len": seq_len,
        "split": "user",
        "source_files": [str(Path(input_path).resolve())],
        "licence": "user-supplied",
        "description": f"{collection.num_series} series, channels {collection.channel_names[:10]}",
        "frequency": collection.frequency,
        "num_series": collection.num_series,
        "stride": stride,
        "nan_policy": nan_policy,
        "max_gap": max_gap,
        "created_by": _package_version(),
        "created_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    entry = _write_split_domain(name, collection.series, seq_len, stride, nan_policy, max_gap, data_root, entry)
    _write_manifest_entry(data_root, entry)
    logger.info("%s: wrote %s windows of length %d to %s", name, entry["windows"], seq_len, data_root)
    return entry


def _missing_file_error(path: Path, data_root: Path, domain: str, seq_len: int) -> DataError:
    if domain in DOMAINS:
        command = f"python -m data_prep.prepare --data_root {data_root} --seq_len {seq_len} --domains {domain}"
    else:
        command = (
            f"python -m data_prep.prepare --data_root {data_root} --seq_len {seq_len} --input YOUR_FILE --name {domain}"
            f" (bundled domains: {', '.join(DOMAINS)})"
        )
    return DataError(f"prepared file {path} not found; create it with: {command}")


def _load_checked(path: Path, seq_len: int) -> np.ndarray:
    windows = np.load(path, allow_pickle=False)
    if windows.ndim != 3 or windows.shape[1] != seq_len:
        raise DataError(f"{path} contains an array of shape {windows.shape}; expected (N, {seq_len}, C)")
    if not np.isfinite(windows).all():
        raise DataError(f"{path} contains NaN or infinite values; prepare it again with nan_policy 'drop'")
    return windows


def load_prepared(data_root: str | Path, domains: Sequence[str], seq_len: int) -> dict[str, dict[str, np.ndarray]]:
    """Load prepared windows: `{domain: {'train': (N, L, C), 'val': (N, L, C)}}`.

    An unseen domain prepared without a split (stock, web) returns `{'all': (N, L, 1)}` instead.

    Raises:
      DataError: naming the missing file and the command that creates it.
    """
    data_root = Path(data_root)
    loaded = {}
    for domain in domains:
        train_path = prepared_path(data_root, domain, seq_len, "train")
        all_path = prepared_path(data_root, domain, seq_len, "all")
        if train_path.is_file():
            val_path = prepared_path(data_root, domain, seq_len, "val")
            if not val_path.is_file():
                raise _missing_file_error(val_path, data_root, domain, seq_len)
            loaded[domain] = {"train": _load_checked(train_path, seq_len), "val": _load_checked(val_path, seq_len)}
        elif all_path.is_file():
            loaded[domain] = {"all": _load_checked(all_path, seq_len)}
        else:
            expected = all_path if domain in DOMAINS and not DOMAINS[domain].seen else train_path
            raise _missing_file_error(expected, data_root, domain, seq_len)
    return loaded

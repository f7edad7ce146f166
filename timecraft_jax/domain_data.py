"""Prepared multi-domain windows, fitted normalizers and validation batches for a run."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import ml_collections
import numpy as np

from timecraft_jax.config_lib import domain_names
from timecraft_jax.data import DataError
from timecraft_jax.data.batching import to_univariate
from timecraft_jax.data.normalizers import Normalizer, fit_normalizer
from timecraft_jax.data.prepare import load_prepared, prepare_domains
from timecraft_jax.data.registry import get_domain


@dataclasses.dataclass
class DomainData:
    """Training and validation windows of every domain, raw and normalized."""

    domains: list[str]
    raw: dict[str, dict[str, np.ndarray]]  # domain -> {'train', 'val'} -> [N, T, C] raw units.
    normalized: dict[str, dict[str, np.ndarray]]  # Same layout after the domain's normalizer.
    normalizers: dict[str, Normalizer]

    @property
    def channels(self) -> int:
        return next(iter(self.raw.values()))["train"].shape[-1]


def _missing_files(data_root: Path, domains: list[str], seq_len: int) -> list[str]:
    return [domain for domain in domains
            if not (data_root / f"{domain}_{seq_len}_train.npy").is_file()
            or not (data_root / f"{domain}_{seq_len}_val.npy").is_file()]


def load_domain_data(data_config: ml_collections.ConfigDict, seed: int) -> DomainData:
    """Load (and if allowed, prepare) every domain of `data_config` and fit its normalizer.

    Raises DataError for unknown domains, missing files, NaN values and empty
    training splits, naming the domain and the fix.
    """
    domains = domain_names(data_config.domains)
    if not domains:
        raise DataError("config.data.domains is empty; list at least one domain, e.g. --config.data.domains=electricity")
    if len(set(domains)) != len(domains):
        raise DataError(f"config.data.domains lists a domain twice: {domains}")
    data_root = Path(data_config.data_root)
    seq_len = int(data_config.seq_len)
    missing = _missing_files(data_root, domains, seq_len)
    if missing and data_config.prepare_if_missing:
        bundled = []
        for domain in missing:
            try:
                get_domain(domain)
                bundled.append(domain)
            except DataError:
                pass
        if bundled:
            logging.info("preparing bundled domains %s at L=%d into %s", bundled, seq_len, data_root)
            prepare_domains(bundled, seq_len, data_root)
    splits = load_prepared(data_root, domains, seq_len)

    rng = np.random.default_rng(seed)
    raw, normalized, normalizers = {}, {}, {}
    for domain in domains:
        train, val = splits[domain]["train"], splits[domain]["val"]
        if data_config.univariate:
            train, val = to_univariate(train), to_univariate(val)
        limit = int(data_config.max_windows_per_domain)
        if 0 < limit < len(train):
            keep = np.sort(rng.choice(len(train), size=limit, replace=False))
            train = train[keep]
        for split, windows in (("train", train), ("val", val)):
            if windows.ndim != 3 or windows.shape[1] != seq_len:
                raise DataError(f"{domain} {split} windows have shape {windows.shape}; expected (N, {seq_len}, C). "
                                f"Re-run `python -m data_prep.prepare --data_root {data_root} --seq_len {seq_len} "
                                f"--domains {domain}`")
            bad = int(np.count_nonzero(~np.isfinite(windows)))
            if bad:
                raise DataError(f"{domain} {split} windows contain {bad} NaN or infinite values; "
                                f"prepare the domain with --nan_policy drop or interpolate")
        if len(train) == 0:
            raise DataError(f"domain {domain} has no training windows at L={seq_len}; it needs series of at "
                            f"least {seq_len} finite steps")
        normalizer = fit_normalizer(data_config.normalizer, train, per_channel=data_config.per_channel_normalizer)
        raw[domain] = {"train": train.astype(np.float32), "val": val.astype(np.float32)}
        normalized[domain] = {
            "train": normalizer.transform(train).astype(np.float32),
            "val": normalizer.transform(val).astype(np.float32) if len(val) else val.astype(np.float32),
        }
        normalizers[domain] = normalizer
        logging.info("domain %-12s train %6d windows, val %5d windows, shape (%d, %d)",
                     domain, len(train), len(val), train.shape[1], train.shape[2])
    channels = {raw[d]["train"].shape[-1] for d in domains}
    if len(channels) > 1:
        raise DataError(f"domains have different channel counts {sorted(channels)}; set --config.data.univariate=True "
                        f"to train one univariate model on all of them")
    return DomainData(domains=domains, raw=raw, normalized=normalized, normalizers=normalizers)


def validation_batches(data: DomainData, batch_size: int, num_batches: int, seed: int) -> list[np.ndarray]:
    """Return a fixed set of normalized validation batches drawn from all domains.

    Windows are shuffled once under `seed` and repeated when there are fewer
    than `batch_size * num_batches`, so every batch has the compiled shape.
    """
    windows = [data.normalized[d]["val"] for d in data.domains if len(data.normalized[d]["val"])]
    if not windows:
        return []
    pool = np.concatenate(windows)
    pool = pool[np.random.default_rng(seed).permutation(len(pool))]
    total = batch_size * num_batches
    index = np.arange(total) % len(pool)
    return [pool[index[i * batch_size:(i + 1) * batch_size]] for i in range(num_batches)]

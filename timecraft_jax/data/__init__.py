"""Data layer: readers, windowing, normalizers, bundled domains, prepared files and batching."""

from timecraft_jax.data.batching import MultiDomainBatcher, iterate_eval_batches, to_univariate
from timecraft_jax.data.normalizers import NORMALIZER_KINDS, Normalizer, fit_normalizer
from timecraft_jax.data.prepare import load_prepared, prepare_domains, prepare_user_file
from timecraft_jax.data.readers import DataError, SeriesCollection, read_series
from timecraft_jax.data.registry import get_domain, list_domains, load_domain
from timecraft_jax.data.windows import split_windows

__all__ = [
    "DataError",
    "MultiDomainBatcher",
    "NORMALIZER_KINDS",
    "Normalizer",
    "SeriesCollection",
    "fit_normalizer",
    "get_domain",
    "iterate_eval_batches",
    "list_domains",
    "load_domain",
    "load_prepared",
    "prepare_domains",
    "prepare_user_file",
    "read_series",
    "split_windows",
    "to_univariate",
]

"""The TimeDP benchmark: in-domain and k-shot unseen-domain metrics with two baselines.

  python -m timecraft_jax.benchmark --config configs/timedp_cpu.py --workdir runs/timedp_cpu

For every seed s in `config.benchmark.seeds` (or `--seeds`) the run:

1. trains the prompted model (`seed{s}/model`) and, when `config.benchmark.unconditional`, the
   same network with `conditioner='none'` (`seed{s}/uncond`), or reuses finished checkpoints;
2. in-domain: per training domain, draws `num_prompts` windows of its normalized training split
   and generates `rounds` rounds of `num_prompts * repeats` samples with ancestral DDPM, sample j
   of a round following prompt j // repeats. The unconditional model generates as many samples,
   inverted with each domain's own normalizer. Both are scored against the domain's validation
   windows (raw units, univariate, z-scored with the validation statistics);
3. unseen domains: the k-shot protocol of `split_unseen` (disjoint test and prompt windows), a
   normalizer fitted on the k prompts only, `num_test` samples round-robin over the prompts;
4. the floor baseline: real windows scored like generated ones (in-domain: training windows
   against validation windows; unseen: windows outside the test set against the test set);
5. writes per-seed JSON, then mean and std over seeds as Markdown, CSV and one bar chart per
   metric in `--results_dir` (default WORKDIR/results).

Every finished (seed, model, domain, round) unit is saved at once, so a killed run restarts at
the next unfinished one. Sampler keys depend only on (seed, domain index, round), which makes a
resumed run give the same numbers as an uninterrupted one.

Layout of the workdir:

  benchmark_config.json                        settings that later runs of the workdir must match
  timings.json                                 wall seconds per stage, summed over runs
  seed{s}/model, seed{s}/uncond                training workdirs of the two models
  seed{s}/samples/{model}/{domain}/round{r}.npy  in-domain samples, raw units, (N, L, 1)
  seed{s}/samples/{model}/{domain}_k{k}.npy    unseen-domain samples, raw units, (N, L, 1)
  seed{s}/metrics/{model}_{row}.json           metrics of one model on one row (domain or domain_k)
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import datetime
import json
import logging
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator, Sequence

import jax
import ml_collections
import numpy as np
from matplotlib.figure import Figure

from timecraft_jax import sampling, xla_options
from timecraft_jax.checkpointing import CheckpointError, config_to_json_dict
from timecraft_jax.config_lib import domain_names
from timecraft_jax.data import DataError
from timecraft_jax.data.batching import to_univariate
from timecraft_jax.data.normalizers import fit_normalizer
from timecraft_jax.data.prepare import load_prepared, prepare_domains, prepared_path
from timecraft_jax.data.registry import DOMAINS
from timecraft_jax.generation import (SamplingBundle, check_finite_samples, encode_prompts, load_bundle,
                                      make_sample_fn, round_robin)
from timecraft_jax.metrics import compute_metrics
from timecraft_jax.training import train

STAGES = ("all", "train", "indomain", "unseen", "report")
MODELS = ("timedp", "uncond", "floor")
MODEL_LABELS = {"timedp": "TimeDP", "uncond": "unconditional", "floor": "floor"}
METRICS = ("mdd", "flat_kl", "mmd_rbf")
METRIC_LABELS = {"mdd": "MDD", "flat_kl": "flat KL", "mmd_rbf": "MMD"}
# Training workdir of each trained model, under seed{s}/.
MODEL_DIRS = {"timedp": "model", "uncond": "uncond"}

# Published TimeCraft in-domain values, (mean, std) of MMD and of K-L, from the TimeCraft
# repository's figure figures/timedp_indomain.png (microsoft/TimeCraft), keyed by our domain names.
PUBLISHED_TIMECRAFT = {
    "electricity": ((0.001, 0.001), (0.012, 0.016)),
    "solar": ((0.041, 0.011), (0.016, 0.005)),
    "wind": ((0.025, 0.017), (0.152, 0.034)),
    "traffic": ((0.083, 0.034), (0.009, 0.003)),
    "taxi": ((0.095, 0.023), (0.011, 0.004)),
    "pedestrian": ((0.044, 0.020), (0.014, 0.010)),
    "air": ((0.011, 0.003), (0.027, 0.016)),
    "temperature": ((0.219, 0.022), (0.171, 0.073)),
    "rain": ((0.057, 0.039), (0.013, 0.012)),
    "nn5": ((0.164, 0.010), (0.054, 0.014)),
    "fred_md": ((0.002, 0.001), (0.203, 0.035)),
    "exchange": ((0.151, 0.024), (1.866, 0.132)),
}

# Tags mixed into the numpy seeds so that prompt, floor and split draws use separate streams.
_PROMPT_STREAM = 1
_FLOOR_STREAM = 2
_SPLIT_STREAM = 3
# Config entries that may change between runs of one workdir without changing any result.
_FREE_KEYS = ("benchmark.seeds", "data.data_root")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class BenchmarkConfigError(ValueError):
    """The benchmark settings are invalid or differ from those the workdir was started with."""


class _StopRequested(Exception):
    """Raised internally when `stop_after_units` new units have been generated."""


# ----------------------------------------------------------------------------
# Settings and keys.


def validate_benchmark_config(config: ml_collections.ConfigDict) -> None:
    """Check `config.benchmark` before anything runs; raise BenchmarkConfigError naming the fix."""
    bench = config.benchmark
    for name in ("num_prompts", "repeats", "rounds", "num_test"):
        value = bench[name]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise BenchmarkConfigError(f"config.benchmark.{name}={value!r} must be a positive int")

    seeds = list(bench.seeds)
    if not seeds or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds):
        raise BenchmarkConfigError(
            f"config.benchmark.seeds={bench.seeds!r} must be non-negative ints, e.g. --seeds 0,1,2")
    if len(set(seeds)) != len(seeds):
        raise BenchmarkConfigError(f"config.benchmark.seeds={bench.seeds!r} lists a seed twice")

    k_shots = list(bench.k_shots)
    valid_k = all(isinstance(k, int) and not isinstance(k, bool) and k >= 1 for k in k_shots)
    if domain_names(bench.unseen_domains) and (not k_shots or not valid_k):
        raise BenchmarkConfigError(
            f"config.benchmark.k_shots={bench.k_shots!r} must be positive ints, e.g. (3, 10, 100)")
    if len(set(k_shots)) != len(k_shots):
        raise BenchmarkConfigError(f"config.benchmark.k_shots={bench.k_shots!r} lists a k twice")

    if bench.checkpoint not in ("best", "latest"):
        raise BenchmarkConfigError(f"config.benchmark.checkpoint={bench.checkpoint!r}; use 'best' or 'latest'")
    if not 0.0 < float(bench.test_filter_percentile) <= 100.0:
        raise BenchmarkConfigError(
            f"config.benchmark.test_filter_percentile={bench.test_filter_percentile} must lie in (0, 100]")

    overlap = sorted(set(domain_names(bench.unseen_domains)) & set(domain_names(config.data.domains)))
    if overlap:
        raise BenchmarkConfigError(f"unseen domains {overlap} are also training domains (config.data.domains); "
                                   f"remove them from one of the two lists")
    unknown = sorted(set(domain_names(bench.test_filter_domains)) - set(domain_names(bench.unseen_domains)))
    if unknown:
        raise BenchmarkConfigError(f"config.benchmark.test_filter_domains lists {unknown}, which are not in "
                                   f"config.benchmark.unseen_domains={domain_names(bench.unseen_domains)}")
    if not config.data.univariate or config.model.in_channels != 1:
        raise BenchmarkConfigError(
            f"the benchmark scores univariate windows, as the reference does, but config.data.univariate="
            f"{config.data.univariate} and config.model.in_channels={config.model.in_channels}; set "
            f"--config.data.univariate=True --config.model.in_channels=1")
    if config.sampling.batch_size < 1:
        raise BenchmarkConfigError(f"config.sampling.batch_size={config.sampling.batch_size} must be >= 1")


def unit_key(seed: int, domain_index: int, round_index: int) -> jax.Array:
    """Return the sampler key of one unit: PRNGKey(seed) folded with the domain index, then the round.

    In-domain units use the domain's position in `config.data.domains` and the round number.
    Unseen units use len(config.data.domains) + the position in `config.benchmark.unseen_domains`
    and k as the round number. Both models use the same keys.
    """
    key = jax.random.PRNGKey(seed)
    return jax.random.fold_in(jax.random.fold_in(key, domain_index), round_index)


def _flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _comparable_config(config: ml_collections.ConfigDict) -> dict:
    flat = _flatten(config_to_json_dict(config))
    return {key: value for key, value in flat.items() if key not in _FREE_KEYS}


def check_workdir_config(config: ml_collections.ConfigDict, workdir: Path) -> None:
    """Record the settings of a new workdir, or check that they match the recorded ones."""
    path = workdir / "benchmark_config.json"
    current = _comparable_config(config)
    if path.is_file():
        saved = json.loads(path.read_text(encoding="utf-8"))
        differing = sorted(key for key in set(saved) | set(current) if saved.get(key) != current.get(key))
        if differing:
            raise BenchmarkConfigError(
                f"{workdir} contains a benchmark run with different settings for {differing}; use a new --workdir "
                f"or the recorded settings in {path}")
        return
    _write_json(path, current)


# ----------------------------------------------------------------------------
# Files.


def _write_json(path: Path, value) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(value, indent=2) + "\n", encoding="utf-8")
    os.replace(temporary, path)


def _save_array(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp.npy")
    np.save(temporary, array)
    os.replace(temporary, path)


def indomain_sample_path(seed_dir: Path, model: str, domain: str, round_index: int) -> Path:
    return seed_dir / "samples" / model / domain / f"round{round_index}.npy"


def unseen_sample_path(seed_dir: Path, model: str, domain: str, k: int) -> Path:
    return seed_dir / "samples" / model / f"{domain}_k{k}.npy"


def metrics_path(seed_dir: Path, model: str, row: str) -> Path:
    return seed_dir / "metrics" / f"{model}_{row}.json"


def _load_unit(path: Path, expected_shape: tuple[int, ...]) -> np.ndarray | None:
    """Return a saved unit, or None when it does not exist yet."""
    if not path.is_file():
        return None
    samples = np.load(path)
    if samples.shape != expected_shape:
        raise BenchmarkConfigError(f"{path} contains samples of shape {samples.shape}, expected {expected_shape}; "
                                   f"delete it or use a new --workdir")
    return samples


# ----------------------------------------------------------------------------
# Data.


def _ensure_prepared(data_config: ml_collections.ConfigDict, domain: str, split: str) -> Path:
    data_root, seq_len = Path(data_config.data_root), int(data_config.seq_len)
    path = prepared_path(data_root, domain, seq_len, split)
    if not path.is_file() and data_config.prepare_if_missing and domain in DOMAINS:
        logging.info("preparing bundled domain %s at L=%d into %s", domain, seq_len, data_root)
        prepare_domains([domain], seq_len, data_root)
    return data_root


def load_indomain_windows(data_config: ml_collections.ConfigDict, domain: str) -> tuple[np.ndarray, np.ndarray]:
    """Return the raw (train, val) windows of a training domain, univariate when `data_config.univariate` is set."""
    data_root = _ensure_prepared(data_config, domain, "train")
    splits = load_prepared(data_root, [domain], int(data_config.seq_len))[domain]
    if "train" not in splits:
        raise DataError(f"domain {domain!r} has no train/val split in {data_root}; it is prepared as an unseen domain")
    train_raw, val_raw = splits["train"], splits["val"]
    if data_config.univariate:
        train_raw, val_raw = to_univariate(train_raw), to_univariate(val_raw)
    if len(val_raw) == 0:
        raise DataError(f"domain {domain!r} has no validation windows at L={data_config.seq_len} to score against")
    return train_raw, val_raw


def load_unseen_windows(data_config: ml_collections.ConfigDict, domain: str) -> np.ndarray:
    """Return all (N, L, 1) windows of an unseen domain (stock: divided by each window's first value)."""
    data_root = _ensure_prepared(data_config, domain, "all")
    splits = load_prepared(data_root, [domain], int(data_config.seq_len))[domain]
    windows = splits["all"] if "all" in splits else np.concatenate([splits["train"], splits["val"]])
    return to_univariate(windows)


@dataclasses.dataclass(frozen=True)
class UnseenSplit:
    """Window indices of the k-shot protocol for one unseen domain and seed."""

    test: np.ndarray  # [num_test] test windows.
    prompts: dict[int, np.ndarray]  # k -> [k] prompt windows; nested, disjoint from the test windows.
    floor: np.ndarray  # Real windows outside the test set, scored as the floor baseline.
    num_windows: int
    num_test_requested: int


def split_unseen(num_windows: int, k_shots: Sequence[int], num_test: int, seed: int,
                 domain_index: int) -> UnseenSplit:
    """Draw disjoint test and prompt windows without replacement from one permutation.

    The first `num_test` windows of a permutation drawn under (seed, domain_index) are the test
    set, and the next k are the k-shot prompts, so the prompt sets are nested. When fewer than
    num_test + max(k) windows exist, the test set shrinks to num_windows - max(k) windows. The floor
    windows are up to `num_test` windows that follow the test set in the permutation; they include
    the prompts.

    Raises:
      ValueError: when there are fewer than max(k) + 1 windows.
    """
    k_max = max(k_shots)
    if k_max + 1 > num_windows:
        raise ValueError(f"the k-shot protocol with k={k_max} needs at least {k_max + 1} windows (k prompts and one "
                         f"test window), but the domain has {num_windows}; lower config.benchmark.k_shots")
    num_effective = min(num_test, num_windows - k_max)
    order = np.random.default_rng([seed, domain_index, _SPLIT_STREAM]).permutation(num_windows)
    rest = order[num_effective:]
    return UnseenSplit(
        test=order[:num_effective],
        prompts={int(k): rest[:k] for k in k_shots},
        floor=rest[:num_effective],
        num_windows=num_windows,
        num_test_requested=num_test,
    )


def filter_test_windows(test: np.ndarray, percentile: float) -> tuple[np.ndarray, float]:
    """Drop whole test windows whose maximum exceeds `percentile` of all test values.

    The PyTorch reference keeps the values below the 99th percentile of the web test set, which
    flattens the array. Dropping whole windows keeps the (N, L, 1) layout the metrics need.
    Returns the kept windows and the threshold.
    """
    threshold = float(np.percentile(test, percentile))
    keep = test.max(axis=(1, 2)) <= threshold
    return test[keep], threshold


def repeat_interleave(cond: sampling.Conditioning, repeats: int) -> sampling.Conditioning:
    """Return the conditions with every row repeated `repeats` times, so output row j is input row j // repeats."""
    return jax.tree_util.tree_map(lambda leaf: np.repeat(np.asarray(leaf), repeats, axis=0), cond)


# ----------------------------------------------------------------------------
# Progress and timing.


class _Progress:
    """Counts the sampling units of one stage and logs each finished one with an ETA."""

    def __init__(self, stage: str, total: int, todo: int, stop_after_units: int | None, counter: list[int]):
        self.stage, self.total, self.todo = stage, total, todo
        self.generated, self.seconds = 0, 0.0
        self.stop_after_units, self.counter = stop_after_units, counter
        logging.info("%s: %d sampling units, %d on disk, %d to generate", stage, total, total - todo, todo)

    def finished(self, label: str, seconds: float) -> None:
        self.generated += 1
        self.seconds += seconds
        left = self.todo - self.generated
        eta = self.seconds / self.generated * left
        logging.info("%s: %s done in %.1f s; %d units left, ETA %.1f min", self.stage, label, seconds, left, eta / 60)
        self.counter[0] += 1
        if self.stop_after_units is not None and self.counter[0] >= self.stop_after_units:
            raise _StopRequested


class StageTimer:
    """Wall seconds per stage, summed over runs, in workdir/timings.json."""

    def __init__(self, path: Path):
        self.path = path

    def read(self) -> dict[str, float]:
        return json.loads(self.path.read_text(encoding="utf-8")) if self.path.is_file() else {}

    @contextlib.contextmanager
    def time(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            totals = self.read()
            totals[stage] = totals.get(stage, 0.0) + time.perf_counter() - start
            _write_json(self.path, totals)


# ----------------------------------------------------------------------------
# One seed.


@dataclasses.dataclass
class _SeedRun:
    """Models, data and sampler of one seed, loaded on first use."""

    config: ml_collections.ConfigDict
    seed: int
    seed_dir: Path
    models: tuple[str, ...]
    progress_counter: list[int]
    stop_after_units: int | None
    bundles: dict = dataclasses.field(default_factory=dict)
    sample_fns: dict = dataclasses.field(default_factory=dict)

    def model_config(self, model: str) -> ml_collections.ConfigDict:
        run_config = self.config.copy_and_resolve_references()
        run_config.seed = self.seed
        if model == "uncond":
            run_config.model.conditioner = "none"
        return run_config

    def train_models(self) -> None:
        for model in self.models:
            logging.info("seed %d: training (or reusing) the %s model in %s", self.seed, MODEL_LABELS[model],
                         self.seed_dir / MODEL_DIRS[model])
            train(self.model_config(model), self.seed_dir / MODEL_DIRS[model])

    def bundle(self, model: str) -> SamplingBundle:
        if model not in self.bundles:
            workdir = self.seed_dir / MODEL_DIRS[model]
            bundle = load_bundle(workdir, self.config.benchmark.checkpoint, use_ema=self.config.sampling.use_ema)
            expected = self.model_config(model)
            if bundle.config.seed != self.seed or bundle.config.model.conditioner != expected.model.conditioner:
                raise CheckpointError(
                    f"{workdir} contains a model with seed {bundle.config.seed} and conditioner "
                    f"{bundle.config.model.conditioner!r}, expected seed {self.seed} and "
                    f"{expected.model.conditioner!r}; use a new --workdir")
            self.bundles[model] = bundle
            self.sample_fns[model] = make_sample_fn(bundle, self.config.sampling)
        return self.bundles[model]

    def generate(self, model: str, cond, num_samples: int, key: jax.Array) -> np.ndarray:
        """Generate normalized (num_samples, L, C) samples with the unit's key."""
        bundle = self.bundle(model)
        return sampling.generate(self.sample_fns[model], bundle.variables, cond, num_samples,
                                 int(self.config.sampling.batch_size), key, show_progress=sys.stderr.isatty())

    def progress(self, stage: str, paths: list[Path]) -> _Progress:
        todo = sum(not path.is_file() for path in paths)
        return _Progress(f"seed {self.seed} {stage}", len(paths), todo, self.stop_after_units, self.progress_counter)

    def write_metrics(self, model: str, row: str, values: dict) -> None:
        record = {"model": model, "row": row, "seed": self.seed, **values}
        _write_json(metrics_path(self.seed_dir, model, row), record)


def _metric_record(metrics: dict, **details) -> dict:
    return {**{name: metrics[name] for name in METRICS}, "n_real": metrics["n_real"], "n_gen": metrics["n_gen"],
            "scale": metrics["scale"], **details}


def run_indomain(run: _SeedRun) -> None:
    """Generate and score the in-domain samples of every model and domain of one seed."""
    config, bench = run.config, run.config.benchmark
    per_round = bench.num_prompts * bench.repeats
    domains = domain_names(config.data.domains)
    paths = [indomain_sample_path(run.seed_dir, model, domain, r)
             for model in run.models for domain in domains for r in range(bench.rounds)]
    progress = run.progress("in-domain", paths)
    for domain_index, domain in enumerate(domains):
        train_raw, val_raw = load_indomain_windows(config.data, domain)
        for model in run.models:
            samples = _indomain_rounds(run, progress, model, domain, domain_index, train_raw)
            if not metrics_path(run.seed_dir, model, domain).is_file():
                run.write_metrics(model, domain, _metric_record(
                    compute_metrics(val_raw, samples), domain=domain, checkpoint_step=run.bundle(model).step,
                    num_prompts=bench.num_prompts, repeats=bench.repeats, rounds=bench.rounds))
        if not metrics_path(run.seed_dir, "floor", domain).is_file():
            rng = np.random.default_rng([run.seed, domain_index, _FLOOR_STREAM])
            count = min(bench.rounds * per_round, len(train_raw))
            floor = train_raw[np.sort(rng.choice(len(train_raw), size=count, replace=False))]
            run.write_metrics("floor", domain, _metric_record(
                compute_metrics(val_raw, floor), domain=domain, source="training windows"))


def _indomain_rounds(run: _SeedRun, progress: _Progress, model: str, domain: str, domain_index: int,
                     train_raw: np.ndarray) -> np.ndarray:
    """Return all rounds of one (model, domain), generating those not on disk."""
    bench = run.config.benchmark
    seq_len, per_round = int(run.config.data.seq_len), bench.num_prompts * bench.repeats
    paths = [indomain_sample_path(run.seed_dir, model, domain, r) for r in range(bench.rounds)]
    rounds = [_load_unit(path, (per_round, seq_len, 1)) for path in paths]
    if all(samples is not None for samples in rounds):
        return np.concatenate(rounds)

    bundle = run.bundle(model)
    if domain not in bundle.normalizers:
        raise CheckpointError(f"the {MODEL_LABELS[model]} checkpoint has no normalizer for domain {domain!r}; "
                              f"it was trained on {sorted(bundle.normalizers)}")
    normalizer = bundle.normalizers[domain]
    cond = None
    if model == "timedp":
        rng = np.random.default_rng([run.seed, domain_index, _PROMPT_STREAM])
        index = rng.choice(len(train_raw), size=bench.num_prompts, replace=bench.num_prompts > len(train_raw))
        prompts = normalizer.transform(train_raw[index]).astype(np.float32)
        cond = repeat_interleave(encode_prompts(bundle, prompts), bench.repeats)
    for round_index, path in enumerate(paths):
        if rounds[round_index] is not None:
            continue
        start = time.perf_counter()
        normalized = run.generate(model, cond, per_round, unit_key(run.seed, domain_index, round_index))
        samples = normalizer.inverse_transform(normalized).astype(np.float32)
        check_finite_samples(samples, f"seed {run.seed}, {model}, {domain}, round {round_index}")
        _save_array(path, samples)
        rounds[round_index] = samples
        progress.finished(f"{MODEL_LABELS[model]} {domain} round {round_index + 1}/{bench.rounds}",
                          time.perf_counter() - start)
    return np.concatenate(rounds)


def run_unseen(run: _SeedRun) -> None:
    """Score every model on the k-shot protocol of every unseen domain of one seed."""
    config, bench = run.config, run.config.benchmark
    k_shots = [int(k) for k in bench.k_shots]
    offset = len(domain_names(config.data.domains))
    unseen_domains = domain_names(bench.unseen_domains)
    paths = [unseen_sample_path(run.seed_dir, model, domain, k)
             for model in run.models for domain in unseen_domains for k in k_shots]
    progress = run.progress("unseen", paths)
    for position, domain in enumerate(unseen_domains):
        domain_index = offset + position
        windows = load_unseen_windows(config.data, domain)
        split = split_unseen(len(windows), k_shots, bench.num_test, run.seed, domain_index)
        test = windows[split.test]
        details = {"domain": domain, "num_windows": split.num_windows, "num_test_requested": split.num_test_requested,
                   "num_test": len(split.test)}
        if len(split.test) < split.num_test_requested:
            logging.warning("%s has %d windows, so the test set shrinks from %d to %d windows", domain,
                            split.num_windows, split.num_test_requested, len(split.test))
        if domain in domain_names(bench.test_filter_domains):
            test, threshold = filter_test_windows(test, float(bench.test_filter_percentile))
            details.update(test_filter_percentile=float(bench.test_filter_percentile),
                           test_filter_threshold=threshold, num_test_after_filter=len(test))
            logging.info("%s: the P%g filter (%.4g) keeps %d of %d test windows", domain,
                         bench.test_filter_percentile, threshold, len(test), len(split.test))
        for k in k_shots:
            row = f"{domain}_k{k}"
            prompts_raw = windows[split.prompts[k]]
            normalizer = fit_normalizer(config.data.normalizer, prompts_raw,
                                        per_channel=config.data.per_channel_normalizer)
            for model in run.models:
                path = unseen_sample_path(run.seed_dir, model, domain, k)
                samples = _load_unit(path, (len(split.test), int(config.data.seq_len), 1))
                if samples is None:
                    start = time.perf_counter()
                    cond = None
                    if model == "timedp":
                        prompts = normalizer.transform(prompts_raw).astype(np.float32)
                        cond = round_robin(encode_prompts(run.bundle(model), prompts), len(split.test))
                    normalized = run.generate(model, cond, len(split.test), unit_key(run.seed, domain_index, k))
                    samples = normalizer.inverse_transform(normalized).astype(np.float32)
                    check_finite_samples(samples, f"seed {run.seed}, {model}, {row}")
                    _save_array(path, samples)
                    progress.finished(f"{MODEL_LABELS[model]} {row}", time.perf_counter() - start)
                if not metrics_path(run.seed_dir, model, row).is_file():
                    run.write_metrics(model, row, _metric_record(
                        compute_metrics(test, samples), k=k, checkpoint_step=run.bundle(model).step, **details))
            if not metrics_path(run.seed_dir, "floor", row).is_file():
                run.write_metrics("floor", row, _metric_record(
                    compute_metrics(test, windows[split.floor]), k=k, source="windows outside the test set",
                    **details))


# ----------------------------------------------------------------------------
# Aggregation and report.


def result_rows(config: ml_collections.ConfigDict) -> list[str]:
    """Table rows in order: the training domains, then domain_k for every unseen domain and k."""
    rows = domain_names(config.data.domains)
    rows += [f"{domain}_k{k}" for domain in domain_names(config.benchmark.unseen_domains)
             for k in config.benchmark.k_shots]
    return rows


def collect_records(workdir: Path, seeds: Sequence[int]) -> list[dict]:
    """Read every per-seed metrics JSON of the given seeds."""
    records = []
    for seed in seeds:
        folder = Path(workdir) / f"seed{seed}" / "metrics"
        for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
            records.append(json.loads(path.read_text(encoding="utf-8")))
    return records


def aggregate(records: list[dict]) -> dict[tuple[str, str], dict]:
    """Mean and sample std (ddof = 1, NaN for one seed) of each metric per (row, model)."""
    grouped: dict[tuple[str, str], list[dict]] = {}
    for record in records:
        grouped.setdefault((record["row"], record["model"]), []).append(record)
    summary = {}
    for key, group in grouped.items():
        cell = {"seeds": sorted(r["seed"] for r in group), "n_gen": group[0]["n_gen"], "n_real": group[0]["n_real"]}
        for name in METRICS:
            values = np.array([r[name] for r in group], dtype=np.float64)
            cell[f"{name}_mean"] = float(values.mean())
            cell[f"{name}_std"] = float(values.std(ddof=1)) if len(values) > 1 else math.nan
        summary[key] = cell
    return summary


def _format_cell(cell: dict | None, metric: str) -> str:
    if cell is None:
        return "n/a"
    mean, std = cell[f"{metric}_mean"], cell[f"{metric}_std"]
    return f"{mean:.4f}" if math.isnan(std) else f"{mean:.4f} ± {std:.4f}"


def git_commit(repo_dir: Path | None = None) -> str:
    """Return the commit of the source checkout (with a note when it has local changes), or 'unknown'."""
    repo_dir = repo_dir or Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo_dir, capture_output=True, text=True,
                                check=True, timeout=30).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain"], cwd=repo_dir, capture_output=True, text=True,
                                check=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{commit} (with uncommitted changes)" if status.strip() else commit


def write_csv(path: Path, rows: list[str], summary: dict) -> None:
    header = ["row"] + [f"{model}_{metric}_{stat}" for model in MODELS for metric in METRICS
                        for stat in ("mean", "std")] + [f"{model}_n_gen" for model in MODELS] + ["n_real", "seeds"]
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for row in rows:
            cells = [summary.get((row, model)) for model in MODELS]
            values = [row]
            for cell in cells:
                for metric in METRICS:
                    values += ["", ""] if cell is None else [repr(cell[f"{metric}_mean"]),
                                                             "" if math.isnan(cell[f"{metric}_std"])
                                                             else repr(cell[f"{metric}_std"])]
            values += ["" if cell is None else cell["n_gen"] for cell in cells]
            present = [cell for cell in cells if cell is not None]
            values += [present[0]["n_real"] if present else "",
                       " ".join(map(str, present[0]["seeds"])) if present else ""]
            writer.writerow(values)


def plot_metric(path: Path, metric: str, rows: list[str], summary: dict) -> None:
    """Write grouped bars per row for the three models, with std error bars (none for one seed)."""
    models = [m for m in MODELS if any((row, m) in summary for row in rows)]
    means = np.array([[summary[(row, m)][f"{metric}_mean"] if (row, m) in summary else np.nan for row in rows]
                      for m in models])
    stds = np.array([[summary[(row, m)][f"{metric}_std"] if (row, m) in summary else np.nan for row in rows]
                     for m in models])
    means = np.where(np.isfinite(means), means, np.nan)
    fig = Figure(figsize=(max(6.0, 0.6 * len(rows) + 2.0), 4.5), layout="constrained")
    ax = fig.add_subplot()
    width = 0.8 / max(len(models), 1)
    positions = np.arange(len(rows))
    for i, model in enumerate(models):
        errors = None if np.isnan(stds[i]).all() else np.nan_to_num(stds[i])
        ax.bar(positions + (i - (len(models) - 1) / 2) * width, means[i], width,
               yerr=errors, capsize=2, label=MODEL_LABELS[model])
    finite = means[np.isfinite(means)]
    if finite.size and (finite > 0).all() and finite.max() / finite.min() > 100:
        ax.set_yscale("log")
    ax.set_xticks(positions, rows, rotation=60, ha="right", fontsize=8)
    ax.set_ylabel(METRIC_LABELS[metric])
    ax.set_title(f"{METRIC_LABELS[metric]} per domain (lower is better)")
    ax.legend(fontsize=8)
    fig.savefig(path, format="png", dpi=100)


def _markdown(config, rows, summary, seeds, timings, config_source) -> str:
    seq_len = int(config.data.seq_len)
    lines = [
        f"# TimeDP benchmark, L = {seq_len}",
        "",
        f"- config: {config_source}",
        f"- commit: {git_commit()}",
        f"- seeds: {', '.join(map(str, seeds))}; cells are mean ± std (ddof 1) over seeds, "
        "a single value for one seed",
        f"- written: {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}",
        "- wall time per stage (summed over runs of this workdir): "
        + (", ".join(f"{stage} {seconds / 60:.1f} min" for stage, seconds in timings.items()) or "none recorded"),
        "",
        "Our data are small public stand-ins for the paper's datasets (see "
        "timecraft_jax/data/bundled/ATTRIBUTION.md), so the numbers are not comparable with the published ones "
        "in absolute terms. Metrics use the validation windows (in-domain) or the test windows (unseen) in raw "
        "units, z-scored with their mean and std; lower is better.",
        "",
        f"In-domain: per domain and model, rounds x prompts x repeats = {config.benchmark.rounds} x "
        f"{config.benchmark.num_prompts} x {config.benchmark.repeats} samples, ancestral DDPM with "
        f"{config.diffusion.num_timesteps} steps. "
        "Unseen (domain_k): k prompts and the test windows are disjoint draws without replacement; the "
        "normalizer is fitted on the k prompts only. Test windows of "
        f"{', '.join(domain_names(config.benchmark.test_filter_domains)) or 'no domain'} whose max exceeds the "
        f"P{config.benchmark.test_filter_percentile:g} of the test values are dropped. The unconditional "
        "baseline is the same network trained with conditioner='none' for the same steps. The floor scores real "
        "windows: training windows against the validation windows (in-domain), windows outside the test set "
        "against the test set (unseen); stock windows overlap (stride 1), so its unseen floor is optimistic. "
        "Every stock window starts at exactly 1.0, and solar's validation windows are all 0 at night, so some "
        "time steps of the real windows are constant. MDD then bins them over a range of only 0.01, which "
        "makes MDD large for every model on those rows.",
        "",
    ]
    for metric in METRICS:
        lines += [f"## {METRIC_LABELS[metric]}", "",
                  "| row | " + " | ".join(MODEL_LABELS[m] for m in MODELS) + " | n_gen | n_real |",
                  "|---|" + "---:|" * (len(MODELS) + 2)]
        for row in rows:
            cells = [summary.get((row, m)) for m in MODELS]
            present = [c for c in cells if c is not None]
            n_gen = cells[0]["n_gen"] if cells[0] is not None else ""
            n_real = present[0]["n_real"] if present else ""
            formatted = " | ".join(_format_cell(cell, metric) for cell in cells)
            lines.append(f"| {row} | {formatted} | {n_gen} | {n_real} |")
        lines.append("")
    lines += ["## Published TimeCraft values next to ours", "",
              "Published: TimeCraft's in-domain figure (figures/timedp_indomain.png in microsoft/TimeCraft), on "
              "the full-size datasets. Ours: the TimeDP column above. The published K-L is the flat KL metric.", "",
              "| domain | published MMD | our MMD | published K-L | our flat KL |", "|---|---:|---:|---:|---:|"]
    for domain in domain_names(config.data.domains):
        if domain not in PUBLISHED_TIMECRAFT:
            continue
        (mmd, mmd_std), (kl, kl_std) = PUBLISHED_TIMECRAFT[domain]
        cell = summary.get((domain, "timedp"))
        lines.append(f"| {domain} | {mmd:.3f} ± {mmd_std:.3f} | {_format_cell(cell, 'mmd_rbf')} | "
                     f"{kl:.3f} ± {kl_std:.3f} | {_format_cell(cell, 'flat_kl')} |")
    lines += ["", "## Config", "", "```json", json.dumps(config_to_json_dict(config), indent=2), "```", ""]
    return "\n".join(lines)


def write_report(config: ml_collections.ConfigDict, workdir: Path, results_dir: Path,
                 config_source: str = "(in memory)") -> Path:
    """Aggregate the per-seed JSON of `config.benchmark.seeds` and write the Markdown, CSV and PNG files.

    Returns the path of the Markdown file.
    """
    seeds = [int(s) for s in config.benchmark.seeds]
    records = collect_records(workdir, seeds)
    if not records:
        raise FileNotFoundError(f"no metrics found under {workdir}/seed*/metrics for seeds {seeds}; run the "
                                f"benchmark stages first (--stage all)")
    rows = result_rows(config)
    summary = aggregate(records)
    results_dir.mkdir(parents=True, exist_ok=True)
    stem = f"timedp_L{int(config.data.seq_len)}"
    write_csv(results_dir / f"{stem}.csv", rows, summary)
    for metric in METRICS:
        plot_metric(results_dir / f"{stem}_{metric}.png", metric, rows, summary)
    timings = StageTimer(workdir / "timings.json").read()
    markdown = results_dir / f"{stem}.md"
    markdown.write_text(_markdown(config, rows, summary, seeds, timings, config_source), encoding="utf-8")
    logging.info("wrote %s, %s.csv and %d bar charts", markdown, stem, len(METRICS))
    return markdown


# ----------------------------------------------------------------------------
# Driver.


def run_benchmark(config: ml_collections.ConfigDict, workdir: str | Path, stage: str = "all",
                  results_dir: str | Path | None = None, stop_after_units: int | None = None,
                  config_source: str = "(in memory)") -> Path | None:
    """Run `stage` of the benchmark for every seed in `config.benchmark.seeds`.

    `stop_after_units` ends the call after that many newly generated sampling units, as a kill
    would; the next call resumes there. Returns the Markdown report path when a report was
    written (stages 'all' and 'report'), else None.
    """
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; use one of {STAGES}")
    validate_benchmark_config(config)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    check_workdir_config(config, workdir)
    results_dir = Path(results_dir) if results_dir is not None else workdir / "results"
    timer = StageTimer(workdir / "timings.json")
    models = ("timedp", "uncond") if config.benchmark.unconditional else ("timedp",)
    counter = [0]
    report = None
    try:
        for seed in config.benchmark.seeds:
            if stage == "report":
                break
            run = _SeedRun(config, int(seed), workdir / f"seed{seed}", models, counter, stop_after_units)
            with timer.time("train"):
                run.train_models()
            if stage in ("all", "indomain"):
                with timer.time("indomain"):
                    run_indomain(run)
            if stage in ("all", "unseen") and domain_names(config.benchmark.unseen_domains):
                with timer.time("unseen"):
                    run_unseen(run)
            if stage == "all":
                report = write_report(config, workdir, results_dir, config_source)
    except _StopRequested:
        logging.info("stopped after %d new sampling units as requested; run again to resume", counter[0])
        return None
    if stage == "report":
        report = write_report(config, workdir, results_dir, config_source)
    return report


def parse_seeds(text: str) -> tuple[int, ...]:
    """Parse a comma-separated seed list such as '0,1,2'."""
    try:
        seeds = tuple(int(token) for token in text.split(",") if token.strip())
    except ValueError:
        raise BenchmarkConfigError(f"--seeds={text!r} must be comma-separated ints, e.g. --seeds 0,1,2") from None
    if not seeds:
        raise BenchmarkConfigError(f"--seeds={text!r} lists no seed; pass e.g. --seeds 0,1,2")
    return seeds


def _define_flags() -> dict:
    """Define the command-line flags; only the entry point calls this, so importing the module defines none."""
    from absl import flags
    from ml_collections import config_flags

    holders = {
        "config": config_flags.DEFINE_config_file("config", None, "Path to a config file in configs/.",
                                                  lock_config=True),
        "workdir": flags.DEFINE_string("workdir", None, "Benchmark folder; reused to resume."),
        "seeds": flags.DEFINE_string("seeds", None, "Comma-separated training seeds; default config.benchmark.seeds."),
        "stage": flags.DEFINE_enum("stage", "all", STAGES, "Stage to run. train, indomain and unseen first train "
                                   "the models whose checkpoints are unfinished; report only aggregates."),
        "results_dir": flags.DEFINE_string("results_dir", None, "Folder for the tables and charts; default "
                                           "WORKDIR/results."),
    }
    flags.mark_flags_as_required(["config", "workdir"])
    return holders


def main(argv: Sequence[str], holders: dict) -> None:
    from absl import app, flags
    from ml_collections import config_flags

    from timecraft_jax.logging_utils import setup_logging
    from timecraft_jax.training import ConfigMismatchError, TrainingDivergedError

    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    workdir, stage = holders["workdir"].value, holders["stage"].value
    setup_logging(workdir)
    xla_options.keep_host_memory()
    config = holders["config"].value
    started = time.perf_counter()
    try:
        if holders["seeds"].value is not None:
            config.benchmark.seeds = parse_seeds(holders["seeds"].value)
        report = run_benchmark(config, workdir, stage, holders["results_dir"].value,
                               config_source=config_flags.get_config_filename(flags.FLAGS["config"]))
    except (DataError, CheckpointError, ConfigMismatchError, TrainingDivergedError, FileNotFoundError,
            FloatingPointError, ValueError) as error:
        logging.error("%s", error)
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    minutes = (time.perf_counter() - started) / 60
    where = f"; report: {report}" if report is not None else ""
    print(f"stage {stage} finished in {minutes:.1f} min{where}")


if __name__ == "__main__":
    from absl import app

    xla_options.relaunch_with_huge_pages()
    _holders = _define_flags()
    app.run(lambda argv: main(argv, _holders))

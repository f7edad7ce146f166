"""Prepare the bundled data, train the multi-domain model, sample and evaluate it.

  python -m timecraft_jax.quickstart

On a 2-core CPU this takes about 10 minutes with configs/quickstart.py. It
prints one row of metrics per domain (z-scored with the validation windows'
statistics, as the TimeDP evaluation does) and writes under --workdir:
checkpoints, metrics.jsonl, samples/{domain}.npy and results/ (metrics.json,
metrics.md, metrics.csv and one PNG per domain).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

from timecraft_jax import xla_options
from timecraft_jax.checkpointing import CheckpointError
from timecraft_jax.config_lib import load_config_file, repository_config
from timecraft_jax.data import DataError
from timecraft_jax.generation import (check_finite_samples, draw_prompts, generate_from_prompts, load_bundle,
                                      make_sample_fn, sampling_metadata, training_windows, warn_if_collapsed)
from timecraft_jax.logging_utils import setup_logging
from timecraft_jax.evaluate import load_domain_reference
from timecraft_jax.metrics import compute_metrics
from timecraft_jax.plots import plot_real_vs_generated
from timecraft_jax.samples_io import save_samples
from timecraft_jax.training import train

METRIC_COLUMNS = ("mdd", "flat_kl", "mmd_rbf")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m timecraft_jax.quickstart", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(repository_config("quickstart")), help="Config file to train.")
    parser.add_argument("--workdir", default="runs/quickstart", help="Folder for checkpoints, samples and results.")
    parser.add_argument("--data_root", default="data", help="Folder for the prepared windows (created if missing).")
    parser.add_argument("--num_samples", type=int, default=500, help="Generated series per domain.")
    parser.add_argument("--num_steps", type=int, default=None, help="Training steps (default: the config's).")
    parser.add_argument("--seed", type=int, default=0, help="Seed for prompts and sampler noise.")
    return parser


def floor_metrics(train_raw: np.ndarray, val_raw: np.ndarray, num_samples: int, seed: int) -> dict:
    """Metrics of real training windows against the validation windows: what a perfect model would score."""
    rng = np.random.default_rng(seed)
    index = rng.choice(len(train_raw), size=min(num_samples, len(train_raw)), replace=False)
    return compute_metrics(val_raw, train_raw[index])


def write_tables(rows: list[dict], results_dir: Path) -> str:
    """Write metrics.json, metrics.csv and metrics.md; return the Markdown table."""
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / "metrics.json").write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    header = ["domain", "n_real", "n_gen"] + list(METRIC_COLUMNS) + [f"floor_{m}" for m in METRIC_COLUMNS]
    with open(results_dir / "metrics.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=header, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    lines = [
        "| domain | n_real | n_gen | MDD | flat KL | MMD | floor MDD | floor flat KL | floor MMD |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        values = [f"{row[m]:.4f}" for m in METRIC_COLUMNS] + [f"{row['floor_' + m]:.4f}" for m in METRIC_COLUMNS]
        lines.append(f"| {row['domain']} | {row['n_real']} | {row['n_gen']} | " + " | ".join(values) + " |")
    means = [np.mean([row[m] for row in rows]) for m in METRIC_COLUMNS]
    floors = [np.mean([row["floor_" + m] for row in rows]) for m in METRIC_COLUMNS]
    lines.append("| **mean** | | | " + " | ".join(f"{v:.4f}" for v in means + floors) + " |")
    table = "\n".join(lines) + "\n"
    (results_dir / "metrics.md").write_text(
        "Generated vs. validation windows (z-scored with the validation statistics). The floor columns score "
        "real training windows against the same validation windows.\n\n" + table, encoding="utf-8")
    return table


def run(args: argparse.Namespace) -> str:
    started = time.perf_counter()
    config = load_config_file(args.config)
    config.data.data_root = args.data_root
    if args.num_steps is not None:
        config.training.num_steps = args.num_steps
    workdir = Path(args.workdir)
    train(config, workdir)

    bundle = load_bundle(workdir, "best")
    sampling_config = bundle.config.sampling
    sample_fn = make_sample_fn(bundle, sampling_config)
    rows = []
    for domain in bundle.domains:
        normalizer = bundle.normalizers[domain]
        train_raw = training_windows(bundle, domain)
        prompts = draw_prompts(train_raw, min(100, args.num_samples), args.seed)
        logging.info("sampling %d series for %s", args.num_samples, domain)
        normalized = generate_from_prompts(bundle, normalizer.transform(prompts), args.num_samples,
                                           sampling_config, args.seed, sample_fn=sample_fn)
        samples = normalizer.inverse_transform(normalized).astype(np.float32)
        check_finite_samples(samples, f"domain {domain}")
        warn_if_collapsed(samples, domain)
        save_samples(workdir / "samples" / f"{domain}.npy", samples,
                     sampling_metadata(bundle, sampling_config, args.seed, domain=domain, num_prompts=len(prompts)))
        val_raw, _ = load_domain_reference(args.data_root, domain, bundle.seq_len, n_channels=samples.shape[-1])
        generated = compute_metrics(val_raw, samples)
        floor = floor_metrics(train_raw, val_raw, args.num_samples, args.seed)
        row = {"domain": domain, "n_real": generated["n_real"], "n_gen": generated["n_gen"]}
        row.update({m: generated[m] for m in METRIC_COLUMNS})
        row.update({f"floor_{m}": floor[m] for m in METRIC_COLUMNS})
        rows.append(row)
        plot_real_vs_generated(val_raw, samples, workdir / "results" / f"{domain}.png",
                               title=f"{domain}: validation (left) vs generated (right)")
    table = write_tables(rows, workdir / "results")
    minutes = (time.perf_counter() - started) / 60
    print(table)
    print(f"results in {workdir / 'results'}; total time {minutes:.1f} min")
    return table


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.workdir)
    xla_options.keep_host_memory()
    try:
        run(args)
    except (DataError, CheckpointError, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    xla_options.relaunch_with_huge_pages()
    sys.exit(main())

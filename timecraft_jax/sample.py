"""Generate series from a trained checkpoint.

  python -m timecraft_jax.sample --workdir runs/quickstart --domain electricity \\
      --num_samples 1000 --out samples/electricity.npy
  python -m timecraft_jax.sample --workdir runs/quickstart --prompts my_series.csv \\
      --num_samples 1000 --out samples/my_series.npy [--window_prompts]

Samples are written in raw units as (N, T, C) float32 `.npy` with a JSON sidecar.
Each sample is conditioned on one prompt window; sample j follows prompt j mod k.

With --domain, k = --num_prompts windows are drawn from the domain's training split and the
domain's training normalizer maps values in and out.

With --prompts FILE (few-shot prompting of a possibly unseen domain), the k prompts come from FILE:
  .npy  (k, T, C) windows, (k, T) univariate windows, or one (T,) series;
  .csv  rows are time steps, one column per series, header optional (for a model with C > 1
        channels that was not trained univariate, the C columns are the channels of one series);
  .tsf  each series is one prompt.
Each prompt must have the model's window length L; --window_prompts cuts longer series into
non-overlapping windows of length L. A normalizer of the training kind (default centered_pit) is
fitted on the prompt values alone. With centered_pit or pit its inverse clamps, so every generated
value lies within [min, max] of the prompt values.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import ml_collections

from timecraft_jax.checkpointing import CheckpointError
from timecraft_jax.data import DataError
from timecraft_jax.fewshot import generate_from_prompt_file
from timecraft_jax.generation import (check_finite_samples, draw_prompts, generate_from_prompts, load_bundle,
                                      sampling_metadata, training_windows, warn_if_collapsed)
from timecraft_jax.logging_utils import setup_logging
from timecraft_jax.samples_io import save_samples


DEFAULT_NUM_PROMPTS = 100


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m timecraft_jax.sample", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", required=True, help="Training workdir that contains the checkpoints.")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--domain", help="Training domain whose training windows prompt the model.")
    source.add_argument("--prompts", help="Prompt file (.npy, .csv or .tsf) of k example series; see above.")
    parser.add_argument("--num_samples", type=int, required=True, help="Number of series to generate (N).")
    parser.add_argument("--out", required=True, help="Output .npy path; a .json sidecar is written next to it.")
    parser.add_argument("--checkpoint", default="best", help="'best' (lowest EMA validation loss), 'latest' or a step.")
    parser.add_argument("--sampler", choices=("ddpm", "ddim"), default=None, help="Reverse process (default: config).")
    parser.add_argument("--num_steps", type=int, default=None, help="DDIM steps S, fewer than the diffusion steps T.")
    parser.add_argument("--eta", type=float, default=None, help="DDIM eta in [0, 1]; 0 is deterministic.")
    parser.add_argument("--guidance_scale", type=float, default=None, help="Classifier-free guidance scale; 1 is off.")
    parser.add_argument("--num_prompts", type=int, default=None,
                        help="With --domain: prompt windows drawn from the training split "
                             f"(default {DEFAULT_NUM_PROMPTS}).")
    parser.add_argument("--window_prompts", action="store_true",
                        help="With --prompts: cut series longer than L into non-overlapping windows of length L.")
    parser.add_argument("--prompt_column", nargs="+", default=None,
                        help="With a .csv --prompts file: columns to use, by name or 0-based position.")
    parser.add_argument("--batch_size", type=int, default=None, help="Samples per compiled sampler call.")
    parser.add_argument("--seed", type=int, default=0, help="Seed for prompts and sampler noise.")
    parser.add_argument("--raw_params", action="store_true", help="Sample with raw instead of EMA parameters.")
    return parser


def sampling_config_from_args(base: ml_collections.ConfigDict, args: argparse.Namespace) -> ml_collections.ConfigDict:
    """Return the checkpoint's sampling config with the command-line overrides applied and checked."""
    config = ml_collections.ConfigDict(base.to_dict())
    for name in ("sampler", "num_steps", "eta", "guidance_scale", "batch_size"):
        value = getattr(args, name)
        if value is not None:
            config[name] = value
    if config.batch_size < 1:
        raise ValueError(f"--batch_size must be >= 1, got {config.batch_size}")
    if not 0.0 <= config.eta <= 1.0:
        raise ValueError(f"--eta must lie in [0, 1], got {config.eta}")
    return config


def check_source_args(args: argparse.Namespace) -> None:
    """Reject options that belong to the other prompt source."""
    if args.prompts is not None and args.num_prompts is not None:
        raise ValueError("--num_prompts applies to --domain; with --prompts every prompt of the file is used")
    if args.domain is not None and (args.window_prompts or args.prompt_column):
        raise ValueError("--window_prompts and --prompt_column apply to --prompts, not to --domain")


def sample_domain(args: argparse.Namespace, bundle, sampling_config: ml_collections.ConfigDict):
    """Return raw samples prompted by training windows of --domain, and their sidecar fields."""
    if args.domain not in bundle.normalizers:
        raise DataError(f"domain {args.domain!r} was not part of training; the checkpoint knows "
                        f"{sorted(bundle.normalizers)}")
    num_prompts = DEFAULT_NUM_PROMPTS if args.num_prompts is None else args.num_prompts
    if num_prompts < 1:
        raise ValueError(f"--num_prompts must be >= 1, got {num_prompts}")
    normalizer = bundle.normalizers[args.domain]
    # All prompts are drawn even when fewer samples are requested, so sample j follows the same
    # prompt (j mod k) whatever the number of samples.
    prompts = draw_prompts(training_windows(bundle, args.domain), num_prompts, args.seed)
    logging.info("sampling %d series of domain %s with %s from %d prompt windows", args.num_samples, args.domain,
                 sampling_config.sampler, len(prompts))
    normalized = generate_from_prompts(bundle, normalizer.transform(prompts), args.num_samples, sampling_config,
                                       args.seed)
    samples = normalizer.inverse_transform(normalized)
    check_finite_samples(samples, f"domain {args.domain}")
    return samples, {"domain": args.domain, "num_prompts": num_prompts}


def sample_prompt_file(args: argparse.Namespace, bundle, sampling_config: ml_collections.ConfigDict):
    """Return raw samples prompted by the series of --prompts, and their sidecar fields."""
    result = generate_from_prompt_file(bundle, args.prompts, args.num_samples, sampling_config, args.seed,
                                       window=args.window_prompts, columns=args.prompt_column)
    fields = {
        "prompts": str(args.prompts),
        "num_prompts": len(result.prompts),
        "prompt_columns": args.prompt_column,
        "windowed_prompts": bool(args.window_prompts),
        "prompt_normalizer": result.normalizer.kind,
        "prompt_range": [float(result.prompts.min()), float(result.prompts.max())],
    }
    return result.samples, fields


def run(args: argparse.Namespace) -> Path:
    if args.num_samples < 1:
        raise ValueError(f"--num_samples must be >= 1, got {args.num_samples}")
    check_source_args(args)
    out = Path(args.out)
    if out.suffix != ".npy":
        raise ValueError(f"--out must end in .npy, got {out}")
    bundle = load_bundle(args.workdir, args.checkpoint, use_ema=not args.raw_params)
    sampling_config = sampling_config_from_args(bundle.config.sampling, args)
    if args.domain is not None:
        samples, fields = sample_domain(args, bundle, sampling_config)
        where = args.domain
    else:
        samples, fields = sample_prompt_file(args, bundle, sampling_config)
        where = Path(args.prompts).name
    samples = samples.astype("float32")
    warn_if_collapsed(samples, where)
    metadata = sampling_metadata(bundle, sampling_config, args.seed, workdir=str(args.workdir), **fields)
    save_samples(out, samples, metadata)
    logging.info("wrote %s with shape %s", out, samples.shape)
    return out


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    try:
        run(args)
    except (DataError, CheckpointError, ValueError, FloatingPointError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Generate series from a trained checkpoint.

  python -m timecraft_jax.sample --workdir runs/quickstart --domain electricity \
      --num_samples 1000 --out samples/electricity.npy

Samples are written in raw units as (N, T, C) float32 `.npy` with a JSON sidecar.
Each sample is conditioned on one prompt window drawn from the domain's training
split (sample j follows prompt j mod --num_prompts).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import ml_collections

from timecraft_jax.checkpointing import CheckpointError
from timecraft_jax.data import DataError
from timecraft_jax.generation import (check_finite_samples, draw_prompts, generate_from_prompts, load_bundle,
                                      sampling_metadata, training_windows, warn_if_collapsed)
from timecraft_jax.logging_utils import setup_logging
from timecraft_jax.samples_io import save_samples


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m timecraft_jax.sample", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", required=True, help="Training workdir that holds the checkpoints.")
    parser.add_argument("--domain", required=True, help="Training domain whose windows prompt the model.")
    parser.add_argument("--num_samples", type=int, required=True, help="Number of series to generate (N).")
    parser.add_argument("--out", required=True, help="Output .npy path; a .json sidecar is written next to it.")
    parser.add_argument("--checkpoint", default="best", help="'best' (lowest EMA validation loss), 'latest' or a step.")
    parser.add_argument("--sampler", choices=("ddpm", "ddim"), default=None, help="Reverse process (default: config).")
    parser.add_argument("--num_steps", type=int, default=None, help="DDIM steps S, fewer than the diffusion steps T.")
    parser.add_argument("--eta", type=float, default=None, help="DDIM eta in [0, 1]; 0 is deterministic.")
    parser.add_argument("--guidance_scale", type=float, default=None, help="Classifier-free guidance scale; 1 is off.")
    parser.add_argument("--num_prompts", type=int, default=100, help="Prompt windows drawn from the training split.")
    parser.add_argument("--batch_size", type=int, default=None, help="Samples per compiled sampler call.")
    parser.add_argument("--seed", type=int, default=0, help="Seed for prompts and sampler noise.")
    parser.add_argument("--raw_params", action="store_true", help="Sample with raw instead of EMA parameters.")
    return parser


def sampling_config_from_args(base: ml_collections.ConfigDict, args: argparse.Namespace) -> ml_collections.ConfigDict:
    """The checkpoint's sampling config with the command-line overrides applied and checked."""
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


def run(args: argparse.Namespace) -> Path:
    if args.num_samples < 1:
        raise ValueError(f"--num_samples must be >= 1, got {args.num_samples}")
    if args.num_prompts < 1:
        raise ValueError(f"--num_prompts must be >= 1, got {args.num_prompts}")
    out = Path(args.out)
    if out.suffix != ".npy":
        raise ValueError(f"--out must end in .npy, got {out}")
    bundle = load_bundle(args.workdir, args.checkpoint, use_ema=not args.raw_params)
    if args.domain not in bundle.normalizers:
        raise DataError(f"domain {args.domain!r} was not part of training; the checkpoint knows "
                        f"{sorted(bundle.normalizers)}")
    sampling_config = sampling_config_from_args(bundle.config.sampling, args)
    normalizer = bundle.normalizers[args.domain]
    num_prompts = min(args.num_prompts, args.num_samples)
    prompts = draw_prompts(training_windows(bundle, args.domain), num_prompts, args.seed)
    logging.info("sampling %d series of domain %s with %s from %d prompt windows", args.num_samples, args.domain,
                 sampling_config.sampler, len(prompts))
    normalized = generate_from_prompts(bundle, normalizer.transform(prompts), args.num_samples, sampling_config,
                                       args.seed)
    samples = normalizer.inverse_transform(normalized).astype("float32")
    check_finite_samples(samples, f"domain {args.domain}")
    warn_if_collapsed(samples, args.domain)
    metadata = sampling_metadata(bundle, sampling_config, args.seed, domain=args.domain,
                                 num_prompts=num_prompts, workdir=str(args.workdir))
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

"""Inspect how a prototype (TimeDP) model reads prompts: prototype logits, embeddings and prototype semantics.

  python -m timecraft_jax.prompts --workdir runs/quickstart --inputs stock.npy web.csv \\
      --out prompt_report [--labels stock web] [--domains electricity nn5] [--embedding tsne|pca]

For every input it writes `{label}_prototype_weights.npy` and `.csv`, the logits [k, M] of its k
prompt windows over the M prototypes. The label of a file defaults to its stem. Input files take
the formats of `python -m timecraft_jax.sample --prompts` and are normalized by a normalizer fitted
on their own values. With --domains, random windows of the training split of trained domains are
used as well, normalized with the domain's training normalizer.

Figures:
  embedding.png             2-D t-SNE (PCA without scikit-learn, or with --embedding pca) of all
                            logits, coloured by label;
  embedding_superdomain.png the same points coloured by super-domain (Energy, Transport, Nature,
                            Econ), written only when every label is a TimeDP training domain;
  prototype_heatmap.png     one prompts x prototypes heatmap per label, coolwarm centred at 0;
  prototype_semantics.png   per prototype, the mean of --semantics_samples samples in normalized
                            space when only that prototype is attended (logits -1 except +1 at it).

Only models trained with model.conditioner='prototype' have prototype logits. Invalid input exits
with status 2 and a one-line `error:` message on stderr.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np

from timecraft_jax import fewshot
from timecraft_jax.checkpointing import CheckpointError
from timecraft_jax.data import DataError
from timecraft_jax.generation import load_bundle
from timecraft_jax.logging_utils import setup_logging
from timecraft_jax.sample import sampling_config_from_args

DEFAULT_DOMAIN_WINDOWS = 100


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m timecraft_jax.prompts", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", required=True, help="Training workdir that contains the checkpoints.")
    parser.add_argument("--inputs", nargs="+", default=[], help="Prompt files (.npy, .csv or .tsf).")
    parser.add_argument("--labels", nargs="+", default=None, help="One label per input file (default: file stems).")
    parser.add_argument("--domains", nargs="+", default=[], help="Trained domains whose training windows to add.")
    parser.add_argument("--out", required=True, help="Output folder for the weights and figures.")
    parser.add_argument("--embedding", choices=fewshot.EMBEDDINGS, default="tsne",
                        help="2-D embedding of the logits; tsne falls back to pca without scikit-learn.")
    parser.add_argument("--semantics_samples", type=int, default=10,
                        help="Samples per prototype for prototype_semantics.png; 0 skips the figure.")
    parser.add_argument("--num_domain_windows", type=int, default=DEFAULT_DOMAIN_WINDOWS,
                        help="Random training windows per --domains entry.")
    parser.add_argument("--window_prompts", action="store_true",
                        help="Cut input series longer than L into non-overlapping windows of length L.")
    parser.add_argument("--prompt_column", nargs="+", default=None,
                        help="Columns of .csv inputs to use, by name or 0-based position.")
    parser.add_argument("--checkpoint", default="best", help="'best' (lowest EMA validation loss), 'latest' or a step.")
    parser.add_argument("--raw_params", action="store_true", help="Use raw instead of EMA parameters.")
    parser.add_argument("--sampler", choices=("ddpm", "ddim"), default=None,
                        help="Reverse process of the semantics samples (default: config).")
    parser.add_argument("--num_steps", type=int, default=None, help="DDIM steps S, fewer than the diffusion steps T.")
    parser.add_argument("--eta", type=float, default=None, help="DDIM eta in [0, 1]; 0 is deterministic.")
    parser.add_argument("--guidance_scale", type=float, default=None, help="Classifier-free guidance scale; 1 is off.")
    parser.add_argument("--batch_size", type=int, default=None, help="Samples per compiled sampler call.")
    parser.add_argument("--seed", type=int, default=0, help="Seed for domain windows, t-SNE and sampler noise.")
    return parser


def file_stem(path: str) -> str:
    """Return the file name without its extension, and without `.gz` before it (`web.tsf.gz` -> `web`)."""
    path = Path(path)
    return Path(path.stem).stem if path.suffix.lower() == ".gz" else path.stem


def input_labels(args: argparse.Namespace) -> list[str]:
    """Return the labels of the input files followed by the domains, checked to be unique file-name parts."""
    if not args.inputs and not args.domains:
        raise ValueError("nothing to inspect; pass prompt files with --inputs, trained domains with --domains, or both")
    if args.labels is not None and len(args.labels) != len(args.inputs):
        raise ValueError(f"--labels has {len(args.labels)} names for {len(args.inputs)} --inputs; give one per file")
    labels = list(args.labels) if args.labels is not None else [file_stem(path) for path in args.inputs]
    labels += list(args.domains)
    for label in labels:
        if not label or label in (".", "..") or Path(label).name != label:
            raise ValueError(f"label {label!r} cannot be part of a file name; choose one without path separators")
    duplicates = sorted({label for label in labels if labels.count(label) > 1})
    if duplicates:
        raise ValueError(f"labels {duplicates} occur more than once; set distinct names with --labels")
    return labels


def run(args: argparse.Namespace) -> Path:
    labels = input_labels(args)
    if args.semantics_samples < 0:
        raise ValueError(f"--semantics_samples must be >= 0, got {args.semantics_samples}")
    out = Path(args.out)
    bundle = load_bundle(args.workdir, args.checkpoint, use_ema=not args.raw_params)
    fewshot.require_prototype_conditioner(bundle)
    sampling_config = sampling_config_from_args(bundle.config.sampling, args)

    logits_by_label = {}
    for label, path in zip(labels, args.inputs):
        logits_by_label[label] = fewshot.prompt_file_logits(bundle, path, args.window_prompts, args.prompt_column)
    for domain in args.domains:
        logits_by_label[domain] = fewshot.domain_logits(bundle, domain, args.num_domain_windows, args.seed)
    for label, logits in logits_by_label.items():
        npy_path, _ = fewshot.save_prototype_weights(out, label, logits)
        logging.info("wrote %s and .csv with the logits of %d prompts", npy_path, len(logits))

    all_logits = np.concatenate(list(logits_by_label.values()))
    point_labels = [label for label, logits in logits_by_label.items() for _ in range(len(logits))]
    coordinates, method = fewshot.embed_2d(all_logits, args.embedding, args.seed)
    fewshot.plot_embedding(coordinates, point_labels, out / "embedding.png", f"{method} of prototype logits")
    if all(label in fewshot.SUPER_DOMAINS for label in labels):
        super_labels = [fewshot.SUPER_DOMAINS[label] for label in point_labels]
        fewshot.plot_embedding(coordinates, super_labels, out / "embedding_superdomain.png",
                               f"{method} of prototype logits by super-domain")
    fewshot.plot_logit_heatmaps(logits_by_label, out / "prototype_heatmap.png")

    if args.semantics_samples:
        logging.info("drawing %d samples for each of the %d prototypes", args.semantics_samples,
                     all_logits.shape[1])
        means = fewshot.prototype_semantics(bundle, sampling_config, args.semantics_samples, args.seed)
        fewshot.plot_prototype_semantics(means, out / "prototype_semantics.png", args.semantics_samples)
    logging.info("wrote the prototype report to %s", out)
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

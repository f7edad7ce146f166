"""Compare generated samples with real series: MDD, flat KL and MMD, a table and a figure.

Command line:

  python -m timecraft_jax.evaluate --samples FILE.npy --domain electricity [--data_root data]
  python -m timecraft_jax.evaluate --samples a.npy b.npy --domain electricity exchange
  python -m timecraft_jax.evaluate --samples FILE.npy --reference REAL.npy

It writes `metrics.json`, `metrics.md` and one `{name}.png` per row into `--out`, and prints the
Markdown table. Invalid input (missing files, arrays in different spaces or layouts, NaN values)
exits with status 2 and a one-line `error:` message on stderr.
"""

import argparse
import json
import logging
import sys
from pathlib import Path

from timecraft_jax import metrics, plots, samples_io
from timecraft_jax.data.batching import to_univariate
from timecraft_jax.samples_io import SeriesInputError

METRICS_JSON = "metrics.json"
METRICS_MARKDOWN = "metrics.md"
TABLE_HEADER = ("| name | n_real | n_gen | MDD | flat KL | MMD |\n"
                "|---|---|---|---|---|---|")


def evaluate_pair(real, gen, out_dir, name, scale="zscore", plot=True, max_samples=None, seed=0):
    """Compute the metrics of one (real, generated) pair and optionally write its figure.

    Args:
      real: (N_r, T, C) real series in the same space as `gen`.
      gen: (N_g, T, C) generated series.
      out_dir: folder of the figure `{name}.png`.
      name: row name, also the figure's file name.
      scale, max_samples, seed: see `metrics.compute_metrics`.
      plot: write the figure.

    Returns:
      dict with `name`, the entries of `metrics.compute_metrics` and `plot` (path or None).
    """
    row = {"name": name}
    row.update(metrics.compute_metrics(real, gen, scale=scale, max_samples=max_samples, seed=seed))
    row["plot"] = None
    if plot:
        figure_path = Path(out_dir) / f"{name}.png"
        title = f"{name}: real vs generated ({row['n_real_total']} real, {row['n_gen_total']} generated series)"
        row["plot"] = str(plots.plot_real_vs_generated(real, gen, figure_path, title, seed=seed))
    return row


def format_markdown_table(rows):
    """Return the Markdown table (name | n_real | n_gen | MDD | flat KL | MMD) of metric rows."""
    lines = [TABLE_HEADER]
    for row in rows:
        lines.append(
            f"| {row['name']} | {row['n_real']} | {row['n_gen']} | {row['mdd']:.4g} | "
            f"{row['flat_kl']:.4g} | {row['mmd_rbf']:.4g} |"
        )
    return "\n".join(lines)


def write_report(rows, out_dir):
    """Write `metrics.json` (all fields of every row) and `metrics.md` (the table) to out_dir.

    Returns:
      (json_path, markdown_path).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / METRICS_JSON
    json_path.write_text(json.dumps({"rows": rows}, indent=2) + "\n")

    scales = sorted({row["scale"] for row in rows})
    markdown = (
        "# Generated vs real series\n\n"
        f"{format_markdown_table(rows)}\n\n"
        f"Both arrays are scaled with statistics of the real series before the metrics "
        f"(scale: {', '.join(scales)}). Flat KL is in nats. n_real and n_gen count the series used.\n"
    )
    markdown_path = out_dir / METRICS_MARKDOWN
    markdown_path.write_text(markdown)
    return json_path, markdown_path


def evaluate_arrays(real, gen, out_dir, name, scale="zscore", plot=True, max_samples=None, seed=0):
    """Compute the metrics of one pair and write metrics.json, metrics.md and `{name}.png`.

    Returns:
      The row of `evaluate_pair`, with the paths `metrics_json` and `metrics_md` added.
    """
    row = evaluate_pair(real, gen, out_dir, name, scale=scale, plot=plot, max_samples=max_samples, seed=seed)
    json_path, markdown_path = write_report([row], out_dir)
    return dict(row, metrics_json=str(json_path), metrics_md=str(markdown_path))


def domain_reference_path(data_root, domain, seq_len):
    """Return the validation windows of a domain, `{data_root}/{domain}_{seq_len}_val.npy`."""
    return Path(data_root) / f"{domain}_{seq_len}_val.npy"


def load_domain_reference(data_root, domain, seq_len, n_channels):
    """Read a domain's validation windows in raw units as (N, T, C).

    When the samples have one channel and the reference has D > 1, the reference is reshaped to
    (N * D, T, 1), the univariate windows that the model is trained on.
    """
    path = domain_reference_path(data_root, domain, seq_len)
    if not path.is_file():
        raise SeriesInputError(
            f"reference file {path} not found; create it with "
            f"`python -m data_prep.prepare --data_root {data_root} --seq_len {seq_len} --domains {domain}`"
        )
    reference = samples_io.load_series_array(path)
    if n_channels == 1 and reference.shape[2] > 1:
        logging.info("Reshaping %s from %s to univariate windows (N * C, T, 1).", path, reference.shape)
        reference = to_univariate(reference)
    return reference, path


def check_same_layout(samples, reference, samples_path, reference_path):
    """Raise SeriesInputError unless samples and reference share T and C."""
    if samples.shape[1:] != reference.shape[1:]:
        raise SeriesInputError(
            f"samples {samples_path} have (T, C) = {samples.shape[1:]} but reference {reference_path} has "
            f"(T, C) = {reference.shape[1:]}; compare windows of the same length and channel count"
        )


def check_same_space(samples_space, reference_space, samples_path, reference_path):
    """Raise SeriesInputError unless samples and reference are in the same space."""
    if samples_space != reference_space:
        raise SeriesInputError(
            f"samples {samples_path} are in {samples_space!r} space but reference {reference_path} is in "
            f"{reference_space!r} space; metrics are only comparable in one space, so inverse-transform "
            "normalized samples with the domain's fitted normalizer (or compare against a reference in "
            "the same space)"
        )


def _load_samples_for_cli(path, samples_space):
    """Read a samples file and resolve its space from the sidecar or `--samples_space`."""
    samples, metadata = samples_io.load_samples(path, allow_missing_sidecar=samples_space is not None)
    if metadata["space"] is None:
        metadata["space"] = samples_space
    elif samples_space is not None and samples_space != metadata["space"]:
        raise SeriesInputError(
            f"--samples_space {samples_space} contradicts the sidecar of {path}, which records space "
            f"{metadata['space']!r}; drop --samples_space"
        )
    return samples, metadata


def _row_names(args):
    """Return one distinct row name per samples file."""
    if args.domain is not None:
        names = list(args.domain)
    else:
        names = [Path(path).stem for path in args.reference]
    if len(set(names)) < len(names):
        names = [Path(path).stem for path in args.samples]
    if len(set(names)) < len(names):
        raise SeriesInputError(
            f"the samples files {', '.join(args.samples)} give repeated row names {names}; "
            "give the files distinct names"
        )
    return names


def run_cli(args):
    """Evaluate every samples file of the parsed arguments and write the report.

    Returns:
      (rows, json_path, markdown_path).
    """
    references = args.domain if args.domain is not None else args.reference
    if len(references) != len(args.samples):
        option = "--domain" if args.domain is not None else "--reference"
        raise SeriesInputError(
            f"{len(args.samples)} --samples files but {len(references)} {option} values; pass one per samples file"
        )
    out_dir = Path(args.out) if args.out else Path(args.samples[0]).parent / "eval"
    names = _row_names(args)

    rows = []
    for samples_path, reference_arg, name in zip(args.samples, references, names):
        samples, metadata = _load_samples_for_cli(samples_path, args.samples_space)
        if args.domain is not None:
            sample_domain = metadata.get("domain")
            if sample_domain is not None and sample_domain != reference_arg:
                raise SeriesInputError(
                    f"samples {samples_path} were generated for domain {sample_domain!r} but are compared "
                    f"with domain {reference_arg!r}; check the order of --samples and --domain"
                )
            seq_len = args.seq_len if args.seq_len is not None else samples.shape[1]
            reference, reference_path = load_domain_reference(args.data_root, reference_arg, seq_len,
                                                              samples.shape[2])
            reference_space = "raw"
        else:
            reference_path = Path(reference_arg)
            reference = samples_io.load_series_array(reference_path)
            reference_metadata = samples_io.load_metadata(reference_path) or {}
            reference_space = reference_metadata.get("space", "raw")

        check_same_space(metadata["space"], reference_space, samples_path, reference_path)
        check_same_layout(samples, reference, samples_path, reference_path)
        logging.info("Evaluating %s: %d generated vs %d real series of shape %s.", name, samples.shape[0],
                     reference.shape[0], samples.shape[1:])
        try:
            row = evaluate_pair(reference, samples, out_dir, name, scale=args.scale, plot=not args.no_plot,
                                max_samples=args.max_samples, seed=args.seed)
        except SeriesInputError as error:
            # The metrics call the two arrays real and gen; name the files instead.
            raise SeriesInputError(f"{error} (gen: {samples_path}, real: {reference_path})") from error
        row.update(samples=str(samples_path), reference=str(reference_path), space=metadata["space"],
                   samples_metadata=metadata)
        rows.append(row)

    json_path, markdown_path = write_report(rows, out_dir)
    return rows, json_path, markdown_path


def _positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m timecraft_jax.evaluate",
        description=(
            "Compare generated samples with real series. Both arrays are scaled with statistics of the "
            "real series, then MDD (marginal histogram difference, 20 bins per time step and channel), "
            "flat KL (50-bin histograms of all values, in nats) and MMD (RBF kernel, gamma = 1/(T*C), "
            "biased estimate) are computed. Writes metrics.json, metrics.md and one PNG per samples file."
        ),
    )
    parser.add_argument("--samples", nargs="+", required=True, metavar="FILE.npy",
                        help="generated samples, (N, T, C) .npy files with a JSON sidecar FILE.json that "
                             "records their space")

    reference = parser.add_mutually_exclusive_group(required=True)
    reference.add_argument("--reference", nargs="+", metavar="FILE.npy",
                           help="real series, (N, T, C) or (N, T) .npy files, one per samples file; in raw "
                                "units unless a sidecar FILE.json records another space")
    reference.add_argument("--domain", nargs="+", metavar="NAME",
                           help="domain names, one per samples file; the reference is the validation split "
                                "DIR/NAME_L_val.npy in raw units, read as univariate (N * C, L, 1) windows "
                                "when the samples have one channel")

    parser.add_argument("--data_root", default="data", metavar="DIR",
                        help="folder of the prepared NAME_L_val.npy files (default: data)")
    parser.add_argument("--seq_len", type=_positive_int, default=None, metavar="L",
                        help="window length L in time steps for --domain (default: T of the samples)")
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="output folder (default: eval/ next to the first samples file)")
    parser.add_argument("--scale", choices=metrics.SCALES, default="zscore",
                        help="scaling applied to both arrays with statistics of the real series before the "
                             "metrics (default: zscore)")
    parser.add_argument("--max_samples", type=_positive_int, default=None, metavar="N",
                        help="subsample each array to at most this many series before the metrics; MMD time "
                             "grows with N_real * N_gen (default: use all series)")

    parser.add_argument("--seed", type=int, default=0, help="seed of the subsampling and plotted series")
    parser.add_argument("--samples_space", choices=samples_io.SPACES, default=None,
                        help="space of samples files that have no JSON sidecar (raw or normalized)")
    parser.add_argument("--no_plot", action="store_true", help="skip the PNG figures")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s", stream=sys.stderr)
    try:
        rows, json_path, markdown_path = run_cli(args)
    except SeriesInputError as error:
        logging.debug("Evaluation input rejected.", exc_info=True)
        print(f"error: {error}", file=sys.stderr)
        return 2

    print(format_markdown_table(rows))
    print()
    print(f"metrics: {json_path}")
    print(f"table:   {markdown_path}")
    for row in rows:
        if row["plot"] is not None:
            print(f"figure:  {row['plot']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Write prepared window files for bundled domains or for a user's own file.

Bundled domains (all of them when --domains is absent):

    python -m data_prep.prepare --data_root data --seq_len 24 --domains electricity,exchange

A user's own file, written in the same layout under the name given:

    python -m data_prep.prepare --data_root data --seq_len 24 --input my.csv --name mydata \
        --columns load,price --date_column timestamp

The logic lives in `timecraft_jax.data.prepare`.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from timecraft_jax.data import DataError, list_domains
from timecraft_jax.data.prepare import prepare_domains, prepare_user_file
from timecraft_jax.data.windows import NAN_POLICIES


def _column(token: str) -> str | int:
    return int(token) if token.lstrip("-").isdigit() else token


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m data_prep.prepare",
        description="Write {name}_{L}_{train|val|all}.npy window files and manifest.json into --data_root.",
    )
    parser.add_argument("--data_root", required=True, help="Output folder.")
    parser.add_argument("--seq_len", type=int, required=True, help="Window length L in time steps.")
    parser.add_argument(
        "--domains",
        default=None,
        help=f"Comma-separated bundled domains; default all of: {','.join(list_domains())}.",
    )
    parser.add_argument(
        "--nan_policy", default="drop", choices=NAN_POLICIES,
        help="drop: remove windows containing NaN; interpolate: fill gaps up to --max_gap steps first.",
    )
    parser.add_argument(
        "--max_gap", type=int, default=0, help="Maximum NaN gap (steps) that --nan_policy interpolate fills."
    )
    parser.add_argument("--overwrite", action="store_true", help="Rewrite files that already exist.")
    parser.add_argument("--input", default=None, help="A user file to prepare instead of bundled domains.")
    parser.add_argument("--name", default=None, help="Dataset name for --input, used in the file names.")
    parser.add_argument("--columns", default=None, help="Comma-separated column names or positions of --input to keep.")
    parser.add_argument("--stride", type=int, default=None, help="Step between window starts for --input; default L.")
    parser.add_argument("--date_column", default=None, help="Date/time column of a delimited --input to remove.")
    parser.add_argument("--sep", default=None, help="Column separator of a delimited --input; default: detected.")
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        if args.input is not None:
            if not args.name:
                raise DataError("--input needs --name, the dataset name used in the output file names")
            columns = [_column(c) for c in args.columns.split(",")] if args.columns else None
            date_column = _column(args.date_column) if args.date_column is not None else None
            entries = {
                args.name: prepare_user_file(
                    args.input, args.name, args.seq_len, args.data_root,
                    columns=columns, stride=args.stride, date_column=date_column, sep=args.sep,
                    nan_policy=args.nan_policy, max_gap=args.max_gap, overwrite=args.overwrite,
                )
            }
        else:
            if args.name or args.columns or args.stride or args.date_column or args.sep:
                raise DataError("--name, --columns, --stride, --date_column and --sep apply only with --input")
            domains = [d.strip() for d in args.domains.split(",") if d.strip()] if args.domains else None
            entries = prepare_domains(
                domains, args.seq_len, args.data_root,
                nan_policy=args.nan_policy, max_gap=args.max_gap, overwrite=args.overwrite,
            )
    except DataError as error:
        logging.error("%s", error)
        return 2
    for name, entry in entries.items():
        print(json.dumps({"domain": name, "windows": entry["windows"], "files": entry["files"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

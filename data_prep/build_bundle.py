"""Rebuild `timecraft_jax/data/bundled/` from the raw source files (maintainer script).

    python -m data_prep.build_bundle --raw_dir ../shared/data/raw

Each bundled file keeps only the columns the registry reads, with the values as written in the
source (no rounding), and is gzipped unless it is small. `ATTRIBUTION.md` is written from the
`SOURCES` table below. The installed package never needs the raw folder.
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
from pathlib import Path

import pandas as pd

from timecraft_jax.data.registry import BEIJING_STATIONS, BUNDLED_DIR, DOMAINS

# Per bundled file: raw source path, original repository @ commit (path), what is kept, changes.
SOURCES = {
    "electricity": (
        "imputebench_znorm/electricity_normal.txt.gz",
        "eXascaleInfolab/bench-vldb20 @ 21417136 (Datasets/real_world/electricity/electricity_normal.txt)",
        "all 5000 steps x 20 clients",
        "none (the source was gzipped when collected)",
    ),
    "solar": (
        "nsrdb_psm3_solar/test_psm3_2017.csv.gz",
        "pvlib/pvlib-python @ 1eafae0e (tests/data/test_psm3_2017.csv)",
        "the GHI column, all 17520 half-hourly rows",
        "other columns removed; gzip",
    ),
    "wind": (
        "ireland_daily_wind_weather/wind_dataset.csv",
        "Sayali2905/wind_speed_prediction @ da9efb5a (wind_dataset.csv)",
        "the DATE and 'Average wind speed [knots]' columns, all 6574 days",
        "other columns removed (the source is latin-1; the kept header and values are ASCII); gzip",
    ),
    "traffic": (
        "imputegap_subsets/traffic.txt.gz",
        "eXascaleInfolab/ImputeGAP @ fd485cc2 (imputegap/datasets/traffic.txt)",
        "all 17544 steps x 20 sensors",
        "none (the source was gzipped when collected)",
    ),
    "taxi": (
        "nab_taxi_traffic/nyc_taxi.csv",
        "numenta/NAB @ d2854d17 (data/realKnownCause/nyc_taxi.csv)",
        "the whole file, 10320 rows",
        "none",
    ),
    "pedestrian": (
        "melbourne_pedestrian_tsibble/pedestrian.csv.gz",
        "tidyverts/tsibble @ c827e164 (data/pedestrian.rda, converted to csv with pyreadr)",
        "Count of the 4 sensors",
        "one GluonTS JSON line per sensor on a regular hourly UTC grid from its first to its last "
        "reading; missing hours written as \"NaN\"; gzip",
    ),
    "air": (
        "beijing_multisite_air_quality/PRSA_Data_<station>_20130301-20170228.csv.gz (12 files)",
        "Peiris94-dev/Beijing-Multi-Site-Air-Quality-Analysis @ fd1d119a (repository root)",
        "the PM2.5 column of each of the 12 stations, all 35064 hourly rows",
        "one column per station, named after it; NA written as an empty cell; gzip",
    ),
    "temperature": (
        "imputegap_subsets/temperature.txt.gz",
        "eXascaleInfolab/ImputeGAP @ 0b934609 (imputegap/datasets/temperature.txt)",
        "all 19358 days x 25 stations",
        "none (the source was gzipped when collected)",
    ),
    "rain": (
        "beijing_multisite_air_quality/PRSA_Data_<station>_20130301-20170228.csv.gz (12 files)",
        "Peiris94-dev/Beijing-Multi-Site-Air-Quality-Analysis @ fd1d119a (repository root)",
        "the RAIN column of each of the 12 stations, all 35064 hourly rows",
        "one column per station, named after it; NA written as an empty cell; gzip",
    ),
    "nn5": (
        "nn5_original/NN5-Final-Dataset.csv",
        "antoinecarme/pyaf @ 26cfd560 (data/NN5-Final-Dataset.csv)",
        "the whole file, 791 days x 111 ATMs plus the Day column, tab-separated",
        "gzip",
    ),
    "fred_md": (
        "monash_fred_md/fred_md_dataset.tsf",
        "rstudio/academyDatasets @ 1f518867 (data-raw/fred_md/fred_md_dataset.tsf)",
        "the whole file, 107 series x 728 months (its header has a cp1252 byte)",
        "none",
    ),
    "exchange": (
        "exchange_rate/exchange_rate.txt.gz",
        "laiguokun/multivariate-time-series-data @ d5be4e85 (exchange_rate/exchange_rate.txt.gz)",
        "all 7588 days x 8 currencies",
        "none",
    ),
    "stock": (
        "timegan_stock/stock_data.csv",
        "jsyoon0823/TimeGAN @ b5070a32 (data/stock_data.csv)",
        "the Open column, all 3685 days",
        "other columns removed",
    ),
    "web": (
        "monash_kaggle_web_traffic_1000/kaggle_web_traffic_dataset_1000_without_missing_values.tsf",
        "rakshitha123/SETAR_Trees @ 2c402f6c (datasets/kaggle_web_traffic_dataset_1000_without_missing_values.tsf)",
        "the whole file, 1000 series x 803 days",
        "gzip",
    ),
}


def _write_gzip(target: Path, data: bytes) -> None:
    # mtime=0 keeps the output byte-identical between rebuilds.
    with open(target, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=9, mtime=0) as f:
        f.write(data)


def _read_text_columns(path: Path, columns: list[str], encoding: str = "utf-8") -> pd.DataFrame:
    """Read `columns` of a csv as strings, so values are written back exactly as in the source."""
    return pd.read_csv(path, usecols=columns, dtype=str, keep_default_na=False, encoding=encoding)[columns]


def _beijing_column(raw_dir: Path, column: str) -> pd.DataFrame:
    table = {}
    for station in BEIJING_STATIONS:
        source = raw_dir / f"beijing_multisite_air_quality/PRSA_Data_{station}_20130301-20170228.csv.gz"
        values = _read_text_columns(source, [column])[column]
        table[station] = values.where(values != "NA", "")
    return pd.DataFrame(table)


def _pedestrian_jsonl(raw_dir: Path) -> bytes:
    table = pd.read_csv(raw_dir / SOURCES["pedestrian"][0])
    lines = []
    for sensor, group in table.groupby("Sensor", sort=False):
        times = pd.to_datetime(group["Date_Time_UTC"])
        grid = pd.date_range(times.min(), times.max(), freq="h")
        counts = pd.Series(group["Count"].to_numpy(), index=times).reindex(grid)
        target = ["NaN" if pd.isna(v) else int(v) for v in counts]
        record = {"start": str(grid[0]), "target": target, "item_id": sensor}
        lines.append(json.dumps(record, separators=(",", ":")))
    return ("\n".join(lines) + "\n").encode()


def build(raw_dir: Path, out_dir: Path) -> None:
    """Write every bundled file and ATTRIBUTION.md into `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)

    def copy(domain: str) -> None:
        shutil.copyfile(raw_dir / SOURCES[domain][0], out_dir / DOMAINS[domain].file)

    def gzip_file(domain: str) -> None:
        _write_gzip(out_dir / DOMAINS[domain].file, (raw_dir / SOURCES[domain][0]).read_bytes())

    def gzip_table(domain: str, table: pd.DataFrame) -> None:
        _write_gzip(out_dir / DOMAINS[domain].file, table.to_csv(index=False).encode())

    for domain in ("electricity", "traffic", "temperature", "exchange", "taxi", "fred_md"):
        copy(domain)
    for domain in ("nn5", "web"):
        gzip_file(domain)
    gzip_table("solar", _read_text_columns(raw_dir / SOURCES["solar"][0], ["GHI"]))
    wind_columns = ["DATE", "Average wind speed [knots]"]
    gzip_table("wind", _read_text_columns(raw_dir / SOURCES["wind"][0], wind_columns, encoding="latin-1"))
    gzip_table("air", _beijing_column(raw_dir, "PM2.5"))
    gzip_table("rain", _beijing_column(raw_dir, "RAIN"))
    _write_gzip(out_dir / DOMAINS["pedestrian"].file, _pedestrian_jsonl(raw_dir))
    stock = _read_text_columns(raw_dir / SOURCES["stock"][0], ["Open"])
    (out_dir / DOMAINS["stock"].file).write_text(stock.to_csv(index=False))

    (out_dir / "ATTRIBUTION.md").write_text(_attribution())


def _attribution() -> str:
    lines = [
        "# Bundled datasets: sources and licences",
        "",
        "One small real dataset per TimeDP domain, used by `timecraft_jax.data.registry`. Each file is",
        "a same-domain stand-in for the full-size source that the TimeDP reference uses; the full",
        "sources are too large to ship. Rebuild this folder with `python -m data_prep.build_bundle`.",
        "Values are kept exactly as written in the source; no file was rounded or resampled",
        "except where the change column says so.",
        "",
        "| domain | file | original dataset and licence | source repository @ commit (path) | kept | changes |",
        "|---|---|---|---|---|---|",
    ]
    for name, spec in DOMAINS.items():
        _, repository, kept, changes = SOURCES[name]
        lines.append(
            f"| {name} ({spec.split}) | `{spec.file}` | {spec.description}. Licence: {spec.licence} "
            f"| {repository} | {kept} | {changes} |"
        )
    lines += [
        "",
        "Licences marked unknown: the source repository states no licence for the data; these files",
        "are research benchmarks that are widely redistributed. Data under licences that forbid",
        "derivatives (for example ETT, CC BY-ND 4.0) is not bundled.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--raw_dir", type=Path, default=Path("../shared/data/raw"), help="Folder of raw source files.")
    parser.add_argument("--out_dir", type=Path, default=BUNDLED_DIR, help="Folder to write the bundle into.")
    args = parser.parse_args()
    build(args.raw_dir, args.out_dir)
    total = sum(p.stat().st_size for p in args.out_dir.iterdir())
    print(f"wrote {len(list(args.out_dir.iterdir()))} files, {total / 1e6:.2f} MB, to {args.out_dir}")


if __name__ == "__main__":
    main()

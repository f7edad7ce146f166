"""Bundled real datasets, one per TimeDP domain, and how to read each one.

The files sit in `timecraft_jax/data/bundled/`; `bundled/ATTRIBUTION.md` gives each source,
licence and the changes made. They are small same-domain stand-ins for the reference's full-size
sources, so results on them are not comparable with the published TimeDP numbers.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from timecraft_jax.data.readers import DataError, SeriesCollection, read_series, stack_series

BUNDLED_DIR = Path(__file__).resolve().parent / "bundled"


@dataclasses.dataclass(frozen=True)
class DomainSpec:
    """One bundled domain: its file, how to read it, and how the reference windows it."""

    name: str
    file: str  # File name inside `bundled/`.
    reader_kwargs: dict[str, Any]  # Passed to the reader chosen by the file extension.
    columns: tuple[str, ...]  # Channel names kept from the file (descriptive; selection is in reader_kwargs).
    frequency: str
    licence: str
    description: str
    split: str  # 'seen' (training domain) or 'unseen' (held out for the k-shot protocol).
    stack: bool = False  # True: stack equal-length univariate series into one multichannel series.
    stride: int | None = None  # Window stride; None means the window length (non-overlapping).
    first_value_scaling: bool = False  # True: divide each window by its first value (reference stock).
    fill_gaps: int = 0  # Interior NaN gaps up to this many steps are filled linearly under any nan_policy.

    @property
    def path(self) -> Path:
        return BUNDLED_DIR / self.file

    @property
    def seen(self) -> bool:
        return self.split == "seen"


BEIJING_STATIONS = (
    "Aotizhongxin", "Changping", "Dingling", "Dongsi", "Guanyuan", "Gucheng",
    "Huairou", "Nongzhanguan", "Shunyi", "Tiantan", "Wanliu", "Wanshouxigong",
)

_DOMAINS = (
    DomainSpec(
        name="electricity",
        file="electricity_normal.txt.gz",
        reader_kwargs={"header": False},
        columns=tuple(f"client_{i}" for i in range(20)),
        frequency="15min",
        licence="CC BY 4.0",
        description="UCI ElectricityLoadDiagrams20112014, 20 clients x 5000 steps, z-normalised per client",
        split="seen",
    ),
    DomainSpec(
        name="solar",
        file="nsrdb_ghi_2017.csv.gz",
        reader_kwargs={"columns": ["GHI"]},
        columns=("GHI",),
        frequency="30min",
        licence="public domain (NREL NSRDB); file from pvlib-python, BSD-3-Clause",
        description="NSRDB PSM3 global horizontal irradiance (W/m^2) at one site, year 2017",
        split="seen",
    ),
    DomainSpec(
        name="wind",
        file="ireland_wind_daily.csv.gz",
        reader_kwargs={"date_column": "DATE"},
        columns=("Average wind speed [knots]",),
        frequency="D",
        licence="unknown (Met Eireann station data via Kaggle)",
        description="Daily average wind speed (knots) at an Irish station, 1961-1978",
        split="seen",
    ),
    DomainSpec(
        name="traffic",
        file="traffic.txt.gz",
        reader_kwargs={"header": False},
        columns=tuple(f"sensor_{i}" for i in range(20)),
        frequency="h",
        licence="Caltrans PeMS public data; file from ImputeGAP, MIT",
        description="PeMS road occupancy (0-1), first 20 of the 862 LSTNet sensors, 17544 hourly steps",
        split="seen",
    ),
    DomainSpec(
        name="taxi",
        file="nyc_taxi.csv",
        reader_kwargs={"date_column": "timestamp"},
        columns=("value",),
        frequency="30min",
        licence="NYC TLC public data; file from Numenta NAB, MIT",
        description="NYC taxi passengers per 30 minutes, 2014-07 to 2015-01",
        split="seen",
    ),
    DomainSpec(
        name="pedestrian",
        file="melbourne_pedestrian_hourly.jsonl.gz",
        reader_kwargs={},
        columns=("count",),
        frequency="h",
        licence="CC BY (City of Melbourne open data); converted from the tsibble package, GPL-3",
        description="Hourly pedestrian counts of 4 Melbourne sensors, 2015-2016, unequal lengths, gaps as NaN",
        split="seen",
    ),
    DomainSpec(
        name="air",
        file="beijing_pm25.csv.gz",
        reader_kwargs={},
        columns=BEIJING_STATIONS,
        frequency="h",
        licence="CC BY 4.0 (UCI Beijing Multi-Site Air Quality)",
        description="Hourly PM2.5 (ug/m^3) of 12 Beijing stations, 2013-03 to 2017-02, with NaN",
        split="seen",
        # The reference's air source (GluonTS kdd_cup_2018_without_missing) is imputed. Without
        # filling, a NaN at any of the 12 stations removes the window: none of length 336 remains.
        fill_gaps=12,
    ),
    DomainSpec(
        name="temperature",
        file="temperature.txt.gz",
        reader_kwargs={"header": False},
        columns=tuple(f"station_{i}" for i in range(25)),
        frequency="D",
        licence="unknown (China Meteorological Administration); file from ImputeGAP, MIT",
        description="Daily temperature of 25 Chinese stations (integers, likely 0.1 degC), 19358 days",
        split="seen",
    ),
    DomainSpec(
        name="rain",
        file="beijing_rain.csv.gz",
        reader_kwargs={},
        columns=BEIJING_STATIONS,
        frequency="h",
        licence="CC BY 4.0 (UCI Beijing Multi-Site Air Quality)",
        description="Hourly rainfall (mm) of 12 Beijing stations, mostly exact zeros, with NaN",
        split="seen",
    ),
    DomainSpec(
        name="nn5",
        file="NN5-Final-Dataset.csv.gz",
        reader_kwargs={"sep": "\t", "date_column": "Day"},
        columns=tuple(f"NN5-{i:03d}" for i in range(1, 112)),
        frequency="D",
        licence="NN5 competition data (Monash republishes it as CC BY 4.0)",
        description="Daily cash withdrawals of 111 UK ATMs, 791 days, 1677 missing values",
        split="seen",
        # The reference trains on an imputed copy (nn5_daily_without_missing). Every gap here is
        # interior and at most 7 days. Without filling, no 24-day window of all 111 ATMs is complete.
        fill_gaps=7,
    ),
    DomainSpec(
        name="fred_md",
        file="fred_md_dataset.tsf",
        reader_kwargs={},
        columns=tuple(f"T{i}" for i in range(1, 108)),
        frequency="monthly",
        licence="CC BY 4.0 (Monash forecasting archive)",
        description="FRED-MD: 107 monthly US macro-economic series, 728 months from 1959-01",
        split="seen",
        stack=True,
    ),
    DomainSpec(
        name="exchange",
        file="exchange_rate.txt.gz",
        reader_kwargs={"header": False},
        columns=tuple(f"currency_{i}" for i in range(8)),
        frequency="D",
        licence="unknown (LSTNet research redistribution)",
        description="Daily exchange rates of 8 currencies, 7588 days from 1990",
        split="seen",
    ),
    DomainSpec(
        name="stock",
        file="google_stock_open.csv",
        reader_kwargs={"columns": ["Open"]},
        columns=("Open",),
        frequency="B",
        licence="unknown (Yahoo Finance prices, from the TimeGAN repository)",
        description="Google daily opening price, 3685 trading days from 2004-08; windows scaled by their first value",
        split="unseen",
        stride=1,
        first_value_scaling=True,
    ),
    DomainSpec(
        name="web",
        file="kaggle_web_traffic_1000.tsf.gz",
        reader_kwargs={},
        columns=tuple(f"T{i}" for i in range(1, 1001)),
        frequency="daily",
        licence="CC BY 4.0 (Monash forecasting archive; Kaggle competition data)",
        description="Daily Wikipedia page views, 1000 series x 803 days from 2015-07-01",
        split="unseen",
        stack=True,
    ),
)

DOMAINS: dict[str, DomainSpec] = {spec.name: spec for spec in _DOMAINS}


def list_domains(split: str | None = None) -> list[str]:
    """Return the bundled domain names, optionally only the 'seen' or 'unseen' ones."""
    if split not in (None, "seen", "unseen"):
        raise DataError(f"unknown split {split!r}; expected 'seen', 'unseen' or None")
    return [name for name, spec in DOMAINS.items() if split is None or spec.split == split]


def get_domain(name: str) -> DomainSpec:
    """Return the spec of bundled domain `name`."""
    if name not in DOMAINS:
        raise DataError(f"unknown domain {name!r}; known domains: {', '.join(DOMAINS)}")
    return DOMAINS[name]


def load_domain(name: str) -> SeriesCollection:
    """Read the bundled file of domain `name`, stacking its series into channels when the spec says so."""
    spec = get_domain(name)
    if not spec.path.is_file():
        raise DataError(
            f"bundled file {spec.path} of domain {name!r} is missing; reinstall timecraft_jax "
            "or rebuild the bundle with `python -m data_prep.build_bundle`"
        )
    collection = read_series(spec.path, **spec.reader_kwargs)
    return stack_series(collection) if spec.stack else collection

"""Readers that turn time-series files into lists of float64 `(T_i, C)` arrays.

Supported formats, chosen by file extension (a trailing `.gz` is decompressed):

* Monash `.tsf`: one univariate series per data line, `?` marks a missing value.
* Delimited text (`.csv`, `.txt`, `.tsv`): one multichannel series, one column per channel.
* `.npy`: `(T,)` and `(T, C)` are one series, `(N, T, C)` is N series.
* GluonTS JSON lines (`.json`, `.jsonl`): one series per line, `{"start": ..., "target": [...]}`.

Every reader returns a `SeriesCollection` and raises `DataError` for unusable input.
"""

from __future__ import annotations

import csv
import dataclasses
import gzip
import io
import json
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd


class DataError(ValueError):
    """Invalid or insufficient input data, with the value at fault and the fix."""


@dataclasses.dataclass
class SeriesCollection:
    """Series read from one file; each series is float64 `(T_i, C)` with NaN for missing values."""

    series: list[np.ndarray]
    series_names: list[str]
    channel_names: list[str]
    frequency: str | None = None
    attributes: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def num_series(self) -> int:
        return len(self.series)

    @property
    def lengths(self) -> list[int]:
        return [s.shape[0] for s in self.series]


# Strings read as a missing value in delimited text, besides pandas' defaults (empty, NA, NaN, ...).
MISSING_MARKERS = ("?",)
DELIMITED_EXTENSIONS = (".csv", ".txt", ".tsv")
JSON_EXTENSIONS = (".json", ".jsonl")
SUPPORTED_EXTENSIONS = (".tsf", ".npy") + DELIMITED_EXTENSIONS + JSON_EXTENSIONS


def file_format(path: str | Path) -> str:
    """Return the format of `path` from its extension: tsf, delimited, npy or json."""
    suffixes = [s.lower() for s in Path(path).suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    extension = suffixes[-1] if suffixes else ""
    if extension == ".tsf":
        return "tsf"
    if extension in DELIMITED_EXTENSIONS:
        return "delimited"
    if extension == ".npy":
        return "npy"
    if extension in JSON_EXTENSIONS:
        return "json"
    raise DataError(
        f"unknown file extension {extension or '(none)'!r} of {path}; supported: "
        f"{', '.join(SUPPORTED_EXTENSIONS)}, each optionally followed by .gz"
    )


def read_series(path: str | Path, **kwargs: Any) -> SeriesCollection:
    """Read `path` with the reader for its extension; `kwargs` go to that reader."""
    readers = {"tsf": read_tsf, "delimited": read_delimited, "npy": read_npy, "json": read_jsonl}
    return readers[file_format(path)](path, **kwargs)


def _read_bytes(path: str | Path) -> bytes:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    if path.suffix.lower() == ".gz":
        with gzip.open(path, "rb") as f:
            return f.read()
    return path.read_bytes()


def _decode(raw: bytes) -> str:
    # UTF-8 first; Monash files are cp1252 and some CSVs latin-1. latin-1 decodes any byte.
    for encoding in ("utf-8-sig", "cp1252", "latin-1"):
        try:
            return raw.decode(encoding)
        except UnicodeDecodeError:
            continue
    raise AssertionError("latin-1 decodes every byte string")


def _read_text(path: str | Path) -> str:
    text = _decode(_read_bytes(path))
    if not text.strip():
        raise DataError(f"data file is empty: {path}")
    return text


def _select(names: Sequence[str], selection: Sequence[str | int] | None, what: str, path: str | Path) -> list[int]:
    """Map names or integer positions in `selection` to positions in `names`."""
    if selection is None:
        return list(range(len(names)))
    if isinstance(selection, (str, int)):
        selection = [selection]
    positions = []
    for item in selection:
        if isinstance(item, str) and item not in names and item.lstrip("-").isdigit():
            item = int(item)  # A position given on the command line.
        if isinstance(item, (int, np.integer)) and not isinstance(item, bool):
            if not -len(names) <= item < len(names):
                raise DataError(f"{what} index {item} is out of range for {path}, which has {len(names)} {what}s")
            positions.append(int(item) % len(names))
        elif str(item) in names:
            positions.append(list(names).index(str(item)))
        else:
            shown = ", ".join(map(repr, list(names)[:20])) + (" ..." if len(names) > 20 else "")
            raise DataError(f"{what} {item!r} not found in {path}; available: {shown}")
    return positions


def _finish(
    series: list[np.ndarray],
    series_names: list[str],
    channel_names: list[str],
    path: str | Path,
    series_selection: Sequence[str | int] | None,
    frequency: str | None = None,
    attributes: dict[str, Any] | None = None,
) -> SeriesCollection:
    keep = _select(series_names, series_selection, "series", path)
    series = [series[i] for i in keep]
    series_names = [series_names[i] for i in keep]
    if not series or all(s.shape[0] == 0 for s in series):
        raise DataError(f"no data values found in {path}")
    return SeriesCollection(series, series_names, channel_names, frequency, attributes or {})


def read_tsf(
    path: str | Path,
    series: Sequence[str | int] | None = None,
    name_attribute: str | None = None,
) -> SeriesCollection:
    """Read a Monash `.tsf` file into univariate `(T_i, 1)` series.

    Args:
      path: `.tsf` or `.tsf.gz` file.
      series: series to keep, by name or position; None keeps all.
      name_attribute: attribute that names each series; defaults to the first string attribute.

    Returns:
      A collection with `frequency` and, in `attributes`, the header fields (`horizon`, `missing`,
      `equallength`) and `series_attributes`, one dict of attribute values per series.
    """
    lines = _read_text(path).splitlines()
    attribute_names: list[str] = []
    attribute_types: list[str] = []
    header: dict[str, str] = {}
    values: list[np.ndarray] = []
    per_series: list[dict[str, str]] = []
    in_data = False

    for line_number, line in enumerate(lines, start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if not in_data:
            if not line.startswith("@"):
                raise DataError(f"{path}:{line_number}: expected an @ header line before @data, got {line[:60]!r}")
            tokens = line.split()
            keyword = tokens[0][1:].lower()
            if keyword == "data":
                in_data = True
            elif keyword == "attribute":
                if len(tokens) != 3:
                    raise DataError(f"{path}:{line_number}: @attribute needs a name and a type, got {line!r}")
                attribute_names.append(tokens[1])
                attribute_types.append(tokens[2].lower())
            elif len(tokens) >= 2:
                header[keyword] = " ".join(tokens[1:])
            continue

        fields = line.split(":")
        if len(fields) != len(attribute_names) + 1:
            raise DataError(
                f"{path}:{line_number}: expected {len(attribute_names)} attribute fields and the values "
                f"separated by ':', got {len(fields)} fields"
            )
        tokens = fields[-1].split(",")
        cells = np.array([math.nan if t.strip() == "?" else _parse_float(t, path, line_number) for t in tokens])
        if np.isnan(cells).all():
            raise DataError(f"{path}:{line_number}: every value of this series is missing ('?')")
        values.append(cells[:, None])
        per_series.append(dict(zip(attribute_names, fields[:-1])))

    if not in_data:
        raise DataError(f"{path} has no @data line, so it is not a .tsf file")
    if not values:
        raise DataError(f"no data values found in {path}")

    string_attributes = [n for n, t in zip(attribute_names, attribute_types) if t == "string"]
    name_attribute = name_attribute or (string_attributes[0] if string_attributes else None)
    if name_attribute is not None and name_attribute not in attribute_names:
        raise DataError(f"attribute {name_attribute!r} not found in {path}; available: {attribute_names}")
    names = [s[name_attribute] if name_attribute else f"series_{i}" for i, s in enumerate(per_series)]

    keep = _select(names, series, "series", path)
    attributes = {
        "horizon": header.get("horizon"),
        "missing": header.get("missing"),
        "equallength": header.get("equallength"),
        "series_attributes": [per_series[i] for i in keep],
    }
    return _finish(values, names, ["value"], path, series, header.get("frequency"), attributes)


def _parse_float(token: str, path: str | Path, line_number: int) -> float:
    try:
        return float(token)
    except ValueError:
        raise DataError(f"{path}:{line_number}: non-numeric value {token.strip()[:40]!r} in a series") from None


def _sniff_separator(sample_lines: list[str]) -> str | None:
    """Return the separator that splits every line of `sample_lines` into the same number (> 1) of
    fields, or None for runs of whitespace."""
    for separator in ("\t", ",", ";", "|"):
        widths = {len(next(csv.reader([line], delimiter=separator))) for line in sample_lines}
        if len(widths) == 1 and widths.pop() > 1:
            return separator
    return None


def _split_row(line: str, sep: str | None) -> list[str]:
    return next(csv.reader([line], delimiter=sep)) if sep else line.split()


def _is_number(token: str) -> bool:
    token = token.strip().strip('"').strip("'")
    if token in ("", "?") or token.lower() in ("nan", "na", "null"):
        return True
    try:
        float(token)
    except ValueError:
        return False
    return True


def read_delimited(
    path: str | Path,
    sep: str | None = None,
    header: bool | None = None,
    columns: Sequence[str | int] | None = None,
    date_column: str | int | None = None,
) -> SeriesCollection:
    """Read a delimited text table into one `(T, C)` series with one channel per column.

    Args:
      path: `.csv`, `.txt` or `.tsv` file, optionally gzipped.
      sep: column separator; None detects tab, comma, semicolon, `|` or whitespace from the first lines.
      header: whether the first row contains column names; None detects it (a text cell above a
        number, or the column numbers 0..C-1).
      columns: columns to keep, by name or position, after `date_column` is removed; None keeps all.
      date_column: column (name or position) of dates or times, removed before conversion.

    Empty cells, `NA`, `NaN` and `?` become NaN.
    """
    text = _read_text(path)
    lines = [line for line in text.splitlines() if line.strip()]
    if sep is None:
        sep = _sniff_separator(lines[:21])
    if header is None:
        # A header row has a text cell where the next row has a number; a date column is text in both.
        first_row = _split_row(lines[0], sep)
        second_row = _split_row(lines[1], sep) if len(lines) > 1 else [""] * len(first_row)
        header = any(not _is_number(a) and _is_number(b) for a, b in zip(first_row, second_row))
        # The reference writes its CSVs with the column numbers 0..D-1 as the header row.
        numbered = [t.strip() for t in first_row] == [str(i) for i in range(len(first_row))]
        header = header or (len(first_row) > 1 and numbered)

    table = pd.read_csv(
        io.StringIO(text),
        sep=sep if sep is not None else r"\s+",
        header=0 if header else None,
        dtype=str,
        keep_default_na=False,
        skip_blank_lines=True,
    )
    if table.empty:
        raise DataError(f"no data rows found in {path}")
    table.columns = [str(c).strip() for c in table.columns]

    names = list(table.columns)
    if date_column is not None:
        date_position = _select(names, [date_column], "column", path)[0]
        table = table.drop(columns=table.columns[date_position])
        names = list(table.columns)
    keep = _select(names, columns, "column", path)
    table = table.iloc[:, keep]

    values = np.empty(table.shape, dtype=np.float64)
    for j, name in enumerate(table.columns):
        raw = table.iloc[:, j].str.strip()
        missing = raw.str.lower().isin(["", "na", "nan", "null", "none", "n/a", *MISSING_MARKERS])
        numbers = pd.to_numeric(raw.where(~missing, None), errors="coerce")
        bad = numbers.isna() & ~missing
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise DataError(
                f"column {name!r} of {path} is not numeric: data row {row} contains {raw.iloc[row]!r}; "
                f"select numeric columns (--columns / --prompt_column), or drop a date column (--date_column {name!r})"
            )
        values[:, j] = numbers.to_numpy(dtype=np.float64)

    return _finish([values], [Path(path).name], list(table.columns), path, None)


def read_npy(
    path: str | Path,
    columns: Sequence[str | int] | None = None,
    series: Sequence[str | int] | None = None,
) -> SeriesCollection:
    """Read a `.npy` array: `(T,)` or `(T, C)` is one series, `(N, T, C)` is N series of `(T, C)`.

    A 2-D array is always read as `(T, C)`. One with more columns than rows raises, because it is
    more likely N univariate windows `(N, T)`; save those as `(N, T, 1)`.
    """
    try:
        array = np.load(io.BytesIO(_read_bytes(path)), allow_pickle=False)
    except ValueError as error:
        raise DataError(f"{path} is not a numeric .npy array: {error}") from None
    if array.size == 0:
        raise DataError(f"array in {path} is empty (shape {array.shape})")
    if not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
        raise DataError(f"array in {path} has dtype {array.dtype}; expected a real numeric dtype")

    if array.ndim == 1:
        array = array[None, :, None]
    elif array.ndim == 2:
        if array.shape[1] > array.shape[0]:
            raise DataError(
                f"2-D array in {path} has shape {array.shape}, more channels than time steps; "
                "save one series as (T, C) with T >= C, a wide series as (1, T, C), or N windows as (N, T, C)"
            )
        array = array[None]
    elif array.ndim != 3:
        raise DataError(
            f"array in {path} has rank {array.ndim} (shape {array.shape}); expected (T,), (T, C) or (N, T, C)"
        )

    channel_names = [str(c) for c in range(array.shape[2])]
    keep = _select(channel_names, columns, "column", path)
    array = array[:, :, keep].astype(np.float64)
    series_list = list(array)
    names = [str(i) for i in range(len(series_list))]
    return _finish(series_list, names, [channel_names[c] for c in keep], path, series)


def read_jsonl(
    path: str | Path,
    series: Sequence[str | int] | None = None,
    columns: Sequence[str | int] | None = None,
) -> SeriesCollection:
    """Read GluonTS JSON lines: one `{"start": ..., "target": [...]}` object per line.

    A univariate target is a list of T numbers. A multivariate target is a list of C lists of T
    numbers (GluonTS layout) and is returned as `(T, C)`. `null`, `NaN` and `"NaN"` are missing
    values. Series are named by `item_id` when present, else by line position. A file that contains
    one JSON array of such objects is read as well.
    """
    text = _read_text(path).strip()
    try:
        if text.startswith("["):
            records = json.loads(text)
        else:
            records = [json.loads(line) for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError as error:
        raise DataError(f"{path} is not valid JSON lines: {error}") from None

    series_list, names, starts = [], [], []
    num_channels = None
    for i, record in enumerate(records):
        if not isinstance(record, dict) or "target" not in record:
            raise DataError(f"record {i} of {path} has no 'target' field; expected {{'start': ..., 'target': [...]}}")
        try:
            target = np.array(
                [[math.nan if v is None else float(v) for v in row] for row in record["target"]]
                if record["target"] and isinstance(record["target"][0], list)
                else [math.nan if v is None else float(v) for v in record["target"]],
                dtype=np.float64,
            )
        except (TypeError, ValueError):
            raise DataError(f"record {i} of {path} has a non-numeric value in 'target'") from None
        target = target[:, None] if target.ndim == 1 else target.T  # [T, C]
        if num_channels is not None and target.shape[1] != num_channels:
            raise DataError(f"record {i} of {path} has {target.shape[1]} channels, earlier records have {num_channels}")
        num_channels = target.shape[1]
        series_list.append(target)
        names.append(str(record.get("item_id", i)))
        starts.append(record.get("start"))

    if not series_list:
        raise DataError(f"no records found in {path}")
    channel_names = [str(c) for c in range(num_channels)]
    keep_channels = _select(channel_names, columns, "column", path)
    series_list = [s[:, keep_channels] for s in series_list]
    keep = _select(names, series, "series", path)
    attributes = {"start": [starts[i] for i in keep]}
    return _finish(series_list, names, [channel_names[c] for c in keep_channels], path, series, None, attributes)


def stack_series(collection: SeriesCollection) -> SeriesCollection:
    """Stack N equal-length univariate series into one `(T, N)` series, one channel per series."""
    lengths = set(collection.lengths)
    if len(lengths) != 1:
        raise DataError(
            f"cannot stack series of unequal lengths ({min(lengths)} to {max(lengths)} steps) into channels; "
            "window each series separately instead"
        )
    if any(s.shape[1] != 1 for s in collection.series):
        raise DataError("only univariate series can be stacked into channels")
    stacked = np.concatenate(collection.series, axis=1)
    return SeriesCollection(
        [stacked], ["stacked"], list(collection.series_names), collection.frequency, dict(collection.attributes)
    )

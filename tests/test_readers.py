"""Readers on every bundled real file and on small synthetic files."""

import gzip
import json

import numpy as np
import pytest

from timecraft_jax.data import DataError, registry
from timecraft_jax.data.readers import read_delimited, read_jsonl, read_npy, read_series, read_tsf, stack_series


# (domain, number of series, (T, C) of the first series, NaN count over all series)
BUNDLED_COUNTS = [
    ("electricity", 1, (5000, 20), 0),
    ("solar", 1, (17520, 1), 0),
    ("wind", 1, (6574, 1), 0),
    ("traffic", 1, (17544, 20), 0),
    ("taxi", 1, (10320, 1), 0),
    ("air", 1, (35064, 12), 8739),
    ("temperature", 1, (19358, 25), 0),
    ("rain", 1, (35064, 12), 390),
    ("nn5", 1, (791, 111), 1677),
    ("exchange", 1, (7588, 8), 0),
    ("stock", 1, (3685, 1), 0),
]


@pytest.mark.parametrize("domain,num_series,shape,num_nan", BUNDLED_COUNTS)
def test_bundled_delimited_counts(domain, num_series, shape, num_nan):
    spec = registry.get_domain(domain)
    collection = read_series(spec.path, **spec.reader_kwargs)
    assert collection.num_series == num_series
    assert collection.series[0].shape == shape
    assert collection.series[0].dtype == np.float64
    assert sum(int(np.isnan(s).sum()) for s in collection.series) == num_nan
    assert len(collection.channel_names) == shape[1]


def test_bundled_exchange_values():
    collection = read_series(registry.get_domain("exchange").path)
    np.testing.assert_allclose(collection.series[0][0, :3], [0.7855, 1.611, 0.861698])


def test_bundled_taxi_date_column_skipped():
    spec = registry.get_domain("taxi")
    collection = read_series(spec.path, **spec.reader_kwargs)
    assert collection.channel_names == ["value"]
    assert collection.series[0][:2, 0].tolist() == [10844.0, 8127.0]


def test_bundled_fred_md_tsf():
    collection = read_tsf(registry.get_domain("fred_md").path)
    assert collection.num_series == 107
    assert set(collection.lengths) == {728}
    assert collection.frequency == "monthly"
    assert collection.series_names[:2] == ["T1", "T2"]
    assert collection.series[0][0, 0] == 2437.296
    assert collection.attributes["series_attributes"][0]["start_timestamp"] == "1959-01-01 00-00-00"


def test_bundled_web_tsf_gz_stacked():
    collection = registry.load_domain("web")
    assert collection.num_series == 1
    assert collection.series[0].shape == (803, 1000)
    assert collection.series[0][:3, 0].tolist() == [18.0, 11.0, 5.0]


def test_bundled_pedestrian_jsonl():
    collection = registry.load_domain("pedestrian")
    assert collection.num_series == 4
    assert collection.lengths == [17544, 16416, 17544, 17544]
    assert collection.series_names[0] == "Birrarung Marr"
    # Missing hours of the regular hourly grid are NaN: 2978 + 2 + 26 + 5.
    assert sum(int(np.isnan(s).sum()) for s in collection.series) == 3011
    assert collection.series[0][:2, 0].tolist() == [1630.0, 826.0]


def test_tsf_missing_and_selection(tmp_path):
    path = tmp_path / "small.tsf"
    path.write_bytes(
        "# comment line\n@relation test\n@attribute series_name string\n@frequency hourly\n"
        "@missing true\n@equallength false\n@data\nA:1,2,?,4\nB:5.5,6\nC:7,8,9\n".encode()
    )
    collection = read_tsf(path)
    assert collection.series_names == ["A", "B", "C"]
    assert collection.lengths == [4, 2, 3]
    assert collection.frequency == "hourly"
    assert np.isnan(collection.series[0][2, 0])
    assert collection.series[1][:, 0].tolist() == [5.5, 6.0]

    selected = read_tsf(path, series=["C", 0])
    assert selected.series_names == ["C", "A"]


def test_tsf_cp1252_bytes(tmp_path):
    path = tmp_path / "latin.tsf"
    path.write_bytes(b"# Journal 34(4):574\x96589\n@attribute series_name string\n@data\nX:1,2\n")
    assert read_tsf(path).series[0][:, 0].tolist() == [1.0, 2.0]


def test_tsf_all_missing_series_rejected(tmp_path):
    path = tmp_path / "bad.tsf"
    path.write_text("@attribute series_name string\n@data\nA:?,?\n")
    with pytest.raises(DataError, match="every value"):
        read_tsf(path)


def test_csv_header_and_no_header(tmp_path):
    with_header = tmp_path / "a.csv"
    with_header.write_text("date,x,y\n2020-01-01,1,2\n2020-01-02,3,\n")
    collection = read_delimited(with_header, date_column="date")
    assert collection.channel_names == ["x", "y"]
    np.testing.assert_array_equal(collection.series[0], [[1, 2], [3, np.nan]])

    without_header = tmp_path / "b.csv"
    without_header.write_text("1,2\n3,4\n5,6\n")
    collection = read_delimited(without_header)
    assert collection.series[0].shape == (3, 2)
    assert collection.series[0][0].tolist() == [1.0, 2.0]


@pytest.mark.parametrize("separator", ["\t", ";", " ", "|"])
def test_csv_separator_detected(tmp_path, separator):
    path = tmp_path / "s.txt"
    path.write_text("\n".join(separator.join(str(v) for v in row) for row in [[1, 2, 3], [4, 5, 6]]) + "\n")
    assert read_delimited(path).series[0].tolist() == [[1, 2, 3], [4, 5, 6]]


def test_csv_gz_and_column_selection(tmp_path):
    path = tmp_path / "t.csv.gz"
    with gzip.open(path, "wt") as f:
        f.write("a;b;c\n1;2;3\n4;?;6\n")
    collection = read_series(path, columns=["c", 0])
    assert collection.channel_names == ["c", "a"]
    assert collection.series[0].tolist() == [[3, 1], [6, 4]]
    assert np.isnan(read_series(path, columns=["b"]).series[0][1, 0])


def test_csv_non_numeric_column_named(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("x,label\n1,cat\n2,dog\n")
    with pytest.raises(DataError, match=r"column 'label'.*'cat'"):
        read_delimited(path)


def test_csv_unknown_column(tmp_path):
    path = tmp_path / "c.csv"
    path.write_text("x,y\n1,2\n")
    with pytest.raises(DataError, match="'z' not found"):
        read_delimited(path, columns=["z"])


def test_empty_file_rejected(tmp_path):
    path = tmp_path / "empty.csv"
    path.write_text("")
    with pytest.raises(DataError, match="empty"):
        read_series(path)


def test_unknown_extension_rejected(tmp_path):
    path = tmp_path / "data.parquet"
    path.write_bytes(b"x")
    with pytest.raises(DataError, match="unknown file extension '.parquet'"):
        read_series(path)


def test_jsonl_univariate_and_multivariate(tmp_path):
    path = tmp_path / "d.jsonl"
    records = [
        {"start": "2020-01-01", "target": [1, 2, "NaN", None], "item_id": "a"},
        {"start": "2020-02-01", "target": [3, 4]},
    ]
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    collection = read_jsonl(path)
    assert collection.series_names == ["a", "1"]
    assert collection.lengths == [4, 2]
    assert np.isnan(collection.series[0][2:, 0]).all()
    assert collection.attributes["start"] == ["2020-01-01", "2020-02-01"]

    multivariate = tmp_path / "m.json.gz"
    with gzip.open(multivariate, "wt") as f:
        f.write(json.dumps({"start": "2020", "target": [[1, 2, 3], [4, 5, 6]]}) + "\n")
    assert read_series(multivariate).series[0].tolist() == [[1, 4], [2, 5], [3, 6]]


@pytest.mark.parametrize(
    "shape,num_series,series_shape",
    [((7,), 1, (7, 1)), ((7, 2), 1, (7, 2)), ((3, 7, 2), 3, (7, 2))],
)
def test_npy_ranks(tmp_path, shape, num_series, series_shape):
    path = tmp_path / "a.npy"
    array = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    np.save(path, array)
    collection = read_npy(path)
    assert collection.num_series == num_series
    assert collection.series[0].shape == series_shape
    assert collection.series[0].dtype == np.float64
    np.testing.assert_array_equal(collection.series[-1].ravel(), array.reshape(num_series, -1)[-1])


def test_npy_rank_4_rejected(tmp_path):
    path = tmp_path / "a.npy"
    np.save(path, np.zeros((2, 3, 4, 5)))
    with pytest.raises(DataError, match="rank 4"):
        read_npy(path)


def test_npy_wide_2d_rejected(tmp_path):
    path = tmp_path / "a.npy"
    np.save(path, np.zeros((4, 96)))
    with pytest.raises(DataError, match=r"\(N, T, C\)"):
        read_npy(path)


def test_stack_unequal_lengths_rejected(tmp_path):
    path = tmp_path / "u.tsf"
    path.write_text("@attribute series_name string\n@data\nA:1,2,3\nB:1,2\n")
    with pytest.raises(DataError, match="unequal lengths"):
        stack_series(read_tsf(path))


def test_csv_headerless_with_date_column(tmp_path):
    path = tmp_path / "dated.csv"
    path.write_text("2020-01-01,1,2\n2020-01-02,3,4\n")
    collection = read_delimited(path, date_column=0)
    assert collection.series[0].tolist() == [[1, 2], [3, 4]]


def test_csv_quoted_separator_in_header(tmp_path):
    path = tmp_path / "quoted.csv"
    path.write_text('"load, kW",price\n1,2\n3,4\n')
    collection = read_delimited(path)
    assert collection.channel_names == ["load, kW", "price"]
    assert collection.series[0].tolist() == [[1, 2], [3, 4]]


def test_csv_numbered_header_detected(tmp_path):
    path = tmp_path / "reference_layout.csv"
    path.write_text("0,1,2\n5,6,7\n8,9,10\n")
    collection = read_delimited(path)
    assert collection.channel_names == ["0", "1", "2"]
    assert collection.series[0].shape == (2, 3)


def test_npy_object_array_rejected(tmp_path):
    path = tmp_path / "objects.npy"
    np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match="not a numeric .npy array"):
        read_npy(path)

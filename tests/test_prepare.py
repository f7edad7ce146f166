"""Prepared window files, manifest, loading and the data_prep CLI."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from timecraft_jax.data import DataError, get_domain, list_domains, load_prepared, prepare_domains, prepare_user_file
from timecraft_jax.data.prepare import read_manifest

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_registry_lists_every_domain():
    assert len(list_domains("seen")) == 12
    assert list_domains("unseen") == ["stock", "web"]
    for name in list_domains():
        spec = get_domain(name)
        assert spec.path.is_file(), spec.path
        assert spec.licence
    assert (get_domain("exchange").path.parent / "ATTRIBUTION.md").is_file()


def test_unknown_domain_lists_known_names():
    with pytest.raises(DataError, match="unknown domain 'ettm1'.*electricity.*web"):
        get_domain("ettm1")


def test_bundle_size_under_6_mb():
    bundle = get_domain("exchange").path.parent
    assert sum(p.stat().st_size for p in bundle.iterdir()) < 6e6


def test_prepare_seen_domains(tmp_path):
    entries = prepare_domains(["exchange", "fred_md", "nn5"], 24, tmp_path)
    assert set(entries) == {"exchange", "fred_md", "nn5"}

    train = np.load(tmp_path / "exchange_24_train.npy")
    val = np.load(tmp_path / "exchange_24_val.npy")
    # 7588 // 24 = 316 windows, the last 31 for validation.
    assert train.shape == (285, 24, 8)
    assert val.shape == (31, 24, 8)
    assert train.dtype == np.float32
    np.testing.assert_allclose(train[0, 0, :2], [0.7855, 1.611], rtol=1e-6)

    fred = np.load(tmp_path / "fred_md_24_train.npy")
    assert fred.shape == (27, 24, 107)  # 728 // 24 = 30 windows, 3 for validation

    manifest = read_manifest(tmp_path)["datasets"]
    exchange = manifest["exchange"]["24"]
    assert exchange["windows"] == {"train": 285, "val": 31}
    assert exchange["stride"] == 24
    assert exchange["source_files"] == ["exchange_rate.txt.gz"]
    assert exchange["nan_policy"] == "drop"
    assert exchange["windows_dropped_nan"] == 0
    assert exchange["created_by"].startswith("timecraft_jax")
    nn5 = manifest["nn5"]["24"]
    assert nn5["nan_policy"] == "interpolate"
    assert nn5["windows"] == {"train": 29, "val": 3}


def test_manifest_merges_entries(tmp_path):
    prepare_domains(["exchange"], 24, tmp_path)
    prepare_domains(["exchange"], 48, tmp_path)
    prepare_domains(["taxi"], 24, tmp_path)
    manifest = json.loads((tmp_path / "manifest.json").read_text())["datasets"]
    assert set(manifest) == {"exchange", "taxi"}
    assert set(manifest["exchange"]) == {"24", "48"}
    assert manifest["exchange"]["48"]["windows"] == {"train": 143, "val": 15}  # 7588 // 48 = 158


def test_existing_files_kept_unless_overwrite(tmp_path):
    prepare_domains(["taxi"], 24, tmp_path)
    path = tmp_path / "taxi_24_train.npy"
    np.save(path, np.zeros((1, 24, 1), dtype=np.float32))
    prepare_domains(["taxi"], 24, tmp_path)
    assert np.load(path).shape == (1, 24, 1)
    prepare_domains(["taxi"], 24, tmp_path, overwrite=True)
    assert np.load(path).shape == (387, 24, 1)


def test_prepare_unseen_domains(tmp_path):
    entries = prepare_domains(["stock", "web"], 24, tmp_path)
    stock = np.load(tmp_path / "stock_24_all.npy")
    assert stock.shape == (3685 - 24 + 1, 24, 1)
    np.testing.assert_allclose(stock[:, 0, 0], 1.0)
    np.testing.assert_allclose(stock[0, 1, 0], 50.178635 / 49.676899, rtol=1e-6)
    web = np.load(tmp_path / "web_24_all.npy")
    assert web.shape == (803 // 24 * 1000, 24, 1)
    # Sample-major flattening: window 0 of every series comes before window 1 of any series.
    assert web[:2, :3, 0].tolist() == [[18.0, 11.0, 5.0], web[1, :3, 0].tolist()]
    assert web[1000, 0, 0] == load_prepared(tmp_path, ["web"], 24)["web"]["all"][1000, 0, 0]
    assert entries["stock"]["windows"] == {"all": 3662}
    assert entries["stock"]["stride"] == 1


def test_load_prepared_round_trip(tmp_path):
    prepare_domains(["exchange", "taxi"], 24, tmp_path)
    loaded = load_prepared(tmp_path, ["exchange", "taxi"], 24)
    assert loaded["exchange"]["train"].shape == (285, 24, 8)
    assert loaded["taxi"]["val"].shape == (43, 24, 1)


def test_load_prepared_missing_file_names_command(tmp_path):
    with pytest.raises(DataError, match=r"solar_24_train.npy not found.*--seq_len 24 --domains solar"):
        load_prepared(tmp_path, ["solar"], 24)
    with pytest.raises(DataError, match=r"--input YOUR_FILE --name mine"):
        load_prepared(tmp_path, ["mine"], 24)


def test_prepare_user_file(tmp_path):
    source = tmp_path / "mine.csv"
    rows = [f"2020-01-{i % 28 + 1:02d},{i},{2 * i}" for i in range(100)]
    source.write_text("date,a,b\n" + "\n".join(rows) + "\n")
    entry = prepare_user_file(source, "mine", 10, tmp_path / "out", columns=["b"], date_column="date", stride=5)
    assert entry["windows"] == {"train": 18, "val": 1}  # (100 - 10) // 5 + 1 = 19 windows
    train = np.load(tmp_path / "out" / "mine_10_train.npy")
    assert train.shape == (18, 10, 1)
    assert train[1, :3, 0].tolist() == [10.0, 12.0, 14.0]
    with pytest.raises(DataError, match="bundled domain"):
        prepare_user_file(source, "exchange", 10, tmp_path / "out")


def test_cli_user_file(tmp_path):
    source = tmp_path / "series.npy"
    np.save(source, np.arange(200.0).reshape(100, 2))
    command = [
        sys.executable, "-m", "data_prep.prepare", "--data_root", str(tmp_path / "out"),
        "--seq_len", "10", "--input", str(source), "--name", "pair",
    ]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[-1])["windows"] == {"train": 9, "val": 1}
    assert np.load(tmp_path / "out" / "pair_10_val.npy").shape == (1, 10, 2)


def test_cli_unknown_domain_fails(tmp_path):
    command = [
        sys.executable, "-m", "data_prep.prepare", "--data_root", str(tmp_path), "--seq_len", "24", "--domains", "foo",
    ]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 2
    assert "unknown domain 'foo'" in result.stderr


def test_air_gaps_filled_for_long_windows(tmp_path):
    entry = prepare_domains(["air"], 336, tmp_path)["air"]
    assert entry["nan_policy"] == "interpolate"
    assert entry["max_gap"] == 12
    assert entry["windows"] == {"train": 37, "val": 4}
    assert np.isfinite(np.load(tmp_path / "air_336_train.npy")).all()

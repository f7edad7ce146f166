"""Tests of timecraft_jax.evaluate: the library functions and the command line in a subprocess."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from timecraft_jax import evaluate, samples_io

REPO_ROOT = Path(__file__).resolve().parents[1]


def _run_cli(*args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "timecraft_jax.evaluate", *map(str, args)],
        cwd=cwd,
        env=dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])),
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def workspace(tmp_path):
    """Prepared validation windows for two domains and matching raw samples."""
    rng = np.random.default_rng(0)
    data_root = tmp_path / "data"
    data_root.mkdir()
    # electricity: 3 channels, so the reference is read as univariate windows (20 * 3, 24, 1).
    np.save(data_root / "electricity_24_val.npy", (rng.normal(size=(20, 24, 3)) * 50 + 300).astype(np.float32))
    np.save(data_root / "exchange_24_val.npy", (rng.normal(size=(30, 24, 1)) * 0.1 + 1).astype(np.float32))
    samples_io.save_samples(tmp_path / "electricity.npy", rng.normal(size=(80, 24, 1)) * 50 + 300,
                            {"space": "raw", "domain": "electricity"})
    samples_io.save_samples(tmp_path / "exchange.npy", rng.normal(size=(50, 24, 1)) * 0.1 + 1.2,
                            {"space": "raw", "domain": "exchange"})
    return tmp_path


def _assert_user_error(result, *fragments):
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "error: " in result.stderr
    for fragment in fragments:
        assert fragment in result.stderr


def test_cli_domains_write_table(workspace):
    result = _run_cli("--samples", "electricity.npy", "exchange.npy", "--domain", "electricity", "exchange",
                      "--out", "eval", cwd=workspace)

    assert result.returncode == 0, result.stderr
    assert "| name | n_real | n_gen | MDD | flat KL | MMD |" in result.stdout
    assert "| electricity | 60 | 80 |" in result.stdout
    assert "| exchange | 30 | 50 |" in result.stdout
    out_dir = workspace / "eval"
    rows = json.loads((out_dir / "metrics.json").read_text())["rows"]
    assert [row["name"] for row in rows] == ["electricity", "exchange"]
    assert rows[1]["reference"] == str(Path("data") / "exchange_24_val.npy")
    assert rows[1]["samples_metadata"]["domain"] == "exchange"
    for row in rows:
        assert row["mdd"] > 0
        assert row["flat_kl"] > 0
        assert row["mmd_rbf"] > 0
    # exchange samples are shifted by 2 standard deviations, electricity samples are not.
    assert rows[1]["mmd_rbf"] > rows[0]["mmd_rbf"]
    assert "| exchange | 30 | 50 |" in (out_dir / "metrics.md").read_text()
    for name in ("electricity", "exchange"):
        figure = out_dir / f"{name}.png"
        assert figure.stat().st_size > 10_000
        assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert str(Path("eval") / f"{name}.png") in result.stdout


def test_cli_reference_file_and_subsampling(workspace):
    np.save(workspace / "real.npy", np.random.default_rng(1).normal(size=(200, 24)).astype(np.float32))
    samples_io.save_samples(workspace / "gen.npy", np.random.default_rng(2).normal(size=(150, 24, 1)),
                            {"space": "raw"})
    result = _run_cli("--samples", "gen.npy", "--reference", "real.npy", "--max_samples", "100", "--seed", "5",
                      "--no_plot", cwd=workspace)

    assert result.returncode == 0, result.stderr
    assert "| real | 100 | 100 |" in result.stdout
    row = json.loads((workspace / "eval" / "metrics.json").read_text())["rows"][0]
    assert row["n_real_total"] == 200
    assert row["n_gen_total"] == 150
    assert row["max_samples"] == 100
    assert row["seed"] == 5
    assert row["plot"] is None
    assert not (workspace / "eval" / "real.png").exists()


def test_cli_rejects_normalized_samples(workspace):
    samples_io.save_samples(workspace / "normalized.npy", np.zeros((10, 24, 1)), {"space": "normalized"})
    result = _run_cli("--samples", "normalized.npy", "--domain", "exchange", cwd=workspace)
    _assert_user_error(result, "'normalized' space", "'raw' space")


def test_cli_rejects_raw_samples_against_normalized_reference(workspace):
    samples_io.save_samples(workspace / "normalized_real.npy", np.zeros((10, 24, 1)), {"space": "normalized"})
    result = _run_cli("--samples", "exchange.npy", "--reference", "normalized_real.npy", cwd=workspace)
    _assert_user_error(result, "'raw' space", "'normalized' space")


def test_cli_rejects_length_mismatch(workspace):
    np.save(workspace / "short.npy", np.zeros((10, 12, 1), dtype=np.float32))
    result = _run_cli("--samples", "exchange.npy", "--reference", "short.npy", cwd=workspace)
    _assert_user_error(result, "(T, C) = (24, 1)", "(T, C) = (12, 1)")


def test_cli_missing_reference_names_prepare_command(workspace):
    result = _run_cli("--samples", "exchange.npy", "--domain", "exchange", "--data_root", "elsewhere",
                      cwd=workspace)
    _assert_user_error(
        result,
        str(Path("elsewhere") / "exchange_24_val.npy"),
        "python -m data_prep.prepare --data_root elsewhere --seq_len 24 --domains exchange",
    )


def test_cli_rejects_nan_samples_without_sidecar(workspace):
    samples = np.zeros((10, 24, 1), dtype=np.float32)
    samples[0, :4] = np.nan
    np.save(workspace / "bare.npy", samples)
    no_space = _run_cli("--samples", "bare.npy", "--domain", "exchange", cwd=workspace)
    _assert_user_error(no_space, "bare.json not found")
    with_space = _run_cli("--samples", "bare.npy", "--domain", "exchange", "--samples_space", "raw", cwd=workspace)
    _assert_user_error(with_space, "gen contains 4 NaN values", "bare.npy")


def test_evaluate_arrays_writes_outputs(tmp_path):
    rng = np.random.default_rng(0)
    real = rng.normal(size=(40, 16, 3))
    gen = rng.normal(size=(25, 16, 3)) + 0.5
    row = evaluate.evaluate_arrays(real, gen, tmp_path / "out", "toy", scale="minmax")

    assert row["name"] == "toy"
    assert row["n_real"] == 40
    assert row["n_gen"] == 25
    assert row["scale"] == "minmax"
    assert Path(row["plot"]) == tmp_path / "out" / "toy.png"
    assert Path(row["plot"]).stat().st_size > 10_000
    saved = json.loads((tmp_path / "out" / "metrics.json").read_text())["rows"][0]
    assert saved["mmd_rbf"] == row["mmd_rbf"]
    table = (tmp_path / "out" / "metrics.md").read_text()
    assert f"| toy | 40 | 25 | {row['mdd']:.4g} | {row['flat_kl']:.4g} | {row['mmd_rbf']:.4g} |" in table

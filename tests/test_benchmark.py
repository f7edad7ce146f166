"""Tests of timecraft_jax.benchmark: the k-shot split, sample counts, resume and the report files."""

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from timecraft_jax import benchmark, sampling
from timecraft_jax.config_lib import load_config_file
from timecraft_jax.data.prepare import prepare_domains

REPO_ROOT = Path(__file__).resolve().parents[1]

# configs/tiny.py shrunk to two training domains, one unseen domain and a few samples per unit.
CONFIG_TEMPLATE = '''
import importlib.util

_spec = importlib.util.spec_from_file_location("tiny_config", {tiny!r})
_tiny = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_tiny)


def get_config():
    config = _tiny.get_config()
    config.data.data_root = {data_root!r}
    config.data.domains = ["electricity", "exchange"]
    config.training.num_steps = 4
    config.sampling.batch_size = 8
    config.benchmark.seeds = (0,)
    config.benchmark.num_prompts = 2
    config.benchmark.repeats = 2
    config.benchmark.rounds = 2
    config.benchmark.unseen_domains = ("stock",)
    config.benchmark.k_shots = (1, 3)
    config.benchmark.num_test = 8
    config.benchmark.test_filter_domains = ("stock",)
    return config
'''


@pytest.fixture(scope="module")
def config_file(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bench_data")
    data_root = folder / "data"
    prepare_domains(["electricity", "exchange", "stock"], 24, data_root)
    path = folder / "bench_tiny.py"
    path.write_text(CONFIG_TEMPLATE.format(tiny=str(REPO_ROOT / "configs" / "tiny.py"), data_root=str(data_root)))
    return path


@pytest.fixture(scope="module")
def finished_run(config_file, tmp_path_factory):
    """One uninterrupted benchmark run of the tiny config."""
    config = load_config_file(config_file)
    workdir = tmp_path_factory.mktemp("bench_full")
    report = benchmark.run_benchmark(config, workdir)
    return config, workdir, report


def _metrics_files(workdir):
    return sorted((workdir / "seed0" / "metrics").glob("*.json"))


# ----------------------------------------------------------------------------
# The k-shot split.


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_split_unseen_disjoint(seed):
    split = benchmark.split_unseen(num_windows=50, k_shots=(1, 3, 10), num_test=20, seed=seed, domain_index=12)
    test = set(split.test.tolist())
    assert len(test) == len(split.test) == 20
    for k, prompts in split.prompts.items():
        assert len(prompts) == k
        assert len(set(prompts.tolist())) == k
        assert not test & set(prompts.tolist())
    assert set(split.prompts[1]) <= set(split.prompts[3]) <= set(split.prompts[10])
    assert not test & set(split.floor.tolist())
    assert len(split.floor) == 20
    assert split.num_test_requested == 20


def test_split_unseen_depends_on_seed_and_domain():
    first = benchmark.split_unseen(100, (3,), 10, seed=0, domain_index=12)
    again = benchmark.split_unseen(100, (3,), 10, seed=0, domain_index=12)
    other_seed = benchmark.split_unseen(100, (3,), 10, seed=1, domain_index=12)
    other_domain = benchmark.split_unseen(100, (3,), 10, seed=0, domain_index=13)
    np.testing.assert_array_equal(first.test, again.test)
    assert not np.array_equal(first.test, other_seed.test)
    assert not np.array_equal(first.test, other_domain.test)


def test_split_unseen_shrinks_test_set():
    split = benchmark.split_unseen(num_windows=10, k_shots=(1, 3), num_test=8, seed=0, domain_index=0)
    assert len(split.test) == 7
    assert split.num_test_requested == 8
    assert not set(split.test.tolist()) & set(split.prompts[3].tolist())
    assert sorted(split.test.tolist() + split.prompts[3].tolist()) == list(range(10))


def test_split_unseen_rejects_too_few_windows():
    with pytest.raises(ValueError, match="at least 4 windows"):
        benchmark.split_unseen(num_windows=3, k_shots=(1, 3), num_test=8, seed=0, domain_index=0)


def test_filter_test_windows_drops_whole_windows():
    test = np.ones((200, 4, 1))
    test[5, 2, 0] = 50.0
    test[9, 0, 0] = 60.0
    kept, threshold = benchmark.filter_test_windows(test, 99.0)
    assert threshold == 1.0
    assert kept.shape == (198, 4, 1)
    assert kept.max() == 1.0


# ----------------------------------------------------------------------------
# Conditions and keys.


def test_repeat_interleave_follows_prompt_j_div_repeats():
    context = np.arange(2 * 3 * 2, dtype=np.float32).reshape(2, 3, 2)
    logits = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], np.float32)
    cond = benchmark.repeat_interleave(sampling.Conditioning(context=context, logits=logits), 3)
    assert cond.context.shape == (6, 3, 2)
    assert cond.y is None
    for j in range(6):
        np.testing.assert_array_equal(cond.context[j], context[j // 3])
        np.testing.assert_array_equal(cond.logits[j], logits[j // 3])


def test_unit_key_depends_only_on_ids():
    key = np.asarray(benchmark.unit_key(0, 1, 2))
    np.testing.assert_array_equal(key, np.asarray(benchmark.unit_key(0, 1, 2)))
    for other in ((1, 1, 2), (0, 2, 2), (0, 1, 3)):
        assert not np.array_equal(key, np.asarray(benchmark.unit_key(*other)))


# ----------------------------------------------------------------------------
# Aggregation.


def test_aggregate_mean_and_std():
    records = [
        {"row": "solar", "model": "timedp", "seed": s, "mdd": v, "flat_kl": 2 * v, "mmd_rbf": 3 * v,
         "n_gen": 10, "n_real": 5}
        for s, v in ((0, 1.0), (1, 3.0))
    ]
    records.append({"row": "solar", "model": "floor", "seed": 0, "mdd": 0.5, "flat_kl": 0.1, "mmd_rbf": 0.2,
                    "n_gen": 10, "n_real": 5})
    summary = benchmark.aggregate(records)
    cell = summary[("solar", "timedp")]
    assert cell["mdd_mean"] == 2.0
    assert cell["mdd_std"] == pytest.approx(math.sqrt(2.0))
    assert cell["mmd_rbf_mean"] == 6.0
    assert cell["seeds"] == [0, 1]
    assert math.isnan(summary[("solar", "floor")]["mdd_std"])
    assert benchmark._format_cell(cell, "mdd") == "2.0000 ± 1.4142"
    assert benchmark._format_cell(summary[("solar", "floor")], "mdd") == "0.5000"


def test_validate_rejects_bad_counts(config_file):
    config = load_config_file(config_file)
    config.benchmark.repeats = 0
    with pytest.raises(benchmark.BenchmarkConfigError, match="repeats"):
        benchmark.validate_benchmark_config(config)
    config = load_config_file(config_file)
    config.benchmark.unseen_domains = ("exchange",)
    config.benchmark.test_filter_domains = ()
    with pytest.raises(benchmark.BenchmarkConfigError, match="also training domains"):
        benchmark.validate_benchmark_config(config)


# ----------------------------------------------------------------------------
# End to end on the tiny config.


def test_benchmark_sample_counts(finished_run):
    config, workdir, _ = finished_run
    seed_dir = workdir / "seed0"
    for model in ("timedp", "uncond"):
        for domain in ("electricity", "exchange"):
            for round_index in range(2):
                samples = np.load(benchmark.indomain_sample_path(seed_dir, model, domain, round_index))
                assert samples.shape == (4, 24, 1)
                assert samples.dtype == np.float32
            assert not benchmark.indomain_sample_path(seed_dir, model, domain, 2).exists()
            record = json.loads(benchmark.metrics_path(seed_dir, model, domain).read_text())
            assert record["n_gen"] == 8
        for k in (1, 3):
            samples = np.load(benchmark.unseen_sample_path(seed_dir, model, "stock", k))
            assert samples.shape == (8, 24, 1)
            record = json.loads(benchmark.metrics_path(seed_dir, model, f"stock_k{k}").read_text())
            assert record["n_gen"] == 8
            assert record["num_test"] == 8
            assert record["n_real"] == record["num_test_after_filter"]
            assert 1 <= record["n_real"] <= 8
    floor = json.loads(benchmark.metrics_path(seed_dir, "floor", "electricity").read_text())
    assert floor["n_gen"] == 8
    assert len(_metrics_files(workdir)) == 3 * 4


def test_benchmark_outputs_exist(finished_run):
    _, workdir, report = finished_run
    results = workdir / "results"
    assert report == results / "timedp_L24.md"
    text = report.read_text()
    for fragment in ("| electricity |", "| stock_k3 |", "Published TimeCraft", "commit:", "train "):
        assert fragment in text
    with open(results / "timedp_L24.csv", newline="") as handle:
        lines = handle.read().splitlines()
    assert lines[0].startswith("row,timedp_mdd_mean,timedp_mdd_std")
    assert [line.split(",")[0] for line in lines[1:]] == ["electricity", "exchange", "stock_k1", "stock_k3"]
    for metric in ("mdd", "flat_kl", "mmd_rbf"):
        png = (results / f"timedp_L24_{metric}.png").read_bytes()
        assert len(png) > 1000
        assert png.startswith(benchmark.PNG_SIGNATURE)


def test_benchmark_resume_gives_identical_metrics(finished_run, tmp_path):
    config, full_dir, _ = finished_run
    workdir = tmp_path / "resumed"
    for model_dir in ("model", "uncond"):
        shutil.copytree(full_dir / "seed0" / model_dir, workdir / "seed0" / model_dir)

    assert benchmark.run_benchmark(config, workdir, stop_after_units=5) is None
    rounds = sorted((workdir / "seed0" / "samples").rglob("round*.npy"))
    assert len(rounds) == 5
    assert not (workdir / "seed0" / "metrics" / "timedp_exchange.json").exists()

    benchmark.run_benchmark(config, workdir)
    expected = {path.name: json.loads(path.read_text()) for path in _metrics_files(full_dir)}
    resumed = {path.name: json.loads(path.read_text()) for path in _metrics_files(workdir)}
    assert resumed == expected
    for path in sorted((full_dir / "seed0" / "samples").rglob("*.npy")):
        np.testing.assert_array_equal(np.load(workdir / path.relative_to(full_dir)), np.load(path))


def test_benchmark_regenerates_deleted_round(finished_run, tmp_path):
    config, full_dir, _ = finished_run
    workdir = tmp_path / "copy"
    shutil.copytree(full_dir, workdir)
    deleted = benchmark.indomain_sample_path(workdir / "seed0", "timedp", "exchange", 1)
    deleted.unlink()
    (workdir / "seed0" / "metrics" / "timedp_exchange.json").unlink()

    benchmark.run_benchmark(config, workdir, stage="indomain")
    np.testing.assert_array_equal(np.load(deleted), np.load(full_dir / deleted.relative_to(workdir)))
    assert (json.loads((workdir / "seed0" / "metrics" / "timedp_exchange.json").read_text())
            == json.loads((full_dir / "seed0" / "metrics" / "timedp_exchange.json").read_text()))


def test_benchmark_rejects_changed_settings(finished_run):
    config, workdir, _ = finished_run
    changed = config.copy_and_resolve_references()
    changed.benchmark.num_prompts = 3
    with pytest.raises(benchmark.BenchmarkConfigError, match="benchmark.num_prompts"):
        benchmark.run_benchmark(changed, workdir, stage="report")


def test_cli_report_stage(finished_run, config_file, tmp_path):
    _, workdir, _ = finished_run
    results = tmp_path / "cli_results"
    result = subprocess.run(
        [sys.executable, "-m", "timecraft_jax.benchmark", f"--config={config_file}", f"--workdir={workdir}",
         "--stage=report", f"--results_dir={results}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env=dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])),
    )
    assert result.returncode == 0, result.stderr
    assert "report:" in result.stdout
    assert (results / "timedp_L24.md").read_text().count("| stock_k1 |") == 3
    assert str(config_file) in (results / "timedp_L24.md").read_text()

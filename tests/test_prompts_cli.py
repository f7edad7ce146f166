"""Command lines of few-shot prompting: `sample --prompts` and `prompts`."""

import json

import numpy as np
import pytest

from conftest import run_module
from timecraft_jax import prompts, sample

SEQ_LEN = 24
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Every figure written here has axes, text and data, so its PNG is well above this size.
MIN_PNG_BYTES = 5_000
DDIM_ARGS = ["--sampler", "ddim", "--num_steps", "5"]


def waves(k, length=SEQ_LEN, scale=1.0, offset=0.0):
    """Sine windows [k, length] with distinct phases."""
    return np.sin(np.arange(length)[None, :] / 3.0 + np.arange(k)[:, None]) * scale + offset


def assert_png(path):
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    assert len(data) > MIN_PNG_BYTES, f"{path} has only {len(data)} bytes"


@pytest.fixture(scope="module")
def workdir(tiny_run):
    return tiny_run[0]


# ----------------------------------------------------------------------------
# python -m timecraft_jax.sample --prompts


@pytest.mark.parametrize("source", [[], ["--domain", "nn5", "--prompts", "p.npy"]])
def test_sample_needs_exactly_one_source(tmp_path, source):
    args = ["--workdir", str(tmp_path), "--num_samples", "2", "--out", str(tmp_path / "x.npy"), *source]
    with pytest.raises(SystemExit) as exit_info:
        sample.build_parser().parse_args(args)
    assert exit_info.value.code == 2


def test_sample_both_sources_exit_code(tmp_path):
    result = run_module("timecraft_jax.sample", "--workdir", str(tmp_path), "--domain", "nn5", "--prompts", "p.npy",
                        "--num_samples", "2", "--out", str(tmp_path / "x.npy"))
    assert result.returncode == 2
    assert "not allowed with argument" in result.stderr


def test_sample_wrong_prompt_length(workdir, tmp_path, capsys):
    np.save(tmp_path / "p.npy", waves(3, length=30))
    code = sample.main(["--workdir", str(workdir), "--prompts", str(tmp_path / "p.npy"), "--num_samples", "4",
                        "--out", str(tmp_path / "x.npy")])
    stderr = capsys.readouterr().err
    assert code == 2
    assert "error:" in stderr
    assert "L=24" in stderr
    assert "--window_prompts" in stderr
    assert "Traceback" not in stderr
    assert not (tmp_path / "x.npy").exists()


def test_sample_nan_prompt(workdir, tmp_path, capsys):
    prompts = waves(2)
    prompts[0, 3] = np.nan
    np.save(tmp_path / "p.npy", prompts)
    code = sample.main(["--workdir", str(workdir), "--prompts", str(tmp_path / "p.npy"), "--num_samples", "4",
                        "--out", str(tmp_path / "x.npy")])
    stderr = capsys.readouterr().err
    assert code == 2
    assert "NaN" in stderr
    assert "Traceback" not in stderr


def test_sample_num_prompts_with_prompts(workdir, tmp_path, capsys):
    np.save(tmp_path / "p.npy", waves(2))
    code = sample.main(["--workdir", str(workdir), "--prompts", str(tmp_path / "p.npy"), "--num_samples", "4",
                        "--num_prompts", "2", "--out", str(tmp_path / "x.npy")])
    assert code == 2
    assert "--num_prompts applies to --domain" in capsys.readouterr().err


def test_sample_single_far_prompt(workdir, tmp_path):
    prompt = waves(1, scale=1000.0, offset=5000.0)  # [1, T], far outside every training domain
    np.save(tmp_path / "one.npy", prompt)
    out = tmp_path / "gen.npy"
    code = sample.main(["--workdir", str(workdir), "--prompts", str(tmp_path / "one.npy"), "--num_samples", "5",
                        "--out", str(out), "--seed", "4", *DDIM_ARGS])
    assert code == 0
    samples = np.load(out)
    assert samples.shape == (5, SEQ_LEN, 1)
    assert np.isfinite(samples).all()
    assert samples.min() >= np.float32(prompt.min())
    assert samples.max() <= np.float32(prompt.max())
    metadata = json.loads(out.with_suffix(".json").read_text())
    assert metadata["space"] == "raw"
    assert metadata["num_prompts"] == 1
    assert metadata["prompts"] == str(tmp_path / "one.npy")
    assert metadata["prompt_normalizer"] == "centered_pit"
    assert metadata["sampler"] == "ddim"
    assert metadata["seed"] == 4
    assert metadata["checkpoint_step"] > 0


def test_sample_windowed_tsf_prompts(workdir, tmp_path):
    series = waves(2, length=2 * SEQ_LEN + 7, scale=3.0, offset=-40.0)
    lines = ["@relation p", "@attribute series_name string", "@frequency daily", "@missing false",
             "@equallength true", "@data"] + [f"S{i}:" + ",".join(f"{v:.10g}" for v in row) for i, row in
                                              enumerate(series)]
    (tmp_path / "p.tsf").write_text("\n".join(lines) + "\n")
    out = tmp_path / "gen.npy"
    code = sample.main(["--workdir", str(workdir), "--prompts", str(tmp_path / "p.tsf"), "--window_prompts",
                        "--num_samples", "10", "--out", str(out), *DDIM_ARGS])
    assert code == 0
    samples = np.load(out)
    assert samples.shape == (10, SEQ_LEN, 1)
    assert samples.min() >= np.float32(series[:, :2 * SEQ_LEN].min())
    assert samples.max() <= np.float32(series[:, :2 * SEQ_LEN].max())
    metadata = json.loads(out.with_suffix(".json").read_text())
    assert metadata["num_prompts"] == 4
    assert metadata["windowed_prompts"] is True


# ----------------------------------------------------------------------------
# python -m timecraft_jax.prompts


def test_prompts_report(workdir, tmp_path):
    np.save(tmp_path / "walk.npy", np.random.default_rng(0).standard_normal((6, SEQ_LEN)).cumsum(axis=1))
    np.savetxt(tmp_path / "far.csv", waves(3, scale=1000.0, offset=5000.0).T, delimiter=",", fmt="%.10g")
    out = tmp_path / "report"
    code = prompts.main(["--workdir", str(workdir), "--inputs", str(tmp_path / "walk.npy"), str(tmp_path / "far.csv"),
                         "--labels", "walk", "far", "--domains", "nn5", "--num_domain_windows", "20",
                         "--embedding", "pca", "--semantics_samples", "2", "--out", str(out), *DDIM_ARGS])
    assert code == 0

    for label, k in (("walk", 6), ("far", 3), ("nn5", 20)):
        weights = np.load(out / f"{label}_prototype_weights.npy")
        assert weights.shape == (k, 8)
        assert np.isfinite(weights).all()
        table = np.loadtxt(out / f"{label}_prototype_weights.csv", delimiter=",", skiprows=1, ndmin=2)
        np.testing.assert_allclose(table, weights, rtol=1e-5, atol=1e-6)
        header = (out / f"{label}_prototype_weights.csv").read_text().splitlines()[0]
        assert header.split(",")[0] == "prototype_0"
    for name in ("embedding.png", "prototype_heatmap.png", "prototype_semantics.png"):
        assert_png(out / name)
    assert not (out / "embedding_superdomain.png").exists()


def test_prompts_superdomain_embedding(workdir, tmp_path):
    out = tmp_path / "report"
    code = prompts.main(["--workdir", str(workdir), "--domains", "electricity", "exchange", "nn5",
                         "--num_domain_windows", "10", "--semantics_samples", "0", "--out", str(out)])
    assert code == 0
    for name in ("embedding.png", "embedding_superdomain.png", "prototype_heatmap.png"):
        assert_png(out / name)
    assert not (out / "prototype_semantics.png").exists()
    assert np.load(out / "electricity_prototype_weights.npy").shape == (10, 8)


def test_prompts_label_count_mismatch(workdir, tmp_path, capsys):
    np.save(tmp_path / "a.npy", waves(2))
    code = prompts.main(["--workdir", str(workdir), "--inputs", str(tmp_path / "a.npy"), "--labels", "a", "b",
                         "--out", str(tmp_path / "report")])
    stderr = capsys.readouterr().err
    assert code == 2
    assert "--labels has 2 names for 1 --inputs" in stderr


def test_prompts_unknown_domain(workdir, tmp_path, capsys):
    code = prompts.main(["--workdir", str(workdir), "--domains", "stock", "--out", str(tmp_path / "report")])
    stderr = capsys.readouterr().err
    assert code == 2
    assert "'stock' was not part of training" in stderr


def test_prompts_default_label_is_file_stem():
    args = prompts.build_parser().parse_args(["--workdir", "w", "--out", "o", "--inputs", "x/web.tsf.gz",
                                              "y/stock.npy", "--domains", "nn5"])
    assert prompts.input_labels(args) == ["web", "stock", "nn5"]

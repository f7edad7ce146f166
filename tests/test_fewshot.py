"""Few-shot prompting library: prompt files, prompt normalizer, prototype logits and generation."""

import dataclasses

import ml_collections
import numpy as np
import pytest

from timecraft_jax.data import DataError

from timecraft_jax import fewshot, sampling
from timecraft_jax.fewshot import PromptError, load_prompt_file
from timecraft_jax.generation import generate_from_prompts, load_bundle, round_robin

SEQ_LEN = 24


def wave_prompts(k, length=SEQ_LEN, channels=1, scale=1.0, offset=0.0, seed=0):
    """Noisy sine windows [k, length, channels] with distinct phases."""
    rng = np.random.default_rng(seed)
    steps = np.arange(length)[None, :, None]
    phases = np.arange(k)[:, None, None] + 0.5 * np.arange(channels)[None, None, :]
    waves = np.sin(steps / 3.0 + phases) + 0.1 * rng.standard_normal((k, length, channels))
    return waves * scale + offset


def write_tsf(path, series):
    lines = ["@relation prompts", "@attribute series_name string", "@frequency daily", "@missing true",
             "@equallength false", "@data"]
    for i, values in enumerate(series):
        cells = ",".join("?" if np.isnan(v) else f"{v:.10g}" for v in values)
        lines.append(f"S{i}:{cells}")
    path.write_text("\n".join(lines) + "\n")
    return path


def load_univariate(path, **kwargs):
    return load_prompt_file(path, SEQ_LEN, channels=1, univariate=True, **kwargs)


# ----------------------------------------------------------------------------
# Prompt files (no checkpoint needed).


@pytest.mark.parametrize("k", [1, 3])
def test_npy_3d_prompts(tmp_path, k):
    prompts = wave_prompts(k)
    np.save(tmp_path / "p.npy", prompts)
    loaded = load_univariate(tmp_path / "p.npy")
    assert loaded.shape == (k, SEQ_LEN, 1)
    np.testing.assert_array_equal(loaded, prompts)


def test_npy_2d_prompts_are_univariate(tmp_path):
    prompts = wave_prompts(4)[:, :, 0]
    np.save(tmp_path / "p.npy", prompts.astype(np.float32))
    loaded = load_univariate(tmp_path / "p.npy")
    assert loaded.shape == (4, SEQ_LEN, 1)
    np.testing.assert_allclose(loaded[:, :, 0], prompts, rtol=1e-6)


@pytest.mark.parametrize("header", [True, False])
def test_csv_prompts_one_column_per_series(tmp_path, header):
    prompts = wave_prompts(3, scale=1000.0, offset=5000.0)
    path = tmp_path / "p.csv"
    np.savetxt(path, prompts[:, :, 0].T, delimiter=",", header="a,b,c" if header else "", comments="",
               fmt="%.10g")
    loaded = load_univariate(path)
    assert loaded.shape == (3, SEQ_LEN, 1)
    np.testing.assert_allclose(loaded, prompts, rtol=1e-9)


def test_csv_column_selection(tmp_path):
    prompts = wave_prompts(3)
    path = tmp_path / "p.csv"
    np.savetxt(path, prompts[:, :, 0].T, delimiter=",", header="a,b,c", comments="", fmt="%.10g")
    loaded = load_univariate(path, columns=["c", "0"])
    np.testing.assert_allclose(loaded[:, :, 0], prompts[[2, 0], :, 0], rtol=1e-9)
    with pytest.raises(DataError, match="'d' not found"):
        load_univariate(path, columns=["d"])


def test_csv_with_date_column(tmp_path):
    path = tmp_path / "dated.csv"
    rows = ["date,a,b"] + [f"2020-01-{i + 1:02d},{i},{2 * i}" for i in range(24)]
    path.write_text("\n".join(rows) + "\n")
    loaded = load_univariate(path, columns=["a", "2"])
    np.testing.assert_allclose(loaded[0, :, 0], np.arange(24))
    np.testing.assert_allclose(loaded[1, :, 0], 2 * np.arange(24))


def test_csv_shorter_column_windowed(tmp_path):
    long_series = wave_prompts(1, length=2 * SEQ_LEN)[0, :, 0]
    short_series = 2.0 * long_series[:SEQ_LEN]
    rows = [f"{long_series[i]:.10g},{short_series[i]:.10g}" if i < SEQ_LEN else f"{long_series[i]:.10g},"
            for i in range(2 * SEQ_LEN)]
    path = tmp_path / "p.csv"
    path.write_text("long,short\n" + "\n".join(rows) + "\n")
    loaded = load_univariate(path, window=True)
    assert loaded.shape == (3, SEQ_LEN, 1)
    np.testing.assert_allclose(loaded[1, :, 0], long_series[SEQ_LEN:], rtol=1e-9)
    np.testing.assert_allclose(loaded[2, :, 0], short_series, rtol=1e-9)


def test_tsf_prompts(tmp_path):
    prompts = wave_prompts(2)
    path = write_tsf(tmp_path / "p.tsf", prompts[:, :, 0])
    loaded = load_univariate(path)
    np.testing.assert_allclose(loaded, prompts, rtol=1e-9)


def test_wrong_length_names_model_length(tmp_path):
    np.save(tmp_path / "p.npy", wave_prompts(2, length=30))
    with pytest.raises(PromptError) as error:
        load_univariate(tmp_path / "p.npy")
    message = str(error.value)
    assert "L=24" in message
    assert "length 30" in message
    assert "--window_prompts" in message


def test_window_prompts_cut_long_series(tmp_path):
    series = wave_prompts(1, length=2 * SEQ_LEN + 5)[0, :, 0]
    path = write_tsf(tmp_path / "p.tsf", [series])
    loaded = load_univariate(path, window=True)
    assert loaded.shape == (2, SEQ_LEN, 1)
    np.testing.assert_allclose(loaded[0, :, 0], series[:SEQ_LEN], rtol=1e-9)
    np.testing.assert_allclose(loaded[1, :, 0], series[SEQ_LEN:2 * SEQ_LEN], rtol=1e-9)


def test_window_prompts_reject_short_series(tmp_path):
    path = write_tsf(tmp_path / "p.tsf", [wave_prompts(1, length=30)[0, :, 0], wave_prompts(1, length=10)[0, :, 0]])
    with pytest.raises(PromptError, match="'S1'.*10 time steps.*L=24"):
        load_univariate(path, window=True)


@pytest.mark.parametrize("suffix", ["npy", "tsf"])
def test_nan_prompt_rejected(tmp_path, suffix):
    prompts = wave_prompts(2)
    prompts[1, 7, 0] = np.nan
    if suffix == "npy":
        np.save(tmp_path / "p.npy", prompts)
    else:
        write_tsf(tmp_path / "p.tsf", prompts[:, :, 0])
    with pytest.raises(PromptError, match="NaN.*step 7"):
        load_univariate(tmp_path / f"p.{suffix}")


def test_multichannel_prompts_flattened(tmp_path):
    prompts = wave_prompts(2, channels=3)
    np.save(tmp_path / "p.npy", prompts)
    loaded = load_univariate(tmp_path / "p.npy")
    assert loaded.shape == (6, SEQ_LEN, 1)
    np.testing.assert_array_equal(loaded[1, :, 0], prompts[0, :, 1])
    np.testing.assert_array_equal(loaded[3, :, 0], prompts[1, :, 0])


def test_channel_mismatch_rejected(tmp_path):
    np.save(tmp_path / "p.npy", wave_prompts(2, channels=1))
    with pytest.raises(PromptError, match="1 channels, but the model takes 2"):
        load_prompt_file(tmp_path / "p.npy", SEQ_LEN, channels=2, univariate=False)


def test_csv_columns_as_channels(tmp_path):
    prompts = wave_prompts(1, channels=2)
    np.savetxt(tmp_path / "p.csv", prompts[0], delimiter=",", header="x,y", comments="", fmt="%.10g")
    loaded = load_prompt_file(tmp_path / "p.csv", SEQ_LEN, channels=2, univariate=False)
    assert loaded.shape == (1, SEQ_LEN, 2)
    np.testing.assert_allclose(loaded, prompts, rtol=1e-9)


def test_prompt_normalizer_maps_prompts_into_unit_range():
    prompts = wave_prompts(3, scale=1000.0, offset=5000.0)
    normalizer = fewshot.fit_prompt_normalizer(prompts)
    normalized = normalizer.transform(prompts)
    assert normalized.min() >= -1.0
    assert normalized.max() == 1.0
    inverted = normalizer.inverse_transform(np.array([[[-5.0], [0.0], [5.0]]]))
    assert inverted[0, 0, 0] == prompts.min()
    assert inverted[0, 2, 0] == prompts.max()


def test_round_robin_assignment():
    cond = sampling.Conditioning(logits=np.arange(3 * 2, dtype=np.float32).reshape(3, 2))
    repeated = round_robin(cond, 10)
    assert repeated.logits.shape == (10, 2)
    np.testing.assert_array_equal(repeated.logits[:, 0] // 2, np.arange(10) % 3)


def test_embed_2d_pca_and_tsne():
    points = np.random.default_rng(0).standard_normal((30, 8))
    pca, method = fewshot.embed_2d(points, "pca")
    assert method == "PCA"
    assert pca.shape == (30, 2)
    variance = np.var(pca, axis=0)
    total = np.var(points - points.mean(axis=0), axis=0).sum()
    assert variance[0] >= variance[1]
    assert variance.sum() <= total + 1e-9
    pytest.importorskip("sklearn")
    tsne, method = fewshot.embed_2d(points, "tsne")
    assert method == "t-SNE"
    assert tsne.shape == (30, 2)
    assert np.isfinite(tsne).all()


def test_embed_2d_few_points_use_pca():
    coordinates, method = fewshot.embed_2d(np.eye(3), "tsne")
    assert method == "PCA"
    assert coordinates.shape == (3, 2)


# ----------------------------------------------------------------------------
# With a trained checkpoint.


@pytest.fixture(scope="module")
def bundle(tiny_run):
    workdir, _, _ = tiny_run
    return load_bundle(workdir)


@pytest.fixture(scope="module")
def ddim_config(bundle):
    config = ml_collections.ConfigDict(bundle.config.sampling.to_dict())
    config.sampler = "ddim"
    config.num_steps = 5
    config.eta = 0.0
    return config


def test_prototype_logits_use_running_stats(bundle):
    prompts = fewshot.fit_prompt_normalizer(wave_prompts(5)).transform(wave_prompts(5))
    logits = fewshot.prototype_logits(bundle, prompts)
    assert logits.shape == (5, bundle.config.model.num_prototypes)
    assert np.isfinite(logits).all()
    # Inference mode: a prompt's logits do not depend on the other prompts of its batch.
    alone = fewshot.prototype_logits(bundle, prompts[2:3])
    np.testing.assert_allclose(alone[0], logits[2], rtol=1e-5, atol=1e-6)


def test_logits_need_prototype_conditioner(bundle):
    config = ml_collections.ConfigDict(bundle.config.to_dict())
    config.model.conditioner = "encoder"
    encoder_bundle = dataclasses.replace(bundle, config=config)
    with pytest.raises(PromptError, match="conditioner 'encoder'"):
        fewshot.prototype_logits(encoder_bundle, np.zeros((1, SEQ_LEN, 1)))


def test_far_prompts_bounded_round_robin(bundle, ddim_config, tmp_path):
    prompts = wave_prompts(3, scale=1000.0, offset=5000.0)
    path = tmp_path / "far.csv"
    np.savetxt(path, prompts[:, :, 0].T, delimiter=",", fmt="%.10g")
    result = fewshot.generate_from_prompt_file(bundle, path, 10, ddim_config, seed=3)

    assert result.samples.shape == (10, SEQ_LEN, 1)
    assert np.isfinite(result.samples).all()
    assert result.samples.min() >= result.prompts.min()
    assert result.samples.max() <= result.prompts.max()
    assert result.samples.mean() > 3000.0

    # Samples 1 and 4 follow prompt 1: conditioning on prompt 1 alone reproduces them (eta = 0).
    normalized = result.normalizer.transform(result.prompts)
    alone = generate_from_prompts(bundle, normalized[1:2], 5, ddim_config, seed=3)
    np.testing.assert_allclose(alone[1], result.samples_normalized[1], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(alone[4], result.samples_normalized[4], rtol=1e-5, atol=1e-5)
    assert not np.allclose(alone[0], result.samples_normalized[0], rtol=0, atol=1e-6)


def test_prompt_file_rejects_unconditional_model(bundle, tmp_path):
    config = ml_collections.ConfigDict(bundle.config.to_dict())
    config.model.conditioner = "none"
    np.save(tmp_path / "p.npy", wave_prompts(2))
    with pytest.raises(PromptError, match="unconditional"):
        fewshot.generate_from_prompt_file(dataclasses.replace(bundle, config=config), tmp_path / "p.npy", 4,
                                          config.sampling, seed=0)

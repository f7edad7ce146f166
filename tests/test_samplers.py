"""DDPM and DDIM samplers: determinism, per-sample keys, compilation and batching."""

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from conftest import REPO_ROOT
from timecraft_jax import sampling
from timecraft_jax.config_lib import load_config_file
from timecraft_jax.diffusion import make_schedule
from timecraft_jax.sampling import Conditioning

SHAPE_TC = (8, 2)
TOY_VARIABLES = {"scale": jnp.float32(0.3)}


def toy_eps_fn(variables, x_t, t, cond):
    """Deterministic per-sample denoiser that reads every conditioning field."""
    eps = variables["scale"] * x_t + 1e-3 * t[:, None, None].astype(x_t.dtype)
    if cond.context is not None:
        eps = eps + 0.1 * jnp.mean(cond.context, axis=(1, 2))[:, None, None]
    if cond.y is not None:
        eps = eps + 0.05 * cond.y[:, None, None].astype(x_t.dtype)
    return eps


def toy_eps_numpy(scale, x_t, t, context_mean):
    return scale * x_t + np.float32(1e-3) * np.float32(t) + np.float32(0.1) * context_mean[:, None, None]


def sampling_config(**overrides):
    config = ml_collections.ConfigDict(
        dict(
            sampler="ddpm",
            num_steps=5,
            eta=0.0,
            timestep_spacing="uniform",
            reference_compatible=False,
            guidance_scale=1.0,
            batch_size=4,
            use_ema=True,
        )
    )
    config.update(overrides)
    return config


def toy_cond(num, seed=0):
    context = jax.random.normal(jax.random.PRNGKey(seed), (num, 3, 4))
    return Conditioning(context=context, y=jnp.arange(num, dtype=jnp.int32) % 2)


@pytest.fixture(scope="module")
def schedule():
    return make_schedule(20)


# ----------------------------------------------------------------------------
# Keys.


def test_sample_keys_depend_on_global_index():
    keys = sampling.sample_keys(7, 0, 5)
    assert keys.shape == (5, 2)
    assert keys.dtype == jnp.uint32
    np.testing.assert_array_equal(np.asarray(sampling.sample_keys(7, 3, 2)), np.asarray(keys[3:5]))
    expected = jax.random.fold_in(jax.random.PRNGKey(7), 4)
    np.testing.assert_array_equal(np.asarray(keys[4]), np.asarray(expected))


def test_sample_keys_accept_typed_key():
    typed = sampling.sample_keys(jax.random.key(7), 0, 3)
    raw = sampling.sample_keys(jax.random.PRNGKey(7), 0, 3)
    np.testing.assert_array_equal(np.asarray(typed), np.asarray(raw))


@pytest.mark.parametrize("start_index, num", [(-1, 2), (0, 0), (2**32 - 1, 2)])
def test_sample_keys_reject_invalid_range(start_index, num):
    with pytest.raises(ValueError, match="sample index range"):
        sampling.sample_keys(0, start_index, num)


# ----------------------------------------------------------------------------
# Values of the loops against a numpy transcription.


def test_ddpm_matches_numpy_loop(schedule):
    batch = 3
    cond = Conditioning(context=jax.random.normal(jax.random.PRNGKey(1), (batch, 3, 4)))
    x_T = np.asarray(jax.random.normal(jax.random.PRNGKey(2), (batch, *SHAPE_TC)))
    noise = np.asarray(jax.random.normal(jax.random.PRNGKey(3), (schedule.num_timesteps, batch, *SHAPE_TC)))
    keys = sampling.sample_keys(0, 0, batch)
    sample, trajectory = sampling.ddpm_sample(
        toy_eps_fn, TOY_VARIABLES, schedule, cond, keys, SHAPE_TC, return_trajectory=True, noise=noise, x_T=x_T
    )

    arrays = {name: np.asarray(getattr(schedule, name)) for name in (
        "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod", "posterior_mean_coef1",
        "posterior_mean_coef2", "posterior_log_variance_clipped")}
    context_mean = np.asarray(cond.context).mean(axis=(1, 2))
    x = x_T
    expected_trajectory = []
    for k, t in enumerate(range(schedule.num_timesteps - 1, -1, -1)):
        eps_hat = toy_eps_numpy(np.float32(0.3), x, t, context_mean)
        x0_hat = arrays["sqrt_recip_alphas_cumprod"][t] * x - arrays["sqrt_recipm1_alphas_cumprod"][t] * eps_hat
        mean = arrays["posterior_mean_coef1"][t] * x0_hat + arrays["posterior_mean_coef2"][t] * x
        std = np.exp(0.5 * arrays["posterior_log_variance_clipped"][t]) if t > 0 else 0.0
        x = mean + std * noise[k]
        expected_trajectory.append(x)

    assert trajectory.shape == (schedule.num_timesteps, batch, *SHAPE_TC)
    np.testing.assert_allclose(np.asarray(trajectory), np.stack(expected_trajectory), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(sample), x, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("reference_compatible", [True, False])
@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_matches_numpy_loop(schedule, reference_compatible, eta):
    batch, num_steps = 2, 4
    cond = Conditioning(context=jax.random.normal(jax.random.PRNGKey(1), (batch, 3, 4)))
    x_T = np.asarray(jax.random.normal(jax.random.PRNGKey(2), (batch, *SHAPE_TC)))
    noise = np.asarray(jax.random.normal(jax.random.PRNGKey(3), (num_steps, batch, *SHAPE_TC)))
    keys = sampling.sample_keys(0, 0, batch)
    sample, trajectory = sampling.ddim_sample(
        toy_eps_fn, TOY_VARIABLES, schedule, cond, keys, SHAPE_TC,
        num_steps=num_steps, eta=eta, reference_compatible=reference_compatible,
        return_trajectory=True, noise=noise, x_T=x_T,
    )

    alpha_bar = np.asarray(schedule.alphas_cumprod)
    stride = schedule.num_timesteps // num_steps
    timesteps = np.arange(0, schedule.num_timesteps, stride) + (1 if reference_compatible else 0)
    first_prev = alpha_bar[0] if reference_compatible else np.float32(1.0)
    alphas_prev = np.concatenate([[first_prev], alpha_bar[timesteps[:-1]]])
    context_mean = np.asarray(cond.context).mean(axis=(1, 2))
    x = x_T
    for k, i in enumerate(range(num_steps - 1, -1, -1)):
        a, a_prev = alpha_bar[timesteps[i]], alphas_prev[i]
        sigma = eta * np.sqrt((1 - a_prev) / (1 - a) * (1 - a / a_prev))
        eps_hat = toy_eps_numpy(np.float32(0.3), x, timesteps[i], context_mean)
        x0_hat = (x - np.sqrt(1 - a) * eps_hat) / np.sqrt(a)
        x = np.sqrt(a_prev) * x0_hat + np.sqrt(1 - a_prev - sigma**2) * eps_hat + sigma * noise[k]
        np.testing.assert_allclose(np.asarray(trajectory["x0_hat"][k]), x0_hat, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(np.asarray(trajectory["x"][k]), x, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(sample), x, rtol=1e-5, atol=1e-5)


def test_default_ddim_returns_last_x0_hat(schedule):
    keys = sampling.sample_keys(0, 0, 2)
    sample, trajectory = sampling.ddim_sample(
        toy_eps_fn, TOY_VARIABLES, schedule, Conditioning(), keys, SHAPE_TC,
        num_steps=4, eta=1.0, return_trajectory=True,
    )
    np.testing.assert_array_equal(np.asarray(sample), np.asarray(trajectory["x0_hat"][-1]))
    assert trajectory["x"].shape == (4, 2, *SHAPE_TC)


# ----------------------------------------------------------------------------
# Determinism and per-sample keys.


@pytest.mark.parametrize("sampler, options", [
    ("ddpm", {}),
    ("ddim", dict(num_steps=5, eta=1.0)),
    ("ddim", dict(num_steps=5, eta=0.0, timestep_spacing="quad")),
])
def test_same_keys_give_identical_samples(schedule, sampler, options):
    sample_fn = sampling.ddpm_sample if sampler == "ddpm" else sampling.ddim_sample
    keys = sampling.sample_keys(11, 0, 4)
    cond = toy_cond(4)
    first = sample_fn(toy_eps_fn, TOY_VARIABLES, schedule, cond, keys, SHAPE_TC, **options)
    second = sample_fn(toy_eps_fn, TOY_VARIABLES, schedule, cond, keys, SHAPE_TC, **options)
    np.testing.assert_array_equal(np.asarray(first), np.asarray(second))
    other = sample_fn(toy_eps_fn, TOY_VARIABLES, schedule, cond, sampling.sample_keys(12, 0, 4), SHAPE_TC, **options)
    assert not np.allclose(np.asarray(first), np.asarray(other))


@pytest.mark.parametrize("sampler, options", [("ddpm", {}), ("ddim", dict(num_steps=5, eta=1.0))])
def test_sample_independent_of_batch(schedule, sampler, options):
    sample_fn = sampling.ddpm_sample if sampler == "ddpm" else sampling.ddim_sample
    cond = toy_cond(7)
    batch = sample_fn(toy_eps_fn, TOY_VARIABLES, schedule, cond, sampling.sample_keys(5, 0, 7), SHAPE_TC, **options)
    for index in (0, 3, 6):
        single_cond = jax.tree.map(lambda leaf: leaf[index:index + 1], cond)
        single = sample_fn(
            toy_eps_fn, TOY_VARIABLES, schedule, single_cond, sampling.sample_keys(5, index, 1), SHAPE_TC, **options
        )
        np.testing.assert_array_equal(np.asarray(single[0]), np.asarray(batch[index]), err_msg=f"sample {index}")


def test_samples_in_batch_differ(schedule):
    keys = sampling.sample_keys(0, 0, 3)
    samples = np.asarray(sampling.ddpm_sample(toy_eps_fn, TOY_VARIABLES, schedule, Conditioning(), keys, SHAPE_TC))
    assert not np.allclose(samples[0], samples[1])
    assert not np.allclose(samples[1], samples[2])


def test_ddim_eta_one_adds_noise(schedule):
    x_T = jnp.ones((2, *SHAPE_TC))
    runs = {}
    for eta in (0.0, 1.0):
        for seed in (0, 1):
            runs[eta, seed] = np.asarray(sampling.ddim_sample(
                toy_eps_fn, TOY_VARIABLES, schedule, Conditioning(), sampling.sample_keys(seed, 0, 2), SHAPE_TC,
                num_steps=5, eta=eta, x_T=x_T,
            ))
    np.testing.assert_array_equal(runs[0.0, 0], runs[0.0, 1])
    assert not np.allclose(runs[1.0, 0], runs[1.0, 1])


def test_quad_spacing_timesteps():
    np.testing.assert_array_equal(sampling.ddim_timesteps(200, 5, "quad", reference_compatible=True), [1, 11, 41, 91, 161])
    np.testing.assert_array_equal(sampling.ddim_timesteps(200, 5, "quad"), [0, 10, 40, 90, 160])
    # Repeated quad timesteps are removed unless the reference is reproduced.
    assert len(sampling.ddim_timesteps(20, 15, "quad")) < 15
    assert len(sampling.ddim_timesteps(20, 15, "quad", reference_compatible=True)) == 15


def test_quad_spacing_sample_is_finite(schedule):
    keys = sampling.sample_keys(0, 0, 2)
    sample = sampling.ddim_sample(
        toy_eps_fn, TOY_VARIABLES, schedule, Conditioning(), keys, SHAPE_TC,
        num_steps=15, eta=1.0, timestep_spacing="quad",
    )
    assert sample.shape == (2, *SHAPE_TC)
    assert np.all(np.isfinite(np.asarray(sample)))


def test_reference_ddim_extra_steps():
    timesteps = sampling.ddim_timesteps(200, 30, reference_compatible=True)
    np.testing.assert_array_equal(timesteps, np.arange(0, 200, 6) + 1)
    assert len(sampling.ddim_timesteps(200, 30)) == 30


# ----------------------------------------------------------------------------
# Invalid arguments.


@pytest.mark.parametrize("num_steps", [0, 20, 25])
def test_ddim_rejects_steps_outside_range(schedule, num_steps):
    with pytest.raises(ValueError, match="num_steps"):
        sampling.ddim_sample(
            toy_eps_fn, TOY_VARIABLES, schedule, Conditioning(), sampling.sample_keys(0, 0, 1), SHAPE_TC,
            num_steps=num_steps, eta=0.0,
        )


def test_reference_ddim_rejects_out_of_range_timestep():
    with pytest.raises(ValueError, match="reach t=20"):
        sampling.ddim_timesteps(20, 15, "uniform", reference_compatible=True)


@pytest.mark.parametrize("options, message", [
    (dict(num_steps=5, eta=-1.0), "eta"),
    (dict(num_steps=5, eta=float("nan")), "eta"),
    (dict(num_steps=5, eta=0.0, timestep_spacing="linear"), "timestep_spacing"),
])
def test_ddim_rejects_invalid_options(schedule, options, message):
    with pytest.raises(ValueError, match=message):
        sampling.ddim_sample(
            toy_eps_fn, TOY_VARIABLES, schedule, Conditioning(), sampling.sample_keys(0, 0, 1), SHAPE_TC, **options
        )


def test_sampler_rejects_mismatched_shapes(schedule):
    keys = sampling.sample_keys(0, 0, 2)
    with pytest.raises(ValueError, match="cond.context"):
        sampling.ddpm_sample(toy_eps_fn, TOY_VARIABLES, schedule, toy_cond(3), keys, SHAPE_TC)
    with pytest.raises(ValueError, match="x_T"):
        sampling.ddpm_sample(toy_eps_fn, TOY_VARIABLES, schedule, Conditioning(), keys, SHAPE_TC, x_T=jnp.zeros((2, 8, 1)))
    with pytest.raises(ValueError, match="noise"):
        sampling.ddim_sample(
            toy_eps_fn, TOY_VARIABLES, schedule, Conditioning(), keys, SHAPE_TC,
            num_steps=5, eta=1.0, noise=jnp.zeros((4, 2, *SHAPE_TC)),
        )
    with pytest.raises(ValueError, match="keys"):
        sampling.ddpm_sample(toy_eps_fn, TOY_VARIABLES, schedule, Conditioning(), jnp.zeros((2, 2)), SHAPE_TC)
    with pytest.raises(ValueError, match="shape_tc"):
        sampling.ddpm_sample(toy_eps_fn, TOY_VARIABLES, schedule, Conditioning(), keys, (8,))


def test_build_sampler_rejects_unknown_sampler(schedule):
    with pytest.raises(ValueError, match="sampling.sampler"):
        sampling.build_sampler(toy_eps_fn, schedule, sampling_config(sampler="euler"), SHAPE_TC)
    with pytest.raises(ValueError, match="num_steps"):
        sampling.build_sampler(toy_eps_fn, schedule, sampling_config(sampler="ddim", num_steps=20), SHAPE_TC)


# ----------------------------------------------------------------------------
# Compiled samplers and generate.


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_build_sampler_traces_once(schedule, sampler):
    chex.clear_trace_counter()
    eps_fn = chex.assert_max_traces(toy_eps_fn, n=1)
    sample = sampling.build_sampler(eps_fn, schedule, sampling_config(sampler=sampler, eta=1.0), SHAPE_TC)
    outputs = []
    for start in (0, 4, 8):
        cond = toy_cond(4, seed=start)
        outputs.append(np.asarray(sample(TOY_VARIABLES, cond, sampling.sample_keys(0, start, 4))))
    assert outputs[0].shape == (4, *SHAPE_TC)
    assert not np.allclose(outputs[0], outputs[1])


def test_build_sampler_matches_ddim_sample(schedule):
    config = sampling_config(sampler="ddim", num_steps=4, eta=1.0, reference_compatible=True)
    sample = sampling.build_sampler(toy_eps_fn, schedule, config, SHAPE_TC)
    keys = sampling.sample_keys(3, 0, 2)
    cond = toy_cond(2)
    expected = sampling.ddim_sample(
        toy_eps_fn, TOY_VARIABLES, schedule, cond, keys, SHAPE_TC, num_steps=4, eta=1.0, reference_compatible=True
    )
    np.testing.assert_array_equal(np.asarray(sample(TOY_VARIABLES, cond, keys)), np.asarray(expected))


def test_generate_returns_exact_count_and_is_deterministic(schedule):
    sample = sampling.build_sampler(toy_eps_fn, schedule, sampling_config(sampler="ddim", eta=1.0), SHAPE_TC)
    cond = toy_cond(10)
    first = sampling.generate(sample, TOY_VARIABLES, cond, 10, 4, seed=3, show_progress=False)
    second = sampling.generate(sample, TOY_VARIABLES, cond, 10, 4, seed=3, show_progress=False)
    other_batching = sampling.generate(sample, TOY_VARIABLES, cond, 10, 3, seed=3, show_progress=False)
    assert isinstance(first, np.ndarray)
    assert first.shape == (10, *SHAPE_TC)
    np.testing.assert_array_equal(first, second)
    np.testing.assert_array_equal(first, other_batching)


def test_generate_accepts_cond_function_and_none(schedule):
    sample = sampling.build_sampler(toy_eps_fn, schedule, sampling_config(), SHAPE_TC)
    cond = toy_cond(5)
    from_array = sampling.generate(sample, TOY_VARIABLES, cond, 5, 2, seed=0, show_progress=False)

    def cond_fn(start, stop):
        return jax.tree.map(lambda leaf: leaf[start:stop], cond)

    from_function = sampling.generate(sample, TOY_VARIABLES, cond_fn, 5, 2, seed=0, show_progress=False)
    np.testing.assert_array_equal(from_array, from_function)
    unconditional = sampling.generate(sample, TOY_VARIABLES, None, 5, 2, seed=0, show_progress=False)
    assert unconditional.shape == (5, *SHAPE_TC)


def test_generate_rejects_invalid_input(schedule):
    sample = sampling.build_sampler(toy_eps_fn, schedule, sampling_config(), SHAPE_TC)
    with pytest.raises(ValueError, match="cond.context"):
        sampling.generate(sample, TOY_VARIABLES, toy_cond(4), 5, 2, seed=0, show_progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        sampling.generate(sample, TOY_VARIABLES, None, 5, 0, seed=0, show_progress=False)


def test_generate_raises_on_non_finite_samples(schedule):
    sample = sampling.build_sampler(toy_eps_fn, schedule, sampling_config(), SHAPE_TC)
    with pytest.raises(FloatingPointError, match="Samples 0..1"):
        sampling.generate(sample, {"scale": jnp.float32(jnp.nan)}, None, 2, 2, seed=0, show_progress=False)


# ----------------------------------------------------------------------------
# A tiny TimeCraftModel.

models = pytest.importorskip("timecraft_jax.models")


def tiny_model(conditioner="prototype", in_channels=1, num_classes=0):
    config = load_config_file(REPO_ROOT / "configs" / "tiny.py")
    config.model.conditioner = conditioner
    config.model.in_channels = in_channels
    config.model.num_classes = num_classes
    model = models.build_model(config.model, config.data.seq_len)
    variables = models.init_variables(model, jax.random.PRNGKey(0), batch_size=1)
    # Fresh UNets end in a zero-initialised convolution and predict eps_hat = 0 everywhere,
    # which would hide the effect of conditions, so every parameter gets a small offset.
    leaves, treedef = jax.tree.flatten(variables["params"])
    keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
    perturbed = [leaf + 0.05 * jax.random.normal(key, leaf.shape) for leaf, key in zip(leaves, keys)]
    variables = {**variables, "params": jax.tree.unflatten(treedef, perturbed)}
    return model, variables, config


def prompt_cond(model, variables, num, seed=0, y=None):
    prompts = jax.random.normal(jax.random.PRNGKey(seed), (num, model.seq_len, model.in_channels))
    context, logits = model.apply(variables, prompts, train=False, method=models.TimeCraftModel.encode)
    return Conditioning(context=context, logits=logits, y=y)


@pytest.fixture(scope="module")
def prototype_model():
    return tiny_model()


def test_model_sampler_traces_once(prototype_model, monkeypatch):
    model, variables, config = prototype_model
    chex.clear_trace_counter()
    make_eps_fn = sampling.make_model_eps_fn
    monkeypatch.setattr(
        sampling, "make_model_eps_fn", lambda m, scale: chex.assert_max_traces(make_eps_fn(m, scale), n=1)
    )
    schedule = make_schedule(config.diffusion.num_timesteps)
    sample = sampling.make_sampler(model, schedule, sampling_config(sampler="ddim", num_steps=4, eta=1.0), 24, 1)
    first = sample(variables, prompt_cond(model, variables, 3, seed=0), sampling.sample_keys(0, 0, 3))
    second = sample(variables, prompt_cond(model, variables, 3, seed=1), sampling.sample_keys(0, 3, 3))
    assert first.shape == (3, 24, 1)
    assert np.all(np.isfinite(np.asarray(second)))


def test_model_sample_independent_of_batch(prototype_model):
    model, variables, _ = prototype_model
    schedule = make_schedule(10)
    sample = sampling.make_sampler(model, schedule, sampling_config(sampler="ddpm"), 24, 1)
    cond = prompt_cond(model, variables, 7)
    batch = np.asarray(sample(variables, cond, sampling.sample_keys(2, 0, 7)))
    single = np.asarray(sample(
        variables, jax.tree.map(lambda leaf: leaf[4:5], cond), sampling.sample_keys(2, 4, 1)
    ))
    # Batched and single convolutions may round differently, so this is close rather than bit-equal.
    np.testing.assert_allclose(single[0], batch[4], rtol=1e-4, atol=1e-4)


def test_model_guidance_scale_changes_samples(prototype_model):
    model, variables, config = prototype_model
    schedule = make_schedule(config.diffusion.num_timesteps)
    cond = prompt_cond(model, variables, 2)
    keys = sampling.sample_keys(0, 0, 2)
    samples = {}
    for scale in (1.0, 3.0):
        config_s = sampling_config(sampler="ddim", num_steps=4, guidance_scale=scale)
        samples[scale] = np.asarray(sampling.make_sampler(model, schedule, config_s, 24, 1)(variables, cond, keys))
    assert np.all(np.isfinite(samples[3.0]))
    assert not np.allclose(samples[1.0], samples[3.0])


def test_model_three_channels_with_labels():
    model, variables, _ = tiny_model(in_channels=3, num_classes=3)
    schedule = make_schedule(10)
    y = jnp.array([0, 1, 2, 1], dtype=jnp.int32)
    cond = prompt_cond(model, variables, 4, y=y)
    sample = sampling.make_sampler(model, schedule, sampling_config(sampler="ddim", num_steps=3, eta=1.0), 24, 3)
    samples = sampling.generate(sample, variables, cond, 4, 3, seed=0, show_progress=False)
    assert samples.shape == (4, 24, 3)
    assert np.all(np.isfinite(samples))
    relabelled = cond.replace(y=jnp.array([2, 2, 2, 2], dtype=jnp.int32))
    other = sampling.generate(sample, variables, relabelled, 4, 3, seed=0, show_progress=False)
    assert not np.allclose(samples[0], other[0])


def test_model_without_conditioning():
    model, variables, _ = tiny_model(conditioner="none")
    schedule = make_schedule(10)
    sample = sampling.make_sampler(model, schedule, sampling_config(guidance_scale=2.0), 24, 1)
    samples = sampling.generate(sample, variables, None, 3, 2, seed=0, show_progress=False)
    assert samples.shape == (3, 24, 1)
    assert np.all(np.isfinite(samples))

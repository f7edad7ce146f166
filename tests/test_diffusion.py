"""Forward process, posterior and loss of timecraft_jax.diffusion."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from timecraft_jax import diffusion


def _random_batch(seed, shape=(4, 24, 3)):
    key_x, key_eps = jax.random.split(jax.random.PRNGKey(seed))
    return jax.random.normal(key_x, shape), jax.random.normal(key_eps, shape)


def test_linear_schedule_endpoints():
    schedule = diffusion.make_schedule(200)
    np.testing.assert_allclose(float(schedule.betas[0]), 5e-4, rtol=1e-6)
    np.testing.assert_allclose(float(schedule.betas[-1]), 0.1, rtol=1e-6)
    np.testing.assert_allclose(float(schedule.alphas_cumprod[-1]), 6.0e-4, rtol=0.05)
    assert float(schedule.alphas_cumprod_prev[0]) == 1.0
    assert float(schedule.posterior_variance[0]) == 0.0
    assert schedule.num_timesteps == 200


def test_cosine_schedule_properties():
    schedule = diffusion.make_schedule(1000, "cosine")
    betas = np.asarray(schedule.betas)
    alpha_bar = np.asarray(schedule.alphas_cumprod)
    assert np.all(betas > 0)
    assert np.all(betas <= diffusion.COSINE_MAX_BETA)
    assert np.all(np.diff(alpha_bar) < 0)
    # alpha_bar_t = f(t + 1) / f(0) with f(t) = cos((t / T + s) / (1 + s) * pi / 2) ** 2.
    s = diffusion.COSINE_OFFSET
    f = lambda t: np.cos((t / 1000 + s) / (1 + s) * np.pi / 2) ** 2  # noqa: E731
    np.testing.assert_allclose(alpha_bar[499], f(500) / f(0), rtol=1e-5)


def test_schedule_from_config_reads_fields():
    config = ml_collections.ConfigDict(
        dict(num_timesteps=50, beta_schedule="linear", linear_start=1e-4, linear_end=0.02, loss="l1")
    )
    schedule = diffusion.schedule_from_config(config)
    assert schedule.num_timesteps == 50
    np.testing.assert_allclose(float(schedule.betas[0]), 1e-4, rtol=1e-6)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(num_timesteps=0),
        dict(num_timesteps=2.5),
        dict(num_timesteps=10, beta_schedule="sqrt"),
        dict(num_timesteps=10, linear_start=0.2, linear_end=0.1),
        dict(num_timesteps=10, linear_start=0.0),
        dict(num_timesteps=10, linear_end=1.0),
    ],
)
def test_make_schedule_rejects_invalid_arguments(kwargs):
    with pytest.raises(ValueError):
        diffusion.make_schedule(**kwargs)


def test_predict_x0_inverts_q_sample():
    schedule = diffusion.make_schedule(200)
    x0, noise = _random_batch(0)
    t = jnp.array([0, 50, 120, 199], dtype=jnp.int32)
    x_t = diffusion.q_sample(schedule, x0, t, noise)
    x0_hat = diffusion.predict_x0_from_eps(schedule, x_t, t, noise)
    np.testing.assert_allclose(np.asarray(x0_hat), np.asarray(x0), atol=2e-4)


def test_q_posterior_matches_closed_form():
    schedule = diffusion.make_schedule(200)
    x0, x_t = _random_batch(1)
    t = jnp.array([0, 1, 100, 199], dtype=jnp.int32)
    mean, log_variance = diffusion.q_posterior(schedule, x0, x_t, t)

    betas = np.asarray(schedule.betas, dtype=np.float64)
    alpha_bar = np.cumprod(1 - betas)
    alpha_bar_prev = np.append(1.0, alpha_bar[:-1])
    t_np = np.asarray(t)
    coef_x0 = (betas * np.sqrt(alpha_bar_prev) / (1 - alpha_bar))[t_np][:, None, None]
    coef_xt = ((1 - alpha_bar_prev) * np.sqrt(1 - betas) / (1 - alpha_bar))[t_np][:, None, None]
    expected_mean = coef_x0 * np.asarray(x0) + coef_xt * np.asarray(x_t)
    np.testing.assert_allclose(np.asarray(mean), expected_mean, rtol=1e-4, atol=1e-5)
    assert log_variance.shape == (4, 1, 1)
    np.testing.assert_allclose(float(log_variance[0, 0, 0]), np.log(1e-20), rtol=1e-6)


def test_denoising_loss_l1_and_l2():
    eps = jnp.zeros((2, 3, 2))
    eps_hat = jnp.array([[[1.0, -1.0]] * 3, [[2.0, 0.0]] * 3])
    np.testing.assert_allclose(np.asarray(diffusion.denoising_loss(eps, eps_hat, "l1")), [1.0, 1.0])
    np.testing.assert_allclose(np.asarray(diffusion.denoising_loss(eps, eps_hat, "l2")), [1.0, 2.0])
    with pytest.raises(ValueError, match="loss_type"):
        diffusion.denoising_loss(eps, eps_hat, "huber")


def test_training_loss_is_batch_mean_of_l1():
    schedule = diffusion.make_schedule(200)
    x0, noise = _random_batch(2)
    t = jnp.array([3, 30, 90, 150], dtype=jnp.int32)

    def eps_fn(x_t, t_batch):
        return 0.5 * x_t

    loss = diffusion.training_loss(eps_fn, schedule, x0, t, noise, "l1")
    x_t = diffusion.q_sample(schedule, x0, t, noise)
    expected = np.mean(np.abs(np.asarray(noise) - 0.5 * np.asarray(x_t)))
    assert loss.shape == ()
    np.testing.assert_allclose(float(loss), expected, rtol=1e-6)

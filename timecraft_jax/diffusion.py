"""Gaussian diffusion: beta schedules, the forward process and the training loss.

Every schedule array is computed in float64 numpy and stored as float32, as the
PyTorch reference registers its buffers. Time-series arrays are (B, T, C) and a
timestep batch `t` is (B,) int32 with values in [0, num_timesteps).
"""

import math
from typing import Callable

import flax
import jax
import jax.numpy as jnp
import numpy as np

BETA_SCHEDULES = ("linear", "cosine")
LOSS_TYPES = ("l1", "l2")

# Offset s of the improved-DDPM cosine schedule (Nichol & Dhariwal, 2021).
COSINE_OFFSET = 0.008
# Upper bound on each beta of the cosine schedule, which keeps the last step finite.
COSINE_MAX_BETA = 0.999
# Floor of the posterior variance before its log; the first posterior variance is exactly 0.
POSTERIOR_VARIANCE_FLOOR = 1e-20


@flax.struct.dataclass
class Schedule:
    """Diffusion schedule arrays, each of shape (num_timesteps,) float32.

    Index t is the model's timestep t, so `alphas_cumprod[t]` is alpha_bar_t and
    `alphas_cumprod_prev[t]` is alpha_bar_{t-1} with alpha_bar_{-1} = 1.
    """

    betas: jax.Array
    alphas_cumprod: jax.Array
    alphas_cumprod_prev: jax.Array
    sqrt_alphas_cumprod: jax.Array
    sqrt_one_minus_alphas_cumprod: jax.Array
    log_one_minus_alphas_cumprod: jax.Array
    sqrt_recip_alphas_cumprod: jax.Array
    sqrt_recipm1_alphas_cumprod: jax.Array
    posterior_variance: jax.Array
    posterior_log_variance_clipped: jax.Array
    posterior_mean_coef1: jax.Array
    posterior_mean_coef2: jax.Array
    num_timesteps: int = flax.struct.field(pytree_node=False)


def _linear_betas(num_timesteps: int, linear_start: float, linear_end: float) -> np.ndarray:
    """Return LDM's 'linear' betas: squares of a linspace between the square roots."""
    return np.linspace(math.sqrt(linear_start), math.sqrt(linear_end), num_timesteps, dtype=np.float64) ** 2


def _cosine_betas(num_timesteps: int) -> np.ndarray:
    """Return the improved-DDPM cosine betas, clipped at COSINE_MAX_BETA."""
    steps = np.arange(num_timesteps + 1, dtype=np.float64) / num_timesteps
    f = np.cos((steps + COSINE_OFFSET) / (1.0 + COSINE_OFFSET) * math.pi / 2) ** 2
    alpha_bar = f / f[0]
    betas = 1.0 - alpha_bar[1:] / alpha_bar[:-1]
    return np.clip(betas, 0.0, COSINE_MAX_BETA)


def _validate_schedule_arguments(
    num_timesteps: int, beta_schedule: str, linear_start: float, linear_end: float
) -> None:
    if isinstance(num_timesteps, bool) or not isinstance(num_timesteps, (int, np.integer)) or num_timesteps < 1:
        raise ValueError(f"num_timesteps must be a positive int, got {num_timesteps!r}; set diffusion.num_timesteps to e.g. 200.")
    if beta_schedule not in BETA_SCHEDULES:
        raise ValueError(f"Unknown beta_schedule {beta_schedule!r}; use one of {BETA_SCHEDULES}.")
    if beta_schedule == "linear" and not 0.0 < linear_start <= linear_end < 1.0:
        raise ValueError(
            f"The linear schedule needs 0 < linear_start <= linear_end < 1, got linear_start={linear_start!r}, "
            f"linear_end={linear_end!r}; the reference uses 5e-4 and 0.1."
        )


def make_schedule(
    num_timesteps: int,
    beta_schedule: str = "linear",
    linear_start: float = 5e-4,
    linear_end: float = 0.1,
) -> Schedule:
    """Build the schedule arrays for `num_timesteps` diffusion steps.

    Args:
      num_timesteps: Number of diffusion steps T.
      beta_schedule: 'linear' (LDM: betas = linspace(sqrt(start), sqrt(end), T)**2)
        or 'cosine' (improved DDPM, s = 0.008, betas clipped at 0.999).
      linear_start: beta of the first step for 'linear'.
      linear_end: beta of the last step for 'linear'.

    Raises:
      ValueError: if an argument is out of range or the schedule name is unknown.
    """
    _validate_schedule_arguments(num_timesteps, beta_schedule, linear_start, linear_end)
    num_timesteps = int(num_timesteps)
    if beta_schedule == "linear":
        betas = _linear_betas(num_timesteps, float(linear_start), float(linear_end))
    else:
        betas = _cosine_betas(num_timesteps)

    alphas = 1.0 - betas
    alphas_cumprod = np.cumprod(alphas)
    alphas_cumprod_prev = np.append(1.0, alphas_cumprod[:-1])
    posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)

    arrays = dict(
        betas=betas,
        alphas_cumprod=alphas_cumprod,
        alphas_cumprod_prev=alphas_cumprod_prev,
        sqrt_alphas_cumprod=np.sqrt(alphas_cumprod),
        sqrt_one_minus_alphas_cumprod=np.sqrt(1.0 - alphas_cumprod),
        log_one_minus_alphas_cumprod=np.log(1.0 - alphas_cumprod),
        sqrt_recip_alphas_cumprod=np.sqrt(1.0 / alphas_cumprod),
        sqrt_recipm1_alphas_cumprod=np.sqrt(1.0 / alphas_cumprod - 1.0),
        posterior_variance=posterior_variance,
        posterior_log_variance_clipped=np.log(np.maximum(posterior_variance, POSTERIOR_VARIANCE_FLOOR)),
        posterior_mean_coef1=betas * np.sqrt(alphas_cumprod_prev) / (1.0 - alphas_cumprod),
        posterior_mean_coef2=(1.0 - alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - alphas_cumprod),
    )
    return Schedule(
        **{name: jnp.asarray(value, dtype=jnp.float32) for name, value in arrays.items()},
        num_timesteps=num_timesteps,
    )


def schedule_from_config(diffusion_config) -> Schedule:
    """Build the schedule described by `config.diffusion`."""
    return make_schedule(
        num_timesteps=diffusion_config.num_timesteps,
        beta_schedule=diffusion_config.beta_schedule,
        linear_start=diffusion_config.linear_start,
        linear_end=diffusion_config.linear_end,
    )


def _gather(values: jax.Array, t: jax.Array) -> jax.Array:
    """Pick `values[t]` and shape it to broadcast against (B, T, C)."""
    return values[t][:, None, None]  # [B, 1, 1]


def q_sample(schedule: Schedule, x0: jax.Array, t: jax.Array, noise: jax.Array) -> jax.Array:
    """Draw x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) noise."""
    return _gather(schedule.sqrt_alphas_cumprod, t) * x0 + _gather(schedule.sqrt_one_minus_alphas_cumprod, t) * noise


def predict_x0_from_eps(schedule: Schedule, x_t: jax.Array, t: jax.Array, eps: jax.Array) -> jax.Array:
    """Invert q_sample: x0_hat = sqrt(1 / alpha_bar_t) x_t - sqrt(1 / alpha_bar_t - 1) eps."""
    return _gather(schedule.sqrt_recip_alphas_cumprod, t) * x_t - _gather(schedule.sqrt_recipm1_alphas_cumprod, t) * eps


def q_posterior(schedule: Schedule, x0: jax.Array, x_t: jax.Array, t: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Return the mean (B, T, C) and clipped log variance (B, 1, 1) of q(x_{t-1} | x_t, x0)."""
    mean = _gather(schedule.posterior_mean_coef1, t) * x0 + _gather(schedule.posterior_mean_coef2, t) * x_t
    log_variance = _gather(schedule.posterior_log_variance_clipped, t)
    return mean, log_variance


def _validate_loss_type(loss_type: str) -> None:
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"Unknown loss_type {loss_type!r}; use one of {LOSS_TYPES} (diffusion.loss).")


def denoising_loss(eps: jax.Array, eps_hat: jax.Array, loss_type: str) -> jax.Array:
    """Return the per-sample loss (B,): mean |eps - eps_hat| (l1) or its mean square (l2) over T and C."""
    _validate_loss_type(loss_type)
    diff = eps - eps_hat  # [B, T, C]
    if loss_type == "l1":
        return jnp.mean(jnp.abs(diff), axis=(1, 2))
    return jnp.mean(jnp.square(diff), axis=(1, 2))


def training_loss(
    eps_fn: Callable[[jax.Array, jax.Array], jax.Array],
    schedule: Schedule,
    x0: jax.Array,
    t: jax.Array,
    noise: jax.Array,
    loss_type: str,
) -> jax.Array:
    """Noise x0 to step t, predict the noise with `eps_fn(x_t, t)` and return the batch-mean loss.

    This is the reference's simple loss: its log-variance is 0 and its VLB weight is 0,
    so neither term changes the value.
    """
    _validate_loss_type(loss_type)
    x_t = q_sample(schedule, x0, t, noise)
    eps_hat = eps_fn(x_t, t)
    return jnp.mean(denoising_loss(noise, eps_hat, loss_type))

"""Reverse-diffusion samplers: ancestral DDPM and DDIM, each one `jax.lax.scan`.

Samplers call a denoiser `eps_fn(variables, x_t, t, cond) -> eps_hat` with x_t
(B, T, C), t (B,) int32 and a `Conditioning`. Tests pass a toy function, and
`make_model_eps_fn` adapts a `TimeCraftModel`.

Randomness is per sample. Sample i of a run with seed s uses the key
`fold_in(PRNGKey(s), i)`; its x_T comes from `fold_in(key, 0)` and the noise of
reverse step k (k = 0 is the first, noisiest step) from `fold_in(key, k + 1)`.
A sample therefore depends only on (seed, global index) and not on the batch
it was drawn in.

DDIM timesteps. With `reference_compatible=True` the PyTorch reference is
reproduced: tau = range(0, T, T // S) + 1 (the top step is T - c + 1), the
first step's alpha_bar_prev is alpha_bar_0, noise is added at the last step when
eta > 0, and the result is x at noise level alpha_bar_0. When T % S != 0 this
runs len(range(0, T, T // S)) steps, more than S, as the reference does.
The default (`reference_compatible=False`) follows the original DDIM code:
tau_i = i * (T // S) for i = 0 .. S-1, the step at tau = 0 goes to
alpha_bar_prev = 1, so it returns x0_hat of that step with sigma = 0 and no noise.
Quad spacing uses int((linspace(0, sqrt(0.8 T), S))**2) without the +1, and
repeated timesteps are removed, so a large S relative to T runs fewer steps.
"""

import functools
import logging
import math
from typing import Any, Callable, Optional, Union

import flax
import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from timecraft_jax import xla_options
from timecraft_jax.diffusion import Schedule, predict_x0_from_eps, q_posterior

logger = logging.getLogger(__name__)

SAMPLERS = ("ddpm", "ddim")
TIMESTEP_SPACINGS = ("uniform", "quad")
# Fraction of T that the largest quad-spaced DDIM timestep reaches.
QUAD_SPACING_FRACTION = 0.8


@flax.struct.dataclass
class Conditioning:
    """Per-sample conditions for the denoiser; any field may be None (no conditioning)."""

    context: Optional[jax.Array] = None  # [B, M, D] prompt tokens.
    logits: Optional[jax.Array] = None  # [B, M] prototype-attention logits.
    y: Optional[jax.Array] = None  # [B] int32 class labels.
    text: Optional[jax.Array] = None  # [B, E] text embeddings.


EpsFn = Callable[[Any, jax.Array, jax.Array, Conditioning], jax.Array]


def make_model_eps_fn(model, guidance_scale: float) -> EpsFn:
    """Adapt `TimeCraftModel.denoise_with_cfg` to the sampler's eps_fn signature."""
    guidance_scale = _validate_guidance_scale(guidance_scale)

    def eps_fn(variables, x_t, t, cond: Conditioning):
        return model.apply(
            variables,
            x_t,
            t,
            cond.context,
            cond.logits,
            y=cond.y,
            text=cond.text,
            guidance_scale=guidance_scale,
            method="denoise_with_cfg",
        )

    return eps_fn


# ----------------------------------------------------------------------------
# Keys and noise.


def _base_key(seed_or_key) -> jax.Array:
    """Return a raw (2,) uint32 key from an int seed or a key."""
    if isinstance(seed_or_key, (int, np.integer)) and not isinstance(seed_or_key, bool):
        return jax.random.PRNGKey(int(seed_or_key))
    key = jnp.asarray(seed_or_key)
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    if key.shape != (2,) or key.dtype != jnp.uint32:
        raise ValueError(
            f"Expected an int seed or one PRNG key, got an array of shape {key.shape} and dtype {key.dtype}; "
            "pass e.g. seed=0 or jax.random.PRNGKey(0)."
        )
    return key


@jax.jit
def _fold_in_indices(base_key: jax.Array, indices: jax.Array) -> jax.Array:
    return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(base_key, indices)


def sample_keys(seed_or_key, start_index: int, num: int) -> jax.Array:
    """Return the (num, 2) uint32 keys of global samples start_index .. start_index + num - 1."""
    if start_index < 0 or num < 1 or start_index + num > 2**32:
        raise ValueError(
            f"Invalid sample index range start_index={start_index}, num={num}; "
            "need start_index >= 0, num >= 1 and start_index + num <= 2**32."
        )
    indices = jnp.arange(num, dtype=jnp.uint32) + jnp.uint32(start_index)
    return _fold_in_indices(_base_key(seed_or_key), indices)


def _initial_noise(keys: jax.Array, shape_tc: tuple[int, int]) -> jax.Array:
    """Draw x_T per sample from fold_in(key, 0)."""
    return jax.vmap(lambda key: jax.random.normal(jax.random.fold_in(key, 0), shape_tc))(keys)


def _step_noise(keys: jax.Array, step: jax.Array, shape_tc: tuple[int, int]) -> jax.Array:
    """Draw the noise of reverse step `step` per sample from fold_in(key, step + 1)."""
    return jax.vmap(lambda key: jax.random.normal(jax.random.fold_in(key, step + 1), shape_tc))(keys)


# ----------------------------------------------------------------------------
# Argument checks, all on static values or shapes.


def _validate_guidance_scale(guidance_scale) -> float:
    if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, (int, float)) or not math.isfinite(guidance_scale):
        raise ValueError(f"guidance_scale must be a finite float, got {guidance_scale!r}; 1.0 disables guidance.")
    return float(guidance_scale)


def _validate_shape_tc(shape_tc) -> tuple[int, int]:
    valid = (
        len(tuple(shape_tc)) == 2
        and all(isinstance(n, (int, np.integer)) and not isinstance(n, bool) and n >= 1 for n in shape_tc)
    )
    if not valid:
        raise ValueError(f"shape_tc must be (seq_len, channels) with positive ints, got {shape_tc!r}.")
    return tuple(int(n) for n in shape_tc)


def _validate_batch_inputs(cond, keys, shape_tc, num_reverse_steps, noise, x_T) -> None:
    """Check that keys, conditions and overrides agree on the batch size B."""
    if not isinstance(cond, Conditioning):
        raise ValueError(f"cond must be a Conditioning, got {type(cond).__name__}; use Conditioning() for no conditioning.")
    if jnp.ndim(keys) != 2 or jnp.shape(keys)[1] != 2 or jnp.result_type(keys) != jnp.uint32:
        raise ValueError(
            f"keys must be (B, 2) uint32 raw PRNG keys, got shape {jnp.shape(keys)} and dtype {jnp.result_type(keys)}; "
            "build them with sample_keys(seed, start_index, B)."
        )
    batch = jnp.shape(keys)[0]
    for name in ("context", "logits", "y", "text"):
        value = getattr(cond, name)
        if value is not None and (jnp.ndim(value) == 0 or jnp.shape(value)[0] != batch):
            raise ValueError(f"cond.{name} has shape {jnp.shape(value)}, but there are {batch} keys; give one row per key.")
    if x_T is not None and jnp.shape(x_T) != (batch, *shape_tc):
        raise ValueError(f"x_T has shape {jnp.shape(x_T)}; expected {(batch, *shape_tc)} (B, T, C).")
    if noise is not None and jnp.shape(noise) != (num_reverse_steps, batch, *shape_tc):
        raise ValueError(
            f"noise has shape {jnp.shape(noise)}; expected {(num_reverse_steps, batch, *shape_tc)} "
            "(reverse steps, B, T, C)."
        )


# ----------------------------------------------------------------------------
# DDIM timesteps and coefficients.


def ddim_timesteps(
    num_timesteps: int, num_steps: int, timestep_spacing: str = "uniform", reference_compatible: bool = False
) -> np.ndarray:
    """Return the increasing int32 model timesteps that DDIM visits.

    Raises:
      ValueError: if num_steps is not in [1, num_timesteps), the spacing is unknown, or
        the reference timesteps would reach t = num_timesteps.
    """
    if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)) or not 1 <= num_steps < num_timesteps:
        raise ValueError(
            f"DDIM needs 1 <= num_steps < num_timesteps, got num_steps={num_steps!r} with num_timesteps={num_timesteps}; "
            "lower sampling.num_steps or use sampler='ddpm' to run every step."
        )
    if timestep_spacing not in TIMESTEP_SPACINGS:
        raise ValueError(f"Unknown timestep_spacing {timestep_spacing!r}; use one of {TIMESTEP_SPACINGS}.")

    if timestep_spacing == "uniform":
        stride = num_timesteps // num_steps
        timesteps = np.arange(0, num_timesteps, stride) if reference_compatible else np.arange(num_steps) * stride
    else:
        quad = np.linspace(0, math.sqrt(num_timesteps * QUAD_SPACING_FRACTION), num_steps) ** 2
        timesteps = quad.astype(int)
        if not reference_compatible:
            timesteps = np.unique(timesteps)

    if reference_compatible:
        timesteps = timesteps + 1
        if timesteps[-1] >= num_timesteps:
            raise ValueError(
                f"The reference DDIM timesteps for num_timesteps={num_timesteps}, num_steps={num_steps}, "
                f"spacing {timestep_spacing!r} reach t={timesteps[-1]}, past the last step {num_timesteps - 1}; "
                "choose a smaller num_steps or set reference_compatible=False."
            )
    return timesteps.astype(np.int32)


def ddim_parameters(
    schedule: Schedule,
    num_steps: int,
    eta: float,
    timestep_spacing: str = "uniform",
    reference_compatible: bool = False,
) -> dict[str, Any]:
    """Return the DDIM timesteps and per-step coefficients, in increasing timestep order.

    Keys: 'timesteps' (numpy int32), and float32 arrays 'alphas' (alpha_bar at each
    timestep), 'alphas_prev' (alpha_bar of the next lower visited timestep), 'sigmas'
    (eta * sqrt((1 - a_prev) / (1 - a) * (1 - a / a_prev))) and 'sqrt_one_minus_alphas'.
    Works on a traced schedule, because the timesteps depend only on static values.
    """
    eta = _validate_eta(eta)
    timesteps = ddim_timesteps(schedule.num_timesteps, num_steps, timestep_spacing, reference_compatible)
    alpha_bar = schedule.alphas_cumprod
    alphas = alpha_bar[timesteps]
    first_alpha_prev = alpha_bar[0] if reference_compatible else jnp.ones((), dtype=alpha_bar.dtype)
    alphas_prev = jnp.concatenate([first_alpha_prev[None], alpha_bar[timesteps[:-1]]])
    sigmas = eta * jnp.sqrt((1.0 - alphas_prev) / (1.0 - alphas) * (1.0 - alphas / alphas_prev))
    return dict(
        timesteps=timesteps,
        alphas=alphas,
        alphas_prev=alphas_prev,
        sigmas=sigmas,
        sqrt_one_minus_alphas=jnp.sqrt(1.0 - alphas),
    )


def _validate_eta(eta) -> float:
    if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not math.isfinite(eta) or eta < 0:
        raise ValueError(f"DDIM eta must be a finite float >= 0, got {eta!r}; 0 is deterministic, 1 is DDPM-like.")
    return float(eta)


# ----------------------------------------------------------------------------
# The reverse loops. Both are pure; the public functions below validate and jit them.


def _ddpm_loop(eps_fn, variables, schedule, cond, keys, shape_tc, return_trajectory, noise, x_T):
    batch = keys.shape[0]
    x = _initial_noise(keys, shape_tc) if x_T is None else x_T  # [B, T, C]
    steps = jnp.arange(schedule.num_timesteps, dtype=jnp.int32)
    timesteps = schedule.num_timesteps - 1 - steps

    def reverse_step(x_t, inputs):
        step, t, z = inputs
        t_batch = jnp.full((batch,), t, dtype=jnp.int32)
        eps_hat = eps_fn(variables, x_t, t_batch, cond)
        x0_hat = predict_x0_from_eps(schedule, x_t, t_batch, eps_hat)
        mean, log_variance = q_posterior(schedule, x0_hat, x_t, t_batch)
        if z is None:
            z = _step_noise(keys, step, shape_tc)
        # The step to t = 0 adds no noise.
        nonzero = (t > 0).astype(x_t.dtype)
        x_prev = mean + nonzero * jnp.exp(0.5 * log_variance) * z
        return x_prev, (x_prev if return_trajectory else None)

    x, trajectory = jax.lax.scan(reverse_step, x, (steps, timesteps, noise))
    return (x, trajectory) if return_trajectory else x


def _ddim_loop(
    eps_fn, variables, schedule, cond, keys, shape_tc,
    num_steps, eta, timestep_spacing, reference_compatible, return_trajectory, noise, x_T,
):
    batch = keys.shape[0]
    params = ddim_parameters(schedule, num_steps, eta, timestep_spacing, reference_compatible)
    num_reverse_steps = len(params["timesteps"])
    # The loop runs from the noisiest timestep down, so every per-step array is reversed.
    per_step = {name: value[::-1] for name, value in params.items()}
    add_noise = eta > 0
    x = _initial_noise(keys, shape_tc) if x_T is None else x_T  # [B, T, C]

    def reverse_step(x_t, inputs):
        step, t, a, a_prev, sigma, sqrt_one_minus_a, z = inputs
        t_batch = jnp.full((batch,), t, dtype=jnp.int32)
        eps_hat = eps_fn(variables, x_t, t_batch, cond)
        x0_hat = (x_t - sqrt_one_minus_a * eps_hat) / jnp.sqrt(a)
        # Clamped at 0 because rounding can make the float32 difference slightly negative.
        direction = jnp.sqrt(jnp.maximum(1.0 - a_prev - sigma**2, 0.0)) * eps_hat
        x_prev = jnp.sqrt(a_prev) * x0_hat + direction
        if add_noise:
            if z is None:
                z = _step_noise(keys, step, shape_tc)
            x_prev = x_prev + sigma * z
        return x_prev, ((x_prev, x0_hat) if return_trajectory else None)

    inputs = (
        jnp.arange(num_reverse_steps, dtype=jnp.int32),
        jnp.asarray(per_step["timesteps"]),
        per_step["alphas"],
        per_step["alphas_prev"],
        per_step["sigmas"],
        per_step["sqrt_one_minus_alphas"],
        noise,
    )
    x, trajectory = jax.lax.scan(reverse_step, x, inputs)
    if return_trajectory:
        return x, {"x": trajectory[0], "x0_hat": trajectory[1]}
    return x


@functools.cache
def _ddpm_loop_jit():
    # Built on first use so that importing this module does not start a backend.
    return xla_options.jit(_ddpm_loop, static_argnums=(0, 5, 6))


@functools.cache
def _ddim_loop_jit():
    return xla_options.jit(_ddim_loop, static_argnums=(0, 5, 6, 7, 8, 9, 10))


def ddpm_sample(
    eps_fn: EpsFn,
    variables,
    schedule: Schedule,
    cond: Conditioning,
    keys: jax.Array,
    shape_tc: tuple[int, int],
    *,
    return_trajectory: bool = False,
    noise: Optional[jax.Array] = None,
    x_T: Optional[jax.Array] = None,
):
    """Run ancestral DDPM over all T steps, as the reference does (no clamping of x0_hat).

    Args:
      eps_fn: Denoiser `eps_fn(variables, x_t, t, cond) -> eps_hat`.
      variables: Passed to eps_fn unchanged.
      schedule: Diffusion schedule.
      cond: Conditions with leading dim B, or `Conditioning()`.
      keys: (B, 2) uint32 per-sample keys from `sample_keys`.
      shape_tc: (T, C) of one sample.
      return_trajectory: Also return x after every step, (num_timesteps, B, T, C).
      noise: Optional (num_timesteps, B, T, C) step noise replacing the keyed draws;
        step k (t = num_timesteps - 1 - k) uses noise[k].
      x_T: Optional (B, T, C) start replacing the keyed draw.

    Returns:
      x_0 (B, T, C), or (x_0, trajectory) when return_trajectory is set.
    """
    shape_tc = _validate_shape_tc(shape_tc)
    _validate_batch_inputs(cond, keys, shape_tc, schedule.num_timesteps, noise, x_T)
    return _ddpm_loop_jit()(eps_fn, variables, schedule, cond, keys, shape_tc, bool(return_trajectory), noise, x_T)


def ddim_sample(
    eps_fn: EpsFn,
    variables,
    schedule: Schedule,
    cond: Conditioning,
    keys: jax.Array,
    shape_tc: tuple[int, int],
    *,
    num_steps: int,
    eta: float,
    timestep_spacing: str = "uniform",
    reference_compatible: bool = False,
    return_trajectory: bool = False,
    noise: Optional[jax.Array] = None,
    x_T: Optional[jax.Array] = None,
):
    """Run DDIM with `num_steps` steps; see the module docstring for the timestep conventions.

    Args:
      eps_fn, variables, schedule, cond, keys, shape_tc: As in `ddpm_sample`.
      num_steps: Number of DDIM steps S, 1 <= S < num_timesteps.
      eta: 0 is deterministic DDIM, 1 gives DDPM-like noise.
      timestep_spacing: 'uniform' or 'quad'.
      reference_compatible: Reproduce the reference's timesteps and last step.
      return_trajectory: Also return {'x': x after each step, 'x0_hat': x0_hat of each
        step}, each (steps, B, T, C), first row from the noisiest step.
      noise: Optional (steps, B, T, C) noise replacing the keyed draws; used when eta > 0.
      x_T: Optional (B, T, C) start replacing the keyed draw.

    Returns:
      The samples (B, T, C), or (samples, trajectory) when return_trajectory is set.

    Raises:
      ValueError: on invalid steps, eta, spacing or input shapes.
    """
    shape_tc = _validate_shape_tc(shape_tc)
    eta = _validate_eta(eta)
    num_reverse_steps = len(ddim_timesteps(schedule.num_timesteps, num_steps, timestep_spacing, reference_compatible))
    _validate_batch_inputs(cond, keys, shape_tc, num_reverse_steps, noise, x_T)
    return _ddim_loop_jit()(
        eps_fn, variables, schedule, cond, keys, shape_tc,
        int(num_steps), eta, timestep_spacing, bool(reference_compatible), bool(return_trajectory), noise, x_T,
    )


# ----------------------------------------------------------------------------
# Compiled samplers for a model and batched generation.


def build_sampler(eps_fn: EpsFn, schedule: Schedule, sampling_config, shape_tc: tuple[int, int]):
    """Compile-once sampler `sample(variables, cond, keys) -> (B, T, C)` for any eps_fn.

    `sampling_config` is `config.sampling`; its sampler, num_steps, eta, timestep_spacing
    and reference_compatible fields choose the loop. Arguments are checked here and
    input shapes at each call, before the jitted function runs.
    """
    shape_tc = _validate_shape_tc(shape_tc)
    sampler = sampling_config.sampler
    if sampler not in SAMPLERS:
        raise ValueError(f"Unknown sampling.sampler {sampler!r}; use one of {SAMPLERS}.")

    if sampler == "ddpm":
        num_reverse_steps = schedule.num_timesteps

        def run(variables, cond, keys):
            return _ddpm_loop(eps_fn, variables, schedule, cond, keys, shape_tc, False, None, None)
    else:
        num_steps = sampling_config.num_steps
        eta = _validate_eta(sampling_config.eta)
        spacing = sampling_config.timestep_spacing
        reference_compatible = bool(sampling_config.reference_compatible)
        num_reverse_steps = len(ddim_timesteps(schedule.num_timesteps, num_steps, spacing, reference_compatible))

        def run(variables, cond, keys):
            return _ddim_loop(
                eps_fn, variables, schedule, cond, keys, shape_tc,
                num_steps, eta, spacing, reference_compatible, False, None, None,
            )

    run_jit = xla_options.jit(run)

    def sample(variables, cond: Conditioning, keys: jax.Array) -> jax.Array:
        _validate_batch_inputs(cond, keys, shape_tc, num_reverse_steps, None, None)
        return run_jit(variables, cond, keys)

    return sample


def make_sampler(model, schedule: Schedule, sampling_config, seq_len: int, channels: int):
    """Compile-once sampler for a `TimeCraftModel`, with CFG scale `sampling_config.guidance_scale`."""
    eps_fn = make_model_eps_fn(model, sampling_config.guidance_scale)
    return build_sampler(eps_fn, schedule, sampling_config, (seq_len, channels))


def _slice_rows(cond: Conditioning, start: int, stop: int) -> Conditioning:
    return jax.tree.map(lambda leaf: leaf[start:stop], cond)


def _pad_rows(cond: Conditioning, num_rows: int) -> Conditioning:
    """Pad every leaf to num_rows rows by repeating its last row."""
    def pad(leaf):
        missing = num_rows - leaf.shape[0]
        if missing == 0:
            return leaf
        return np.concatenate([leaf, np.repeat(leaf[-1:], missing, axis=0)], axis=0)

    return jax.tree.map(pad, cond)


def _check_num_rows(cond: Conditioning, expected: int, source: str) -> None:
    for name in ("context", "logits", "y", "text"):
        value = getattr(cond, name)
        if value is not None and (np.ndim(value) == 0 or np.shape(value)[0] != expected):
            raise ValueError(f"{source}.{name} has shape {np.shape(value)}; expected {expected} rows, one per sample.")


def generate(
    sample_fn,
    variables,
    cond_fn_or_cond: Union[None, Conditioning, Callable[[int, int], Conditioning]],
    num_samples: int,
    batch_size: int,
    seed,
    *,
    show_progress: bool = True,
) -> np.ndarray:
    """Draw `num_samples` samples in batches of `batch_size` and return them as (N, T, C) numpy.

    Args:
      sample_fn: `sample(variables, cond, keys)`, e.g. from `make_sampler`.
      variables: Model variables passed to sample_fn.
      cond_fn_or_cond: None (no conditioning), a Conditioning whose leaves have N rows
        (row i conditions sample i), or a function (start, stop) returning the
        Conditioning of samples start .. stop - 1.
      num_samples: N.
      batch_size: Samples per sample_fn call. The last batch is padded to this size,
        so every call has one shape, and the padded rows are dropped.
      seed: int seed or key; sample i uses `sample_keys(seed, i, 1)`.
      show_progress: Show a tqdm progress bar.

    Raises:
      ValueError: if the counts or the condition rows are invalid.
      FloatingPointError: if a batch contains NaN or infinite values.
    """
    for name, value in (("num_samples", num_samples), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}.")
    if cond_fn_or_cond is None:
        cond_fn_or_cond = Conditioning()
    if isinstance(cond_fn_or_cond, Conditioning):
        all_conds = jax.tree.map(np.asarray, cond_fn_or_cond)
        _check_num_rows(all_conds, num_samples, "cond")

        def cond_fn(start, stop):
            return _slice_rows(all_conds, start, stop)
    elif callable(cond_fn_or_cond):
        cond_fn = cond_fn_or_cond
    else:
        raise ValueError(
            f"cond_fn_or_cond must be None, a Conditioning or a function (start, stop) -> Conditioning, "
            f"got {type(cond_fn_or_cond).__name__}."
        )

    num_batches = -(-num_samples // batch_size)
    logger.info("Generating %d samples in %d batches of %d.", num_samples, num_batches, batch_size)
    outputs = []
    with tqdm(total=num_samples, desc="sampling", unit="sample", disable=not show_progress) as progress:
        for start in range(0, num_samples, batch_size):
            stop = min(start + batch_size, num_samples)
            cond = jax.tree.map(np.asarray, cond_fn(start, stop))
            _check_num_rows(cond, stop - start, "cond_fn(start, stop)")
            keys = sample_keys(seed, start, batch_size)
            samples = np.asarray(sample_fn(variables, _pad_rows(cond, batch_size), keys))[: stop - start]
            num_bad = int(np.size(samples) - np.count_nonzero(np.isfinite(samples)))
            if num_bad:
                raise FloatingPointError(
                    f"Samples {start}..{stop - 1} contain {num_bad} NaN or infinite values; "
                    "check the model's parameters and the conditions of these samples."
                )
            outputs.append(samples)
            progress.update(stop - start)
    return np.concatenate(outputs, axis=0)

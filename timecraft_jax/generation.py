"""Generate samples from a trained checkpoint, conditioned on prompt windows."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from timecraft_jax import diffusion, sampling, xla_options
from timecraft_jax.checkpointing import load_checkpoint
from timecraft_jax.data import DataError
from timecraft_jax.data.batching import to_univariate
from timecraft_jax.data.normalizers import Normalizer
from timecraft_jax.models import TimeCraftModel, build_model


@dataclasses.dataclass
class SamplingBundle:
    """A model with the weights and normalizers of one checkpoint."""

    config: ml_collections.ConfigDict
    model: TimeCraftModel
    variables: dict  # Flax variables: params (EMA or raw), batch_stats, constants.
    normalizers: dict[str, Normalizer]
    domains: list[str]
    step: int
    use_ema: bool
    _encode: Any = dataclasses.field(default=None, repr=False)

    @property
    def seq_len(self) -> int:
        return int(self.config.data.seq_len)

    @property
    def channels(self) -> int:
        return int(self.config.model.in_channels)

    def encode_fn(self):
        """Return the jitted `(variables, x) -> (context, logits)` of the conditioner in inference mode, built once."""
        if self._encode is None:
            model = self.model
            self._encode = xla_options.jit(lambda variables, x: model.apply(variables, x, train=False,
                                                                    method=TimeCraftModel.encode))
        return self._encode


def load_bundle(workdir: str | Path, which: str = "best", use_ema: bool = True) -> SamplingBundle:
    """Load a checkpoint for sampling; EMA parameters unless `use_ema` is False."""
    restored = load_checkpoint(workdir, which)
    state = restored.state
    config = restored.config
    params = state["ema_params"] if use_ema else state["params"]
    variables = {"params": params}
    for collection in ("batch_stats", "constants"):
        if state.get(collection):
            variables[collection] = state[collection]
    variables = jax.tree_util.tree_map(jnp.asarray, variables)
    model = build_model(config.model, config.data.seq_len)
    logging.info("loaded checkpoint step %d from %s (%s parameters)", restored.step, workdir,
                 "EMA" if use_ema else "raw")
    return SamplingBundle(config=config, model=model, variables=variables, normalizers=restored.normalizers,
                          domains=list(restored.meta.get("domains", [])), step=restored.step, use_ema=use_ema)


def encode_prompts(bundle: SamplingBundle, prompts: np.ndarray, batch_size: int = 256) -> sampling.Conditioning:
    """Encode normalized prompt windows [k, T, C] with the conditioner in inference mode."""
    conditioner = bundle.config.model.conditioner
    if conditioner == "none":
        return sampling.Conditioning()
    encode = bundle.encode_fn()
    contexts, logits = [], []
    for start in range(0, len(prompts), batch_size):
        context, logit = encode(bundle.variables, jnp.asarray(prompts[start:start + batch_size], jnp.float32))
        contexts.append(np.asarray(context))
        if logit is not None:
            logits.append(np.asarray(logit))
    return sampling.Conditioning(
        context=np.concatenate(contexts),
        logits=np.concatenate(logits) if logits else None,
    )


def round_robin(cond: sampling.Conditioning, num_samples: int) -> sampling.Conditioning:
    """Repeat k prompt conditions so sample j follows prompt j mod k; exactly `num_samples` rows."""

    def repeat(array):
        if array is None:
            return None
        index = np.arange(num_samples) % len(array)
        return np.asarray(array)[index]

    return jax.tree_util.tree_map(repeat, cond, is_leaf=lambda x: x is None)


def training_windows(bundle: SamplingBundle, domain: str) -> np.ndarray:
    """Load the raw training windows of `domain` as the model was trained on them."""
    data_root = Path(bundle.config.data.data_root)
    path = data_root / f"{domain}_{bundle.seq_len}_train.npy"
    if not path.is_file():
        raise DataError(f"prompt windows for domain {domain!r} not found at {path}; create them with "
                        f"`python -m data_prep.prepare --data_root {data_root} --seq_len {bundle.seq_len} "
                        f"--domains {domain}`")
    windows = np.load(path)
    if bundle.config.data.univariate:
        windows = to_univariate(windows)
    return windows


def draw_prompts(windows: np.ndarray, num_prompts: int, seed: int) -> np.ndarray:
    """Draw prompt windows under `seed`: without replacement when there are enough windows.

    The first n prompts are the same for every `num_prompts` >= n, so asking
    for more prompts never changes the earlier ones.
    """
    rng = np.random.default_rng([seed, 7])
    if num_prompts > len(windows):
        index = rng.integers(0, len(windows), size=num_prompts)
    else:
        index = rng.permutation(len(windows))[:num_prompts]
    return windows[index]


def make_sample_fn(bundle: SamplingBundle, sampling_config: ml_collections.ConfigDict):
    schedule = diffusion.schedule_from_config(bundle.config.diffusion)
    return sampling.make_sampler(bundle.model, schedule, sampling_config, bundle.seq_len, bundle.channels)


def generate_from_prompts(bundle: SamplingBundle, prompts_normalized: np.ndarray, num_samples: int,
                          sampling_config: ml_collections.ConfigDict, seed: int, sample_fn=None) -> np.ndarray:
    """Generate `num_samples` normalized samples; sample j follows prompt j mod k.

    Pass the `sample_fn` of `make_sample_fn` to reuse one compiled sampler across calls.
    """
    cond = round_robin(encode_prompts(bundle, prompts_normalized), num_samples)
    if sample_fn is None:
        sample_fn = make_sample_fn(bundle, sampling_config)
    return sampling.generate(sample_fn, bundle.variables, cond, num_samples, sampling_config.batch_size, seed)


def sampling_metadata(bundle: SamplingBundle, sampling_config: ml_collections.ConfigDict, seed: int,
                      **extra: Any) -> dict:
    return {
        "space": "raw",
        "layout": "NTC",
        "checkpoint_step": bundle.step,
        "ema": bundle.use_ema,
        "seed": seed,
        "sampler": sampling_config.sampler,
        "num_steps": int(sampling_config.num_steps) if sampling_config.sampler == "ddim"
        else int(bundle.config.diffusion.num_timesteps),
        "eta": float(sampling_config.eta),
        "guidance_scale": float(sampling_config.guidance_scale),
        **extra,
    }


def check_finite_samples(samples: np.ndarray, where: str) -> None:
    bad = int(np.count_nonzero(~np.isfinite(samples)))
    if bad:
        raise FloatingPointError(f"{bad} of {samples.size} generated values are NaN or infinite ({where}); "
                                 f"nothing was written. Check the training metrics for divergence.")


def warn_if_collapsed(samples: np.ndarray, where: str) -> None:
    """Log a warning when generated series are (almost) identical to each other."""
    if len(samples) < 2:
        return
    spread = float(np.mean(np.std(samples, axis=0)))
    scale = float(np.std(samples)) + 1e-12
    if spread / scale < 1e-3:
        logging.warning("samples for %s are nearly identical (spread %.3g of scale %.3g): mode collapse?",
                        where, spread, scale)

"""Train state, optimizer and the pure, jitted training and validation steps."""

from __future__ import annotations

from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax

from timecraft_jax import diffusion
from timecraft_jax.models import TimeCraftModel

PyTree = Any


@flax.struct.dataclass
class TrainState:
    """Everything that changes during training; a pytree saved whole in checkpoints."""

    step: jnp.ndarray  # [] int32, optimizer steps taken.
    params: PyTree  # Trainable parameters: {'unet': ..., 'conditioner': ...}.
    batch_stats: PyTree  # Conditioner BatchNorm running statistics.
    constants: PyTree  # Fixed arrays (the orthonormal prototypes), never updated.
    ema_params: PyTree  # Exponential moving average of `params`.
    opt_state: PyTree  # AdamW state.
    rng: jnp.ndarray  # [2] uint32 base key; step keys are fold_in(rng, step).


def global_norm(tree: PyTree) -> jnp.ndarray:
    """L2 norm over all leaves of `tree`."""
    return jnp.sqrt(sum(jnp.sum(jnp.square(leaf)) for leaf in jax.tree_util.tree_leaves(tree)))


def learning_rate_schedule(optimizer_config: ml_collections.ConfigDict) -> optax.Schedule:
    """Linear warm-up from 1e-6 * lr to lr over `warmup_steps`, then constant.

    This matches the reference's LambdaLinearScheduler with f_start 1e-6 and
    f_max = f_min = 1.
    """
    peak = optimizer_config.learning_rate
    warmup = optimizer_config.warmup_steps
    if warmup <= 0:
        return optax.constant_schedule(peak)
    return optax.join_schedules(
        [optax.linear_schedule(1e-6 * peak, peak, warmup), optax.constant_schedule(peak)],
        boundaries=[warmup],
    )


def make_optimizer(optimizer_config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """AdamW with PyTorch's defaults: weight decay on every parameter, no mask."""
    adamw = optax.adamw(
        learning_rate_schedule(optimizer_config),
        b1=optimizer_config.b1,
        b2=optimizer_config.b2,
        eps=optimizer_config.eps,
        weight_decay=optimizer_config.weight_decay,
    )
    if optimizer_config.grad_clip_norm > 0:
        return optax.chain(optax.clip_by_global_norm(optimizer_config.grad_clip_norm), adamw)
    return adamw


def create_train_state(variables: PyTree, optimizer: optax.GradientTransformation, rng: jnp.ndarray) -> TrainState:
    params = variables["params"]
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=variables.get("batch_stats", {}),
        constants=variables.get("constants", {}),
        ema_params=jax.tree_util.tree_map(jnp.copy, params),
        opt_state=optimizer.init(params),
        rng=rng,
    )


def ema_decay(num_updates: jnp.ndarray, max_decay: float) -> jnp.ndarray:
    """Return the EMA decay of the reference: min(max_decay, (1 + n) / (10 + n)) after n updates."""
    n = num_updates.astype(jnp.float32)
    return jnp.minimum(max_decay, (1.0 + n) / (10.0 + n))


def num_tokens(model_config: ml_collections.ConfigDict) -> int:
    """Context tokens seen by cross-attention (the condition-dropout mask size)."""
    conditioner = model_config.conditioner
    if conditioner == "prototype":
        return model_config.num_prototypes
    if conditioner == "encoder":
        return 1
    return 0


def _loss_and_updates(model: TimeCraftModel, schedule: diffusion.Schedule, config: ml_collections.ConfigDict,
                      params: PyTree, batch_stats: PyTree, constants: PyTree, batch: dict, rng: jnp.ndarray,
                      train: bool):
    """Draw t, noise and the keep mask from `rng`, then return (loss, new batch stats)."""
    x0 = batch["x"]  # [B, T, C]
    batch_size = x0.shape[0]
    t_key, noise_key, drop_key = jax.random.split(rng, 3)
    t = jax.random.randint(t_key, (batch_size,), 0, schedule.num_timesteps)
    noise = jax.random.normal(noise_key, x0.shape, x0.dtype)
    tokens = num_tokens(config.model)
    keep = None
    if tokens:
        keep_prob = 1.0 - config.diffusion.cond_drop_prob
        keep = jax.random.bernoulli(drop_key, keep_prob, (batch_size, tokens, 1)).astype(jnp.float32)
    variables = {"params": params, "batch_stats": batch_stats, "constants": constants}
    variables = {name: tree for name, tree in variables.items() if tree}
    x_t = diffusion.q_sample(schedule, x0, t, noise)
    has_stats = bool(batch_stats)
    outputs = model.apply(
        variables, x_t, t, x0, keep=keep, y=batch.get("y"), text=batch.get("text"), train=train,
        mutable=["batch_stats"] if (train and has_stats) else False,
    )
    if train and has_stats:
        eps_hat, new_state = outputs
        new_batch_stats = new_state["batch_stats"]
    else:
        eps_hat, new_batch_stats = outputs, batch_stats
    loss = jnp.mean(diffusion.denoising_loss(noise, eps_hat, config.diffusion.loss))
    return loss, new_batch_stats


def make_train_step(model: TimeCraftModel, schedule: diffusion.Schedule, optimizer: optax.GradientTransformation,
                    config: ml_collections.ConfigDict) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
    """Build the pure `train_step(state, batch) -> (state, metrics)`; jit it at the call site."""
    max_decay = config.training.ema_max_decay

    def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        rng = jax.random.fold_in(state.rng, state.step)

        def loss_fn(params):
            return _loss_and_updates(model, schedule, config, params, state.batch_stats, state.constants,
                                     batch, rng, train=True)

        (loss, new_batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        decay = ema_decay(state.step + 1, max_decay)
        ema_params = jax.tree_util.tree_map(lambda e, p: e - (1.0 - decay) * (e - p), state.ema_params, params)
        metrics = {
            "loss": loss,
            "grad_norm": global_norm(grads),
            "param_norm": global_norm(params),
            "update_norm": global_norm(updates),
        }
        new_state = state.replace(step=state.step + 1, params=params, batch_stats=new_batch_stats,
                                  ema_params=ema_params, opt_state=opt_state)
        return new_state, metrics

    return train_step


def make_eval_step(model: TimeCraftModel, schedule: diffusion.Schedule,
                   config: ml_collections.ConfigDict) -> Callable[[TrainState, dict, jnp.ndarray], dict]:
    """Build `eval_step(state, batch, rng) -> metrics` with raw and EMA parameters.

    Like the reference, the validation loss keeps condition dropout on, and the
    conditioner runs in inference mode (running BatchNorm statistics).
    """

    def eval_step(state: TrainState, batch: dict, rng: jnp.ndarray) -> dict:
        loss, _ = _loss_and_updates(model, schedule, config, state.params, state.batch_stats, state.constants,
                                    batch, rng, train=False)
        loss_ema, _ = _loss_and_updates(model, schedule, config, state.ema_params, state.batch_stats,
                                        state.constants, batch, rng, train=False)
        return {"val_loss": loss, "val_loss_ema": loss_ema}

    return eval_step

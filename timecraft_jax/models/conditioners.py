"""Prompt encoders that turn a window `(B, T, C)` into cross-attention context.

Submodule names mirror the PyTorch module paths with numeric indices joined
by underscores (`share_encoder.1` becomes `share_encoder_1`), which is what
the weight importer expects.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from timecraft_jax.models.layers import torch_default_kernel_init


class BatchNorm1d(nn.Module):
    """BatchNorm over every axis but the last, with PyTorch's statistics.

    Training normalises with the biased batch variance and updates the running
    variance with the unbiased one (`n / (n - 1)` correction), as
    `torch.nn.BatchNorm1d` does. Flax's BatchNorm uses the biased variance for
    both, so it cannot reproduce PyTorch's running statistics. `momentum` is
    the flax convention (0.9 equals PyTorch's 0.1).
    Parameters are 'scale' and 'bias'; running statistics are 'mean' and 'var'
    in the 'batch_stats' collection.
    """

    use_running_average: bool
    momentum: float = 0.9
    epsilon: float = 1e-5

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        features = x.shape[-1]
        x32 = x.astype(jnp.float32)
        scale = self.param("scale", nn.initializers.ones, (features,))
        bias = self.param("bias", nn.initializers.zeros, (features,))
        running_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((features,), jnp.float32))
        running_var = self.variable("batch_stats", "var", lambda: jnp.ones((features,), jnp.float32))

        if self.use_running_average:
            mean, var = running_mean.value, running_var.value
        else:
            axes = tuple(range(x.ndim - 1))
            n = x32.size // features
            mean = x32.mean(axis=axes)
            var = jnp.square(x32 - mean).mean(axis=axes)
            if not self.is_initializing():
                unbiased_var = var * (n / max(n - 1, 1))
                running_mean.value = self.momentum * running_mean.value + (1.0 - self.momentum) * mean
                running_var.value = self.momentum * running_var.value + (1.0 - self.momentum) * unbiased_var
        y = (x32 - mean) * jax.lax.rsqrt(var + self.epsilon) * scale + bias
        return y.astype(x.dtype)


def _conv(features, kernel_size, stride, padding, dtype, name):
    return nn.Conv(
        features,
        (kernel_size,),
        strides=(stride,),
        padding=((padding, padding),),
        dtype=dtype,
        kernel_init=torch_default_kernel_init,
        name=name,
    )


def _stem(x, prefix: str, dim: int, train: bool, dtype: Any) -> jax.Array:
    """Two stride-2 convs (k4, p1), each followed by BatchNorm and ReLU: `(B, T, C)` to `(B, T/4, dim)`.

    Called from a compact `__call__`, so the layers belong to that module.
    """
    h = _conv(dim, 4, 2, 1, dtype, f"{prefix}_0")(x)
    h = nn.relu(BatchNorm1d(not train, name=f"{prefix}_1")(h))
    h = _conv(dim, 4, 2, 1, dtype, f"{prefix}_3")(h)
    return nn.relu(BatchNorm1d(not train, name=f"{prefix}_4")(h))


def _flatten_channel_major(h: jax.Array) -> jax.Array:
    """Flatten `(B, T', D)` as PyTorch flattens `(B, D, T')`: channel index outermost."""
    return jnp.transpose(h, (0, 2, 1)).reshape(h.shape[0], -1)


class ResBlockTime(nn.Module):
    """`x + Conv_k1(ReLU(BN(Conv_k3(ReLU(x)))))` on `(B, T', D)`."""

    train: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        dim = x.shape[-1]
        h = _conv(dim, 3, 1, 1, self.dtype, "convs_1")(nn.relu(x))
        h = nn.relu(BatchNorm1d(not self.train, name="convs_2")(h))
        h = _conv(dim, 1, 1, 0, self.dtype, "convs_4")(h)
        return x + h


class DomainUnifiedPrototyper(nn.Module):
    """TimeDP's prototype conditioner: fixed prototypes plus per-sample PAM logits.

    The `(M, D)` prototypes are a random orthonormal basis drawn once at init
    and stored in the 'constants' collection, so no optimizer updates them (the
    reference freezes them too). Returns `(context, logits)`: the prototypes
    broadcast to `(B, M, D)` and logits `(B, M)` from the stem, a
    ResBlockTime and a linear layer over the channel-major flattened features.
    """

    dim: int
    num_prototypes: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False):
        # x: [B, T, C]
        prototypes = self.variable(
            "constants",
            "prototypes",
            lambda: nn.initializers.orthogonal()(self.make_rng("params"), (self.num_prototypes, self.dim)),
        ).value  # [M, D]
        h = _stem(x.astype(self.dtype), "share_encoder", self.dim, train, self.dtype)
        self.sow("intermediates", "share_encoder", h)
        h = ResBlockTime(train, self.dtype, name="mask_ffn_0")(h)
        logits = nn.Dense(
            self.num_prototypes, dtype=self.dtype, kernel_init=torch_default_kernel_init, name="mask_ffn_2"
        )(_flatten_channel_major(h))
        context = jnp.broadcast_to(prototypes[None], (x.shape[0],) + prototypes.shape)
        return context.astype(jnp.float32), logits.astype(jnp.float32)


class DomainUnifiedEncoder(nn.Module):
    """Single-token conditioner: stem, ResBlockTime, BN, ReLU, ResBlockTime, linear to `(B, 1, D)`."""

    dim: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False):
        # x: [B, T, C]
        h = _stem(x.astype(self.dtype), "in_encoder", self.dim, train, self.dtype)
        h = ResBlockTime(train, self.dtype, name="out_encoder_0")(h)
        h = nn.relu(BatchNorm1d(not train, name="out_encoder_1")(h))
        h = ResBlockTime(train, self.dtype, name="out_encoder_3")(h)
        token = nn.Dense(self.dim, dtype=self.dtype, kernel_init=torch_default_kernel_init, name="out_encoder_5")(
            _flatten_channel_major(h)
        )
        return token[:, None, :].astype(jnp.float32), None

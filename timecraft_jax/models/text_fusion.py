"""Fusion of a per-sample text embedding into the context tokens (reference `ConditioningMLP`)."""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from timecraft_jax.models.layers import torch_default_kernel_init

FUSION_TYPES = ("add", "gated_add")


class ConditioningMLP(nn.Module):
    """Project text `(B, text_dim)` to the context width D and fuse it into `(B, N, D)` tokens.

    `p = Linear(D)(ReLU(Linear(D)(text)))`. 'add' returns `c + p` on every
    token. 'gated_add' computes `g = sigmoid(Linear(D)([mean_N(c), p]))` and
    returns `g * p + (1 - g) * c`. The text may have any width; the context
    width must equal `context_dim`, and no reshape is attempted.
    """

    context_dim: int
    fusion: str = "gated_add"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, context: jax.Array, text: jax.Array) -> jax.Array:
        # context: [B, N, D] float32, text: [B, text_dim]
        if context.shape[-1] != self.context_dim:
            raise ValueError(f"context width {context.shape[-1]} does not match context_dim {self.context_dim}")
        if self.fusion not in FUSION_TYPES:
            raise ValueError(f"unknown text fusion {self.fusion!r}; expected one of {FUSION_TYPES}")

        def dense(name):
            return nn.Dense(self.context_dim, dtype=self.dtype, kernel_init=torch_default_kernel_init, name=name)

        p = dense("text_mlp_0")(text.astype(self.dtype))
        p = dense("text_mlp_2")(nn.relu(p)).astype(jnp.float32)  # [B, D]
        if self.fusion == "add":
            return context + p[:, None, :]
        pooled = context.mean(axis=1)  # [B, D]
        gate_in = jnp.concatenate([pooled, p], axis=-1).astype(self.dtype)
        g = nn.sigmoid(dense("gate_layer_0")(gate_in).astype(jnp.float32))[:, None, :]  # [B, 1, D]
        return g * p[:, None, :] + (1.0 - g) * context

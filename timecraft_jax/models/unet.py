"""1-D UNet denoiser with spatial transformers (TimeCraft's `ts_unet.UNetModel`).

Arrays are channels-last, `(B, T, C)`. Submodule names mirror the PyTorch
module paths with numeric indices joined by underscores, so
`input_blocks.1.0.in_layers.2` becomes `input_blocks_1_0/in_layers_2`. The
weight importer relies on this one rule.

Norms and softmax always run in float32. Convolutions, dense layers and the
attention products run in `dtype` (float32 or bfloat16); parameters stay
float32.
"""

import math
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from timecraft_jax.models.attention import attend
from timecraft_jax.models.layers import (
    Conv1D, Dense, DenseParameters, GroupNorm, LayerNorm, geglu, silu, torch_default_kernel_init,
)
from timecraft_jax.models.text_fusion import ConditioningMLP

# Added to the attention logits of prototypes whose PAM logit is <= 0. The
# reference subtracts float32's max; a finite value keeps gradients finite.
MASKED_LOGIT = -1e9


def timestep_embedding(t: jax.Array, dim: int) -> jax.Array:
    """Embed integer timesteps as `[cos(t f), sin(t f)]`, cos first.

    Frequencies are `f_i = exp(-ln(10000) i / half)` for `i < half = dim // 2`;
    an odd `dim` gets a trailing zero column. Returns float32 `(B, dim)`.
    """
    half = dim // 2
    freqs = jnp.exp(-math.log(10000.0) * jnp.arange(half, dtype=jnp.float32) / half)
    angles = t.astype(jnp.float32)[:, None] * freqs[None, :]  # [B, half]
    emb = jnp.concatenate([jnp.cos(angles), jnp.sin(angles)], axis=-1)
    if dim % 2:
        emb = jnp.concatenate([emb, jnp.zeros_like(emb[:, :1])], axis=-1)
    return emb


def _conv(features: int, kernel_size: int, dtype: Any, name: str, zero_init: bool = False) -> Conv1D:
    """Stride-1 conv with PyTorch's symmetric 'same' padding (odd kernels)."""
    init = nn.initializers.zeros if zero_init else torch_default_kernel_init
    return Conv1D(features, kernel_size, padding=(kernel_size - 1) // 2, dtype=dtype, kernel_init=init, name=name)


def _dense(features: int, dtype: Any, name: str, use_bias: bool = True) -> Dense:
    return Dense(features, use_bias=use_bias, dtype=dtype, name=name)


def group_norm(
    x: jax.Array, eps: float, name: str, modulation: Optional[tuple[jax.Array, jax.Array]] = None
) -> jax.Array:
    """Apply a 32-group GroupNorm in float32 and cast the result back to the input dtype.

    `modulation`, a `(scale, shift)` pair of `(B, C)` arrays, returns
    `GroupNorm(x) * (1 + scale) + shift`.
    """
    return GroupNorm(num_groups=32, epsilon=eps, name=name)(x, modulation).astype(x.dtype)


def layer_norm(x: jax.Array, name: str) -> jax.Array:
    """LayerNorm (eps 1e-5) computed in float32, cast back to the input dtype."""
    return LayerNorm(epsilon=1e-5, name=name)(x).astype(x.dtype)


def downsample(x: jax.Array) -> jax.Array:
    """Average-pool time by 2 (kernel 2, stride 2)."""
    b, t, c = x.shape
    return x.reshape(b, t // 2, 2, c).mean(axis=2)


def upsample(x: jax.Array) -> jax.Array:
    """Nearest-neighbour upsampling of time by 2."""
    return jnp.repeat(x, 2, axis=1)


class ResBlock(nn.Module):
    """Residual block with scale-shift timestep conditioning and optional resampling.

    With `up` or `down`, the hidden path is resampled after its first
    GroupNorm and SiLU and before its first conv, and the skip input is
    resampled too.
    """

    out_channels: int
    up: bool = False
    down: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, emb: jax.Array) -> jax.Array:
        # x: [B, T, C_in], emb: [B, E]
        in_channels = x.shape[-1]
        h = silu(group_norm(x, 1e-5, "in_layers_0"))
        if self.up:
            h, x = upsample(h), upsample(x)
        elif self.down:
            h, x = downsample(h), downsample(x)
        h = _conv(self.out_channels, 3, self.dtype, "in_layers_2")(h)

        emb_out = _dense(2 * self.out_channels, self.dtype, "emb_layers_1")(silu(emb))
        scale_shift = jnp.split(emb_out, 2, axis=-1)  # [B, C_out] each
        h = group_norm(h, 1e-5, "out_layers_0", modulation=scale_shift)
        h = _conv(self.out_channels, 3, self.dtype, "out_layers_3", zero_init=True)(silu(h))

        if in_channels != self.out_channels:
            x = _conv(self.out_channels, 1, self.dtype, "skip_connection")(x)
        return x + h


class Attention(nn.Module):
    """Multi-head attention with bias-free q/k/v projections.

    The softmax product runs through `attention.attend`, which splits large
    CPU batches into chunks.

    `__call__(x, context, bias, all_masked, null_token)`:
      * `context=None` attends to `x` itself. If `x`'s width differs from the
        key projection's input width `context_width`, `x` is reshaped row-major
        to `(B, T*C/context_width, context_width)` first. This reproduces the
        reference for a conditional model called without context.
      * `bias` `(B, J)` is added to the logits of every head and query.
      * `all_masked` `(B,)` flags rows whose PAM logits are all <= 0. With
        `all_masked_mode='uniform'` those rows get attention weights 1/J over the
        J keys, which is what the reference's float32 `-FLT_MAX` offset
        produces. With 'null' their output is the value of `null_token`
        `(1, D)`, as if they attended to the null token alone.
    """

    heads: int
    dim_head: int
    context_width: int
    all_masked_mode: str = "uniform"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        context: Optional[jax.Array] = None,
        bias: Optional[jax.Array] = None,
        all_masked: Optional[jax.Array] = None,
        null_token: Optional[jax.Array] = None,
    ) -> jax.Array:
        b, t, channels = x.shape
        inner = self.heads * self.dim_head
        if context is None:
            context = x
            if channels != self.context_width:
                if (t * channels) % self.context_width:
                    raise ValueError(
                        f"cannot reshape hidden states of width {channels} and length {t} into "
                        f"tokens of width {self.context_width}; pass a context"
                    )
                context = context.reshape(b, -1, self.context_width)
        to_v = _dense(inner, self.dtype, "to_v", use_bias=False)
        q = _dense(inner, self.dtype, "to_q", use_bias=False)(x)
        k = _dense(inner, self.dtype, "to_k", use_bias=False)(context)
        v = to_v(context)

        def split_heads(a):
            return a.reshape(a.shape[0], a.shape[1], self.heads, self.dim_head)

        # Scaling q rather than the logits saves a pass over the (B, H, I, J) array.
        q = q * jnp.asarray(self.dim_head**-0.5, q.dtype)
        q, k, v = split_heads(q), split_heads(k), split_heads(v)
        uniform_rows = all_masked if self.all_masked_mode == "uniform" else None
        out = attend(q, k, v, bias, uniform_rows).reshape(b, t, inner)
        if all_masked is not None and self.all_masked_mode == "null":
            v_null = to_v(null_token.astype(context.dtype))  # [1, inner]
            out = jnp.where(all_masked[:, None, None], v_null[None].astype(out.dtype), out)
        return _dense(channels, self.dtype, "to_out_0")(out)


class GEGLU(nn.Module):
    """Linear projection to 2*out, returned as `a * gelu(g)` with exact erf GELU."""

    features: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel, bias = DenseParameters(x.shape[-1], 2 * self.features, name="proj")()
        return geglu(x.astype(self.dtype), kernel.astype(self.dtype), bias)


class FeedForward(nn.Module):
    """GEGLU feed-forward block with a 4x inner width."""

    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        channels = x.shape[-1]
        h = GEGLU(4 * channels, self.dtype, name="net_0")(x)
        return _dense(channels, self.dtype, "net_2")(h)


class BasicTransformerBlock(nn.Module):
    """Pre-LayerNorm block: self-attention, cross-attention, GEGLU feed-forward."""

    heads: int
    dim_head: int
    context_width: int
    all_masked_mode: str = "uniform"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, context=None, bias=None, all_masked=None, null_token=None):
        channels = x.shape[-1]
        x = x + Attention(self.heads, self.dim_head, channels, dtype=self.dtype, name="attn1")(
            layer_norm(x, "norm1")
        )
        cross = Attention(
            self.heads, self.dim_head, self.context_width, self.all_masked_mode, self.dtype, name="attn2"
        )
        x = x + cross(layer_norm(x, "norm2"), context, bias, all_masked, null_token)
        return x + FeedForward(self.dtype, name="ff")(layer_norm(x, "norm3"))


class SpatialTransformer(nn.Module):
    """GroupNorm (eps 1e-6), k1 conv in, one transformer block, zero-init k1 conv out, residual."""

    heads: int
    context_width: int
    all_masked_mode: str = "uniform"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, context=None, bias=None, all_masked=None, null_token=None):
        channels = x.shape[-1]
        h = group_norm(x, 1e-6, "norm")
        h = _conv(channels, 1, self.dtype, "proj_in")(h)
        block = BasicTransformerBlock(
            self.heads,
            channels // self.heads,
            self.context_width,
            self.all_masked_mode,
            self.dtype,
            name="transformer_blocks_0",
        )
        h = block(h, context, bias, all_masked, null_token)
        h = _conv(channels, 1, self.dtype, "proj_out", zero_init=True)(h)
        return x + h


class UNet1D(nn.Module):
    """Epsilon-prediction UNet over `(B, T, C)` series, conditioned by cross-attention.

    Attributes:
      context_dim: width D of context tokens; 0 builds an unconditional model
        whose cross-attention is a second self-attention and which has no null
        token.
      use_pam: add the PAM bias from prototype logits to cross-attention.
      all_masked_mode: 'uniform' | 'null', see `Attention`.
      text_dim: width of text embeddings fused into the context; 0 disables it.

    `__call__(x_t, t, context, logits, keep, y, text)`: `keep` `(B, N, 1)` with
    1.0 keeping a context token and 0.0 replacing it by the learned null token
    `null_classes_emb`; text is fused after that replacement. Intermediate
    block outputs are sown under 'intermediates' with the reference's module
    names ('time_embed', 'input_blocks_<i>', 'middle_block', 'output_blocks_<i>').
    """

    in_channels: int
    model_channels: int
    channel_mult: Sequence[int]
    num_res_blocks: int
    attention_resolutions: Sequence[int]
    num_heads: int
    time_embed_dim: int
    context_dim: int
    use_pam: bool = False
    all_masked_mode: str = "uniform"
    num_classes: int = 0
    text_dim: int = 0
    text_fusion: str = "gated_add"
    dtype: Any = jnp.float32

    def _transformer(self, channels: int, name: str) -> SpatialTransformer:
        context_width = self.context_dim if self.context_dim else channels
        return SpatialTransformer(self.num_heads, context_width, self.all_masked_mode, self.dtype, name=name)

    @nn.compact
    def __call__(
        self,
        x_t: jax.Array,
        t: jax.Array,
        context: Optional[jax.Array] = None,
        logits: Optional[jax.Array] = None,
        keep: Optional[jax.Array] = None,
        y: Optional[jax.Array] = None,
        text: Optional[jax.Array] = None,
    ) -> jax.Array:
        # x_t: [B, T, C_in], t: [B], context: [B, N, D], logits: [B, N], keep: [B, N, 1]
        emb = timestep_embedding(t, self.model_channels).astype(self.dtype)
        emb = _dense(self.time_embed_dim, self.dtype, "time_embed_0")(emb)
        emb = _dense(self.time_embed_dim, self.dtype, "time_embed_2")(silu(emb))
        self.sow("intermediates", "time_embed", emb)
        if self.num_classes and y is not None:
            label_emb = nn.Embed(
                self.num_classes,
                self.time_embed_dim,
                embedding_init=nn.initializers.normal(1.0),
                name="label_emb",
            )
            emb = emb + label_emb(y).astype(emb.dtype)

        null_token = None
        if self.context_dim:
            null_token = self.param("null_classes_emb", nn.initializers.normal(1.0), (1, self.context_dim))
        if context is not None:
            context = context.astype(jnp.float32)
            if keep is not None:
                keep = keep.astype(jnp.float32)
                context = keep * context + (1.0 - keep) * null_token[None]
            if self.text_dim and text is not None:
                fusion = ConditioningMLP(self.context_dim, self.text_fusion, self.dtype, name="conditioning_mlp")
                context = fusion(context, text)
            context = context.astype(self.dtype)

        bias = all_masked = None
        if self.use_pam and logits is not None:
            logits = logits.astype(jnp.float32)
            bias = jnp.where(logits > 0, logits, MASKED_LOGIT)  # [B, N]
            all_masked = jnp.all(logits <= 0, axis=-1)  # [B]
        conditioning = (context, bias, all_masked, null_token)

        h = x_t.astype(self.dtype)
        skips = []
        h = _conv(self.model_channels, 3, self.dtype, "input_blocks_0_0")(h)
        self.sow("intermediates", "input_blocks_0", h)
        skips.append(h)
        channels = self.model_channels
        ds = 1  # Downsample factor of the current level, matched against attention_resolutions.
        block = 1
        for level, mult in enumerate(self.channel_mult):
            for _ in range(self.num_res_blocks):
                channels = mult * self.model_channels
                h = ResBlock(channels, dtype=self.dtype, name=f"input_blocks_{block}_0")(h, emb)
                if ds in self.attention_resolutions:
                    h = self._transformer(channels, f"input_blocks_{block}_1")(h, *conditioning)
                self.sow("intermediates", f"input_blocks_{block}", h)
                skips.append(h)
                block += 1
            if level != len(self.channel_mult) - 1:
                h = ResBlock(channels, down=True, dtype=self.dtype, name=f"input_blocks_{block}_0")(h, emb)
                self.sow("intermediates", f"input_blocks_{block}", h)
                skips.append(h)
                block += 1
                ds *= 2

        h = ResBlock(channels, dtype=self.dtype, name="middle_block_0")(h, emb)
        h = self._transformer(channels, "middle_block_1")(h, *conditioning)
        h = ResBlock(channels, dtype=self.dtype, name="middle_block_2")(h, emb)
        self.sow("intermediates", "middle_block", h)

        block = 0
        for level, mult in reversed(list(enumerate(self.channel_mult))):
            for i in range(self.num_res_blocks + 1):
                h = jnp.concatenate([h, skips.pop()], axis=-1)
                channels = mult * self.model_channels
                h = ResBlock(channels, dtype=self.dtype, name=f"output_blocks_{block}_0")(h, emb)
                layer = 1
                if ds in self.attention_resolutions:
                    h = self._transformer(channels, f"output_blocks_{block}_1")(h, *conditioning)
                    layer = 2
                if level and i == self.num_res_blocks:
                    h = ResBlock(channels, up=True, dtype=self.dtype, name=f"output_blocks_{block}_{layer}")(h, emb)
                    ds //= 2
                self.sow("intermediates", f"output_blocks_{block}", h)
                block += 1

        h = silu(group_norm(h, 1e-5, "out_0"))
        eps_hat = _conv(self.in_channels, 3, self.dtype, "out_2", zero_init=True)(h)
        return eps_hat.astype(jnp.float32)

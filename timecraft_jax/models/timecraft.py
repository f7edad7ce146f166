"""TimeCraft model: a prompt conditioner plus the UNet denoiser, built from `config.model`."""

from typing import Any, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from timecraft_jax.models.conditioners import DomainUnifiedEncoder, DomainUnifiedPrototyper
from timecraft_jax.models.text_fusion import FUSION_TYPES
from timecraft_jax.models.unet import UNet1D

CONDITIONERS = ("prototype", "encoder", "none")
ALL_MASKED_MODES = ("uniform", "null")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


class TimeCraftModel(nn.Module):
    """Conditioner (collection name 'conditioner') and UNet ('unet') behind one interface.

    Methods, all on `(B, T, C)` arrays:
      * `encode(x_prompt, train)` returns `(context, logits)`.
      * `denoise(x_t, t, context, logits, keep, y, text)` returns eps_hat.
      * `denoise_with_cfg(..., guidance_scale)` applies classifier-free guidance.
      * `__call__(x_t, t, x_prompt, keep, y, text, train)` encodes then denoises.
    Build it with `build_model`, which validates the configuration.
    """

    seq_len: int
    in_channels: int
    model_channels: int
    channel_mult: Sequence[int]
    num_res_blocks: int
    attention_resolutions: Sequence[int]
    num_heads: int
    time_embed_dim: int
    conditioner: str
    num_prototypes: int
    context_dim: int
    num_classes: int
    text_dim: int
    text_fusion: str
    all_masked: str
    dtype: Any = jnp.float32

    def setup(self):
        if self.conditioner == "prototype":
            self.prompt_encoder = DomainUnifiedPrototyper(
                self.context_dim, self.num_prototypes, self.dtype, name="conditioner"
            )
        elif self.conditioner == "encoder":
            self.prompt_encoder = DomainUnifiedEncoder(self.context_dim, self.dtype, name="conditioner")
        self.unet = UNet1D(
            in_channels=self.in_channels,
            model_channels=self.model_channels,
            channel_mult=tuple(self.channel_mult),
            num_res_blocks=self.num_res_blocks,
            attention_resolutions=tuple(self.attention_resolutions),
            num_heads=self.num_heads,
            time_embed_dim=self.time_embed_dim,
            context_dim=0 if self.conditioner == "none" else self.context_dim,
            use_pam=self.conditioner == "prototype",
            all_masked_mode=self.all_masked,
            num_classes=self.num_classes,
            text_dim=self.text_dim,
            text_fusion=self.text_fusion,
            dtype=self.dtype,
            name="unet",
        )

    @property
    def num_tokens(self) -> int:
        """Context tokens N produced by the conditioner (0 without one)."""
        return {"prototype": self.num_prototypes, "encoder": 1, "none": 0}[self.conditioner]

    def _check_series(self, x: jax.Array, name: str) -> None:
        expected = (self.seq_len, self.in_channels)
        if x.ndim != 3 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"{name} has shape {tuple(x.shape)}; expected (B, {expected[0]}, {expected[1]})")

    def encode(self, x_prompt: jax.Array, train: bool = False) -> Tuple[Optional[jax.Array], Optional[jax.Array]]:
        """Encode prompt windows `(B, T, C)` into `(context, logits)`.

        context is `(B, M, D)` for 'prototype', `(B, 1, D)` for 'encoder' and
        None for 'none'; logits `(B, M)` exist only for 'prototype'. With
        `train=True` BatchNorm uses batch statistics and updates 'batch_stats'
        (apply with `mutable=['batch_stats']`).
        """
        if self.conditioner == "none":
            return None, None
        self._check_series(x_prompt, "x_prompt")
        return self.prompt_encoder(x_prompt, train=train)

    def denoise(
        self,
        x_t: jax.Array,
        t: jax.Array,
        context: Optional[jax.Array],
        logits: Optional[jax.Array],
        keep: Optional[jax.Array] = None,
        y: Optional[jax.Array] = None,
        text: Optional[jax.Array] = None,
    ) -> jax.Array:
        """Predict the noise `(B, T, C)` in `x_t` at integer steps `t` `(B,)`.

        `keep` `(B, N, 1)`: 1.0 keeps a context token, 0.0 swaps it for the null
        token; None keeps all. `y` `(B,)` int labels, `text` `(B, text_dim)`.
        A conditional model called with `context=None` reproduces the
        reference: its cross-attention attends to the hidden states reshaped
        into tokens of width D.
        """
        self._check_series(x_t, "x_t")
        batch = x_t.shape[0]
        if t.shape != (batch,):
            raise ValueError(f"t has shape {t.shape}; expected ({batch},)")
        if context is not None:
            if self.conditioner == "none":
                raise ValueError("conditioner 'none' takes no context; pass context=None")
            if context.ndim != 3 or context.shape[0] != batch or context.shape[2] != self.context_dim:
                raise ValueError(
                    f"context has shape {context.shape}; expected ({batch}, N, {self.context_dim}) "
                    "with the context width equal to context_dim"
                )
        if logits is not None:
            if self.conditioner != "prototype":
                raise ValueError(f"logits are only used by conditioner 'prototype', not {self.conditioner!r}")
            if context is None or logits.shape != context.shape[:2]:
                raise ValueError(
                    f"logits of shape {logits.shape} need a context with one token per logit, "
                    f"got context {None if context is None else context.shape}"
                )
        if keep is not None and (context is None or keep.shape != context.shape[:2] + (1,)):
            raise ValueError(
                f"keep of shape {keep.shape} needs a context of shape (B, N, D) and shape (B, N, 1), "
                f"got context {None if context is None else context.shape}"
            )
        if y is not None:
            if not self.num_classes:
                raise ValueError("labels y were given but num_classes is 0; set model.num_classes")
            if y.shape != (batch,):
                raise ValueError(f"y has shape {y.shape}; expected ({batch},)")
        if text is not None:
            if not self.text_dim:
                raise ValueError("text was given but text_dim is 0; set model.text_dim")
            if context is None:
                raise ValueError("text is fused into the context tokens, so it needs a context; got context=None")
            if text.shape != (batch, self.text_dim):
                raise ValueError(f"text has shape {text.shape}; expected ({batch}, {self.text_dim})")
        return self.unet(x_t, t, context, logits, keep, y, text)

    def denoise_with_cfg(
        self,
        x_t: jax.Array,
        t: jax.Array,
        context: Optional[jax.Array],
        logits: Optional[jax.Array],
        y: Optional[jax.Array] = None,
        text: Optional[jax.Array] = None,
        guidance_scale: float = 1.0,
    ) -> jax.Array:
        """Classifier-free guidance `eps_null + s * (eps_cond - eps_null)`.

        The null pass replaces every context token by the null token; logits,
        labels and text still apply, as in the reference. Both passes run as
        one forward over a doubled batch. `guidance_scale == 1` (or no
        context, where both passes coincide) runs only the conditional pass.
        """
        if guidance_scale == 1.0 or context is None:
            return self.denoise(x_t, t, context, logits, None, y, text)

        def twice(a):
            return None if a is None else jnp.concatenate([a, a], axis=0)

        keep = jnp.concatenate(
            [jnp.ones(context.shape[:2] + (1,), jnp.float32), jnp.zeros(context.shape[:2] + (1,), jnp.float32)]
        )
        eps = self.denoise(twice(x_t), twice(t), twice(context), twice(logits), keep, twice(y), twice(text))
        eps_cond, eps_null = jnp.split(eps, 2, axis=0)
        return eps_null + guidance_scale * (eps_cond - eps_null)

    def __call__(
        self,
        x_t: jax.Array,
        t: jax.Array,
        x_prompt: Optional[jax.Array],
        keep: Optional[jax.Array] = None,
        y: Optional[jax.Array] = None,
        text: Optional[jax.Array] = None,
        train: bool = False,
    ) -> jax.Array:
        """Training forward: `encode(x_prompt, train)` then `denoise`."""
        context, logits = self.encode(x_prompt, train=train)
        return self.denoise(x_t, t, context, logits, keep, y, text)


def build_model(model_config: ml_collections.ConfigDict, seq_len: int) -> TimeCraftModel:
    """Validate `config.model` and `seq_len` and build the model.

    Raises ValueError naming the offending value.
    """
    mc = model_config
    seq_len = int(seq_len)
    channel_mult = tuple(int(m) for m in mc.channel_mult)
    downsample_factor = max(8, 2 ** (len(channel_mult) - 1))
    if seq_len <= 0 or seq_len % downsample_factor:
        raise ValueError(
            f"seq_len {seq_len} is not a positive multiple of {downsample_factor} "
            "(the UNet halves time at every level and the conditioner divides it by 4); "
            f"use e.g. {max(downsample_factor, seq_len - seq_len % downsample_factor)}"
        )
    if mc.conditioner not in CONDITIONERS:
        raise ValueError(f"model.conditioner {mc.conditioner!r} is not one of {CONDITIONERS}")
    if mc.all_masked not in ALL_MASKED_MODES:
        raise ValueError(f"model.all_masked {mc.all_masked!r} is not one of {ALL_MASKED_MODES}")
    if mc.text_fusion not in FUSION_TYPES:
        raise ValueError(f"model.text_fusion {mc.text_fusion!r} is not one of {FUSION_TYPES}")
    if mc.dtype not in DTYPES:
        raise ValueError(f"model.dtype {mc.dtype!r} is not one of {tuple(DTYPES)}")
    if mc.in_channels <= 0 or mc.num_res_blocks <= 0:
        raise ValueError(
            f"model.in_channels {mc.in_channels} and model.num_res_blocks {mc.num_res_blocks} must be positive"
        )
    if mc.text_dim < 0 or mc.num_classes < 0:
        raise ValueError(f"model.text_dim {mc.text_dim} and model.num_classes {mc.num_classes} must be >= 0")
    if mc.text_dim and mc.conditioner == "none":
        raise ValueError("model.text_dim > 0 needs context tokens to fuse into; conditioner 'none' has none")
    if mc.conditioner != "none" and (mc.context_dim <= 0 or mc.num_prototypes <= 0):
        raise ValueError(
            f"model.context_dim {mc.context_dim} and model.num_prototypes {mc.num_prototypes} must be positive"
        )
    for mult in channel_mult:
        channels = mult * mc.model_channels
        if channels % 32 or channels % mc.num_heads:
            raise ValueError(
                f"UNet width {channels} (model_channels {mc.model_channels} x {mult}) must be divisible "
                f"by 32 GroupNorm groups and by num_heads {mc.num_heads}"
            )
    time_embed_dim = 4 * mc.model_channels if mc.time_embed_dim == -1 else mc.time_embed_dim
    if time_embed_dim <= 0:
        raise ValueError(f"model.time_embed_dim {mc.time_embed_dim} must be positive or -1")

    return TimeCraftModel(
        seq_len=seq_len,
        in_channels=int(mc.in_channels),
        model_channels=int(mc.model_channels),
        channel_mult=channel_mult,
        num_res_blocks=int(mc.num_res_blocks),
        attention_resolutions=tuple(int(r) for r in mc.attention_resolutions),
        num_heads=int(mc.num_heads),
        time_embed_dim=int(time_embed_dim),
        conditioner=mc.conditioner,
        num_prototypes=int(mc.num_prototypes),
        context_dim=int(mc.context_dim),
        num_classes=int(mc.num_classes),
        text_dim=int(mc.text_dim),
        text_fusion=mc.text_fusion,
        all_masked=mc.all_masked,
        dtype=DTYPES[mc.dtype],
    )


def example_inputs(model: TimeCraftModel, batch_size: int = 1) -> dict:
    """Zero inputs of the right shapes for `model.init` / `jax.eval_shape`."""
    x = jnp.zeros((batch_size, model.seq_len, model.in_channels), jnp.float32)
    return {
        "x_t": x,
        "t": jnp.zeros((batch_size,), jnp.int32),
        "x_prompt": None if model.conditioner == "none" else x,
        "y": jnp.zeros((batch_size,), jnp.int32) if model.num_classes else None,
        "text": jnp.zeros((batch_size, model.text_dim), jnp.float32) if model.text_dim else None,
    }


def init_variables(model: TimeCraftModel, rng: jax.Array, batch_size: int = 1) -> dict:
    """Initialise 'params', 'batch_stats' and 'constants' (see `TimeCraftModel`)."""
    inputs = example_inputs(model, batch_size)
    # Compiled, because running the initialisation op by op takes about a minute on CPU.
    variables = jax.jit(lambda key: model.init({"params": key}, **inputs))(rng)
    return {name: collection for name, collection in variables.items() if name != "intermediates"}

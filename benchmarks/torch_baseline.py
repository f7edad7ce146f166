"""Time a PyTorch version of the reference TimeCraft model beside bench_core.py on the same machine.

  python benchmarks/torch_baseline.py --out benchmarks/results/torch_baseline.json
  python benchmarks/torch_baseline.py --skip_timing          # parity check and parameter counts only
  python benchmarks/torch_baseline.py --interleave --out benchmarks/results/interleaved_cpu.json
                                                           # alternate PyTorch and timecraft_jax calls
  python benchmarks/torch_baseline.py --interleave --switch_warmup 1
                                                           # ... with one untimed call after each switch

The model is a PyTorch implementation of the reference denoiser (`ts_unet.UNetModel`, a 1-D UNet
with spatial transformers) and of its prototype conditioner (`DomainUnifiedPrototyper`, the PAM
logits). It was written from the behaviour that timecraft_jax/models reproduces, in the
reference's layout: `(B, C, T)` tensors, nn.Conv1d, and state-dict names equal to the reference's
(`input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight`, `null_classes_emb`, `latents`, ...),
so a reference state dict loads with `load_state_dict(strict=True)`. Like the reference, every
ResBlock builds `cond_emb_layers` and never calls them: they count as parameters but get no
gradient, so AdamW skips them.

Before timing, the script compares the model with the arrays that the reference produced
(`--check_parity DIR`: unet_small.npz, prototyper.npz) and prints the parameter counts at L=96
next to the reference's (DIR/unet_timedp_shapes.json). A missing folder skips both comparisons.

Timing follows bench_core.py with the full TimeDP config (configs/timedp.py) at each --seq_lens:
  * train step at B=64: the prototype conditioner in train mode on the clean batch, the UNet on
    the noised batch with per-token condition dropout (p = cond_drop_prob), the L1 epsilon loss,
    backward and a torch.optim.AdamW step. Drawing t, the noise and the dropout mask is timed too,
    as in the JAX step.
  * forward at B=256 under torch.no_grad() in eval mode: conditioner plus UNet at t=100.
Each median is over --repeats timed calls after one warm-up call. The JAX train step also
updates an EMA of all parameters and computes three global norms. --ema adds the reference's
EMA update (UNet only) to the PyTorch step. The times leave out what the reference's PyTorch
Lightning loop adds per step (data loading, logging, callbacks).

PyTorch is imported only when the script runs. Install the version that made the reference
arrays: pip install torch==2.13.0.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np

# benchmarks/ is on sys.path when run as a script.
from bench_core import cpu_description, memory_mib, memory_reply, parse_seq_lens, timing_record
from timecraft_jax import xla_options
from timecraft_jax.config_lib import load_config_file, repository_config

REPO_ROOT = Path(__file__).resolve().parents[1]
# tests/conftest.py reads the reference arrays from the same folder.
DEFAULT_PARITY_DIR = REPO_ROOT.parent / "shared" / "parity"

PARITY_RTOL = 1e-4
# Reference gradients whose largest entry is below this fraction of the largest gradient anywhere
# are float32 rounding noise around an exact zero, for example the bias of a conv that feeds a
# GroupNorm with one channel per group. Such gradients are checked to be near zero instead.
GRADIENT_NOISE_FLOOR = 1e-6
PARAM_COUNT_SEQ_LEN = 96
FORWARD_TIMESTEP = 100


def import_torch():
    """Import torch, or exit with the install command when it is missing."""
    try:
        import torch
    except ImportError:
        sys.exit("torch_baseline.py needs PyTorch, which is not installed; run `pip install torch==2.13.0`.")
    return torch


@functools.cache
def reference_modules() -> types.SimpleNamespace:
    """Define the PyTorch modules and return them as a namespace.

    The classes are defined inside this function so that the script imports torch only when it
    runs.
    """
    torch = import_torch()
    from torch import nn
    from torch.nn import functional as F

    def zero_module(module):
        for parameter in module.parameters():
            nn.init.zeros_(parameter)
        return module

    class GroupNorm32(nn.GroupNorm):
        """GroupNorm (32 groups, eps 1e-5) computed in float32 and cast back to the input dtype."""

        def __init__(self, channels: int):
            super().__init__(32, channels)

        def forward(self, x):
            return super().forward(x.float()).type(x.dtype)

    def timestep_embedding(timesteps, dim: int, max_period: float = 10000.0):
        """Embed integer steps as `[cos(t f), sin(t f)]` with `f_i = exp(-ln(max_period) i / half)`."""
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
        angles = timesteps.float()[:, None] * freqs[None]
        embedding = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)
        if dim % 2:
            embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
        return embedding

    class Upsample(nn.Module):
        """Nearest-neighbour upsampling of time by 2, without a convolution."""

        def forward(self, x):
            return F.interpolate(x, scale_factor=2, mode="nearest")

    class ResBlock(nn.Module):
        """Residual block with scale-shift timestep conditioning and optional resampling."""

        def __init__(self, channels, emb_channels, out_channels, cond_channels, up=False, down=False):
            super().__init__()
            self.in_layers = nn.Sequential(
                GroupNorm32(channels), nn.SiLU(), nn.Conv1d(channels, out_channels, 3, padding=1)
            )
            self.updown = up or down
            if up:
                self.h_upd, self.x_upd = Upsample(), Upsample()
            elif down:
                self.h_upd, self.x_upd = nn.AvgPool1d(2, 2), nn.AvgPool1d(2, 2)
            else:
                self.h_upd = self.x_upd = nn.Identity()
            self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, 2 * out_channels))
            # The reference builds this layer and never calls it.
            self.cond_emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(cond_channels, 2 * out_channels))
            self.out_layers = nn.Sequential(
                GroupNorm32(out_channels),
                nn.SiLU(),
                nn.Dropout(0.0),
                zero_module(nn.Conv1d(out_channels, out_channels, 3, padding=1)),
            )
            if out_channels == channels:
                self.skip_connection = nn.Identity()
            else:
                self.skip_connection = nn.Conv1d(channels, out_channels, 1)

        def forward(self, x, emb):
            if self.updown:
                # Resample after the first GroupNorm and SiLU and before the first conv.
                # The skip input is resampled too.
                h = self.in_layers[:-1](x)
                h = self.h_upd(h)
                x = self.x_upd(x)
                h = self.in_layers[-1](h)
            else:
                h = self.in_layers(x)
            emb_out = self.emb_layers(emb).type(h.dtype)[..., None]  # [B, 2 C_out, 1]
            scale, shift = emb_out.chunk(2, dim=1)
            h = self.out_layers[0](h) * (1 + scale) + shift
            h = self.out_layers[1:](h)
            return self.skip_connection(x) + h

    def pam_bias(mask, heads: int, num_keys: int):
        """Turn PAM logits `(B, M)` into the additive attention bias `(B * heads, 1, num_keys)`.

        Positive logits are added unchanged; the others get float32's largest value subtracted,
        as in the reference. A row whose logits are all <= 0 therefore gets the same huge offset on
        every key, so float32 loses the q.k differences and its attention becomes uniform.
        """
        logits = mask.float()[:, None, :].repeat_interleave(heads, dim=0)  # [(B heads), 1, M]
        bias = torch.where(logits > 0, logits, logits - torch.finfo(logits.dtype).max)
        if bias.shape[-1] != num_keys:
            bias = F.interpolate(bias, size=num_keys, mode="nearest")
        return bias

    class CrossAttention(nn.Module):
        """Multi-head attention with bias-free q/k/v projections, which attends to `x` when context is None.

        NOTE: the scores are computed with explicit einsum and softmax. Whether the reference
        uses the same kernels (rather than e.g. F.scaled_dot_product_attention) was not checked,
        and the choice changes the timing.
        """

        def __init__(self, query_dim, context_dim=None, heads=8, dim_head=64, use_pam=False):
            super().__init__()
            inner = heads * dim_head
            context_dim = context_dim or query_dim
            self.heads = heads
            self.scale = dim_head**-0.5
            self.use_pam = use_pam
            self.to_q = nn.Linear(query_dim, inner, bias=False)
            self.to_k = nn.Linear(context_dim, inner, bias=False)
            self.to_v = nn.Linear(context_dim, inner, bias=False)
            self.to_out = nn.Sequential(nn.Linear(inner, query_dim), nn.Dropout(0.0))

        def forward(self, x, context=None, mask=None):
            context = x if context is None else context
            if context.dim() == 2:
                context = context[:, None]
            width = self.to_k.in_features
            if context.shape[-1] != width:
                # Reference behaviour: tokens of another width are regrouped row-major into width-wide tokens.
                context = context.reshape(context.shape[0], -1, width)
            batch, num_queries, _ = x.shape

            def split_heads(a):  # [B, N, heads * d] -> [(B heads), N, d]
                return a.reshape(batch, a.shape[1], self.heads, -1).transpose(1, 2).reshape(
                    batch * self.heads, a.shape[1], -1
                )

            q = split_heads(self.to_q(x))
            k = split_heads(self.to_k(context))
            v = split_heads(self.to_v(context))
            sim = torch.einsum("bid,bjd->bij", q, k) * self.scale
            if self.use_pam and mask is not None:
                sim = sim + pam_bias(mask, self.heads, k.shape[1])
            attention = sim.softmax(dim=-1)
            out = torch.einsum("bij,bjd->bid", attention, v)
            out = out.reshape(batch, self.heads, num_queries, -1).transpose(1, 2).reshape(batch, num_queries, -1)
            return self.to_out(out)

    class GEGLU(nn.Module):
        """Linear to 2 * out, returned as `a * gelu(g)` with the exact erf GELU."""

        def __init__(self, dim_in, dim_out):
            super().__init__()
            self.proj = nn.Linear(dim_in, 2 * dim_out)

        def forward(self, x):
            a, gate = self.proj(x).chunk(2, dim=-1)
            return a * F.gelu(gate)

    class FeedForward(nn.Module):
        def __init__(self, dim):
            super().__init__()
            self.net = nn.Sequential(GEGLU(dim, 4 * dim), nn.Dropout(0.0), nn.Linear(4 * dim, dim))

        def forward(self, x):
            return self.net(x)

    class BasicTransformerBlock(nn.Module):
        """Pre-LayerNorm block: self-attention, cross-attention with the PAM bias, GEGLU feed-forward."""

        def __init__(self, dim, heads, dim_head, context_dim, use_pam):
            super().__init__()
            self.attn1 = CrossAttention(dim, None, heads, dim_head)
            self.ff = FeedForward(dim)
            self.attn2 = CrossAttention(dim, context_dim, heads, dim_head, use_pam)
            self.norm1 = nn.LayerNorm(dim)
            self.norm2 = nn.LayerNorm(dim)
            self.norm3 = nn.LayerNorm(dim)

        def forward(self, x, context=None, mask=None):
            x = self.attn1(self.norm1(x)) + x
            x = self.attn2(self.norm2(x), context, mask) + x
            return self.ff(self.norm3(x)) + x

    class SpatialTransformer(nn.Module):
        """GroupNorm (eps 1e-6), k1 conv in, one transformer block over time, zero-init k1 conv out, residual."""

        def __init__(self, channels, heads, dim_head, context_dim, use_pam):
            super().__init__()
            inner = heads * dim_head
            self.norm = nn.GroupNorm(32, channels, eps=1e-6)
            self.proj_in = nn.Conv1d(channels, inner, 1)
            self.transformer_blocks = nn.ModuleList(
                [BasicTransformerBlock(inner, heads, dim_head, context_dim, use_pam)]
            )
            self.proj_out = zero_module(nn.Conv1d(inner, channels, 1))

        def forward(self, x, context=None, mask=None):
            x_in = x
            h = self.proj_in(self.norm(x)).transpose(1, 2)  # [B, T, C]
            for block in self.transformer_blocks:
                h = block(h, context, mask)
            return self.proj_out(h.transpose(1, 2)) + x_in

    class TimestepEmbedSequential(nn.Sequential):
        """Sequential that passes the timestep embedding to ResBlocks and the context to transformers."""

        def forward(self, x, emb, context=None, mask=None):
            for layer in self:
                if isinstance(layer, ResBlock):
                    x = layer(x, emb)
                elif isinstance(layer, SpatialTransformer):
                    x = layer(x, context, mask)
                else:
                    x = layer(x)
            return x

    class ConditioningMLP(nn.Module):
        """Fuse a text embedding `(B, text_dim)` into the context tokens `(B, N, D)` ('add' or 'gated_add')."""

        def __init__(self, text_dim, context_dim, fusion="gated_add"):
            super().__init__()
            self.fusion = fusion
            self.text_mlp = nn.Sequential(
                nn.Linear(text_dim, context_dim), nn.ReLU(), nn.Linear(context_dim, context_dim)
            )
            self.gate_layer = nn.Sequential(nn.Linear(2 * context_dim, context_dim), nn.Sigmoid())

        def forward(self, context, text):
            projected = self.text_mlp(text)  # [B, D]
            if self.fusion == "add":
                return context + projected[:, None]
            gate = self.gate_layer(torch.cat([context.mean(dim=1), projected], dim=-1))[:, None]
            return gate * projected[:, None] + (1 - gate) * context

    class UNetModel(nn.Module):
        """Epsilon-prediction UNet over `(B, C, T)` series, conditioned by cross-attention.

        `forward(x, timesteps, context, mask, y, cond_drop_prob, text_embedding, activations)`:
        with `cond_drop_prob > 0` each context token is independently replaced by
        `null_classes_emb` with that probability; the PAM mask, labels and text are never
        dropped. `activations`, a dict, receives the output of every top-level block.
        """

        def __init__(
            self,
            in_channels,
            out_channels,
            model_channels,
            channel_mult,
            num_res_blocks,
            attention_resolutions,
            num_heads,
            context_dim,
            repre_emb_channels,
            latent_unit=1,
            use_pam=False,
            num_classes=None,
            text_dim=None,
        ):
            super().__init__()
            self.model_channels = model_channels
            self.use_pam = use_pam
            if context_dim:
                self.null_classes_emb = nn.Parameter(torch.randn(1, repre_emb_channels))
            time_embed_dim = 4 * model_channels
            self.time_embed = nn.Sequential(
                nn.Linear(model_channels, time_embed_dim), nn.SiLU(), nn.Linear(time_embed_dim, time_embed_dim)
            )
            if num_classes:
                self.label_emb = nn.Embedding(num_classes, time_embed_dim)

            def resblock(channels, out, **resample):
                return ResBlock(channels, time_embed_dim, out, repre_emb_channels * latent_unit, **resample)

            def transformer(channels):
                return SpatialTransformer(channels, num_heads, channels // num_heads, context_dim, use_pam)

            self.input_blocks = nn.ModuleList(
                [TimestepEmbedSequential(nn.Conv1d(in_channels, model_channels, 3, padding=1))]
            )
            skip_channels = [model_channels]
            channels = model_channels
            ds = 1  # Downsample factor of the current level, matched against attention_resolutions.
            for level, mult in enumerate(channel_mult):
                for _ in range(num_res_blocks):
                    layers = [resblock(channels, mult * model_channels)]
                    channels = mult * model_channels
                    if ds in attention_resolutions:
                        layers.append(transformer(channels))
                    self.input_blocks.append(TimestepEmbedSequential(*layers))
                    skip_channels.append(channels)
                if level != len(channel_mult) - 1:
                    self.input_blocks.append(TimestepEmbedSequential(resblock(channels, channels, down=True)))
                    skip_channels.append(channels)
                    ds *= 2

            self.middle_block = TimestepEmbedSequential(
                resblock(channels, channels), transformer(channels), resblock(channels, channels)
            )

            self.output_blocks = nn.ModuleList([])
            for level, mult in reversed(list(enumerate(channel_mult))):
                for i in range(num_res_blocks + 1):
                    layers = [resblock(channels + skip_channels.pop(), mult * model_channels)]
                    channels = mult * model_channels
                    if ds in attention_resolutions:
                        layers.append(transformer(channels))
                    if level and i == num_res_blocks:
                        layers.append(resblock(channels, channels, up=True))
                        ds //= 2
                    self.output_blocks.append(TimestepEmbedSequential(*layers))

            self.out = nn.Sequential(
                GroupNorm32(channels), nn.SiLU(), zero_module(nn.Conv1d(channels, out_channels, 3, padding=1))
            )
            if text_dim:
                self.conditioning_mlp = ConditioningMLP(text_dim, context_dim)

        def forward(
            self,
            x,
            timesteps,
            context=None,
            mask=None,
            y=None,
            cond_drop_prob=0.0,
            text_embedding=None,
            activations=None,
        ):
            emb = self.time_embed(timestep_embedding(timesteps, self.model_channels))
            if activations is not None:
                activations["time_embed"] = emb
            if y is not None:
                emb = emb + self.label_emb(y)
            if context is not None:
                # With cond_drop_prob 0 the null token is left out of the graph, so it gets no gradient.
                if cond_drop_prob > 0:
                    keep_prob = torch.full(context.shape[:2] + (1,), 1.0 - cond_drop_prob)
                    keep = torch.bernoulli(keep_prob)  # [B, N, 1]
                    context = keep * context + (1 - keep) * self.null_classes_emb
                if text_embedding is not None:
                    context = self.conditioning_mlp(context, text_embedding)
            if not self.use_pam:
                mask = None

            h = x
            skips = []
            for i, block in enumerate(self.input_blocks):
                h = block(h, emb, context, mask)
                skips.append(h)
                if activations is not None:
                    activations[f"input_blocks.{i}"] = h
            h = self.middle_block(h, emb, context, mask)
            if activations is not None:
                activations["middle_block"] = h
            for i, block in enumerate(self.output_blocks):
                h = block(torch.cat([h, skips.pop()], dim=1), emb, context, mask)
                if activations is not None:
                    activations[f"output_blocks.{i}"] = h
            return self.out(h)

        def forward_with_cfg(self, x, timesteps, context, mask, cfg_scale):
            """Apply classifier-free guidance `eps_null + s * (eps_cond - eps_null)`, with the mask in both passes."""
            eps_cond = self(x, timesteps, context, mask, cond_drop_prob=0.0)
            if cfg_scale == 1.0:
                return eps_cond
            eps_null = self(x, timesteps, context, mask, cond_drop_prob=1.0)
            return eps_null + cfg_scale * (eps_cond - eps_null)

    class ResBlockTime(nn.Module):
        """`x + Conv_k1(ReLU(BN(Conv_k3(ReLU(x)))))` on `(B, D, T')`."""

        def __init__(self, dim):
            super().__init__()
            self.convs = nn.Sequential(
                nn.ReLU(), nn.Conv1d(dim, dim, 3, padding=1), nn.BatchNorm1d(dim), nn.ReLU(), nn.Conv1d(dim, dim, 1)
            )

        def forward(self, x):
            return x + self.convs(x)

    class View(nn.Module):
        def __init__(self, *shape):
            super().__init__()
            self.shape = shape

        def forward(self, x):
            return x.reshape(*self.shape)

    class DomainUnifiedPrototyper(nn.Module):
        """Fixed orthonormal prototypes `(M, D)` plus per-sample PAM logits `(B, M)`.

        `forward(x)` with `x` `(B, C, T)` returns `(prototypes broadcast to (B, M, D), logits)`.
        The prototypes are frozen (`requires_grad=False`), as in the reference.
        """

        def __init__(self, dim, window, num_latents, num_channels, latent_dim):
            super().__init__()
            self.latents = nn.Parameter(torch.empty(num_latents, latent_dim), requires_grad=False)
            nn.init.orthogonal_(self.latents)
            self.share_encoder = nn.Sequential(
                nn.Conv1d(num_channels, dim, 4, 2, 1),
                nn.BatchNorm1d(dim),
                nn.ReLU(),
                nn.Conv1d(dim, dim, 4, 2, 1),
                nn.BatchNorm1d(dim),
                nn.ReLU(),
            )
            flat = dim * window // 4
            # View flattens (B, D, T/4) channel-major before the linear layer.
            self.mask_ffn = nn.Sequential(ResBlockTime(dim), View(-1, flat), nn.Linear(flat, num_latents))

        def forward(self, x):
            logits = self.mask_ffn(self.share_encoder(x))
            return self.latents[None].expand(x.shape[0], -1, -1), logits

    return types.SimpleNamespace(UNetModel=UNetModel, DomainUnifiedPrototyper=DomainUnifiedPrototyper)


def build_timedp_models(seq_len: int, latent_unit: int):
    """Build the UNet and prototype conditioner from configs/timedp.py at sequence length `seq_len`.

    Returns `(unet, prototyper, config)`.
    """
    config = load_config_file(repository_config("timedp"))
    model = config.model
    if model.conditioner != "prototype" or model.num_classes or model.text_dim:
        raise ValueError(
            "configs/timedp.py no longer describes the prototype-conditioned TimeDP model "
            f"(conditioner {model.conditioner!r}, num_classes {model.num_classes}, text_dim {model.text_dim}); "
            "update torch_baseline.py to match"
        )
    if model.time_embed_dim not in (-1, 4 * model.model_channels):
        raise ValueError(f"the reference's time embedding is 4 * model_channels wide, not {model.time_embed_dim}")
    modules = reference_modules()
    unet = modules.UNetModel(
        in_channels=model.in_channels,
        out_channels=model.in_channels,
        model_channels=model.model_channels,
        channel_mult=tuple(model.channel_mult),
        num_res_blocks=model.num_res_blocks,
        attention_resolutions=tuple(model.attention_resolutions),
        num_heads=model.num_heads,
        context_dim=model.context_dim,
        repre_emb_channels=model.context_dim,
        latent_unit=latent_unit,
        use_pam=True,
    )
    prototyper = modules.DomainUnifiedPrototyper(
        dim=model.context_dim,
        window=seq_len,
        num_latents=model.num_prototypes,
        num_channels=model.in_channels,
        latent_dim=model.context_dim,
    )
    return unet, prototyper, config


# ---------------------------------------------------------------------------------------------
# Parity with the reference arrays.


def relative_error(actual, expected) -> float:
    """Return max|actual - expected| / max|expected|."""
    actual = np.asarray(actual, np.float64)
    expected = np.asarray(expected, np.float64)
    if actual.shape != expected.shape:
        raise ValueError(f"shape {actual.shape} differs from the reference shape {expected.shape}")
    scale = float(np.max(np.abs(expected))) if expected.size else 0.0
    max_abs = float(np.max(np.abs(actual - expected))) if expected.size else 0.0
    return max_abs / max(scale, np.finfo(np.float32).tiny)


class ParityReport:
    """Collects one pass/fail line per compared array."""

    def __init__(self):
        self.results: dict[str, float] = {}
        self.failures: list[str] = []

    def compare(self, name: str, actual, expected) -> None:
        actual = actual.detach().numpy() if hasattr(actual, "detach") else actual
        try:
            error = relative_error(actual, expected)
        except ValueError as problem:
            self.failures.append(name)
            print(f"  FAIL {name}: {problem}")
            return
        self.results[name] = error
        passed = error <= PARITY_RTOL
        if not passed:
            self.failures.append(name)
        print(f"  {'pass' if passed else 'FAIL'} {name}: max relative error {error:.2e}")

    def require(self, name: str, condition: bool, detail: str) -> None:
        if not condition:
            self.failures.append(name)
        print(f"  {'pass' if condition else 'FAIL'} {name}: {detail}")


def load_npz(path: Path) -> dict:
    with np.load(path) as data:
        return {name: data[name] for name in data.files}


def state_dict_from_arrays(arrays: dict, prefixes: tuple[str, ...], module) -> dict:
    """Take the arrays named `<prefix><parameter name>` as tensors of the dtypes that `module` uses."""
    torch = import_torch()
    own = module.state_dict()
    state = {}
    for name, array in arrays.items():
        for prefix in prefixes:
            if name.startswith(prefix):
                key = name[len(prefix):]
                dtype = own[key].dtype if key in own else torch.float32
                state[key] = torch.from_numpy(np.ascontiguousarray(array)).to(dtype)
    return state


def check_unet_parity(parity_dir: Path, report: ParityReport) -> None:
    torch = import_torch()
    arrays = load_npz(parity_dir / "unet_small.npz")
    meta = json.loads((parity_dir / "unet_small.json").read_text())
    unet_config = meta["unet_config"]
    modules = reference_modules()

    def build(text_dim=None):
        return modules.UNetModel(
            in_channels=unet_config["in_channels"],
            out_channels=unet_config["out_channels"],
            model_channels=unet_config["model_channels"],
            channel_mult=tuple(unet_config["channel_mult"]),
            num_res_blocks=unet_config["num_res_blocks"],
            attention_resolutions=tuple(unet_config["attention_resolutions"]),
            num_heads=unet_config["num_heads"],
            context_dim=unet_config["context_dim"],
            repre_emb_channels=unet_config["repre_emb_channels"],
            latent_unit=unet_config["latent_unit"],
            use_pam=unet_config["use_pam"],
            num_classes=unet_config["num_classes"],
            text_dim=text_dim,
        ).eval()

    unet = build()
    unet.load_state_dict(state_dict_from_arrays(arrays, ("param/",), unet), strict=True)
    x = torch.from_numpy(arrays["x"])
    timesteps = torch.from_numpy(arrays["timesteps"]).long()
    context = torch.from_numpy(arrays["context"])
    mask = torch.from_numpy(arrays["mask"])

    print("UNet (unet_small.npz):")
    activations = {}
    out = unet(x, timesteps, context, mask, activations=activations)
    report.compare("out", out, arrays["out"])
    with torch.no_grad():
        report.compare("out_null", unet(x, timesteps, context, mask, cond_drop_prob=1.0), arrays["out_null"])
        report.compare("out_nomask", unet(x, timesteps, context, None), arrays["out_nomask"])
        allneg = torch.from_numpy(arrays["mask_allneg_row0"])
        report.compare("out_mask_allneg_row0", unet(x, timesteps, context, allneg), arrays["out_mask_allneg_row0"])
        report.compare("out_nocontext", unet(x, timesteps), arrays["out_nocontext"])
        report.compare("out_cfg3", unet.forward_with_cfg(x, timesteps, context, mask, 3.0), arrays["out_cfg3"])
    for name in sorted(k[len("act/"):] for k in arrays if k.startswith("act/")):
        report.compare(f"act/{name}", activations[name], arrays[f"act/{name}"])

    loss = (torch.from_numpy(arrays["target"]) - out).abs().mean()
    loss.backward()
    report.compare("loss_l1", loss, arrays["loss_l1"])
    grads = {name: p.grad for name, p in unet.named_parameters() if p.grad is not None}
    without_grad = sorted(name for name, p in unet.named_parameters() if p.grad is None)
    report.require(
        "parameters without gradient",
        without_grad == sorted(meta["params_without_grad"]),
        f"{len(without_grad)} (null_classes_emb and every cond_emb_layers), as in the reference",
    )
    reference_grads = {k[len("grad/"):]: v for k, v in arrays.items() if k.startswith("grad/")}
    report.require(
        "gradient names", set(grads) == set(reference_grads), f"{len(reference_grads)} parameters with a gradient"
    )
    floor = GRADIENT_NOISE_FLOOR * max(float(np.max(np.abs(g))) for g in reference_grads.values())
    worst_name, worst_error, zero_checked = "", 0.0, 0
    for name in sorted(set(grads) & set(reference_grads)):
        actual = grads[name].numpy()
        if float(np.max(np.abs(reference_grads[name]))) < floor:
            zero_checked += 1
            if float(np.max(np.abs(actual))) >= floor:
                report.require(f"grad/{name}", False, "expected a zero gradient")
            continue
        error = relative_error(actual, reference_grads[name])
        if error > PARITY_RTOL:
            report.compare(f"grad/{name}", actual, reference_grads[name])
        if error >= worst_error:
            worst_name, worst_error = name, error
    report.results["grad/* (max)"] = worst_error
    print(
        f"  {'pass' if worst_error <= PARITY_RTOL else 'FAIL'} grad/*: {len(reference_grads) - zero_checked} "
        f"gradients, max relative error {worst_error:.2e} ({worst_name}); {zero_checked} checked to be zero"
    )

    text_unet = build(text_dim=meta["text_config"]["text_dim"])
    text_state = state_dict_from_arrays(arrays, ("param/", "param_text/"), text_unet)
    text_unet.load_state_dict(text_state, strict=True)
    text = torch.from_numpy(arrays["text_embedding"])
    with torch.no_grad():
        report.compare("out_text", text_unet(x, timesteps, context, mask, text_embedding=text), arrays["out_text"])
        out_text_null = text_unet(x, timesteps, context, mask, cond_drop_prob=1.0, text_embedding=text)
        report.compare("out_text_null", out_text_null, arrays["out_text_null"])
        report.compare("out_text_none", text_unet(x, timesteps, context, mask), arrays["out_text_none"])


def check_prototyper_parity(parity_dir: Path, report: ParityReport) -> None:
    torch = import_torch()
    arrays = load_npz(parity_dir / "prototyper.npz")
    config = json.loads((parity_dir / "prototyper.json").read_text())["config"]
    prototyper = reference_modules().DomainUnifiedPrototyper(
        dim=config["dim"],
        window=config["window"],
        num_latents=config["num_latents"],
        num_channels=config["num_channels"],
        latent_dim=config["latent_dim"],
    )
    prototyper.load_state_dict(state_dict_from_arrays(arrays, ("param/",), prototyper), strict=True)

    print("Prototype conditioner (prototyper.npz):")
    prototyper.eval()
    with torch.no_grad():
        x = torch.from_numpy(arrays["x"])
        latents, logits = prototyper(x)
        report.compare("latents (eval)", latents, arrays["latents"])
        report.compare("mask_logits (eval)", logits, arrays["mask_logits"])
        report.compare("act/share_encoder (eval)", prototyper.share_encoder(x), arrays["act/share_encoder"])

        prototyper.train()
        _, logits_train = prototyper(torch.from_numpy(arrays["x_train"]))
        report.compare("mask_logits_train (train)", logits_train, arrays["mask_logits_train"])
    buffers = dict(prototyper.named_buffers())
    for name in sorted(k for k in arrays if k.startswith("running_after_train/")):
        report.compare(name, buffers[name[len("running_after_train/"):]], arrays[name])


def check_parity(parity_dir: Path) -> dict:
    """Compare the model with the reference arrays in `parity_dir` and exit with status 1 on a mismatch.

    Returns the relative errors by array name, or an empty dict when the folder is missing.
    """
    if not parity_dir.is_dir():
        print(f"parity check skipped: folder {parity_dir} not found")
        return {}
    report = ParityReport()
    check_unet_parity(parity_dir, report)
    check_prototyper_parity(parity_dir, report)
    if report.failures:
        sys.exit(f"parity check failed for {len(report.failures)} arrays: {', '.join(report.failures)}")
    print(f"parity check passed: {len(report.results)} comparisons within relative error {PARITY_RTOL}")
    return report.results


# ---------------------------------------------------------------------------------------------
# Parameter counts.


def count_parameters(module) -> dict:
    return {
        "params_total": sum(p.numel() for p in module.parameters()),
        "params_requires_grad": sum(p.numel() for p in module.parameters() if p.requires_grad),
        "params_in_cond_emb_layers_unused": sum(
            p.numel() for name, p in module.named_parameters() if ".cond_emb_layers." in name
        ),
        "buffer_elements": sum(b.numel() for b in module.buffers()),
    }


def find_reference_config(configs: dict, unet_params: dict) -> tuple[str, dict] | None:
    """Return the entry of the reference shapes file whose UNet settings equal `unet_params`."""
    for name, entry in configs.items():
        reference = entry["unet_params"]
        if all(reference.get(key) == value for key, value in unet_params.items()):
            return name, entry
    return None


def report_parameter_counts(latent_unit: int, parity_dir: Path) -> dict:
    """Print the counts at L=96 and compare them and the state-dict names with the reference's, if present."""
    unet, prototyper, config = build_timedp_models(PARAM_COUNT_SEQ_LEN, latent_unit)
    counts = {"seq_len": PARAM_COUNT_SEQ_LEN, "latent_unit": latent_unit,
              "unet": count_parameters(unet), "prototyper": count_parameters(prototyper)}
    print(f"parameter counts at L={PARAM_COUNT_SEQ_LEN} (latent_unit {latent_unit}):")
    for part in ("unet", "prototyper"):
        print(f"  {part}: " + ", ".join(f"{key} {value:,}" for key, value in counts[part].items()))

    shapes_path = parity_dir / "unet_timedp_shapes.json"
    if not shapes_path.is_file():
        print(f"  comparison with the reference skipped: {shapes_path} not found")
        return counts
    model = config.model
    expected_settings = {
        "seq_len": PARAM_COUNT_SEQ_LEN,
        "in_channels": model.in_channels,
        "model_channels": model.model_channels,
        "channel_mult": list(model.channel_mult),
        "num_res_blocks": model.num_res_blocks,
        "attention_resolutions": list(model.attention_resolutions),
        "num_heads": model.num_heads,
        "context_dim": model.context_dim,
        "latent_unit": latent_unit,
        "use_pam": True,
    }
    found = find_reference_config(json.loads(shapes_path.read_text())["configs"], expected_settings)
    if found is None:
        print(f"  comparison with the reference skipped: {shapes_path} has no config with {expected_settings}")
        return counts
    name, entry = found
    all_match = True
    for part, key, module in (("unet", "unet", unet), ("prototyper", "cond_stage", prototyper)):
        reference_counts = entry[f"{key}_counts"]
        ours = counts[part]
        differing = {k: (ours[k], v) for k, v in reference_counts.items() if ours.get(k) != v}
        reference_shapes = [(item["name"], tuple(item["shape"])) for item in entry[f"{key}_state_dict"]]
        our_shapes = [(k, tuple(v.shape)) for k, v in module.state_dict().items()]
        names_match = sorted(reference_shapes) == sorted(our_shapes)
        all_match = all_match and not differing and names_match
        print(f"  {part} vs reference config {name!r}: counts "
              f"{'match' if not differing else f'DIFFER (ours, reference): {differing}'}; "
              f"state-dict names and shapes {'match' if names_match else 'DIFFER'}"
              f"{'' if our_shapes == reference_shapes or not names_match else ' (in another order)'}")
    counts["reference_config"] = name
    counts["matches_reference"] = all_match
    return counts


# ---------------------------------------------------------------------------------------------
# Timing.


def linear_schedule(num_timesteps: int, linear_start: float, linear_end: float):
    """Return float32 `(sqrt(alpha_bar), sqrt(1 - alpha_bar))` of the LDM 'linear' beta schedule."""
    torch = import_torch()
    betas = np.linspace(math.sqrt(linear_start), math.sqrt(linear_end), num_timesteps, dtype=np.float64) ** 2
    alpha_bar = np.cumprod(1.0 - betas)
    return (torch.tensor(np.sqrt(alpha_bar), dtype=torch.float32),
            torch.tensor(np.sqrt(1.0 - alpha_bar), dtype=torch.float32))


def time_calls(fn, repeats: int) -> list[float]:
    fn()  # Warm-up, which also allocates the optimizer state.
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def build_torch_steps(seq_len: int, train_batch: int, forward_batch: int, latent_unit: int, ema: bool):
    """Return `(train_step, forward)`: callables that run one PyTorch train step or forward pass."""
    torch = import_torch()
    torch.manual_seed(0)
    unet, prototyper, config = build_timedp_models(seq_len, latent_unit)
    if config.diffusion.beta_schedule != "linear" or config.diffusion.loss not in ("l1", "l2"):
        raise ValueError(
            f"unsupported diffusion settings: beta_schedule {config.diffusion.beta_schedule!r}, "
            f"loss {config.diffusion.loss!r}; torch_baseline.py implements linear betas with an l1 or l2 loss"
        )
    channels = config.model.in_channels
    num_timesteps = config.diffusion.num_timesteps
    sqrt_alpha_bar, sqrt_one_minus_alpha_bar = linear_schedule(
        num_timesteps, config.diffusion.linear_start, config.diffusion.linear_end
    )
    cond_drop_prob = config.diffusion.cond_drop_prob

    # Denoiser forward, conditioned on prompt windows (encode + UNet), as sampling uses it.
    x = torch.randn(forward_batch, channels, seq_len)
    t = torch.full((forward_batch,), FORWARD_TIMESTEP, dtype=torch.long)

    def forward():
        unet.eval()
        prototyper.eval()
        with torch.no_grad():
            context, mask = prototyper(x)
            return unet(x, t, context, mask)

    trainable = [p for p in [*unet.parameters(), *prototyper.parameters()] if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.optimizer.learning_rate,
                                  betas=(config.optimizer.b1, config.optimizer.b2), eps=config.optimizer.eps,
                                  weight_decay=config.optimizer.weight_decay)
    # The reference's EMA tracks the UNet parameters that train.
    ema_pairs = [(p, p.detach().clone()) for p in unet.parameters() if p.requires_grad] if ema else []
    ema_update_count = itertools.count(1)
    x0 = torch.randn(train_batch, channels, seq_len)

    def train_step():
        unet.train()
        prototyper.train()
        steps = torch.randint(0, num_timesteps, (train_batch,))
        noise = torch.randn_like(x0)
        x_t = sqrt_alpha_bar[steps][:, None, None] * x0 + sqrt_one_minus_alpha_bar[steps][:, None, None] * noise
        context, mask = prototyper(x0)
        eps_hat = unet(x_t, steps, context, mask, cond_drop_prob=cond_drop_prob)
        error = noise - eps_hat
        loss = error.abs().mean() if config.diffusion.loss == "l1" else error.square().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if ema_pairs:
            n = next(ema_update_count)
            decay = min(config.training.ema_max_decay, (1 + n) / (10 + n))
            with torch.no_grad():
                for parameter, average in ema_pairs:
                    average.sub_((1.0 - decay) * (average - parameter))
        return loss

    return train_step, forward


def bench_length(seq_len: int, train_batch: int, forward_batch: int, repeats: int, latent_unit: int,
                 ema: bool) -> dict:
    train_step, forward = build_torch_steps(seq_len, train_batch, forward_batch, latent_unit, ema)
    forward_times = time_calls(forward, repeats)
    train_times = time_calls(train_step, repeats)
    record = timing_record(seq_len, "float32", train_batch, forward_batch, train_times, forward_times)
    record["train_step_includes_ema"] = ema
    return record


class TorchWorker:
    """A child process that builds and times the PyTorch steps, one line per request and reply.

    With `--interleave` the two libraries run in separate processes, so neither shares a heap,
    a malloc arena or a thread pool with the other. The parent sends `build L TRAIN_BATCH
    FORWARD_BATCH LATENT_UNIT`, then `train` or `forward`, and reads back `ready` or the
    call's wall time in seconds. `memory` returns the child's resident and huge-page MiB.
    With `malloc="same"` the child inherits the parent's environment, including
    GLIBC_TUNABLES, and applies the same glibc malloc settings
    (`xla_options.keep_host_memory()`), so both run on the same allocator settings. With
    `malloc="default"` it starts without GLIBC_TUNABLES and keeps glibc's defaults.
    """

    def __init__(self, threads: int, malloc: str = "same"):
        command = [sys.executable, str(Path(__file__).resolve()), "--torch_worker", "--threads", str(threads)]
        environment = dict(os.environ)
        if malloc == "default":
            environment.pop("GLIBC_TUNABLES", None)
            environment["TIMECRAFT_MALLOC_DEFAULTS"] = "1"
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                        env=environment)

    def request(self, line: str) -> str:
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()
        reply = self.process.stdout.readline().strip()
        if not reply or reply.startswith("error"):
            self.close()
            raise RuntimeError(f"the PyTorch worker failed on {line!r}: {reply or 'it exited'} (its stderr is above)")
        return reply

    def call(self, kind: str) -> float:
        return float(self.request(kind))

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.close()
            self.process.wait(timeout=60)


def serve_torch_worker(threads: int) -> None:
    """Run the child side of `TorchWorker` on stdin and stdout until stdin closes."""
    xla_options.keep_host_memory()  # JAX is imported but not started, so glibc's malloc is set as in the parent.
    torch = import_torch()
    torch.set_num_threads(threads)
    steps = {}
    for line in sys.stdin:
        words = line.split()
        try:
            if words[0] == "build":
                seq_len, train_batch, forward_batch, latent_unit = (int(word) for word in words[1:5])
                steps.clear()
                steps["train"], steps["forward"] = build_torch_steps(seq_len, train_batch, forward_batch,
                                                                     latent_unit, ema=True)
                reply = "ready"
            elif words[0] == "memory":
                reply = memory_reply(memory_mib())
            else:
                start = time.perf_counter()
                steps[words[0]]()
                reply = repr(time.perf_counter() - start)
        except Exception as error:  # noqa: BLE001 - reported to the parent, which stops.
            print(f"torch worker: {line.strip()!r} failed: {error!r}", file=sys.stderr, flush=True)
            reply = "error"
        print(reply, flush=True)


def interleave_length(worker: TorchWorker, seq_len: int, train_batch: int, forward_batch: int, repeats: int,
                      latent_unit: int, pause: float, switch_warmup: int = 0) -> dict:
    """Alternate PyTorch calls (in `worker`) and timecraft_jax calls (here), so both see the same machine speed.

    Both train steps include an EMA update. Each pair is a PyTorch call then a JAX call of the same
    kind, each after a pause of `pause` seconds so that one library's idle threads do not share the
    cores with the other's work. With `switch_warmup` > 0, each library first makes that many untimed
    calls after the other library ran, so the timed call starts from the library's own warm state,
    as in a training loop. Returns both libraries' times and the median of the per-pair ratios.
    """
    import bench_core  # benchmarks/ is on sys.path when run as a script.

    worker.request(f"build {seq_len} {train_batch} {forward_batch} {latent_unit}")
    jax_train, jax_forward = bench_core.build_steps(seq_len, train_batch, forward_batch)
    record = {"seq_len": seq_len, "dtype": "float32", "train_batch": train_batch, "forward_batch": forward_batch,
              "train_step_includes_ema": True, "switch_warmup_calls": switch_warmup}
    for kind, jax_call in (("train_step", jax_train), ("forward", jax_forward)):
        torch_kind = "train" if kind == "train_step" else "forward"
        worker.call(torch_kind)  # Warm-up.
        jax_call()
        torch_times, jax_times = [], []
        for _ in range(repeats):
            for _ in range(switch_warmup):
                time.sleep(pause)
                worker.call(torch_kind)
            time.sleep(pause)
            torch_times.append(worker.call(torch_kind))
            for _ in range(switch_warmup):
                time.sleep(pause)
                jax_call()
            time.sleep(pause)
            start = time.perf_counter()
            jax_call()
            jax_times.append(time.perf_counter() - start)
        ratios = [ours / theirs for ours, theirs in zip(jax_times, torch_times)]
        record.update({
            f"{kind}_torch_times_s": torch_times,
            f"{kind}_jax_times_s": jax_times,
            f"{kind}_torch_median_s": statistics.median(torch_times),
            f"{kind}_jax_median_s": statistics.median(jax_times),
            f"{kind}_ratio_median": statistics.median(ratios),
        })
    record["jax_process_memory_after"] = bench_core.memory_mib()
    record["torch_process_memory_after"] = bench_core.parse_memory_reply(worker.request("memory").split())
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seq_lens", default="24,96,168", help="Comma-separated sequence lengths (multiples of 8).")
    parser.add_argument("--train_batch", type=int, default=64, help="Batch size of the train step.")
    parser.add_argument("--forward_batch", type=int, default=256, help="Batch size of the forward pass.")
    parser.add_argument("--repeats", type=int, default=5, help="Timed calls per measurement (median reported).")
    parser.add_argument("--threads", type=int, default=2, help="PyTorch intra-op threads (torch.set_num_threads).")
    parser.add_argument("--latent_unit", type=int, default=16,
                        help="Input width multiplier of the unused cond_emb_layers: 16 as the reference CLI sets "
                             "it with -up -nl 16, 1 as in the YAML. Changes only the parameter count.")
    parser.add_argument("--ema", action="store_true", help="Also update an EMA of the UNet in each train step.")
    parser.add_argument("--check_parity", type=Path, default=DEFAULT_PARITY_DIR, metavar="DIR",
                        help="Folder with the reference arrays (unet_small.npz, prototyper.npz, "
                             "unet_timedp_shapes.json); the check is skipped when it is missing.")
    parser.add_argument("--skip_timing", action="store_true", help="Only check parity and parameter counts.")
    parser.add_argument("--interleave", action="store_true",
                        help="Also time timecraft_jax, alternating its calls with PyTorch's (both with EMA; "
                             "PyTorch in a child process), and report per-pair ratios.")
    parser.add_argument("--pause", type=float, default=0.3, help="Seconds between interleaved calls.")
    parser.add_argument("--switch_warmup", type=int, default=0,
                        help="Untimed calls each library makes after the other ran, before its timed call "
                             "(with --interleave).")
    parser.add_argument("--torch_malloc", choices=("same", "default"), default="same",
                        help="Allocator of the PyTorch child with --interleave: 'same' as ours (glibc malloc "
                             "settings and huge pages of timecraft_jax.xla_options), 'default' for glibc's "
                             "defaults.")
    parser.add_argument("--out", default="benchmarks/results/torch_baseline.json", help="JSON output path.")
    parser.add_argument("--torch_worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.torch_worker:
        serve_torch_worker(args.threads)
        return
    seq_lens = parse_seq_lens(args.seq_lens)
    if min(args.train_batch, args.forward_batch, args.repeats, args.threads, args.latent_unit) <= 0:
        parser.error("--train_batch, --forward_batch, --repeats, --threads and --latent_unit must be positive")

    if args.pause < 0 or args.switch_warmup < 0:
        parser.error("--pause and --switch_warmup must be zero or positive")
    malloc_tuned = False
    if args.interleave:
        xla_options.relaunch_with_huge_pages()  # Runs this command again if glibc can then use huge pages.
        malloc_tuned = xla_options.keep_host_memory()  # Before JAX starts its threads; the worker does the same.
    torch = import_torch()
    torch.set_num_threads(args.threads)
    parity = check_parity(args.check_parity)
    counts = report_parameter_counts(args.latent_unit, args.check_parity)
    if args.skip_timing:
        return

    header = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "host": platform.processor() or platform.machine(),
        "cpu": cpu_description(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "repeats": args.repeats,
        "glibc_malloc_tuned": malloc_tuned,
        "glibc_huge_pages_requested": xla_options.huge_pages_requested(),
    }
    if args.interleave:
        import jax

        header.update({"jax": jax.__version__, "interleaved": True, "torch_in_child_process": True,
                       "pause_s": args.pause, "torch_malloc": args.torch_malloc})
    print(json.dumps(header))
    results = []
    worker = TorchWorker(args.threads, args.torch_malloc) if args.interleave else None
    try:
        for seq_len in seq_lens:
            if args.interleave:
                result = interleave_length(worker, seq_len, args.train_batch, args.forward_batch, args.repeats,
                                           args.latent_unit, args.pause, args.switch_warmup)
                results.append(result)
                print(f"L={seq_len:4d} train step (B={args.train_batch}) ours / PyTorch "
                      f"{result['train_step_jax_median_s']:.3f} / {result['train_step_torch_median_s']:.3f} s, "
                      f"ratio {result['train_step_ratio_median']:.3f} | forward (B={args.forward_batch}) "
                      f"{result['forward_jax_median_s']:.3f} / {result['forward_torch_median_s']:.3f} s, "
                      f"ratio {result['forward_ratio_median']:.3f}", flush=True)
                continue
            result = bench_length(seq_len, args.train_batch, args.forward_batch, args.repeats, args.latent_unit,
                                  args.ema)
            results.append(result)
            print(f"L={seq_len:4d} float32   train step (B={args.train_batch}) median "
                  f"{result['train_step_median_s']:.3f} s | forward (B={args.forward_batch}) median "
                  f"{result['forward_median_s']:.3f} s | forward samples/s {result['forward_samples_per_s']:.1f}",
                  flush=True)
    finally:
        if worker is not None:
            worker.close()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    document = {"environment": header, "parameter_counts": counts, "parity_relative_errors": parity,
                "results": results}
    out.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

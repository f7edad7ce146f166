"""Dense, 1-D convolution and normalisation layers whose parameter gradients are matmuls.

The layers compute what `flax.linen.Dense`, `Conv`, `GroupNorm` and `LayerNorm`
compute and keep their parameter names and shapes (`kernel`, `bias`, `scale`),
so checkpoints and the weight importer do not change. They differ in the
way they compute sums and gradients. A bias or norm-scale gradient sums an
activation-sized array over the batch and time axes. XLA:CPU (jax 0.10.2) splits such column
sums into many small windowed reductions, which made them about a tenth of the
TimeDP train step. Here they are a product with a vector of ones, which XLA
hands to its matmul library. Dense layers and 1x1 convolutions go through
`matmul`, whose kernel gradient is one row-major product `x_rows.T @ grad_rows`.
Under plain autodiff XLA:CPU (jax 0.10.2) ran that gradient as a dot outside
its matmul library, at about 20 GFLOP/s in a profile of the TimeDP train
step. The values agree with plain autodiff to float32 rounding.

`group_norm` has its own backward pass and takes per-sample scale and bias,
so that a ResBlock's timestep scale and shift fold into the norm.

`geglu` is the feed-forward's gated projection with its own backward pass, which
does not build the gradient of the full-width projection output. Together with
an error-function GELU, it made the TimeDP train step at L = 168 about 4 %
faster on a 2-core CPU (docs/benchmarks.md). `silu` writes the sigmoid
through `tanh`, whose forward was faster than `jax.nn.silu` on XLA:CPU.
"""

import functools
import math
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

# PyTorch's default init for Linear and Conv1d weights: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
torch_default_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def _column_sum(a: jax.Array) -> jax.Array:
    """Sum `a` over every axis but the last, as a matrix-vector product accumulated in float32."""
    rows = a.reshape(-1, a.shape[-1])
    ones = jnp.ones((rows.shape[0],), rows.dtype)
    return jnp.dot(ones, rows, preferred_element_type=jnp.float32)


def _kernel_gradient(x: jax.Array, grad: jax.Array) -> jax.Array:
    """Return the float32 gradient of `kernel` in `x @ kernel`, as the 2-D product `x_rows.T @ grad_rows`."""
    rows = x.reshape(-1, x.shape[-1])
    return jnp.dot(rows.T, grad.reshape(-1, grad.shape[-1]), preferred_element_type=jnp.float32)


@jax.custom_vjp
def add_bias(y: jax.Array, bias: jax.Array) -> jax.Array:
    """Return `y + bias` with `bias` broadcast over the leading axes of `y`."""
    return y + bias.astype(y.dtype)


def _add_bias_fwd(y, bias):
    return add_bias(y, bias), bias


def _add_bias_bwd(bias, grad):
    return grad, _column_sum(grad).astype(bias.dtype)


add_bias.defvjp(_add_bias_fwd, _add_bias_bwd)


@jax.custom_vjp
def scale_and_shift(normalized: jax.Array, scale: jax.Array, shift: jax.Array) -> jax.Array:
    """Return `normalized * scale + shift`, the affine step of a norm layer (float32)."""
    return normalized * scale + shift


def _scale_and_shift_fwd(normalized, scale, shift):
    return scale_and_shift(normalized, scale, shift), (normalized, scale)


def _scale_and_shift_bwd(residuals, grad):
    normalized, scale = residuals
    return grad * scale, _column_sum(grad * normalized), _column_sum(grad)


scale_and_shift.defvjp(_scale_and_shift_fwd, _scale_and_shift_bwd)


def _sigmoid(x: jax.Array) -> jax.Array:
    # sigmoid(x) = (1 + tanh(x / 2)) / 2, one tanh in place of an exp and a division.
    return 0.5 * jnp.tanh(0.5 * x) + 0.5


@jax.custom_vjp
def silu(x: jax.Array) -> jax.Array:
    """Return SiLU `x * sigmoid(x)`, with the sigmoid written through `tanh`.

    `jax.nn.silu` goes through `lax.logistic`. On a `(64, 168, 128)` array with
    XLA:CPU (jax 0.10.2) its forward took 0.91 ms against 0.57 ms for the
    `tanh` form in a micro-benchmark. The `tanh` form rounds the
    sigmoid to absolute rather than relative float32 precision: values and
    gradients differ from `jax.nn.silu` by less than 3e-6 on [-40, 40]. Below
    about x = -16, where SiLU is between -2e-6 and 0, it returns zero. The
    backward pass recomputes the sigmoid from `x`.
    """
    return x * _sigmoid(x)


def _silu_fwd(x):
    return silu(x), x


def _silu_bwd(x, grad):
    sigmoid = _sigmoid(x)
    return (grad * (sigmoid + x * sigmoid * (1.0 - sigmoid)),)


silu.defvjp(_silu_fwd, _silu_bwd)


_SQRT_HALF = 0.7071067811865476
_INV_SQRT_2PI = 0.3989422804014327


def gelu_exact(x: jax.Array) -> jax.Array:
    """Return the exact GELU `x * Phi(x)`, with the normal CDF `Phi` written through `erf`.

    `jax.nn.gelu(approximate=False)` computes the same function through `erfc`,
    which took about twice as long on XLA:CPU (jax 0.10.2) in a micro-benchmark.
    """
    return x * _normal_cdf(x)


def _normal_cdf(x: jax.Array) -> jax.Array:
    return 0.5 * (1.0 + jax.lax.erf(x * _SQRT_HALF))


def _gelu_and_slope(g: jax.Array) -> tuple[jax.Array, jax.Array]:
    cdf = _normal_cdf(g)
    return g * cdf, cdf + g * _INV_SQRT_2PI * jnp.exp(-0.5 * g * g)


def _split_projection(x: jax.Array, kernel: jax.Array, bias: jax.Array) -> tuple[jax.Array, jax.Array]:
    h = jnp.dot(x, kernel) + bias.astype(x.dtype)
    return jnp.split(h, 2, axis=-1)


@jax.custom_vjp
def geglu(x: jax.Array, kernel: jax.Array, bias: jax.Array) -> jax.Array:
    """Return `a * gelu(g)`, where `[a, g] = x @ kernel + bias` is split in half on the last axis.

    The GELU runs in float32. The backward pass computes the kernel gradient of
    each half on its own, so it does not build the full-width gradient of the
    projection output.
    """
    return _geglu_fwd(x, kernel, bias)[0]


def _geglu_fwd(x, kernel, bias):
    a, g = _split_projection(x, kernel, bias)
    return a * gelu_exact(g.astype(jnp.float32)).astype(a.dtype), (x, kernel, bias, a, g)


def _geglu_bwd(residuals, grad):
    x, kernel, bias, a, g = residuals
    gelu, slope = _gelu_and_slope(g.astype(jnp.float32))
    grad32 = grad.astype(jnp.float32)
    grad_a = (grad32 * gelu).astype(x.dtype)
    grad_g = (grad32 * a.astype(jnp.float32) * slope).astype(x.dtype)
    half = kernel.shape[1] // 2
    kernel_a, kernel_g = kernel[:, :half], kernel[:, half:]
    grad_x = jnp.dot(grad_a, kernel_a.T) + jnp.dot(grad_g, kernel_g.T)
    grad_kernel = jnp.concatenate([_kernel_gradient(x, grad_a), _kernel_gradient(x, grad_g)], axis=1)
    grad_bias = jnp.concatenate([_column_sum(grad_a), _column_sum(grad_g)])
    return grad_x, grad_kernel.astype(kernel.dtype), grad_bias.astype(bias.dtype)


geglu.defvjp(_geglu_fwd, _geglu_bwd)


@jax.custom_vjp
def matmul(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """Multiply the last axis of `x` by `kernel`. The backward pass computes the kernel gradient as one 2-D matmul."""
    return jnp.dot(x, kernel)


def _matmul_fwd(x, kernel):
    return jnp.dot(x, kernel), (x, kernel)


def _matmul_bwd(residuals, grad):
    x, kernel = residuals
    return jnp.dot(grad, kernel.T), _kernel_gradient(x, grad).astype(kernel.dtype)


matmul.defvjp(_matmul_fwd, _matmul_bwd)


class DenseParameters(nn.Module):
    """Return the `(kernel, bias)` of a Dense layer without applying it.

    The parameters have the paths and initial values that `Dense(features)` of
    the same name would have (`bias` is None without `use_bias`), so a caller
    can fuse the matmul with its neighbours and keep the checkpoint names.
    """

    in_features: int
    features: int
    use_bias: bool = True
    kernel_init: Callable = torch_default_kernel_init

    @nn.compact
    def __call__(self) -> tuple[jax.Array, Optional[jax.Array]]:
        kernel = self.param("kernel", self.kernel_init, (self.in_features, self.features))
        if not self.use_bias:
            return kernel, None
        return kernel, self.param("bias", nn.initializers.zeros, (self.features,))


class Dense(nn.Module):
    """`x @ kernel + bias` over the last axis; parameters as `flax.linen.Dense`."""

    features: int
    use_bias: bool = True
    dtype: Any = jnp.float32
    kernel_init: Callable = torch_default_kernel_init

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param("kernel", self.kernel_init, (x.shape[-1], self.features))
        y = matmul(x.astype(self.dtype), kernel.astype(self.dtype))
        if self.use_bias:
            bias = self.param("bias", nn.initializers.zeros, (self.features,))
            y = add_bias(y, bias)
        return y


class Conv1D(nn.Module):
    """1-D convolution over `(B, T, C)` with explicit padding; parameters as `flax.linen.Conv`.

    `kernel` is `(K, C_in, C_out)`. `padding` is the number of zeros added at
    each end of the time axis.
    """

    features: int
    kernel_size: int
    stride: int = 1
    padding: int = 0
    dtype: Any = jnp.float32
    kernel_init: Callable = torch_default_kernel_init

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param("kernel", self.kernel_init, (self.kernel_size, x.shape[-1], self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
        if self.kernel_size == 1 and self.stride == 1 and self.padding == 0:
            # A 1x1 convolution is a matmul. Written as one, its gradients reach the matmul library.
            y = matmul(x, kernel[0])
        else:
            y = jax.lax.conv_general_dilated(
                x,
                kernel,
                window_strides=(self.stride,),
                padding=((self.padding, self.padding),),
                dimension_numbers=("NWC", "WIO", "NWC"),
            )
        return add_bias(y, bias)


def _sum_over_time(a: jax.Array) -> jax.Array:
    """Sum `(B, N, C)` over `N` as a batched product with a vector of ones, accumulated in float32."""
    ones = jnp.ones(a.shape[:2], a.dtype)
    return jnp.einsum("bn,bnc->bc", ones, a, preferred_element_type=jnp.float32)


def _group_mean(per_channel: jax.Array, num_groups: int, count: int) -> jax.Array:
    """Sum `(B, C)` per-channel sums over each channel group, divide by `count` and broadcast back to `(B, C)`."""
    b, c = per_channel.shape
    sums = per_channel.reshape(b, num_groups, c // num_groups).sum(axis=-1, keepdims=True)
    return jnp.broadcast_to(sums / count, (b, num_groups, c // num_groups)).reshape(b, c)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def group_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, num_groups: int, epsilon: float) -> jax.Array:
    """Return the GroupNorm `normalized * scale + bias` of a float32 `(B, N, C)` array, with a two-pass variance.

    `scale` and `bias` are `(B, C)`: per sample, so that a conditioning
    scale and shift can be folded into them. The statistics of a sample and
    group are over `N` and the group's channels. Their sums over `N` are
    batched products with a vector of ones. The backward pass is written
    out: the sums over `N` of the output gradient and of its product with
    the normalized values give every gradient. Under plain autodiff XLA:CPU
    (jax 0.10.2) fused the group reductions with recomputed normalisation and
    SiLU. GroupNorm plus SiLU then took 2.3 to 2.7 times as long for the
    forward and backward pass together, at batch 64 on the UNet's shapes.
    """
    return _group_norm_fwd(x, scale, bias, num_groups, epsilon)[0]


def _group_norm_fwd(x, scale, bias, num_groups, epsilon):
    count = x.shape[1] * (x.shape[2] // num_groups)
    mean = _group_mean(_sum_over_time(x), num_groups, count)[:, None, :]
    centered = x - mean
    var = _group_mean(_sum_over_time(centered * centered), num_groups, count)[:, None, :]
    inv_std = jax.lax.rsqrt(var + epsilon)
    return centered * inv_std * scale[:, None, :] + bias[:, None, :], (x, mean, inv_std, scale)


def _group_norm_bwd(num_groups, epsilon, residuals, grad):
    x, mean, inv_std, scale = residuals
    count = x.shape[1] * (x.shape[2] // num_groups)
    normalized = (x - mean) * inv_std
    grad_scale = _sum_over_time(grad * normalized)  # (B, C)
    grad_bias = _sum_over_time(grad)
    # With g = grad * scale, the gradient of the normalized values:
    # dx = inv_std * (g - group_mean(g) - normalized * group_mean(g * normalized)).
    mean_g = _group_mean(grad_bias * scale, num_groups, count)[:, None, :]
    mean_g_normalized = _group_mean(grad_scale * scale, num_groups, count)[:, None, :]
    grad_x = inv_std * (grad * scale[:, None, :] - mean_g - normalized * mean_g_normalized)
    return grad_x, grad_scale, grad_bias


group_norm.defvjp(_group_norm_fwd, _group_norm_bwd)


class GroupNorm(nn.Module):
    """GroupNorm over `(B, ..., C)` in float32 (`group_norm`); parameters as `flax.linen.GroupNorm`.

    Statistics are per sample and group, over every axis between batch and
    channels and the group's channels. Returns float32.

    `__call__(x, modulation=None)`: `modulation`, a `(scale, shift)` pair of
    `(B, C)` arrays, returns `GroupNorm(x) * (1 + scale) + shift` in one step.
    """

    num_groups: int = 32
    epsilon: float = 1e-5

    @nn.compact
    def __call__(self, x: jax.Array, modulation: Optional[tuple[jax.Array, jax.Array]] = None) -> jax.Array:
        batch, channels = x.shape[0], x.shape[-1]
        if channels % self.num_groups:
            raise ValueError(f"GroupNorm needs channels divisible by {self.num_groups} groups, got {channels}")
        scale = jnp.broadcast_to(self.param("scale", nn.initializers.ones, (channels,)), (batch, channels))
        bias = jnp.broadcast_to(self.param("bias", nn.initializers.zeros, (channels,)), (batch, channels))
        if modulation is not None:
            factor = 1 + modulation[0].astype(jnp.float32)
            scale, bias = scale * factor, bias * factor + modulation[1].astype(jnp.float32)
        # The explicit middle size, not -1, lets an empty batch reshape too.
        rows = x.astype(jnp.float32).reshape(batch, math.prod(x.shape[1:-1]), channels)
        return group_norm(rows, scale, bias, self.num_groups, self.epsilon).reshape(x.shape)


class LayerNorm(nn.Module):
    """LayerNorm over the last axis in float32 with a two-pass variance; parameters as `flax.linen.LayerNorm`."""

    epsilon: float = 1e-5

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        channels = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (channels,))
        bias = self.param("bias", nn.initializers.zeros, (channels,))
        x32 = x.astype(jnp.float32)
        mean = x32.mean(axis=-1, keepdims=True)
        centered = x32 - mean
        var = jnp.square(centered).mean(axis=-1, keepdims=True)
        return scale_and_shift(centered * jax.lax.rsqrt(var + self.epsilon), scale, bias)

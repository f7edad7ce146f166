"""Layers with matmul parameter gradients agree with Flax's layers, values and gradients."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from timecraft_jax import xla_options
from timecraft_jax.models import layers

RTOL = 1e-5


def _random(shape, seed):
    return jax.random.normal(jax.random.PRNGKey(seed), shape, jnp.float32) * 1.5 + 0.3


def _perturbed(variables, seed):
    """Make every parameter non-trivial (Flax inits norms to 1/0 and biases to 0)."""
    leaves, treedef = jax.tree_util.tree_flatten(variables)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
    leaves = [leaf + 0.1 * jax.random.normal(key, leaf.shape) for leaf, key in zip(leaves, keys)]
    return jax.tree_util.tree_unflatten(treedef, leaves)


def _assert_same_values_and_grads(ours, theirs, x, seed=0):
    variables = _perturbed(theirs.init(jax.random.PRNGKey(1), x), seed)
    ours_variables = ours.init(jax.random.PRNGKey(1), x)
    assert jax.tree_util.tree_structure(ours_variables) == jax.tree_util.tree_structure(variables)
    for a, b in zip(jax.tree_util.tree_leaves(ours_variables), jax.tree_util.tree_leaves(variables)):
        assert a.shape == b.shape

    weight = _random(theirs.apply(variables, x).shape, seed + 7)

    def loss(module):
        return lambda v, inputs: jnp.sum(module.apply(v, inputs) * weight)

    np.testing.assert_allclose(ours.apply(variables, x), theirs.apply(variables, x), rtol=RTOL, atol=1e-5)
    ours_grads = jax.grad(loss(ours), argnums=(0, 1))(variables, x)
    theirs_grads = jax.grad(loss(theirs), argnums=(0, 1))(variables, x)
    flat_ours = jax.tree_util.tree_flatten_with_path(ours_grads)[0]
    flat_theirs = jax.tree_util.tree_leaves(theirs_grads)
    for (path, got), expected in zip(flat_ours, flat_theirs):
        scale = float(jnp.max(jnp.abs(expected)))
        np.testing.assert_allclose(got / scale, expected / scale, atol=2e-5, err_msg=jax.tree_util.keystr(path))


def test_dense_matches_flax():
    x = _random((4, 12, 16), 0)
    _assert_same_values_and_grads(layers.Dense(24), nn.Dense(24), x)


def test_dense_without_bias_matches_flax():
    x = _random((4, 12, 16), 1)
    _assert_same_values_and_grads(layers.Dense(8, use_bias=False), nn.Dense(8, use_bias=False), x)


@pytest.mark.parametrize("shape", [(6, 5), (2, 6, 5), (2, 3, 4, 5)])
def test_matmul_matches_autodiff(shape):
    x, kernel = _random(shape, 3), _random((5, 7), 4)
    weight = _random(shape[:-1] + (7,), 5)
    ours = jax.grad(lambda a, k: jnp.sum(layers.matmul(a, k) * weight), argnums=(0, 1))(x, kernel)
    plain = jax.grad(lambda a, k: jnp.sum(jnp.dot(a, k) * weight), argnums=(0, 1))(x, kernel)
    np.testing.assert_allclose(layers.matmul(x, kernel), jnp.dot(x, kernel), rtol=RTOL)
    for got, expected in zip(ours, plain):
        assert got.shape == expected.shape
        np.testing.assert_allclose(got, expected, rtol=RTOL, atol=1e-5)


@pytest.mark.parametrize("kernel_size, stride, padding", [(3, 1, 1), (1, 1, 0), (4, 2, 1)])
def test_conv1d_matches_flax(kernel_size, stride, padding):
    x = _random((3, 16, 8), 2)
    theirs = nn.Conv(12, (kernel_size,), strides=(stride,), padding=((padding, padding),))
    _assert_same_values_and_grads(layers.Conv1D(12, kernel_size, stride, padding), theirs, x)


@pytest.mark.parametrize("eps, shape", [(1e-5, (3, 10, 64)), (1e-6, (3, 10, 64)), (1e-5, (2, 3, 5, 96))])
def test_group_norm_matches_flax(eps, shape):
    x = _random(shape, 3) * 4.0 + 2.0
    theirs = nn.GroupNorm(num_groups=32, epsilon=eps, use_fast_variance=False)
    _assert_same_values_and_grads(layers.GroupNorm(32, eps), theirs, x)


def test_group_norm_modulation_matches_separate_steps():
    """`GroupNorm(x, (scale, shift))` is `GroupNorm(x) * (1 + scale) + shift`, values and all gradients."""
    x = _random((4, 12, 64), 5) * 3.0 - 1.0
    scale, shift, weight = _random((4, 64), 6) * 0.5, _random((4, 64), 7), _random((4, 12, 64), 8)
    norm = layers.GroupNorm(32, 1e-5)
    variables = _perturbed(norm.init(jax.random.PRNGKey(0), x), 9)

    def fused(tree, x, scale, shift):
        return jnp.sum(norm.apply(tree, x, (scale, shift)) * weight)

    def separate(tree, x, scale, shift):
        flax_norm = nn.GroupNorm(num_groups=32, epsilon=1e-5, use_fast_variance=False)
        return jnp.sum((flax_norm.apply(tree, x) * (1 + scale[:, None]) + shift[:, None]) * weight)

    np.testing.assert_allclose(fused(variables, x, scale, shift), separate(variables, x, scale, shift), rtol=RTOL)
    ours = jax.grad(fused, argnums=(0, 1, 2, 3))(variables, x, scale, shift)
    theirs = jax.grad(separate, argnums=(0, 1, 2, 3))(variables, x, scale, shift)
    for (path, got), expected in zip(jax.tree_util.tree_flatten_with_path(ours)[0], jax.tree_util.tree_leaves(theirs)):
        magnitude = float(jnp.max(jnp.abs(expected)))
        np.testing.assert_allclose(got / magnitude, expected / magnitude, atol=2e-5, err_msg=jax.tree_util.keystr(path))


def test_group_norm_empty_batch():
    norm = layers.GroupNorm(32)
    variables = norm.init(jax.random.PRNGKey(0), jnp.ones((2, 4, 64)))
    assert norm.apply(variables, jnp.ones((0, 4, 64))).shape == (0, 4, 64)


def test_group_norm_rejects_indivisible_channels():
    with pytest.raises(ValueError, match="divisible by 32 groups, got 48"):
        layers.GroupNorm(32).init(jax.random.PRNGKey(0), jnp.ones((1, 4, 48)))


def test_layer_norm_matches_flax():
    x = _random((3, 10, 32), 4)
    _assert_same_values_and_grads(layers.LayerNorm(1e-5), nn.LayerNorm(epsilon=1e-5, use_fast_variance=False), x)


class _FlaxGEGLU(nn.Module):
    features: int

    @nn.compact
    def __call__(self, x):
        a, g = jnp.split(nn.Dense(2 * self.features, name="proj")(x), 2, axis=-1)
        return a * nn.gelu(g, approximate=False)


class _OurGEGLU(nn.Module):
    features: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        kernel, bias = layers.DenseParameters(x.shape[-1], 2 * self.features, name="proj")()
        return layers.geglu(x.astype(self.dtype), kernel.astype(self.dtype), bias)


def test_geglu_matches_flax():
    x = _random((3, 10, 16), 5)
    _assert_same_values_and_grads(_OurGEGLU(24), _FlaxGEGLU(24), x)


def test_gelu_exact_matches_jax_gelu():
    x = jnp.linspace(-12.0, 12.0, 4001, dtype=jnp.float32)
    np.testing.assert_allclose(layers.gelu_exact(x), jax.nn.gelu(x, approximate=False), rtol=1e-6, atol=1e-6)


def test_silu_matches_jax_silu():
    x = jnp.linspace(-40.0, 40.0, 8001, dtype=jnp.float32)
    # The tanh form rounds sigmoid(x) to absolute float32 precision, so compare absolute errors.
    np.testing.assert_allclose(layers.silu(x), jax.nn.silu(x), rtol=0, atol=3e-6)


def test_silu_gradient_matches_jax_silu():
    x = jnp.linspace(-40.0, 40.0, 8001, dtype=jnp.float32)
    grad = jax.grad(lambda x: jnp.sum(layers.silu(x)))(x)
    expected = jax.grad(lambda x: jnp.sum(jax.nn.silu(x)))(x)
    np.testing.assert_allclose(grad, expected, rtol=0, atol=3e-6)


def test_silu_keeps_bfloat16():
    x = jnp.linspace(-8.0, 8.0, 101, dtype=jnp.bfloat16)
    y = layers.silu(x)
    grad = jax.grad(lambda x: jnp.sum(layers.silu(x).astype(jnp.float32)))(x)
    assert y.dtype == jnp.bfloat16
    assert grad.dtype == jnp.bfloat16
    np.testing.assert_allclose(y.astype(jnp.float32), jax.nn.silu(x).astype(jnp.float32), rtol=0.02, atol=0.02)


def test_geglu_bfloat16_gradients():
    module = _OurGEGLU(8, jnp.bfloat16)
    x = _random((2, 6, 4), 6)
    variables = _perturbed(module.init(jax.random.PRNGKey(0), x), 1)
    grads = jax.grad(lambda v: jnp.sum(module.apply(v, x).astype(jnp.float32)))(variables)
    float32_grads = jax.grad(lambda v: jnp.sum(_OurGEGLU(8).apply(v, x)))(variables)
    for got, expected in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(float32_grads)):
        assert got.dtype == jnp.float32
        np.testing.assert_allclose(got, expected, rtol=0.05, atol=0.05 * float(jnp.max(jnp.abs(expected))))


def test_dense_parameters_without_bias():
    module = layers.DenseParameters(4, 6, use_bias=False)
    kernel, bias = module.apply(module.init(jax.random.PRNGKey(0)))
    assert kernel.shape == (4, 6)
    assert bias is None


def test_add_bias_gradient_keeps_bias_dtype():
    y = jnp.ones((2, 5, 3), jnp.bfloat16)
    bias = jnp.arange(3, dtype=jnp.float32)
    grad = jax.grad(lambda b: jnp.sum(layers.add_bias(y, b).astype(jnp.float32)))(bias)
    assert grad.dtype == jnp.float32
    np.testing.assert_array_equal(grad, np.full(3, 10.0, np.float32))


def test_rejected_compiler_option_dropped_alone(monkeypatch):
    if jax.default_backend() != "cpu":
        pytest.skip("compiler options are only set on the CPU backend")
    monkeypatch.setattr(xla_options, "CPU_OPTIONS", {**xla_options.CPU_OPTIONS, "xla_no_such_option": True})
    xla_options.compiler_options.cache_clear()
    try:
        options = xla_options.compiler_options()
        assert "xla_no_such_option" not in options
        for name, value in xla_options.CPU_OPTIONS.items():
            if name != "xla_no_such_option":
                assert options[name] == value
    finally:
        xla_options.compiler_options.cache_clear()


def test_cpu_compiler_options_accepted(monkeypatch):
    xla_options.compiler_options.cache_clear()
    try:
        options = xla_options.compiler_options()
        if jax.default_backend() == "cpu":
            assert options == xla_options.CPU_OPTIONS
        else:
            assert options == {}
        jitted = xla_options.jit(lambda a: a * 2)
        np.testing.assert_array_equal(jitted(jnp.arange(3.0)), np.array([0.0, 2.0, 4.0]))

        monkeypatch.setenv("TIMECRAFT_XLA_DEFAULTS", "1")
        xla_options.compiler_options.cache_clear()
        assert xla_options.compiler_options() == {}
    finally:
        xla_options.compiler_options.cache_clear()

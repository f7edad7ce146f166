"""Attention core: values and gradients against plain autodiff, chunked against dense, and when each form is used."""

import platform
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from timecraft_jax import sampling, xla_options
from timecraft_jax.diffusion import make_schedule
from timecraft_jax.models import attention

from test_samplers import prompt_cond, sampling_config, tiny_model


def qkv(batch, queries, keys, heads=2, width=4, dtype=jnp.float32, seed=0):
    kq, kk, kv = jax.random.split(jax.random.PRNGKey(seed), 3)
    q = jax.random.normal(kq, (batch, queries, heads, width)) * 0.7
    k = jax.random.normal(kk, (batch, keys, heads, width))
    v = jax.random.normal(kv, (batch, keys, heads, width))
    return q.astype(dtype), k.astype(dtype), v.astype(dtype)


@pytest.mark.parametrize("batch,queries,keys,rows", [(6, 12, 12, 2), (6, 12, 12, 3), (4, 8, 5, 1), (3, 7, 9, 3)])
def test_chunked_matches_dense_values_and_gradients(batch, queries, keys, rows):
    q, k, v = qkv(batch, queries, keys)
    cotangent = jax.random.normal(jax.random.PRNGKey(5), q.shape)

    def loss(fn):
        return lambda q, k, v: jnp.sum(fn(q, k, v) * cotangent)

    dense = attention.dense_attention(q, k, v)
    chunked = attention.chunked_attention(q, k, v, rows)
    np.testing.assert_allclose(np.asarray(chunked), np.asarray(dense), rtol=1e-5, atol=1e-6)
    dense_grads = jax.grad(loss(attention.dense_attention), argnums=(0, 1, 2))(q, k, v)
    chunked_grads = jax.grad(loss(lambda q, k, v: attention.chunked_attention(q, k, v, rows)),
                             argnums=(0, 1, 2))(q, k, v)
    for name, got, want in zip("qkv", chunked_grads, dense_grads):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-5, err_msg=f"d{name}")


def reference_attention(q, k, v, bias=None, uniform_rows=None):
    """Plain softmax attention with JAX's own autodiff, the reference for the custom backward passes."""
    logits = jnp.einsum("bihd,bjhd->bhij", q, k)
    if bias is not None:
        logits = logits + bias[:, None, None, :]
    weights = jax.nn.softmax(logits, axis=-1)
    if uniform_rows is not None:
        weights = jnp.where(uniform_rows[:, None, None, None], 1.0 / k.shape[1], weights)
    return jnp.einsum("bhij,bjhd->bihd", weights, v)


@pytest.mark.parametrize("rows", [None, 1, 2])
@pytest.mark.parametrize("with_bias,with_uniform", [(False, False), (True, False), (True, True)])
def test_attention_matches_autodiff_reference(rows, with_bias, with_uniform):
    q, k, v = qkv(4, 6, 5, heads=3, width=4, seed=1)
    # A PAM-style bias: the logit where positive, a huge negative value elsewhere.
    logits = jax.random.normal(jax.random.PRNGKey(2), (4, 5))
    bias = jnp.where(logits > 0, logits, logits - 3e38) if with_bias else None
    uniform_rows = jnp.array([False, True, False, False]) if with_uniform else None
    cotangent = jax.random.normal(jax.random.PRNGKey(3), q.shape)

    def fn(q, k, v, bias):
        if rows is None:
            return attention.dense_attention(q, k, v, bias, uniform_rows)
        return attention.chunked_attention(q, k, v, rows, bias, uniform_rows)

    def loss(fn):
        return lambda q, k, v, bias: jnp.sum(fn(q, k, v, bias) * cotangent)

    want = reference_attention(q, k, v, bias, uniform_rows)
    got = jax.jit(fn)(q, k, v, bias)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-6)
    argnums = (0, 1, 2, 3) if with_bias else (0, 1, 2)
    want_grads = jax.grad(loss(lambda q, k, v, bias: reference_attention(q, k, v, bias, uniform_rows)),
                          argnums=argnums)(q, k, v, bias)
    got_grads = jax.jit(jax.grad(loss(fn), argnums=argnums))(q, k, v, bias)
    for name, g, w in zip(["q", "k", "v", "bias"], got_grads, want_grads):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-4, atol=1e-5, err_msg=f"d{name}")
    if with_uniform:
        # A uniform row averages v over the keys, and its q gets no gradient.
        np.testing.assert_allclose(np.asarray(got[1]), np.broadcast_to(np.asarray(v[1]).mean(0), got[1].shape),
                                   rtol=1e-5, atol=1e-6)
        assert not np.any(np.asarray(got_grads[0][1]))


def test_chunked_under_jit_and_bfloat16():
    q, k, v = qkv(4, 10, 10, dtype=jnp.bfloat16)
    reference = attention.dense_attention(*(a.astype(jnp.float32) for a in (q, k, v)))
    chunked = jax.jit(attention.chunked_attention, static_argnums=3)(q, k, v, 2)
    assert chunked.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(chunked, np.float32), np.asarray(reference), atol=3e-2)
    grads = jax.jit(jax.grad(lambda q: jnp.sum(attention.chunked_attention(q, k, v, 2).astype(jnp.float32))))(q)
    assert grads.dtype == jnp.bfloat16
    assert np.all(np.isfinite(np.asarray(grads, np.float32)))


def test_chunked_rejects_uneven_rows():
    q, k, v = qkv(5, 4, 4)
    with pytest.raises(ValueError, match="chunk of 2 rows does not divide the batch of 5"):
        attention.chunked_attention(q, k, v, 2)


def test_chunk_rows_choice(monkeypatch):
    # The TimeDP sizes on one CPU: dense at L = 24, 2 MiB chunks from L = 96 on.
    assert attention.chunk_rows(64, 8, 24, 24) == 64
    assert attention.chunk_rows(64, 8, 42, 42) == 64
    assert attention.chunk_rows(64, 8, 96, 96) == 4
    assert attention.chunk_rows(64, 8, 168, 168) == 2
    assert attention.chunk_rows(7, 8, 512, 512) == 1  # Rows must divide the batch.
    monkeypatch.setattr(attention, "DENSE_LIMIT_BYTES", 0)
    assert attention.chunk_rows(6, 2, 12, 12) == 6  # 6 rows of 1,152 bytes fit one 2 MiB chunk.
    monkeypatch.setattr(attention, "CHUNK_BYTES", 2 * 2 * 12 * 12 * 4)
    assert attention.chunk_rows(6, 2, 12, 12) == 2


def force_chunks(monkeypatch, rows_bytes):
    monkeypatch.setattr(attention, "DENSE_LIMIT_BYTES", 0)
    monkeypatch.setattr(attention, "CHUNK_BYTES", rows_bytes)
    jax.clear_caches()  # Compiled samplers from other tests used the dense form.


def test_unet_output_and_gradients_same_with_chunks(monkeypatch):
    model, variables, _ = tiny_model()
    x = jax.random.normal(jax.random.PRNGKey(1), (4, model.seq_len, model.in_channels))
    t = jnp.array([0, 5, 50, 99], jnp.int32)

    def loss(params):
        eps = model.apply({**variables, "params": params}, x, t, x, train=False)
        return jnp.mean(jnp.abs(eps - 0.1)), eps

    (dense_loss, dense_eps), dense_grads = jax.value_and_grad(loss, has_aux=True)(variables["params"])
    force_chunks(monkeypatch, 1)  # One batch row per chunk.
    (chunk_loss, chunk_eps), chunk_grads = jax.value_and_grad(loss, has_aux=True)(variables["params"])
    np.testing.assert_allclose(np.asarray(chunk_eps), np.asarray(dense_eps), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(float(chunk_loss), float(dense_loss), rtol=1e-5)
    flat_dense, _ = jax.tree_util.tree_flatten_with_path(dense_grads)
    flat_chunk = jax.tree_util.tree_leaves(chunk_grads)
    scale = max(float(jnp.max(jnp.abs(g))) for _, g in flat_dense)
    for (path, want), got in zip(flat_dense, flat_chunk):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-3, atol=1e-5 * scale,
                                   err_msg=jax.tree_util.keystr(path))


def test_sample_independent_of_batch_with_chunks(monkeypatch):
    force_chunks(monkeypatch, 1)
    model, variables, _ = tiny_model()
    sample = sampling.make_sampler(model, make_schedule(10), sampling_config(sampler="ddpm"), 24, 1)
    cond = prompt_cond(model, variables, 7)
    batch = np.asarray(sample(variables, cond, sampling.sample_keys(2, 0, 7)))
    single = np.asarray(sample(variables, jax.tree.map(lambda leaf: leaf[4:5], cond), sampling.sample_keys(2, 4, 1)))
    np.testing.assert_allclose(single[0], batch[4], rtol=1e-4, atol=1e-4)


def test_keep_host_memory_off_cases(monkeypatch):
    jax.block_until_ready(jnp.ones(3) + 1)
    xla_options.keep_host_memory.cache_clear()
    assert xla_options.keep_host_memory() is False  # JAX's threads already hold their own arenas.
    xla_options.keep_host_memory.cache_clear()
    monkeypatch.setenv("TIMECRAFT_MALLOC_DEFAULTS", "1")
    assert xla_options.keep_host_memory() is False
    xla_options.keep_host_memory.cache_clear()


PROBE = "from timecraft_jax import xla_options; print(xla_options.keep_host_memory())"


@pytest.mark.parametrize("env,expected", [
    ({"JAX_PLATFORMS": "cpu", "TIMECRAFT_MALLOC_DEFAULTS": "0"}, "True"),
    ({"JAX_PLATFORMS": "cpu", "TIMECRAFT_MALLOC_DEFAULTS": "1"}, "False"),
    ({"JAX_PLATFORMS": "cuda,cpu", "TIMECRAFT_MALLOC_DEFAULTS": "0"}, "False"),  # Not a CPU run.
])
@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the malloc settings are glibc's")
def test_keep_host_memory_in_a_fresh_process(monkeypatch, env, expected):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == expected

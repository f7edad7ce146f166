"""Softmax attention core for the UNet's attention layers, dense or in cache-sized batch chunks.

`attend(q, k, v, bias, uniform_rows)` computes `softmax(q k^T + bias) v` per
head. `q` is `(B, I, H, D)` and already scaled, `k` and `v` are `(B, J, H, D)`;
the result is `(B, I, H, D)`. `bias`, optional, is `(B, J)` and is added to
the logits of every head and query. `uniform_rows`, optional, is a `(B,)`
bool array: a flagged batch row gets the weight `1/J` on every key, and its
`q`, `k` and `bias` get zero gradient. The logits and the softmax are float32;
the products run in the dtype of `q`, `k` and `v`.

Both implementations work on head-major `(B, H, ., D)` copies of q, k and v and
have their own backward pass, which computes the gradients of k, v and the
bias from transposed weight arrays. On the CPU those transposes go through an
optimization barrier, so XLA keeps them as copies instead of folding them into
the products. Folded, the products contract over a non-minor axis, and
XLA:CPU (jax 0.10.2) runs them outside its matmul library. Kept as copies,
together with cross-attention moving onto this core, they made the TimeDP
train step 6 % (L = 168) to 21 % (L = 24) faster on a 2-core AVX-512 CPU
(docs/benchmarks.md).

* `dense_attention` builds the whole `(B, H, I, J)` weight array and keeps it
  for the backward pass.
* `chunked_attention` loops over groups of batch rows with `lax.map`, so each
  group's `(rows, H, I, J)` arrays stay in the CPU cache. It keeps only the
  outputs and the per-row log-sum-exp and recomputes the weights chunk by
  chunk in the backward pass, as flash attention does. On a 2-core CPU this
  cut the self-attention train cost at I = J = 168 (batch 64, 8 heads of
  width 8) from about 160 ms to 60 ms.

`attend` picks the chunked form on a single CPU device when the full weight
array is larger than `DENSE_LIMIT_BYTES`. Otherwise it uses the dense form:
GPUs fuse it well, and several devices shard the batch axis. A batch row's
result does not depend on the other rows. It can still differ by float
rounding between batch sizes, because the chunk size and the matmul
library's blocking follow the batch. The custom VJPs support reverse-mode
differentiation (`jax.grad`, `jax.vjp`) only.
"""

import functools
from typing import Optional

import jax
import jax.numpy as jnp

# Above this size of the float32 (B, H, I, J) weight array, CPU attention runs in chunks.
DENSE_LIMIT_BYTES = 8 << 20
# Target size of one chunk's (rows, H, I, J) array: about a core's share of the last-level cache.
CHUNK_BYTES = 2 << 20


def _head_major(a: jax.Array) -> jax.Array:
    """Swap the token and head axes: `(B, N, H, D)` to `(B, H, N, D)` and back."""
    return jnp.transpose(a, (0, 2, 1, 3))


def _keep_copies(*arrays):
    """Return `arrays`, behind an optimization barrier on the CPU (see the module docstring)."""
    if jax.default_backend() != "cpu":
        return arrays
    return jax.lax.optimization_barrier(arrays)


def _logits(qh, kh, bias):
    """Compute the `(b, H, I, J)` float32 logits of head-major q and k, plus the optional `(b, J)` bias."""
    logits = jnp.einsum("bhid,bhjd->bhij", qh, kh, preferred_element_type=jnp.float32)
    if bias is not None:
        logits = logits + bias[:, None, None, :].astype(jnp.float32)
    return logits


def _uniform(weights, uniform_rows):
    if uniform_rows is None:
        return weights
    return jnp.where(uniform_rows[:, None, None, None], 1.0 / weights.shape[-1], weights)


def _weights_and_log_sum_exp(qh, kh, bias, uniform_rows):
    """Return the softmax weights `(b, H, I, J)` and the per-query log-sum-exp `(b, H, I, 1)`."""
    logits = _logits(qh, kh, bias)
    row_max = jnp.max(logits, axis=-1, keepdims=True)
    unnormalized = jnp.exp(logits - row_max)
    row_sum = jnp.sum(unnormalized, axis=-1, keepdims=True)
    return _uniform(unnormalized / row_sum, uniform_rows), row_max + jnp.log(row_sum)


def _gradients(weights, qh, kh, vh, bias, uniform_rows, out, grad_out):
    """Return the gradients of head-major q, k, v and of the bias, given the weights and `out = weights v`."""
    grad_weights = jnp.einsum("bhid,bhjd->bhij", grad_out, vh, preferred_element_type=jnp.float32)
    # Softmax backward: sum_j w_ij dw_ij equals sum_d out_id dout_id, which avoids a pass over (I, J).
    row_dot = jnp.sum(grad_out.astype(jnp.float32) * out.astype(jnp.float32), axis=-1, keepdims=True)
    grad_logits = weights * (grad_weights - row_dot)
    if uniform_rows is not None:
        grad_logits = jnp.where(uniform_rows[:, None, None, None], 0.0, grad_logits)
    grad_bias = None if bias is None else jnp.sum(grad_logits, axis=(1, 2)).astype(bias.dtype)
    grad_logits = grad_logits.astype(qh.dtype)
    grad_q = jnp.einsum("bhij,bhjd->bhid", grad_logits, kh)
    # Transposed copies, so that both products below contract over minor axes.
    grad_logits_t, weights_t = _keep_copies(jnp.swapaxes(grad_logits, -1, -2),
                                            jnp.swapaxes(weights.astype(grad_out.dtype), -1, -2))
    grad_k = jnp.einsum("bhji,bhid->bhjd", grad_logits_t, qh)
    grad_v = jnp.einsum("bhji,bhid->bhjd", weights_t, grad_out)
    return grad_q, grad_k, grad_v, grad_bias


def _bool_cotangent(uniform_rows):
    return None if uniform_rows is None else jnp.zeros(uniform_rows.shape, jax.dtypes.float0)


@jax.custom_vjp
def _dense_core(qh, kh, vh, bias, uniform_rows):
    return _dense_core_forward(qh, kh, vh, bias, uniform_rows)[0]


def _dense_core_forward(qh, kh, vh, bias, uniform_rows):
    weights, _ = _weights_and_log_sum_exp(qh, kh, bias, uniform_rows)
    out = jnp.einsum("bhij,bhjd->bhid", weights.astype(vh.dtype), vh)
    return out, (weights, qh, kh, vh, bias, uniform_rows, out)


def _dense_core_backward(residuals, grad_out):
    weights, qh, kh, vh, bias, uniform_rows, out = residuals
    grads = _gradients(weights, qh, kh, vh, bias, uniform_rows, out, grad_out)
    return grads + (_bool_cotangent(uniform_rows),)


_dense_core.defvjp(_dense_core_forward, _dense_core_backward)


def _chunk_forward(qh, kh, vh, bias, uniform_rows):
    """Return the output and the log-sum-exp of one chunk of batch rows."""
    weights, log_sum_exp = _weights_and_log_sum_exp(qh, kh, bias, uniform_rows)
    return jnp.einsum("bhij,bhjd->bhid", weights.astype(vh.dtype), vh), log_sum_exp


def _chunk_backward(qh, kh, vh, bias, uniform_rows, out, log_sum_exp, grad_out):
    """Return one chunk's gradients, recomputing its weights from the log-sum-exp."""
    weights = _uniform(jnp.exp(_logits(qh, kh, bias) - log_sum_exp), uniform_rows)
    return _gradients(weights, qh, kh, vh, bias, uniform_rows, out, grad_out)


def _split_rows(a, rows: int):
    return None if a is None else a.reshape(a.shape[0] // rows, rows, *a.shape[1:])


def _merge_rows(a):
    return None if a is None else a.reshape(a.shape[0] * a.shape[1], *a.shape[2:])


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _chunked_core(qh, kh, vh, bias, uniform_rows, rows):
    return _chunked_core_forward(qh, kh, vh, bias, uniform_rows, rows)[0]


def _chunked_core_forward(qh, kh, vh, bias, uniform_rows, rows):
    chunks = tuple(_split_rows(a, rows) for a in (qh, kh, vh, bias, uniform_rows))
    out, log_sum_exp = jax.lax.map(lambda args: _chunk_forward(*args), chunks)
    out = _merge_rows(out)
    return out, (qh, kh, vh, bias, uniform_rows, out, log_sum_exp)


def _chunked_core_backward(rows, residuals, grad_out):
    qh, kh, vh, bias, uniform_rows, out, log_sum_exp = residuals
    chunks = tuple(_split_rows(a, rows) for a in (qh, kh, vh, bias, uniform_rows, out))
    grads = jax.lax.map(lambda args: _chunk_backward(*args), chunks + (log_sum_exp, _split_rows(grad_out, rows)))
    return tuple(_merge_rows(g) for g in grads) + (_bool_cotangent(uniform_rows),)


_chunked_core.defvjp(_chunked_core_forward, _chunked_core_backward)


def dense_attention(q: jax.Array, k: jax.Array, v: jax.Array, bias: Optional[jax.Array] = None,
                    uniform_rows: Optional[jax.Array] = None) -> jax.Array:
    """Compute softmax attention over the whole batch at once (shapes in the module docstring)."""
    out = _dense_core(_head_major(q), _head_major(k), _head_major(v), bias, uniform_rows)
    return _head_major(out)


def chunked_attention(q: jax.Array, k: jax.Array, v: jax.Array, rows: int, bias: Optional[jax.Array] = None,
                      uniform_rows: Optional[jax.Array] = None) -> jax.Array:
    """Compute softmax attention over groups of `rows` batch rows (`rows` must divide B)."""
    if q.shape[0] % rows:
        raise ValueError(f"chunk of {rows} rows does not divide the batch of {q.shape[0]}")
    out = _chunked_core(_head_major(q), _head_major(k), _head_major(v), bias, uniform_rows, rows)
    return _head_major(out)


def chunk_rows(batch: int, heads: int, queries: int, keys: int) -> int:
    """Return the batch rows per chunk on this backend, where `batch` means the dense form."""
    row_bytes = heads * queries * keys * 4
    if jax.default_backend() != "cpu" or jax.device_count() > 1 or batch * row_bytes <= DENSE_LIMIT_BYTES:
        return batch
    target = max(1, CHUNK_BYTES // row_bytes)
    return max(rows for rows in range(1, min(batch, target) + 1) if batch % rows == 0)


def attend(q: jax.Array, k: jax.Array, v: jax.Array, bias: Optional[jax.Array] = None,
           uniform_rows: Optional[jax.Array] = None) -> jax.Array:
    """Compute softmax attention, in chunks of batch rows where that keeps the CPU cache warm."""
    batch, queries, heads, _ = q.shape
    rows = chunk_rows(batch, heads, queries, k.shape[1])
    if rows == batch:
        return dense_attention(q, k, v, bias, uniform_rows)
    return chunked_attention(q, k, v, rows, bias, uniform_rows)

"""Multi-domain batches: determinism, reweighting, evaluation order, flattening."""

import numpy as np
import pytest

from timecraft_jax.data import DataError, MultiDomainBatcher, iterate_eval_batches, to_univariate


def _domains():
    return {
        "big": np.zeros((1000, 8, 2)),
        "medium": np.ones((100, 8, 2)),
        "tiny": np.full((3, 8, 2), 2.0),
    }


def test_batch_shapes_and_dtypes():
    x, domain = MultiDomainBatcher(_domains(), batch_size=5, reweight=True, seed=0).batch(0)
    assert x.shape == (5, 8, 2)
    assert x.dtype == np.float32
    assert domain.shape == (5,)
    assert domain.dtype == np.int32
    # Every value of a domain's windows equals the domain index.
    np.testing.assert_array_equal(x[:, 0, 0], domain)


@pytest.mark.parametrize("reweight", [True, False])
def test_batch_is_function_of_seed_and_step(reweight):
    first = MultiDomainBatcher(_domains(), batch_size=16, reweight=reweight, seed=3)
    second = MultiDomainBatcher(_domains(), batch_size=16, reweight=reweight, seed=3)
    np.testing.assert_array_equal(first.batch(7)[1], second.batch(7)[1])
    np.testing.assert_array_equal(first.batch(7)[0], second.batch(7)[0])
    assert not np.array_equal(first.batch(7)[1], first.batch(8)[1])
    other_seed = MultiDomainBatcher(_domains(), batch_size=16, reweight=reweight, seed=4)
    assert not np.array_equal(first.batch(7)[1], other_seed.batch(7)[1])


def test_reweight_makes_tiny_domain_one_third():
    batcher = MultiDomainBatcher(_domains(), batch_size=256, reweight=True, seed=0)
    domains = np.concatenate([batcher.batch(step)[1] for step in range(40)])
    shares = np.bincount(domains, minlength=3) / len(domains)
    np.testing.assert_allclose(shares, 1 / 3, atol=0.02)


def test_no_reweight_is_uniform_over_windows():
    batcher = MultiDomainBatcher(_domains(), batch_size=256, reweight=False, seed=0)
    domains = np.concatenate([batcher.batch(step)[1] for step in range(40)])
    shares = np.bincount(domains, minlength=3) / len(domains)
    np.testing.assert_allclose(shares, [1000 / 1103, 100 / 1103, 3 / 1103], atol=0.015)


def test_reweight_covers_every_window_of_tiny_domain():
    domains = {"a": np.arange(5.0).reshape(5, 1, 1), "b": 10 + np.arange(2.0).reshape(2, 1, 1)}
    batcher = MultiDomainBatcher(domains, batch_size=64, reweight=True, seed=1)
    x, domain = batcher.batch(0)
    assert set(x[domain == 1, 0, 0].tolist()) == {10.0, 11.0}
    assert set(x[domain == 0, 0, 0].tolist()) == {0.0, 1.0, 2.0, 3.0, 4.0}


def test_invalid_inputs_rejected():
    with pytest.raises(DataError, match="batch_size must be >= 1"):
        MultiDomainBatcher(_domains(), batch_size=0, reweight=True, seed=0)
    with pytest.raises(DataError, match="no domains"):
        MultiDomainBatcher({}, batch_size=4, reweight=True, seed=0)
    with pytest.raises(DataError, match="domain 'empty' has no windows"):
        MultiDomainBatcher({"a": np.zeros((2, 8, 1)), "empty": np.zeros((0, 8, 1))}, 4, True, 0)
    with pytest.raises(DataError, match="same \\(T, C\\)"):
        MultiDomainBatcher({"a": np.zeros((2, 8, 1)), "b": np.zeros((2, 16, 1))}, 4, True, 0)


def test_eval_batches_in_order_with_remainder():
    domains = {"a": np.arange(5.0).reshape(5, 1, 1), "b": 10 + np.arange(3.0).reshape(3, 1, 1)}
    batches = list(iterate_eval_batches(domains, batch_size=3))
    assert [len(x) for x, _ in batches] == [3, 3, 2]
    values = np.concatenate([x[:, 0, 0] for x, _ in batches])
    assert values.tolist() == [0, 1, 2, 3, 4, 10, 11, 12]
    indices = np.concatenate([d for _, d in batches])
    assert indices.tolist() == [0, 0, 0, 0, 0, 1, 1, 1]


def test_to_univariate_sample_major():
    windows = np.arange(2 * 3 * 2).reshape(2, 3, 2)  # [N=2, T=3, C=2]
    flat = to_univariate(windows)
    assert flat.shape == (4, 3, 1)
    assert flat[:, :, 0].tolist() == [[0, 2, 4], [1, 3, 5], [6, 8, 10], [7, 9, 11]]
    with pytest.raises(DataError, match=r"\(N, T, C\)"):
        to_univariate(np.zeros((3, 4)))

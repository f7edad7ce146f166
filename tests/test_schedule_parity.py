"""Schedule and DDIM coefficients against arrays from the PyTorch reference.

The reference also registers shift_coef, ddim_coef and lvlb_weights. They never change
an output (the VLB weight is 0 and no UNet returns a gradient term), so this package
does not compute them and they are not compared.
"""

import numpy as np
import pytest

from timecraft_jax.diffusion import make_schedule
from timecraft_jax.sampling import ddim_parameters

SCHEDULE_BUFFERS = (
    "betas",
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
)
RTOL = 1e-4


@pytest.fixture(scope="module")
def reference(parity_dir):
    with np.load(parity_dir / "schedule.npz") as arrays:
        return dict(arrays)


@pytest.mark.parametrize("num_timesteps", [200, 1000])
def test_schedule_buffers_match_reference(reference, num_timesteps):
    schedule = make_schedule(num_timesteps, "linear", 5e-4, 0.1)
    for name in SCHEDULE_BUFFERS:
        expected = reference[f"T{num_timesteps}/{name}"]
        actual = np.asarray(getattr(schedule, name))
        assert actual.dtype == np.float32, name
        np.testing.assert_allclose(actual, expected, rtol=RTOL, atol=0, err_msg=f"T{num_timesteps}/{name}")


@pytest.mark.parametrize("num_timesteps", [200, 1000])
def test_schedule_float64_betas_match_reference(reference, num_timesteps):
    schedule = make_schedule(num_timesteps)
    expected = reference[f"T{num_timesteps}/betas_f64"].astype(np.float32)
    np.testing.assert_array_equal(np.asarray(schedule.betas), expected)


@pytest.mark.parametrize("num_timesteps", [200, 1000])
@pytest.mark.parametrize("num_steps", [10, 20, 50])
def test_reference_ddim_parameters_match(reference, num_timesteps, num_steps):
    schedule = make_schedule(num_timesteps)
    prefix = f"T{num_timesteps}/ddim{num_steps}"
    for eta in (0, 1):
        params = ddim_parameters(schedule, num_steps, float(eta), "uniform", reference_compatible=True)
        np.testing.assert_array_equal(params["timesteps"], reference[f"{prefix}/timesteps"], err_msg=f"{prefix}/timesteps")
        for name in ("alphas", "alphas_prev", "sqrt_one_minus_alphas"):
            np.testing.assert_allclose(
                np.asarray(params[name]), reference[f"{prefix}/{name}"], rtol=RTOL, atol=0, err_msg=f"{prefix}/{name}"
            )
        np.testing.assert_allclose(
            np.asarray(params["sigmas"]),
            reference[f"{prefix}/eta{eta}/sigmas"],
            rtol=RTOL,
            atol=0,
            err_msg=f"{prefix}/eta{eta}/sigmas",
        )


def test_reference_ddim_timesteps_examples():
    schedule = make_schedule(200)
    timesteps = ddim_parameters(schedule, 20, 0.0, "uniform", reference_compatible=True)["timesteps"]
    np.testing.assert_array_equal(timesteps, np.arange(1, 192, 10))


def test_default_ddim_parameters_end_at_clean_step():
    schedule = make_schedule(200)
    params = ddim_parameters(schedule, 20, 1.0, "uniform", reference_compatible=False)
    np.testing.assert_array_equal(params["timesteps"], np.arange(0, 200, 10))
    assert float(params["alphas_prev"][0]) == 1.0
    assert float(params["sigmas"][0]) == 0.0
    np.testing.assert_array_equal(np.asarray(params["alphas_prev"][1:]), np.asarray(params["alphas"][:-1]))

"""Samplers and the training loss of a small converted model against the PyTorch reference.

The reference arrays come from a small UNet (model_channels 32, channel_mult (1, 2),
attention at both levels, 16 prototypes of width 16, L = 24, C = 1) with seeded random
weights, a T = 200 linear schedule, and fixed start and step noise. Reference arrays
are (B, C, T) and are transposed to (B, T, C) here. Random weights make trajectories
grow to |x| of about 200, so errors are measured relative to each array's max magnitude.
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from timecraft_jax import diffusion, sampling
from timecraft_jax.config_lib import base_config
from timecraft_jax.sampling import Conditioning

import_torch = pytest.importorskip("timecraft_jax.import_torch")
models = pytest.importorskip("timecraft_jax.models")

SEQ_LEN = 24
DDIM_STEPS = 10
RTOL = 1e-4
# Conv biases that feed a BatchNorm; their exact gradient is 0.
ZERO_GRAD_BIASES = ("share_encoder.0.bias", "share_encoder.3.bias", "mask_ffn.0.convs.1.bias")


def assert_close_to_max(actual, expected, name, rtol=RTOL):
    """Assert max |actual - expected| <= rtol * max |expected|."""
    actual = np.asarray(actual)
    assert actual.shape == expected.shape, f"{name}: shape {actual.shape} != {expected.shape}"
    scale = float(np.max(np.abs(expected)))
    error = float(np.max(np.abs(actual - expected)))
    assert error <= rtol * scale, f"{name}: max abs error {error:.3g} exceeds {rtol} x max |expected| {scale:.3g}"


def to_btc(array):
    """Swap the last two axes: (..., C, T) from the reference to (..., T, C)."""
    return np.swapaxes(np.asarray(array), -1, -2)


def small_model_config() -> ml_collections.ConfigDict:
    config = base_config().model
    config.in_channels = 1
    config.model_channels = 32
    config.channel_mult = (1, 2)
    config.num_res_blocks = 1
    config.attention_resolutions = (1, 2)
    config.num_heads = 4
    config.conditioner = "prototype"
    config.num_prototypes = 16
    config.context_dim = 16
    config.num_classes = 0
    config.text_dim = 0
    return config


def params_with_prefix(arrays, prefix):
    return {name[len(prefix):]: arrays[name] for name in arrays if name.startswith(prefix)}


@pytest.fixture(scope="module")
def reference(parity_dir):
    with np.load(parity_dir / "ddim_small.npz") as arrays:
        return dict(arrays)


@pytest.fixture(scope="module")
def torch_weights(parity_dir):
    with np.load(parity_dir / "unet_small.npz") as arrays:
        unet = params_with_prefix(arrays, "param/")
    with np.load(parity_dir / "prototyper.npz") as arrays:
        conditioner = params_with_prefix(arrays, "param/")
    return unet, conditioner


@pytest.fixture(scope="module")
def small_model(torch_weights):
    unet_sd, conditioner_sd = torch_weights
    config = small_model_config()
    model = models.build_model(config, SEQ_LEN)
    unet_params = import_torch.convert_unet_state_dict(unet_sd, config, SEQ_LEN)
    params, batch_stats, constants = import_torch.convert_conditioner_state_dict(conditioner_sd, config, SEQ_LEN)
    variables = {
        "params": {"unet": unet_params, "conditioner": params},
        "batch_stats": {"conditioner": batch_stats},
        "constants": {"conditioner": constants},
    }
    variables = jax.tree.map(jnp.asarray, variables)
    return model, config, variables


@pytest.fixture(scope="module")
def schedule():
    return diffusion.make_schedule(200, "linear", 5e-4, 0.1)


@pytest.fixture(scope="module")
def sampler_inputs(reference):
    cond = Conditioning(context=jnp.asarray(reference["context"]), logits=jnp.asarray(reference["mask"]))
    x_T = jnp.asarray(to_btc(reference["xT"]))
    keys = sampling.sample_keys(0, 0, x_T.shape[0])
    return cond, x_T, keys


def test_reference_ddim_timesteps(reference):
    timesteps = sampling.ddim_timesteps(200, DDIM_STEPS, "uniform", reference_compatible=True)
    np.testing.assert_array_equal(timesteps, reference["ddim_timesteps"])


@pytest.mark.parametrize("case, eta, guidance_scale", [
    ("ddim_eta0", 0.0, 1.0),
    ("ddim_eta1", 1.0, 1.0),
    ("ddim_eta0_cfg2", 0.0, 2.0),
])
def test_ddim_matches_reference(reference, small_model, schedule, sampler_inputs, case, eta, guidance_scale):
    model, _, variables = small_model
    cond, x_T, keys = sampler_inputs
    eps_fn = sampling.make_model_eps_fn(model, guidance_scale)
    sample, trajectory = sampling.ddim_sample(
        eps_fn, variables, schedule, cond, keys, (SEQ_LEN, 1),
        num_steps=DDIM_STEPS, eta=eta, reference_compatible=True, return_trajectory=True,
        noise=jnp.asarray(to_btc(reference["ddim_noise"])), x_T=x_T,
    )
    # The reference trajectories start with x_T, followed by one entry per step.
    x_inter = to_btc(reference[f"{case}/x_inter"])
    np.testing.assert_array_equal(x_inter[0], np.asarray(x_T))
    assert_close_to_max(trajectory["x"], x_inter[1:], f"{case}/x_inter")
    if f"{case}/pred_x0" in reference:
        assert_close_to_max(trajectory["x0_hat"], to_btc(reference[f"{case}/pred_x0"])[1:], f"{case}/pred_x0")
    assert_close_to_max(sample, to_btc(reference[f"{case}/sample"]), f"{case}/sample")


def test_ddpm_trajectory_matches_reference(reference, small_model, schedule, sampler_inputs):
    model, _, variables = small_model
    cond, x_T, keys = sampler_inputs
    sample, trajectory = sampling.ddpm_sample(
        sampling.make_model_eps_fn(model, 1.0), variables, schedule, cond, keys, (SEQ_LEN, 1),
        return_trajectory=True, noise=jnp.asarray(to_btc(reference["ddpm_noise"])), x_T=x_T,
    )
    assert_close_to_max(trajectory, to_btc(reference["ddpm/traj"]), "ddpm/traj")
    assert_close_to_max(sample, to_btc(reference["ddpm/sample"]), "ddpm/sample")


def e2e_loss(model, schedule, variables, params, x0, t, noise, keep):
    """Training loss with the conditioner in train mode on the window being denoised."""
    def eps_fn(x_t, t_batch):
        eps_hat, _ = model.apply(
            {**variables, "params": params}, x_t, t_batch, x0, keep, train=True, mutable=["batch_stats"]
        )
        return eps_hat

    return diffusion.training_loss(eps_fn, schedule, x0, t, noise, "l1")


@pytest.fixture(scope="module")
def e2e_inputs(reference):
    x0 = jnp.asarray(to_btc(reference["e2e/x0"]))
    t = jnp.asarray(reference["e2e/t"], dtype=jnp.int32)
    noise = jnp.asarray(to_btc(reference["e2e/noise"]))
    keep = jnp.asarray(reference["e2e/keep_mask"], dtype=jnp.float32)
    return x0, t, noise, keep


@pytest.fixture(scope="module")
def e2e_loss_and_grads(small_model, schedule, e2e_inputs):
    model, _, variables = small_model
    loss_fn = lambda params: e2e_loss(model, schedule, variables, params, *e2e_inputs)  # noqa: E731
    return jax.value_and_grad(loss_fn)(variables["params"])


def test_e2e_mask_logits_match_reference(reference, small_model, e2e_inputs):
    model, _, variables = small_model
    (_, logits), _ = model.apply(
        variables, e2e_inputs[0], train=True, mutable=["batch_stats"], method=models.TimeCraftModel.encode
    )
    assert_close_to_max(logits, reference["e2e/mask_logits"], "e2e/mask_logits")


def test_e2e_loss_matches_reference(reference, e2e_loss_and_grads):
    loss, _ = e2e_loss_and_grads
    np.testing.assert_allclose(float(loss), float(reference["e2e/loss"]), rtol=RTOL)


def test_e2e_conditioner_grads_match_reference(reference, torch_weights, small_model, e2e_loss_and_grads):
    _, conditioner_sd = torch_weights
    _, config, _ = small_model
    _, grads = e2e_loss_and_grads
    torch_grads = params_with_prefix(reference, "e2e/grad_proto/")
    assert set(torch_grads) == {name for name in conditioner_sd if name.endswith(("weight", "bias"))}
    # The converter needs a complete state dict: gradients where given, running stats and prototypes otherwise.
    expected, _, _ = import_torch.convert_conditioner_state_dict({**conditioner_sd, **torch_grads}, config, SEQ_LEN)
    actual_leaves = jax.tree_util.tree_leaves_with_path(grads["conditioner"])
    expected_leaves = jax.tree_util.tree_leaves_with_path(expected)
    assert len(actual_leaves) == len(torch_grads)
    for (path, actual), (expected_path, want) in zip(actual_leaves, expected_leaves):
        assert path == expected_path
        torch_name = import_torch.flax_to_torch_name(tuple(key.key for key in path))
        if torch_name in ZERO_GRAD_BIASES:
            # Train-mode BatchNorm removes any constant shift, so these gradients are rounding noise in both frameworks.
            assert float(np.max(np.abs(actual))) < 1e-9, torch_name
            assert float(np.max(np.abs(want))) < 1e-9, torch_name
        else:
            assert_close_to_max(actual, np.asarray(want), f"e2e/grad_proto/{torch_name}")


def test_e2e_unet_grads_match_reference(reference, e2e_loss_and_grads):
    _, grads = e2e_loss_and_grads
    torch_grads = params_with_prefix(reference, "e2e/grad_unet/")
    assert len(torch_grads) == 4
    for torch_name, want in torch_grads.items():
        if torch_name == "null_classes_emb":
            actual = grads["unet"]["null_classes_emb"]
        else:
            module, _, leaf = torch_name.rpartition(".")
            assert leaf == "weight", torch_name
            node = grads["unet"]
            for key in import_torch.torch_module_to_flax(module):
                node = node[key]
            actual = node["kernel"]
            # Conv1d weights (out, in, k) are stored as (k, in, out) and Linear weights (out, in) as (in, out).
            want = np.transpose(want, (2, 1, 0)) if want.ndim == 3 else want.T
        assert_close_to_max(actual, want, f"e2e/grad_unet/{torch_name}")

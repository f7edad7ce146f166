"""Prototype conditioner parity with the PyTorch reference (`prototyper.npz`), eval and train mode."""

import json

import jax.numpy as jnp
import numpy as np
import pytest

from timecraft_jax.config_lib import base_config
from timecraft_jax.import_torch import convert_conditioner_state_dict, torch_module_to_flax
from timecraft_jax.models import TimeCraftModel, build_model

RTOL = 1e-4


def assert_close(name, actual, expected, rtol=RTOL):
    """Assert max|a - e| <= rtol * max|e| and report the errors with the array name."""
    actual = np.asarray(actual, np.float64)
    expected = np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, f"{name}: shape {actual.shape} != reference {expected.shape}"
    max_abs = float(np.max(np.abs(actual - expected)))
    scale = float(np.max(np.abs(expected)))
    rel = max_abs / max(scale, np.finfo(np.float32).tiny)
    assert rel <= rtol, f"{name}: max abs error {max_abs:.3e}, relative to max|ref| {scale:.3e}: {rel:.3e} > {rtol}"


def to_btc(a):
    return np.transpose(a, (0, 2, 1))


@pytest.fixture(scope="module")
def setup(parity_dir):
    with np.load(parity_dir / "prototyper.npz") as data:
        arrays = {name: data[name] for name in data.files}
    ref_config = json.loads((parity_dir / "prototyper.json").read_text())["config"]
    assert ref_config["dim"] == ref_config["latent_dim"]
    config = base_config().model
    config.in_channels = ref_config["num_channels"]
    config.context_dim = ref_config["dim"]
    config.num_prototypes = ref_config["num_latents"]
    config.model_channels = 32
    config.channel_mult = (1, 2)
    config.num_res_blocks = 1
    config.num_heads = 4
    seq_len = ref_config["window"]
    model = build_model(config, seq_len)
    sd = {name[len("param/"):]: a for name, a in arrays.items() if name.startswith("param/")}
    params, batch_stats, constants = convert_conditioner_state_dict(sd, config, seq_len)
    variables = {
        "params": {"conditioner": params},
        "batch_stats": {"conditioner": batch_stats},
        "constants": {"conditioner": constants},
    }
    return arrays, model, variables


def test_eval_mode(setup):
    arrays, model, variables = setup
    (context, logits), state = model.apply(
        variables, jnp.asarray(to_btc(arrays["x"])), method=TimeCraftModel.encode, mutable=["intermediates"]
    )
    assert_close("latents", context, arrays["latents"])
    assert_close("mask_logits", logits, arrays["mask_logits"])
    stem = state["intermediates"]["conditioner"]["share_encoder"][0]
    assert_close("act/share_encoder", stem, to_btc(arrays["act/share_encoder"]))


def test_prototypes_are_orthonormal(setup):
    _, _, variables = setup
    prototypes = np.asarray(variables["constants"]["conditioner"]["prototypes"], np.float64)
    np.testing.assert_allclose(prototypes @ prototypes.T, np.eye(prototypes.shape[0]), atol=1e-5)


def test_train_mode(setup):
    arrays, model, variables = setup
    (_, logits), state = model.apply(
        variables,
        jnp.asarray(to_btc(arrays["x_train"])),
        train=True,
        method=TimeCraftModel.encode,
        mutable=["batch_stats"],
    )
    assert_close("mask_logits_train", logits, arrays["mask_logits_train"])

    names = [name for name in arrays if name.startswith("running_after_train/")]
    assert len(names) == 6
    for name in names:
        module, _, leaf = name[len("running_after_train/"):].rpartition(".")
        node = state["batch_stats"]["conditioner"]
        for key in torch_module_to_flax(module):
            node = node[key]
        assert_close(name, node["mean" if leaf == "running_mean" else "var"], arrays[name])


def test_eval_mode_ignores_batch(setup):
    arrays, model, variables = setup
    x = jnp.asarray(to_btc(arrays["x"]))
    _, logits_full = model.apply(variables, x, method=TimeCraftModel.encode)
    _, logits_one = model.apply(variables, x[:1], method=TimeCraftModel.encode)
    assert_close("mask_logits[0] alone", logits_one, np.asarray(logits_full)[:1])

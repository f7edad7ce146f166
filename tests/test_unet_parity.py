"""UNet parity with the PyTorch reference (`unet_small.npz`): outputs, activations, loss and gradients."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from timecraft_jax.config_lib import base_config
from flax.traverse_util import flatten_dict

from timecraft_jax.import_torch import convert_unet_state_dict
from timecraft_jax.models import TimeCraftModel, build_model

RTOL = 1e-4
# Reference gradient arrays whose largest entry is below this fraction of the
# largest gradient anywhere are float32 rounding noise around an exact zero.
NOISE_FLOOR = 1e-6


def assert_close(name, actual, expected, rtol=RTOL):
    """Assert max|a - e| <= rtol * max|e| and report the errors with the array name."""
    actual = np.asarray(actual, np.float64)
    expected = np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, f"{name}: shape {actual.shape} != reference {expected.shape}"
    max_abs = float(np.max(np.abs(actual - expected))) if expected.size else 0.0
    scale = float(np.max(np.abs(expected))) if expected.size else 0.0
    rel = max_abs / max(scale, np.finfo(np.float32).tiny)
    assert rel <= rtol, f"{name}: max abs error {max_abs:.3e}, relative to max|ref| {scale:.3e}: {rel:.3e} > {rtol}"


def to_btc(a):
    """(B, C, T) reference layout to (B, T, C)."""
    return np.transpose(a, (0, 2, 1))


def small_model_config(unet_config, text_dim=0):
    config = base_config().model
    config.in_channels = unet_config["in_channels"]
    config.model_channels = unet_config["model_channels"]
    config.channel_mult = tuple(unet_config["channel_mult"])
    config.num_res_blocks = unet_config["num_res_blocks"]
    config.attention_resolutions = tuple(unet_config["attention_resolutions"])
    config.num_heads = unet_config["num_heads"]
    config.context_dim = unet_config["context_dim"]
    config.num_prototypes = 16
    config.conditioner = "prototype"
    config.text_dim = text_dim
    config.text_fusion = "gated_add"
    return config


@pytest.fixture(scope="module")
def ref(parity_dir):
    with np.load(parity_dir / "unet_small.npz") as data:
        arrays = {name: data[name] for name in data.files}
    meta = json.loads((parity_dir / "unet_small.json").read_text())
    return arrays, meta


@pytest.fixture(scope="module")
def small(ref):
    arrays, meta = ref
    config = small_model_config(meta["unet_config"])
    seq_len = meta["unet_config"]["seq_len"]
    model = build_model(config, seq_len)
    sd = {name[len("param/"):]: a for name, a in arrays.items() if name.startswith("param/")}
    params = convert_unet_state_dict(sd, config, seq_len)
    inputs = {
        "x_t": jnp.asarray(to_btc(arrays["x"])),
        "t": jnp.asarray(arrays["timesteps"]),
        "context": jnp.asarray(arrays["context"]),
        "logits": jnp.asarray(arrays["mask"]),
    }
    return model, config, seq_len, params, inputs


def denoise(model, params, inputs, **overrides):
    kwargs = dict(inputs, **overrides)
    return model.apply({"params": {"unet": params}}, method=TimeCraftModel.denoise, **kwargs)


def test_output(ref, small):
    arrays, _ = ref
    model, _, _, params, inputs = small
    assert_close("out", denoise(model, params, inputs), to_btc(arrays["out"]))


def test_output_all_tokens_null(ref, small):
    arrays, _ = ref
    model, _, _, params, inputs = small
    keep = jnp.zeros(inputs["context"].shape[:2] + (1,))
    assert_close("out_null", denoise(model, params, inputs, keep=keep), to_btc(arrays["out_null"]))


def test_output_without_pam_logits(ref, small):
    arrays, _ = ref
    model, _, _, params, inputs = small
    assert_close("out_nomask", denoise(model, params, inputs, logits=None), to_btc(arrays["out_nomask"]))


def test_output_fully_masked_row(ref, small):
    arrays, _ = ref
    model, _, _, params, inputs = small
    logits = jnp.asarray(arrays["mask_allneg_row0"])
    assert bool(jnp.all(logits[0] <= 0))
    out = denoise(model, params, inputs, logits=logits)
    assert_close("out_mask_allneg_row0", out, to_btc(arrays["out_mask_allneg_row0"]))


def test_output_without_context(ref, small):
    arrays, _ = ref
    model, _, _, params, inputs = small
    out = denoise(model, params, inputs, context=None, logits=None)
    assert_close("out_nocontext", out, to_btc(arrays["out_nocontext"]))


def test_classifier_free_guidance(ref, small):
    arrays, _ = ref
    model, _, _, params, inputs = small
    out = model.apply(
        {"params": {"unet": params}}, guidance_scale=3.0, method=TimeCraftModel.denoise_with_cfg, **inputs
    )
    assert_close("out_cfg3", out, to_btc(arrays["out_cfg3"]))


@pytest.fixture(scope="module")
def text_model(ref, small):
    arrays, meta = ref
    _, _, seq_len, _, inputs = small
    config = small_model_config(meta["unet_config"], text_dim=meta["text_config"]["text_dim"])
    model = build_model(config, seq_len)
    sd = {name[len("param/"):]: a for name, a in arrays.items() if name.startswith("param/")}
    sd.update({name[len("param_text/"):]: a for name, a in arrays.items() if name.startswith("param_text/")})
    params = convert_unet_state_dict(sd, config, seq_len)
    return model, params, jnp.asarray(arrays["text_embedding"])


@pytest.mark.parametrize(
    "name, drop_all, with_text",
    [("out_text", False, True), ("out_text_null", True, True), ("out_text_none", False, False)],
)
def test_text_fusion(ref, small, text_model, name, drop_all, with_text):
    arrays, _ = ref
    _, _, _, _, inputs = small
    model, params, text = text_model
    keep = jnp.zeros(inputs["context"].shape[:2] + (1,)) if drop_all else None
    out = denoise(model, params, inputs, keep=keep, text=text if with_text else None)
    assert_close(name, out, to_btc(arrays[name]))


def test_block_activations(ref, small):
    arrays, _ = ref
    model, _, _, params, inputs = small
    _, state = model.apply(
        {"params": {"unet": params}}, method=TimeCraftModel.denoise, mutable=["intermediates"], **inputs
    )
    sown = state["intermediates"]["unet"]
    reference_names = sorted(name[len("act/"):] for name in arrays if name.startswith("act/"))
    assert len(reference_names) == 10
    for ref_name in reference_names:
        flax_name = ref_name.replace(".", "_")
        assert flax_name in sown, f"activation {ref_name} was not sown"
        expected = arrays["act/" + ref_name]
        expected = expected if expected.ndim == 2 else to_btc(expected)
        assert_close(f"act/{ref_name}", sown[flax_name][0], expected)


def test_loss_and_gradients(ref, small):
    arrays, meta = ref
    model, config, seq_len, params, inputs = small
    target = jnp.asarray(to_btc(arrays["target"]))

    def loss_fn(unet_params):
        return jnp.mean(jnp.abs(target - denoise(model, unet_params, inputs)))

    loss, grads = jax.value_and_grad(loss_fn)(params)
    assert_close("loss_l1", loss, arrays["loss_l1"])

    torch_grads = {name[len("grad/"):]: g for name, g in arrays.items() if name.startswith("grad/")}
    # The null token is unused with keep=None, so the reference stores no gradient for it.
    assert "null_classes_emb" in meta["params_without_grad"]
    torch_grads["null_classes_emb"] = np.zeros_like(arrays["param/null_classes_emb"])
    expected = flatten_dict(convert_unet_state_dict(torch_grads, config, seq_len))
    actual = flatten_dict(grads)
    assert set(actual) == set(expected)

    largest = max(float(np.max(np.abs(g))) for g in expected.values())
    floor = NOISE_FLOOR * largest
    for path, g_ref in expected.items():
        name = "grad/" + "/".join(path)
        if float(np.max(np.abs(g_ref))) < floor:
            # A conv bias feeding a GroupNorm with one channel per group has an exactly
            # zero gradient; the reference stores float32 rounding noise there.
            assert float(np.max(np.abs(actual[path]))) < floor, f"{name}: expected a zero gradient"
        else:
            assert_close(name, actual[path], g_ref)

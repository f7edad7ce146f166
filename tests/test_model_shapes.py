"""Model construction, variable layout, shapes and conditioning behaviour on a tiny config."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from timecraft_jax.config_lib import base_config
from timecraft_jax.models import TimeCraftModel, build_model, init_variables

SEQ_LEN = 24
BATCH = 2


def tiny_config(**overrides):
    config = base_config().model
    config.model_channels = 32
    config.channel_mult = (1, 2)
    config.num_res_blocks = 1
    config.attention_resolutions = (2,)
    config.num_heads = 4
    config.context_dim = 16
    config.num_prototypes = 8
    for name, value in overrides.items():
        setattr(config, name, value)
    return config


def perturbed(variables, seed=1):
    """Add N(0, 0.05^2) noise to every parameter so zero-initialised output layers do not hide bugs."""
    leaves, treedef = jax.tree_util.tree_flatten(variables["params"])
    keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
    noisy = [leaf + 0.05 * jax.random.normal(key, leaf.shape) for leaf, key in zip(leaves, keys)]
    return dict(variables, params=jax.tree_util.tree_unflatten(treedef, noisy))


def build(seed=0, **overrides):
    config = tiny_config(**overrides)
    model = build_model(config, SEQ_LEN)
    variables = perturbed(init_variables(model, jax.random.PRNGKey(seed), batch_size=BATCH))
    return model, variables


def series(seed, channels=1, batch=BATCH):
    return jax.random.normal(jax.random.PRNGKey(seed), (batch, SEQ_LEN, channels))


def timesteps(batch=BATCH):
    return jnp.arange(batch, dtype=jnp.int32) * 37


def encode_and_denoise(model, variables, x_t, x_prompt, **kwargs):
    context, logits = model.apply(variables, x_prompt, method=TimeCraftModel.encode)
    t = timesteps(x_t.shape[0])
    return model.apply(variables, x_t, t, context, logits, method=TimeCraftModel.denoise, **kwargs)


@pytest.mark.parametrize("conditioner", ["prototype", "encoder", "none"])
def test_variable_collections(conditioner):
    model = build_model(tiny_config(conditioner=conditioner), SEQ_LEN)
    variables = init_variables(model, jax.random.PRNGKey(0))
    expected = {"prototype": {"params", "batch_stats", "constants"}, "encoder": {"params", "batch_stats"},
                "none": {"params"}}[conditioner]
    assert set(variables) == expected
    expected_params = {"unet"} if conditioner == "none" else {"unet", "conditioner"}
    assert set(variables["params"]) == expected_params
    if conditioner == "prototype":
        assert variables["constants"]["conditioner"]["prototypes"].shape == (8, 16)
        assert "prototypes" not in variables["params"]["conditioner"]
    assert ("null_classes_emb" in variables["params"]["unet"]) == (conditioner != "none")
    assert model.num_tokens == {"prototype": 8, "encoder": 1, "none": 0}[conditioner]


def test_initial_output_is_zero():
    model = build_model(tiny_config(), SEQ_LEN)
    variables = init_variables(model, jax.random.PRNGKey(0), batch_size=BATCH)
    eps_hat = model.apply(variables, series(1), timesteps(), series(2))
    np.testing.assert_array_equal(np.asarray(eps_hat), 0.0)


def test_multichannel_labels_forward():
    model, variables = build(in_channels=3, num_classes=2)
    x_t, x_prompt = series(1, channels=3), series(2, channels=3)
    keep = jnp.array([[[1.0]] * 8, [[0.0]] * 4 + [[1.0]] * 4])
    outputs = [
        model.apply(variables, x_t, timesteps(), x_prompt, keep=keep, y=jnp.array([label, label]))
        for label in (0, 1)
    ]
    for eps_hat in outputs:
        assert eps_hat.shape == (BATCH, SEQ_LEN, 3)
        assert eps_hat.dtype == jnp.float32
        assert bool(jnp.all(jnp.isfinite(eps_hat)))
    assert float(jnp.max(jnp.abs(outputs[0] - outputs[1]))) > 1e-4


def test_encoder_conditioner():
    model, variables = build(conditioner="encoder")
    context, logits = model.apply(variables, series(2), method=TimeCraftModel.encode)
    assert context.shape == (BATCH, 1, 16)
    assert logits is None
    eps_hat = encode_and_denoise(model, variables, series(1), series(2))
    assert eps_hat.shape == (BATCH, SEQ_LEN, 1)
    assert bool(jnp.all(jnp.isfinite(eps_hat)))
    other = encode_and_denoise(model, variables, series(1), series(3))
    assert float(jnp.max(jnp.abs(eps_hat - other))) > 1e-5


def test_unconditional_model():
    model, variables = build(conditioner="none")
    assert model.apply(variables, None, method=TimeCraftModel.encode) == (None, None)
    eps_hat = model.apply(variables, series(1), timesteps(), None)
    assert eps_hat.shape == (BATCH, SEQ_LEN, 1)
    assert bool(jnp.all(jnp.isfinite(eps_hat)))
    guided = model.apply(variables, series(1), timesteps(), None, None, guidance_scale=3.0,
                         method=TimeCraftModel.denoise_with_cfg)
    np.testing.assert_allclose(np.asarray(guided), np.asarray(eps_hat), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("seq_len", [20, 4, 0])
def test_bad_seq_len_raises(seq_len):
    with pytest.raises(ValueError, match=f"seq_len {seq_len} "):
        build_model(tiny_config(), seq_len)


@pytest.mark.parametrize("field, value", [("conditioner", "clip"), ("all_masked", "drop"),
                                          ("text_fusion", "concat"), ("dtype", "float16"), ("model_channels", 48)])
def test_bad_config_raises(field, value):
    with pytest.raises(ValueError, match=str(value)):
        build_model(tiny_config(**{field: value}), SEQ_LEN)


@pytest.mark.parametrize("text_dim", [8, 40])
@pytest.mark.parametrize("fusion", ["add", "gated_add"])
def test_text_fusion(text_dim, fusion):
    model, variables = build(text_dim=text_dim, text_fusion=fusion)
    fusion_params = variables["params"]["unet"]["conditioning_mlp"]
    assert fusion_params["text_mlp_0"]["kernel"].shape == (text_dim, 16)
    assert ("gate_layer_0" in fusion_params) == (fusion == "gated_add")
    text = jax.random.normal(jax.random.PRNGKey(5), (BATCH, text_dim))
    with_text = encode_and_denoise(model, variables, series(1), series(2), text=text)
    without_text = encode_and_denoise(model, variables, series(1), series(2))
    assert with_text.shape == (BATCH, SEQ_LEN, 1)
    assert bool(jnp.all(jnp.isfinite(with_text)))
    assert float(jnp.max(jnp.abs(with_text - without_text))) > 1e-5
    with pytest.raises(ValueError, match=f"expected \\({BATCH}, {text_dim}\\)"):
        encode_and_denoise(model, variables, series(1), series(2), text=text[:, :-1])
    with pytest.raises(ValueError, match="needs a context"):
        model.apply(variables, series(1), timesteps(), None, None, text=text, method=TimeCraftModel.denoise)


def test_bfloat16_close_to_float32():
    model32, variables = build()
    model16 = build_model(tiny_config(dtype="bfloat16"), SEQ_LEN)
    eps32 = model32.apply(variables, series(1), timesteps(), series(2))
    eps16 = model16.apply(variables, series(1), timesteps(), series(2))
    assert eps16.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(eps16)))
    rel = float(jnp.max(jnp.abs(eps16 - eps32)) / jnp.max(jnp.abs(eps32)))
    assert 0.0 < rel < 5e-2, f"bfloat16 deviates from float32 by {rel:.3e} of max|eps|"


def test_guidance_matches_two_passes():
    model, variables = build()
    x_t = series(1)
    context, logits = model.apply(variables, series(2), method=TimeCraftModel.encode)

    def denoise(keep):
        return model.apply(variables, x_t, timesteps(), context, logits, keep=keep, method=TimeCraftModel.denoise)

    def guided(scale):
        return model.apply(variables, x_t, timesteps(), context, logits, guidance_scale=scale,
                           method=TimeCraftModel.denoise_with_cfg)

    eps_cond = denoise(None)
    eps_null = denoise(jnp.zeros(context.shape[:2] + (1,)))
    np.testing.assert_allclose(np.asarray(guided(1.0)), np.asarray(eps_cond), rtol=0, atol=0)
    expected = eps_null + 2.5 * (eps_cond - eps_null)
    np.testing.assert_allclose(np.asarray(guided(2.5)), np.asarray(expected), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(denoise(jnp.ones(context.shape[:2] + (1,)))), np.asarray(eps_cond),
                               rtol=1e-6, atol=1e-6)


def test_all_masked_row_null_mode():
    model_null, variables = build(all_masked="null")
    model_uniform = build_model(tiny_config(), SEQ_LEN)
    x_t = series(1)
    context, logits = model_null.apply(variables, series(2), method=TimeCraftModel.encode)
    logits = logits.at[0].set(-jnp.abs(logits[0]) - 0.1)  # row 0 fully masked
    logits = logits.at[1].set(jnp.abs(logits[1]) + 0.1)

    def denoise(model, **kwargs):
        args = dict(context=context, logits=logits)
        args.update(kwargs)
        return model.apply(variables, x_t, timesteps(), method=TimeCraftModel.denoise, **args)

    eps_null_mode = denoise(model_null)
    # Attending only to null tokens without a bias yields the null token's value.
    eps_null_tokens = denoise(model_null, keep=jnp.zeros(context.shape[:2] + (1,)), logits=None)
    np.testing.assert_allclose(np.asarray(eps_null_mode[0]), np.asarray(eps_null_tokens[0]), rtol=1e-5, atol=1e-5)
    eps_uniform_mode = denoise(model_uniform)
    np.testing.assert_allclose(np.asarray(eps_null_mode[1]), np.asarray(eps_uniform_mode[1]), rtol=1e-6, atol=1e-6)
    assert float(jnp.max(jnp.abs(eps_null_mode[0] - eps_uniform_mode[0]))) > 1e-5


def test_train_mode_updates_batch_stats():
    model, variables = build()
    x_prompt = series(2, batch=4)
    (_, logits_train), state = model.apply(variables, x_prompt, train=True, method=TimeCraftModel.encode,
                                           mutable=["batch_stats"])
    stem_stats = state["batch_stats"]["conditioner"]["share_encoder_1"]
    old_stats = variables["batch_stats"]["conditioner"]["share_encoder_1"]
    assert float(jnp.max(jnp.abs(stem_stats["mean"] - old_stats["mean"]))) > 0.0
    _, logits_eval = model.apply(variables, x_prompt, method=TimeCraftModel.encode)
    assert float(jnp.max(jnp.abs(logits_train - logits_eval))) > 1e-5
    eps_hat, _ = model.apply(variables, series(1, batch=4), timesteps(4), x_prompt, train=True,
                             mutable=["batch_stats"])
    assert eps_hat.shape == (4, SEQ_LEN, 1)


@pytest.mark.parametrize("bad", ["context_width", "x_t_length", "keep_shape", "labels_without_classes"])
def test_bad_denoise_inputs_raise(bad):
    model, variables = build()
    x_t = series(1)
    context, logits = model.apply(variables, series(2), method=TimeCraftModel.encode)
    kwargs = dict(context=context, logits=logits)
    if bad == "context_width":
        kwargs.update(context=jnp.zeros((BATCH, 8, 17)), logits=None)
    elif bad == "x_t_length":
        x_t = series(1)[:, :16]
    elif bad == "keep_shape":
        kwargs.update(keep=jnp.ones((BATCH, 8)))
    else:
        kwargs.update(y=jnp.zeros((BATCH,), jnp.int32))
    with pytest.raises(ValueError):
        model.apply(variables, x_t, timesteps(), method=TimeCraftModel.denoise, **kwargs)

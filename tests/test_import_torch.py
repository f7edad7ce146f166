"""Weight importer: name mapping, error reporting, Lightning prefixes, EMA and file formats."""

import json

import numpy as np
import pytest
from flax.traverse_util import flatten_dict

from timecraft_jax import import_torch
from timecraft_jax.config_lib import base_config
from timecraft_jax.import_torch import (
    convert_conditioner_state_dict,
    convert_state_dict,
    convert_unet_state_dict,
    flax_to_torch_name,
    load_state_dict,
    torch_module_to_flax,
)

SEQ_LEN = 24


def small_model_config():
    """The config of `unet_small.npz`, whose conditioner widths match `prototyper.npz`."""
    config = base_config().model
    config.model_channels = 32
    config.channel_mult = (1, 2)
    config.num_res_blocks = 1
    config.attention_resolutions = (1, 2)
    config.num_heads = 4
    config.context_dim = 16
    config.num_prototypes = 16
    return config


@pytest.fixture(scope="module")
def state_dicts(parity_dir):
    def params(file):
        with np.load(parity_dir / file) as data:
            return {name[len("param/"):]: data[name] for name in data.files if name.startswith("param/")}

    return params("unet_small.npz"), params("prototyper.npz")


def assert_trees_equal(actual, expected):
    flat_actual, flat_expected = flatten_dict(actual), flatten_dict(expected)
    assert set(flat_actual) == set(flat_expected)
    for path, value in flat_expected.items():
        np.testing.assert_array_equal(np.asarray(flat_actual[path]), np.asarray(value), err_msg="/".join(path))


def test_name_mapping_round_trip():
    assert torch_module_to_flax("input_blocks.1.1.transformer_blocks.0.ff.net.0.proj") == (
        "input_blocks_1_1", "transformer_blocks_0", "ff", "net_0", "proj")
    assert flax_to_torch_name(("input_blocks_1_1", "transformer_blocks_0", "attn2", "to_out_0", "kernel")) == (
        "input_blocks.1.1.transformer_blocks.0.attn2.to_out.0.weight")
    assert flax_to_torch_name(("share_encoder_1", "var")) == "share_encoder.1.running_var"


def test_layouts_are_transposed(state_dicts):
    unet_sd, _ = state_dicts
    params = convert_unet_state_dict(unet_sd, small_model_config(), SEQ_LEN)
    conv = unet_sd["input_blocks.3.0.in_layers.2.weight"]  # (out, in, k)
    np.testing.assert_array_equal(params["input_blocks_3_0"]["in_layers_2"]["kernel"], conv.transpose(2, 1, 0))
    dense = unet_sd["time_embed.0.weight"]  # (out, in)
    np.testing.assert_array_equal(params["time_embed_0"]["kernel"], dense.T)
    norm = unet_sd["middle_block.1.norm.weight"]
    np.testing.assert_array_equal(params["middle_block_1"]["norm"]["scale"], norm)
    assert "cond_emb_layers" not in params["input_blocks_1_0"]


def test_unknown_and_missing_keys_listed(state_dicts):
    unet_sd, _ = state_dicts
    sd = dict(unet_sd)
    sd["input_blocks.1.0.extra_layer.weight"] = np.zeros(3, np.float32)
    del sd["out.2.bias"]
    with pytest.raises(ValueError) as info:
        convert_unet_state_dict(sd, small_model_config(), SEQ_LEN)
    message = str(info.value)
    assert "input_blocks.1.0.extra_layer.weight" in message
    assert "out.2.bias" in message


def test_shape_mismatch_named(state_dicts):
    unet_sd, _ = state_dicts
    sd = dict(unet_sd)
    sd["time_embed.2.bias"] = np.zeros(7, np.float32)
    with pytest.raises(ValueError, match=r"time_embed\.2\.bias.*got \(7,\), expected \(128,\)"):
        convert_unet_state_dict(sd, small_model_config(), SEQ_LEN)


def test_conditioner_conversion(state_dicts):
    _, cond_sd = state_dicts
    params, batch_stats, constants = convert_conditioner_state_dict(cond_sd, small_model_config(), SEQ_LEN)
    np.testing.assert_array_equal(constants["prototypes"], cond_sd["latents"])
    running_var = cond_sd["mask_ffn.0.convs.2.running_var"]
    np.testing.assert_array_equal(batch_stats["mask_ffn_0"]["convs_2"]["var"], running_var)
    np.testing.assert_array_equal(params["mask_ffn_2"]["kernel"], cond_sd["mask_ffn.2.weight"].T)
    assert "latents" not in params


def lightning_state_dict(unet_sd, cond_sd, ema_offset=1.0):
    sd = {"model.diffusion_model." + name: value for name, value in unet_sd.items()}
    sd.update({"cond_stage_model." + name: value for name, value in cond_sd.items()})
    sd.update({"model_ema.diffusion_model" + name.replace(".", ""): value + ema_offset
               for name, value in unet_sd.items()})
    sd["model_ema.num_updates"] = np.array(10, np.int32)
    sd["model_ema.decay"] = np.array(0.9999, np.float32)
    for name in ("betas", "alphas_cumprod", "sqrt_recipm1_alphas_cumprod", "shift_coef", "ddim_coef", "logvar"):
        sd[name] = np.zeros(200, np.float32)
    return sd


def test_lightning_round_trip(state_dicts):
    unet_sd, cond_sd = state_dicts
    config = small_model_config()
    variables = convert_state_dict(lightning_state_dict(unet_sd, cond_sd), config, SEQ_LEN)
    params, batch_stats, constants = convert_conditioner_state_dict(cond_sd, config, SEQ_LEN)
    assert set(variables) == {"params", "batch_stats", "constants"}
    assert_trees_equal(variables["params"]["unet"], convert_unet_state_dict(unet_sd, config, SEQ_LEN))
    assert_trees_equal(variables["params"]["conditioner"], params)
    assert_trees_equal(variables["batch_stats"]["conditioner"], batch_stats)
    assert_trees_equal(variables["constants"]["conditioner"], constants)


def test_lightning_ema_weights(state_dicts):
    unet_sd, cond_sd = state_dicts
    config = small_model_config()
    variables = convert_state_dict(lightning_state_dict(unet_sd, cond_sd), config, SEQ_LEN, use_ema=True)
    ema_sd = {name: value + 1.0 for name, value in unet_sd.items()}
    assert_trees_equal(variables["params"]["unet"], convert_unet_state_dict(ema_sd, config, SEQ_LEN))
    # The reference has no EMA of the conditioner, so it keeps the raw weights.
    params, _, _ = convert_conditioner_state_dict(cond_sd, config, SEQ_LEN)
    assert_trees_equal(variables["params"]["conditioner"], params)


def test_lightning_unknown_and_missing_ema_keys(state_dicts):
    unet_sd, cond_sd = state_dicts
    sd = lightning_state_dict(unet_sd, cond_sd)
    sd["first_stage_model.encoder.weight"] = np.zeros(1, np.float32)
    with pytest.raises(ValueError, match="first_stage_model.encoder.weight"):
        convert_state_dict(sd, small_model_config(), SEQ_LEN)
    sd = lightning_state_dict(unet_sd, cond_sd)
    del sd["model_ema.diffusion_modelout2bias"]
    with pytest.raises(ValueError, match="model_ema.diffusion_modelout2bias"):
        convert_state_dict(sd, small_model_config(), SEQ_LEN, use_ema=True)


@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
def test_load_state_dict_formats(tmp_path, state_dicts, suffix):
    unet_sd, _ = state_dicts
    path = tmp_path / f"weights{suffix}"
    if suffix == ".npz":
        np.savez(path, **unet_sd)
    else:
        from safetensors.numpy import save_file

        save_file({name: np.ascontiguousarray(value) for name, value in unet_sd.items()}, str(path))
    loaded = load_state_dict(path)
    assert set(loaded) == set(unet_sd)
    for name, value in unet_sd.items():
        np.testing.assert_array_equal(loaded[name], value, err_msg=name)


def test_load_state_dict_rejects_unknown_format(tmp_path):
    path = tmp_path / "weights.bin"
    path.write_bytes(b"\0")
    with pytest.raises(ValueError, match=r"\.bin"):
        load_state_dict(path)


def test_ckpt_without_torch_explains(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def import_without_torch(name, *args, **kwargs):
        if name == "torch":
            raise ImportError("No module named 'torch'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", import_without_torch)
    path = tmp_path / "last.ckpt"
    path.write_bytes(b"\0")
    with pytest.raises(ImportError, match="pip install torch"):
        load_state_dict(path)


def test_cli_writes_checkpoint(tmp_path, state_dicts):
    from timecraft_jax import checkpointing

    unet_sd, cond_sd = state_dicts
    weights = tmp_path / "weights.npz"
    np.savez(weights, **lightning_state_dict(unet_sd, cond_sd))
    config_file = tmp_path / "small.py"
    overrides = {"model_channels": 32, "channel_mult": (1, 2), "num_res_blocks": 1, "attention_resolutions": (1, 2),
                 "num_heads": 4, "context_dim": 16, "num_prototypes": 16}
    config_file.write_text(
        "from timecraft_jax.config_lib import base_config\n\n"
        "def get_config():\n"
        "    config = base_config()\n"
        f"    config.data.seq_len = {SEQ_LEN}\n"
        f"    config.model.update({json.dumps(overrides)})\n"
        "    config.model.channel_mult = tuple(config.model.channel_mult)\n"
        "    config.model.attention_resolutions = tuple(config.model.attention_resolutions)\n"
        "    return config\n"
    )
    out_dir = tmp_path / "imported"
    import_torch.main(["--checkpoint", str(weights), "--config", str(config_file), "--out", str(out_dir), "--use_ema"])

    restored = checkpointing.load_checkpoint(out_dir, "latest")
    expected = convert_unet_state_dict({k: v + 1.0 for k, v in unet_sd.items()}, small_model_config(), SEQ_LEN)
    assert_trees_equal(restored.state["params"]["unet"], expected)
    np.testing.assert_array_equal(np.asarray(restored.state["constants"]["conditioner"]["prototypes"]),
                                  cond_sd["latents"])


def test_encoder_conditioner_names(parity_dir):
    """Every tensor of the reference's single-token encoder maps onto the 'encoder' conditioner."""
    reference = json.loads((parity_dir / "unet_timedp_shapes.json").read_text())["configs"]["mimic_icustay_base"]
    cond_params = reference["cond_stage_params"]
    config = small_model_config()
    config.conditioner = "encoder"
    config.in_channels = cond_params["num_channels"]
    config.context_dim = cond_params["latent_dim"]
    rng = np.random.default_rng(0)
    sd = {entry["name"]: rng.standard_normal(entry["shape"]).astype(np.float32)
          for entry in reference["cond_stage_state_dict"]}
    params, batch_stats, constants = convert_conditioner_state_dict(sd, config, cond_params["window"])
    assert constants == {}
    np.testing.assert_array_equal(params["out_encoder_5"]["kernel"], sd["out_encoder.5.weight"].T)
    np.testing.assert_array_equal(params["in_encoder_0"]["kernel"], sd["in_encoder.0.weight"].transpose(2, 1, 0))
    np.testing.assert_array_equal(batch_stats["out_encoder_1"]["mean"], sd["out_encoder.1.running_mean"])

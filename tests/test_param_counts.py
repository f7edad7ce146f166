"""Parameter counts of the paper-sized models against the PyTorch reference's counts."""

import json
from pathlib import Path

import jax
import pytest

from timecraft_jax.import_torch import load_config
from timecraft_jax.models import build_model, init_variables
from timecraft_jax.models.timecraft import TimeCraftModel

REPO_ROOT = Path(__file__).resolve().parents[1]
# Elements of the three BatchNorm `num_batches_tracked` counters, which have no counterpart here.
NUM_BATCHES_TRACKED_ELEMENTS = 3


def count(tree) -> int:
    return sum(int(leaf.size) for leaf in jax.tree_util.tree_leaves(tree))


def variable_shapes(model: TimeCraftModel):
    return jax.eval_shape(lambda rng: init_variables(model, rng), jax.random.PRNGKey(0))


@pytest.fixture(scope="module")
def shapes_json(parity_dir):
    return json.loads((parity_dir / "unet_timedp_shapes.json").read_text())["configs"]


def test_timedp_counts(shapes_json):
    reference = shapes_json["timedp_multi_domain"]
    config = load_config(REPO_ROOT / "configs" / "timedp.py")
    assert config.data.seq_len == reference["unet_params"]["seq_len"]
    assert config.model.num_prototypes == reference["cond_stage_params"]["num_latents"]
    assert config.model.context_dim == reference["unet_params"]["context_dim"]
    shapes = variable_shapes(build_model(config.model, config.data.seq_len))

    unet = reference["unet_counts"]
    assert count(shapes["params"]["unet"]) == unet["params_total"] - unet["params_in_cond_emb_layers_unused"]

    cond = reference["cond_stage_counts"]
    assert count(shapes["params"]["conditioner"]) == cond["params_requires_grad"]
    assert count(shapes["constants"]["conditioner"]) == cond["params_total"] - cond["params_requires_grad"]
    assert count(shapes["params"]["conditioner"]) + count(shapes["constants"]) == cond["params_total"]
    assert count(shapes["batch_stats"]) == cond["buffer_elements"] - NUM_BATCHES_TRACKED_ELEMENTS


@pytest.mark.parametrize("name", ["text_control", "mimic_icustay_base"])
def test_other_unet_counts(shapes_json, name):
    reference = shapes_json[name]
    unet_params = reference["unet_params"]
    config = load_config(REPO_ROOT / "configs" / "timedp.py").model
    config.in_channels = unet_params["in_channels"]
    config.context_dim = unet_params["context_dim"]
    config.num_classes = unet_params.get("num_classes") or 0
    config.conditioner = "prototype" if "Prototyper" in reference["cond_stage_target"] else "encoder"
    shapes = variable_shapes(build_model(config, unet_params["seq_len"]))
    unet = reference["unet_counts"]
    # The reference's null token is repre_emb_channels wide (the 32-d prototypes, which it
    # reshapes pairwise into 64-d tokens); here tokens and the null token are context_dim wide.
    null_width = unet_params["repre_emb_channels"]
    assert null_width != unet_params["context_dim"]
    expected = unet["params_total"] - unet["params_in_cond_emb_layers_unused"] - null_width + config.context_dim
    assert count(shapes["params"]["unet"]) == expected

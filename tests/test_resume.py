"""A training run interrupted and resumed ends with the same parameters as one never stopped."""

import jax
import numpy as np

from conftest import REPO_ROOT
from timecraft_jax.config_lib import load_config_file
from timecraft_jax.training import ConfigMismatchError, train

import pytest


def _config(data_root):
    config = load_config_file(REPO_ROOT / "configs" / "tiny.py")
    config.data.data_root = str(data_root)
    config.data.domains = ["exchange", "taxi"]
    config.training.num_steps = 5
    config.training.checkpoint_every = 2
    config.training.eval_every = 2
    return config


def test_resumed_run_matches_uninterrupted(tmp_path):
    data_root = tmp_path / "data"
    straight = train(_config(data_root), tmp_path / "straight")

    interrupted_dir = tmp_path / "interrupted"
    partial = train(_config(data_root), interrupted_dir, stop_at_step=3)
    assert int(partial.step) == 3
    resumed = train(_config(data_root), interrupted_dir)
    assert int(resumed.step) == 5

    for name in ("params", "ema_params", "batch_stats", "opt_state"):
        expected = jax.tree_util.tree_leaves(getattr(straight, name))
        actual = jax.tree_util.tree_leaves(getattr(resumed, name))
        assert len(expected) == len(actual), name
        for e, a in zip(expected, actual):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(e), err_msg=name)


def test_resume_rejects_changed_model_config(tmp_path):
    config = _config(tmp_path / "data")
    config.training.num_steps = 2
    train(config, tmp_path / "run")
    changed = _config(tmp_path / "data")
    changed.model.model_channels = 64
    with pytest.raises(ConfigMismatchError, match="model_channels"):
        train(changed, tmp_path / "run")

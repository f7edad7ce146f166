"""Training on a mesh of two simulated CPU devices matches one device."""

import json
import os
import subprocess
import sys

import numpy as np

from conftest import REPO_ROOT

SCRIPT = """
import json, sys
import jax, numpy as np
from timecraft_jax.config_lib import load_config_file
from timecraft_jax.training import train

config = load_config_file(sys.argv[1])
config.data.data_root = sys.argv[2]
config.data.domains = ("exchange", "taxi")
config.training.num_steps = 3
config.data.batch_size = int(sys.argv[4])
try:
    state = train(config, sys.argv[3])
except ValueError as error:
    print(json.dumps({"error": str(error)}))
    sys.exit(0)
leaves = [np.asarray(x).ravel() for x in jax.tree_util.tree_leaves(state.params)]
print(json.dumps({"devices": jax.device_count(), "params": np.concatenate(leaves)[:5000].tolist()}))
"""


def run_training(tmp_path, name, devices, batch_size=8):
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu")
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(REPO_ROOT / "configs" / "tiny.py"), str(tmp_path / "data"),
         str(tmp_path / name), str(batch_size)],
        capture_output=True, text=True, env=env, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_two_devices_match_one_device(tmp_path):
    one = run_training(tmp_path, "one", devices=1)
    two = run_training(tmp_path, "two", devices=2)
    assert one["devices"] == 1
    assert two["devices"] == 2
    # Same batches and keys; only the order of the cross-device gradient sum differs.
    np.testing.assert_allclose(two["params"], one["params"], rtol=1e-4, atol=1e-6)


def test_batch_not_divisible_by_devices(tmp_path):
    result = run_training(tmp_path, "odd", devices=2, batch_size=7)
    assert "batch_size=7" in result["error"]
    assert "multiple" in result["error"]

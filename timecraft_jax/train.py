"""Train a TimeCraft model.

  python -m timecraft_jax.train --config configs/quickstart.py --workdir runs/quickstart \
      --config.training.num_steps=500

Overrides use `--config.SECTION.KEY=VALUE`; a misspelt key is an error. Running
again with the same workdir resumes from its latest checkpoint.
"""

import logging
import sys

from absl import app, flags
from ml_collections import config_flags

from timecraft_jax.checkpointing import CheckpointError
from timecraft_jax.data import DataError
from timecraft_jax.logging_utils import setup_logging
from timecraft_jax.training import ConfigMismatchError, TrainingDivergedError, train

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a config file in configs/.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Folder for checkpoints, metrics and logs; reused to resume.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    setup_logging(_WORKDIR.value)
    try:
        train(_CONFIG.value, _WORKDIR.value)
    except (DataError, CheckpointError, ConfigMismatchError, TrainingDivergedError, ValueError) as error:
        logging.error("%s", error)
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    app.run(main)

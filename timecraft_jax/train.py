"""Train a TimeCraft model.

  python -m timecraft_jax.train --config configs/quickstart.py --workdir runs/quickstart \
      --config.training.num_steps=500

Overrides use `--config.SECTION.KEY=VALUE`; a misspelt key is an error. Running
again with the same workdir resumes from its latest checkpoint.
"""

import ast
import logging
import sys
from pathlib import Path

from absl import app, flags
from ml_collections import config_flags

from timecraft_jax import xla_options
from timecraft_jax.checkpointing import CheckpointError
from timecraft_jax.data import DataError
from timecraft_jax.logging_utils import setup_logging
from timecraft_jax.training import ConfigMismatchError, TrainingDivergedError, train

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a config file in configs/.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Folder for checkpoints, metrics and logs; reused to resume.")
flags.mark_flags_as_required(["config", "workdir"])


def _config_path(argv: list[str]) -> str | None:
    for index, arg in enumerate(argv):
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
        if arg == "--config" and index + 1 < len(argv):
            return argv[index + 1]
    return None


def parse_flags(argv):
    """Parse flags; a missing config file or a misspelt override exits 2 with one line, not a traceback."""
    path = _config_path(argv)
    if path is not None and not Path(path).is_file():
        print(f"error: config file {path} not found; pick one of the files in configs/", file=sys.stderr)
        sys.exit(2)
    try:
        return flags.FLAGS(argv)
    except (flags.Error, AttributeError, KeyError, OSError, ValueError, TypeError) as error:
        message = str(error)
        if len(message) > 1 and message[0] == message[-1] == "'":
            message = ast.literal_eval(message)  # KeyError text arrives quoted.
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    setup_logging(_WORKDIR.value)
    xla_options.keep_host_memory()
    try:
        train(_CONFIG.value, _WORKDIR.value)
    except (DataError, CheckpointError, ConfigMismatchError, TrainingDivergedError, ValueError) as error:
        logging.error("%s", error)
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    xla_options.relaunch_with_huge_pages()
    app.run(main, flags_parser=parse_flags)

"""Logging set-up shared by the command-line entry points."""

import logging
import sys
from pathlib import Path


def setup_logging(workdir: str | Path | None = None, level: int = logging.INFO) -> None:
    """Log to stderr and, when `workdir` is given, to `workdir/log.txt`."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if workdir is not None:
        Path(workdir).mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(Path(workdir) / "log.txt", encoding="utf-8"))
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    for handler in handlers:
        handler.setFormatter(formatter)
        root.addHandler(handler)
    root.setLevel(level)
    for noisy in ("absl", "jax._src", "orbax", "tensorboardX"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

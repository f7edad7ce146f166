"""Shared pytest fixtures."""

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
PARITY_DIR = REPO_ROOT.parent / "shared" / "parity"


@pytest.fixture(scope="session")
def parity_dir() -> Path:
    """Folder of reference arrays computed by the PyTorch implementation."""
    if not PARITY_DIR.is_dir():
        pytest.skip(f"parity arrays not found at {PARITY_DIR}; they sit in shared/parity next to the repository")
    return PARITY_DIR


def run_module(module: str, *args: str, cwd: Path | None = None, timeout: int = 900):
    """Run `python -m module args...` in a new process and return the CompletedProcess."""
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                          cwd=cwd or REPO_ROOT, timeout=timeout)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A workdir trained with configs/tiny.py on bundled real data (shared by the CLI tests).

    Returns (workdir, data_root, config).
    """
    from timecraft_jax.config_lib import load_config_file
    from timecraft_jax.training import train

    root = tmp_path_factory.mktemp("tiny_run")
    config = load_config_file(REPO_ROOT / "configs" / "tiny.py")
    config.data.data_root = str(root / "data")
    train(config, root / "workdir")
    return root / "workdir", root / "data", config

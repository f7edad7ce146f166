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

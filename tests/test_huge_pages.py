"""The relaunch that lets glibc's malloc request transparent huge pages (timecraft_jax.xla_options)."""

import platform
import subprocess
import sys

import pytest

from timecraft_jax import xla_options

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the tunable is glibc's")


@pytest.fixture
def thp_file(tmp_path, monkeypatch):
    """Point the module at a fake kernel setting file. A test may write another mode into it."""
    path = tmp_path / "enabled"
    path.write_text("always [madvise] never\n")
    monkeypatch.setattr(xla_options, "_THP_ENABLED_FILE", path)
    monkeypatch.setattr(xla_options, "_cpu_only_host", lambda: True)
    return path


def test_environment_adds_tunable_keeps_others(thp_file):
    original = {"PATH": "/bin"}
    assert xla_options.huge_page_environment(original) == {"PATH": "/bin", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}
    assert original == {"PATH": "/bin"}

    original = {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}
    updated = xla_options.huge_page_environment(original)
    assert updated["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
    assert original == {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}


@pytest.mark.parametrize("mode_text", ["[always] madvise never\n", "always madvise [never]\n", "garbled\n", None])
def test_environment_needs_madvise_mode(thp_file, mode_text):
    if mode_text is None:
        thp_file.unlink()
    else:
        thp_file.write_text(mode_text)
    assert xla_options.huge_page_environment({}) is None


@pytest.mark.parametrize("environ", [
    {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"},  # Set by the user: kept.
    {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2: glibc.malloc.hugetlb=2"},
    {"TIMECRAFT_MALLOC_DEFAULTS": "1"},
])
def test_environment_keeps_user_choice(thp_file, environ):
    assert xla_options.huge_page_environment(environ) is None


def test_environment_none_off_cpu(thp_file, monkeypatch):
    monkeypatch.setattr(xla_options, "_cpu_only_host", lambda: False)
    assert xla_options.huge_page_environment({}) is None


@pytest.mark.parametrize("tunables,expected", [
    (None, False),
    ("glibc.malloc.hugetlb=1", True),
    ("glibc.malloc.arena_max=1:glibc.malloc.hugetlb=2", True),
    ("glibc.malloc.hugetlb=0", False),
    ("glibc.malloc.arena_max=1", False),
])
def test_huge_pages_requested(monkeypatch, tunables, expected):
    if tunables is None:
        monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    else:
        monkeypatch.setenv("GLIBC_TUNABLES", tunables)
    assert xla_options.huge_pages_requested() is expected


RELAUNCH_PROBE = """
import os, sys
from pathlib import Path
from timecraft_jax import xla_options
xla_options._THP_ENABLED_FILE = Path(sys.argv[1])
print("start", os.environ.get("GLIBC_TUNABLES", "-"), flush=True)
xla_options.relaunch_with_huge_pages()
print("after", os.environ.get("GLIBC_TUNABLES", "-"), sys.argv[2:], xla_options.huge_pages_requested())
"""


@pytest.mark.parametrize("opt_out", ["0", "1"])
def test_relaunch_reruns_same_command(tmp_path, monkeypatch, opt_out):
    thp = tmp_path / "enabled"
    thp.write_text("always [madvise] never\n")
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.setenv("TIMECRAFT_MALLOC_DEFAULTS", opt_out)
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    out = subprocess.run([sys.executable, "-c", RELAUNCH_PROBE, str(thp), "an argument"],
                         capture_output=True, text=True, check=True)
    lines = out.stdout.splitlines()
    if opt_out == "1":
        assert lines == ["start -", "after - ['an argument'] False"]
    else:
        assert lines == ["start -", "start glibc.malloc.hugetlb=1",
                         "after glibc.malloc.hugetlb=1 ['an argument'] True"]

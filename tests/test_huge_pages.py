"""The relaunch that lets glibc's malloc request transparent huge pages (timecraft_jax.xla_options)."""

import platform
import subprocess
import sys

import pytest

from timecraft_jax import xla_options

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the tunable is glibc's")


@pytest.fixture
def thp_file(tmp_path, monkeypatch):
    """Point the module at a fake kernel setting; the test writes the mode into the returned file."""
    path = tmp_path / "enabled"
    path.write_text("always [madvise] never\n")
    monkeypatch.setattr(xla_options, "_THP_ENABLED_FILE", path)
    monkeypatch.setattr(xla_options, "_cpu_only_host", lambda: True)
    return path


def test_the_tunable_is_added_and_other_tunables_are_kept(thp_file):
    given = {"PATH": "/bin"}
    assert xla_options.huge_page_environment(given) == {"PATH": "/bin", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}
    assert given == {"PATH": "/bin"}
    given = {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}
    updated = xla_options.huge_page_environment(given)
    assert updated["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
    assert given == {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}


@pytest.mark.parametrize("mode_text", ["[always] madvise never\n", "always madvise [never]\n", "garbled\n", None])
def test_no_relaunch_unless_the_kernel_wants_madvise(thp_file, mode_text):
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
def test_no_relaunch_when_the_user_decided(thp_file, environ):
    assert xla_options.huge_page_environment(environ) is None


def test_no_relaunch_off_the_cpu(thp_file, monkeypatch):
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
def test_relaunch_runs_the_same_command_again(tmp_path, monkeypatch, opt_out):
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

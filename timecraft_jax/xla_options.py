"""XLA compiler options that timecraft_jax passes to the functions it compiles.

On XLA:CPU (jax 0.10.2), the default YNNPACK library fusions also take over
elementwise ops and reductions. For the TimeDP UNet on a 2-core x86-64 CPU that
made the forward about 30 % and the train step about 10 % slower than handing
YNNPACK the dot products alone (`benchmarks/bench_core.py`, see
docs/benchmarks.md). `compiler_options()` therefore requests dot-only YNNPACK
fusions on the CPU backend. It first checks once, option by option, that this
XLA build accepts them. It leaves out any option the build rejects, and XLA
keeps its default for that setting.

The options also turn off XLA's `tree_reduction_rewriter` pass. On the CPU it
splits every reduction over more than 32 elements into a windowed reduction
plus a short one. In the TimeDP train step these were about 880 separate,
slow `reduce-window` kernels. The costliest were the row maxima and sums of
the attention softmax. Without the pass the reductions fuse with their neighbours. At
L = 96 on a 2-core AMD EPYC (Zen 4) the train step then took 0.91 of the time
(L = 24: 0.95), but at L = 168 it took 1.02 to 1.04 of it (alternating both
settings in one process, docs/benchmarks.md). The reductions then add in
float32 in one pass instead of in a tree. The parity tests still agree with
the reference to 1e-4.

Set the environment variable TIMECRAFT_XLA_DEFAULTS=1 to keep XLA's defaults.

`keep_host_memory()` deals with a second CPU cost. XLA:CPU allocates each
call's scratch buffer (about 1.5 GB for the TimeDP train step at L = 96) with
`posix_memalign` from a worker thread. glibc serves that from a fresh `mmap`
and unmaps it on free, so every step page-faults its whole scratch memory in
again: about 375,000 faults and 1 s of kernel time per L = 96 step on a
2-core machine. The function sets glibc's malloc to one arena, no `mmap`
allocations and no trimming, so freed memory stays in the heap and the next
step reuses it. The training, quickstart and TimeDP benchmark commands call
it before JAX starts its CPU threads. Set TIMECRAFT_MALLOC_DEFAULTS=1 to keep
glibc's defaults.

`relaunch_with_huge_pages()` goes one step further for the command-line entry
points. When the kernel grants transparent huge pages only on request
(`/sys/kernel/mm/transparent_hugepage/enabled` reads `madvise`, a common
default), it runs the same command again with `glibc.malloc.hugetlb=1` added
to GLIBC_TUNABLES, so that glibc requests huge pages for the heap. glibc reads
its tunables only when a process starts, hence the relaunch. On the 2-core
Zen 4 machine of docs/benchmarks.md the L = 96 train step then took 0.89 to
0.96 of the time, with the heap's 4 GB held in 2 MiB pages. The same
TIMECRAFT_MALLOC_DEFAULTS=1 turns this off, and a GLIBC_TUNABLES that already
names `glibc.malloc.hugetlb` is left as it is.
"""

import ctypes
import functools
import importlib.metadata
import logging
import os
import platform
import re
import sys
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import jax
import jax.numpy as jnp

CPU_OPTIONS = {
    "xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT",
    "xla_disable_hlo_passes": "tree_reduction_rewriter",
}

# glibc mallopt parameters (malloc.h) and the values keep_host_memory() sets.
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8
_MALLOPT_SETTINGS = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, -1))  # -1: never trim.

# glibc's tunable that makes malloc request transparent huge pages (glibc 2.35 and later).
HUGE_PAGE_TUNABLE = "glibc.malloc.hugetlb"
_THP_ENABLED_FILE = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def _opted_out(variable: str, environ: Mapping[str, str] = os.environ) -> bool:
    return environ.get(variable, "0") not in ("", "0")


def _cpu_only_host() -> bool:
    """Return whether JAX will run on the CPU.

    That is when JAX_PLATFORMS names cpu first, or when it is unset and no accelerator plugin is installed.
    """
    platforms = (jax.config.jax_platforms or "").strip()
    if platforms:
        return platforms.split(",")[0].strip() == "cpu"
    if list(importlib.metadata.entry_points(group="jax_plugins")):
        return False
    try:
        import libtpu  # noqa: F401 - only its presence matters.
    except ImportError:
        return True
    return False


@functools.cache
def keep_host_memory() -> bool:
    """Make glibc keep freed memory for reuse on a CPU-only host; return whether it was set.

    Call it before the first JAX computation: threads that have already
    allocated keep their own malloc arena, and the setting does not reach
    them. It does nothing on GPU or TPU hosts, with a libc other than glibc,
    or when TIMECRAFT_MALLOC_DEFAULTS=1. The process then holds on to its
    peak memory until it exits instead of returning freed blocks to the
    system.
    """
    if _opted_out("TIMECRAFT_MALLOC_DEFAULTS") or platform.libc_ver()[0] != "glibc" or not _cpu_only_host():
        return False
    from jax._src import xla_bridge  # Private module: it reports started backends without starting one.

    if xla_bridge.backends_are_initialized():
        logging.info("JAX backends are already initialized, so glibc's malloc settings are left unchanged")
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    if not all(libc.mallopt(parameter, value) == 1 for parameter, value in _MALLOPT_SETTINGS):
        logging.warning("glibc refused a malloc setting; CPU steps may page-fault their scratch memory each call")
        return False
    pages = "huge pages requested" if huge_pages_requested() else "no huge-page tunable"
    logging.info("glibc malloc: one arena, no mmap, no trim, %s (set TIMECRAFT_MALLOC_DEFAULTS=1 to turn off)", pages)
    return True


def _transparent_huge_page_mode() -> Optional[str]:
    """Return the kernel's transparent huge page mode (`always`, `madvise` or `never`), or None if unknown."""
    try:
        text = _THP_ENABLED_FILE.read_text()
    except OSError:
        return None
    match = re.search(r"\[(\w+)\]", text)
    return match.group(1) if match else None


def _huge_page_tunable_value(environ: Mapping[str, str]) -> Optional[str]:
    """Return the value that GLIBC_TUNABLES in `environ` gives the huge-page tunable, or None if it is not set."""
    for item in environ.get("GLIBC_TUNABLES", "").split(":"):
        name, _, value = item.partition("=")
        if name.strip() == HUGE_PAGE_TUNABLE:
            return value.strip()
    return None


def huge_page_environment(environ: Mapping[str, str]) -> Optional[dict[str, str]]:
    """Return a copy of `environ` with glibc's huge-page tunable added, or None when a relaunch would not help.

    None when TIMECRAFT_MALLOC_DEFAULTS=1, when the libc is not glibc, when
    JAX will not run on the CPU, when the kernel's transparent huge page mode
    is not `madvise` (`always` already gives huge pages, `never` gives none),
    or when GLIBC_TUNABLES already sets the tunable.
    """
    if _opted_out("TIMECRAFT_MALLOC_DEFAULTS", environ):
        return None
    if platform.libc_ver()[0] != "glibc" or not _cpu_only_host():
        return None
    if _transparent_huge_page_mode() != "madvise" or _huge_page_tunable_value(environ) is not None:
        return None
    tunables = environ.get("GLIBC_TUNABLES", "")
    updated = dict(environ)
    updated["GLIBC_TUNABLES"] = f"{tunables}:{HUGE_PAGE_TUNABLE}=1" if tunables else f"{HUGE_PAGE_TUNABLE}=1"
    return updated


def relaunch_with_huge_pages() -> None:
    """Run the current command again with glibc's huge-page tunable, when `huge_page_environment` allows it.

    For `if __name__ == "__main__":` blocks only: on success it does not
    return, because `os.execve` replaces the process with the same
    interpreter, options and arguments. Call it before anything is read from
    standard input or written to a file. If the relaunch fails, the command
    goes on in this process without huge pages.
    """
    environment = huge_page_environment(os.environ)
    if environment is None or not getattr(sys, "orig_argv", None):
        return
    from jax._src import xla_bridge  # Private module: it reports started backends without starting one.

    if xla_bridge.backends_are_initialized():
        return
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], environment)
    except OSError as error:
        logging.warning("could not relaunch with %s=1 (%s); going on without huge pages", HUGE_PAGE_TUNABLE, error)


def huge_pages_requested() -> bool:
    """Return whether this process started with glibc's huge-page tunable set to a non-zero value."""
    return _huge_page_tunable_value(os.environ) not in (None, "", "0")


@functools.cache
def compiler_options() -> dict[str, Any]:
    """Return the compiler options for the default backend (empty on GPU and TPU)."""
    if _opted_out("TIMECRAFT_XLA_DEFAULTS"):
        return {}
    if jax.default_backend() != "cpu":
        return {}
    accepted = {}
    for name, value in CPU_OPTIONS.items():
        try:
            jax.jit(lambda x: x + 1, compiler_options={name: value}).lower(jnp.zeros((), jnp.float32)).compile()
        except Exception as error:  # noqa: BLE001 - XLA raises its own runtime error types for unknown options.
            logging.warning("this jaxlib rejects the XLA:CPU option %s=%s (%s); XLA keeps its default for it",
                            name, value, error)
            continue
        accepted[name] = value
    return accepted


def jit(fun: Callable, **kwargs) -> Any:
    """Wrap `jax.jit(fun, **kwargs)` with `compiler_options()` added."""
    return jax.jit(fun, compiler_options=compiler_options() or None, **kwargs)

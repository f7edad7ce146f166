"""XLA compiler options that timecraft_jax passes to the functions it compiles.

On XLA:CPU (jax 0.10.2), the default YNNPACK library fusions also take over
elementwise ops and reductions. For the TimeDP UNet on a 2-core x86-64 CPU that
made the forward about 30 % and the train step about 10 % slower than handing
YNNPACK the dot products alone (`benchmarks/bench_core.py`, see
docs/benchmarks.md). `compiler_options()` therefore requests dot-only YNNPACK
fusions on the CPU backend. It first checks once that this XLA build accepts
the option. If the build does not, it returns no options and XLA keeps its
defaults.

Set the environment variable TIMECRAFT_XLA_DEFAULTS=1 to keep XLA's defaults.
"""

import functools
import logging
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp

CPU_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}


@functools.cache
def compiler_options() -> dict[str, Any]:
    """Return the compiler options for the default backend (empty on GPU and TPU)."""
    if os.environ.get("TIMECRAFT_XLA_DEFAULTS", "0") not in ("", "0"):
        return {}
    if jax.default_backend() != "cpu":
        return {}
    try:
        jax.jit(lambda x: x + 1, compiler_options=CPU_OPTIONS).lower(jnp.zeros((), jnp.float32)).compile()
    except Exception as error:  # noqa: BLE001 - XLA raises its own runtime error types for unknown options.
        logging.warning("this jaxlib does not accept the XLA:CPU options %s (%s); using XLA's defaults",
                        CPU_OPTIONS, error)
        return {}
    return dict(CPU_OPTIONS)


def jit(fun: Callable, **kwargs) -> Any:
    """Wrap `jax.jit(fun, **kwargs)` with `compiler_options()` added."""
    return jax.jit(fun, compiler_options=compiler_options() or None, **kwargs)

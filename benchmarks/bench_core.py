"""Time the TimeDP model: train step (forward, backward, AdamW) and denoiser forward.

  python benchmarks/bench_core.py --out benchmarks/results/core_cpu.json

Uses the full TimeDP config (configs/timedp.py) at each sequence length. Prints
the median over --repeats timed calls (after one compile-and-warm-up call) and
writes a JSON file. Achieved TFLOP/s comes from XLA's cost analysis of the
compiled function.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from timecraft_jax import diffusion, xla_options
from timecraft_jax.config_lib import load_config_file, repository_config
from timecraft_jax.models import TimeCraftModel, build_model, init_variables
from timecraft_jax.train_state import create_train_state, make_optimizer, make_train_step


def compiled_flops(compiled) -> float | None:
    analysis = compiled.cost_analysis()
    if isinstance(analysis, list):
        analysis = analysis[0] if analysis else {}
    flops = (analysis or {}).get("flops")
    return float(flops) if flops else None


def time_calls(fn, args, repeats: int) -> list[float]:
    jax.block_until_ready(fn(*args))  # Warm-up after compilation.
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return times


def build_forward(model, variables, forward_batch: int, seq_len: int, channels: int):
    """Compile the denoiser forward as sampling uses it: prompt encoding plus UNet, at t = 100."""
    rng = jax.random.PRNGKey(0)
    x = jax.random.normal(rng, (forward_batch, seq_len, channels))
    t = jnp.full((forward_batch,), 100, jnp.int32)

    def forward(variables, x, t):
        context, logits = model.apply(variables, x, train=False, method=TimeCraftModel.encode)
        return model.apply(variables, x, t, context, logits, method=TimeCraftModel.denoise)

    compiled = xla_options.jit(forward).lower(variables, x, t).compile()
    return compiled, (variables, x, t)


def compile_timedp(seq_len: int, dtype: str, train_batch: int, forward_batch: int):
    """Return the TimeDP model's compiled train step and its compiled forward with that forward's arguments."""
    config, model, variables = timedp_model(seq_len, dtype)
    forward_compiled, forward_args = build_forward(model, variables, forward_batch, seq_len, config.model.in_channels)
    return build_train_step(config, model, variables, train_batch), forward_compiled, forward_args


def build_steps(seq_len: int, train_batch: int, forward_batch: int, dtype: str = "float32"):
    """Return `(train_step, forward)` callables of the TimeDP model that run once and wait for the result."""
    step, forward_compiled, forward_args = compile_timedp(seq_len, dtype, train_batch, forward_batch)
    return step.run, lambda: jax.block_until_ready(forward_compiled(*forward_args))


def bench_length(seq_len: int, dtype: str, train_batch: int, forward_batch: int, repeats: int) -> dict:
    step, forward_compiled, forward_args = compile_timedp(seq_len, dtype, train_batch, forward_batch)
    forward_times = time_calls(forward_compiled, forward_args, repeats)
    train_times = time_calls(step.run, (), repeats)

    forward_flops = compiled_flops(forward_compiled)
    train_flops = step.flops
    record = timing_record(seq_len, dtype, train_batch, forward_batch, train_times, forward_times)
    forward_median, train_median = record["forward_median_s"], record["train_step_median_s"]
    record.update({
        "forward_gflop_per_sample": None if forward_flops is None else forward_flops / forward_batch / 1e9,
        "forward_tflops_per_s": None if forward_flops is None else forward_flops / forward_median / 1e12,
        "train_tflops_per_s": None if train_flops is None else train_flops / train_median / 1e12,
    })
    return record


class TrainStep:
    """A compiled, donated train step on fixed random data; `run()` does one step and waits for it."""

    def __init__(self, compiled, state, batch):
        self.compiled, self.state, self.batch = compiled, state, batch
        self.flops = compiled_flops(compiled)

    def run(self):
        # The state is donated, as in training: each step consumes the previous step's buffers.
        self.state, metrics = self.compiled(self.state, self.batch)
        return jax.block_until_ready(metrics["loss"])


def build_train_step(config, model, variables, train_batch: int) -> TrainStep:
    """Compile the TimeDP train step (forward, backward, AdamW, EMA) exactly as training runs it."""
    schedule = diffusion.schedule_from_config(config.diffusion)
    optimizer = make_optimizer(config.optimizer)
    rng = jax.random.PRNGKey(0)
    # A copy, because the step donates (frees) the state's buffers, which would include `variables`.
    state = create_train_state(jax.tree_util.tree_map(jnp.copy, variables), optimizer, rng)
    batch = {"x": jax.random.normal(rng, (train_batch, config.data.seq_len, config.model.in_channels))}
    step_jit = xla_options.jit(make_train_step(model, schedule, optimizer, config), donate_argnums=0)
    return TrainStep(step_jit.lower(state, batch).compile(), state, batch)


def timedp_model(seq_len: int, dtype: str = "float32"):
    """Return (config, model, variables) of configs/timedp.py at length `seq_len`."""
    config = load_config_file(repository_config("timedp"))
    config.data.seq_len = seq_len
    config.model.dtype = dtype
    model = build_model(config.model, seq_len)
    return config, model, init_variables(model, jax.random.PRNGKey(0))


def timing_record(seq_len: int, dtype: str, train_batch: int, forward_batch: int,
                  train_times: list[float], forward_times: list[float]) -> dict:
    """Build the JSON record of one length that this script and torch_baseline.py both write."""
    train_median = statistics.median(train_times)
    forward_median = statistics.median(forward_times)
    return {
        "seq_len": seq_len,
        "dtype": dtype,
        "train_batch": train_batch,
        "forward_batch": forward_batch,
        "train_step_median_s": train_median,
        "train_steps_per_s": 1.0 / train_median,
        "forward_median_s": forward_median,
        "forward_samples_per_s": forward_batch / forward_median,
        "train_step_times_s": train_times,
        "forward_times_s": forward_times,
    }


def memory_mib() -> dict:
    """Return this process's resident memory and the part of it in transparent huge pages, in MiB.

    Both are None where /proc/self/smaps_rollup is not readable (not Linux).
    """
    fields = {"Rss:": "rss_mib", "AnonHugePages:": "huge_pages_mib"}
    memory = dict.fromkeys(fields.values())
    try:
        lines = Path("/proc/self/smaps_rollup").read_text().splitlines()
    except OSError:
        return memory
    for line in lines:
        words = line.split()
        if len(words) >= 2 and words[0] in fields:
            memory[fields[words[0]]] = round(int(words[1]) / 1024, 1)  # The file counts kB.
    return memory


def memory_reply(memory: dict) -> str:
    """Return `memory_mib()` as the one-line reply of a benchmark child process: `RSS HUGE` in MiB."""
    return f"{memory['rss_mib']} {memory['huge_pages_mib']}"


def parse_memory_reply(words: list[str]) -> dict:
    """Return the `memory_mib()` dict that the two words of a `memory_reply()` encode (`None` stays None)."""
    if len(words) != 2:
        raise ValueError(f"invalid memory reply {words!r}: expected two words, resident and huge-page MiB")
    rss, huge = (None if word == "None" else float(word) for word in words)
    return {"rss_mib": rss, "huge_pages_mib": huge}


def cpu_description(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """Return the CPU's model name, family and model from /proc/cpuinfo, for a result file.

    The same x86-64 label covers machines whose speed differs a lot (the AMD Zen 4
    and the Intel Xeon of docs/benchmarks.md), so the JSON records which one ran.
    Where the file is missing or names no model, the name is the one that `platform` reports.
    """
    try:
        lines = cpuinfo.read_text().splitlines()
    except OSError:
        lines = []
    fields = {}
    for line in lines:
        if not line.strip():
            break  # Only the first processor's block is read.
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    name = fields.get("model name") or platform.processor() or platform.machine()
    if "cpu family" in fields and "model" in fields:
        return f"{name} (family {fields['cpu family']}, model {fields['model']})"
    return name


def parse_seq_lens(text: str) -> list[int]:
    """Parse --seq_lens, exiting with a message unless each length is a positive multiple of 8."""
    try:
        seq_lens = [int(value) for value in text.split(",") if value.strip()]
    except ValueError:
        raise SystemExit(f"--seq_lens {text!r} is invalid; expected comma-separated integers such as 24,96,168")
    invalid = [value for value in seq_lens if value <= 0 or value % 8]
    if invalid:
        raise SystemExit(f"--seq_lens {invalid} are invalid; each length must be a positive multiple of 8")
    return seq_lens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seq_lens", default="24,96,168", help="Comma-separated sequence lengths (multiples of 8).")
    parser.add_argument("--dtypes", default="float32", help="Comma-separated compute dtypes: float32,bfloat16.")
    parser.add_argument("--train_batch", type=int, default=64, help="Batch size of the train step.")
    parser.add_argument("--forward_batch", type=int, default=256, help="Batch size of the forward pass.")
    parser.add_argument("--repeats", type=int, default=5, help="Timed calls per measurement (median reported).")
    parser.add_argument("--out", default="benchmarks/results/core.json", help="JSON output path.")
    args = parser.parse_args()
    seq_lens = parse_seq_lens(args.seq_lens)
    malloc_tuned = xla_options.keep_host_memory()  # Before JAX starts its CPU threads.

    device = jax.devices()[0]
    header = {
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "device": str(getattr(device, "device_kind", device)),
        "device_count": jax.device_count(),
        "host": platform.processor() or platform.machine(),
        "cpu": cpu_description(),
        "cpu_count": __import__("os").cpu_count(),
        "repeats": args.repeats,
        "glibc_malloc_tuned": malloc_tuned,
        "glibc_huge_pages_requested": xla_options.huge_pages_requested(),
    }
    print(json.dumps(header))
    results = []
    for dtype in args.dtypes.split(","):
        for seq_len in seq_lens:
            result = bench_length(seq_len, dtype, args.train_batch, args.forward_batch, args.repeats)
            result["process_memory_after"] = memory_mib()
            results.append(result)
            print(f"L={seq_len:4d} {dtype:9s} train step (B={args.train_batch}) median "
                  f"{result['train_step_median_s']:.3f} s | forward (B={args.forward_batch}) median "
                  f"{result['forward_median_s']:.3f} s | forward GFLOP/sample "
                  f"{result['forward_gflop_per_sample'] or float('nan'):.3f}", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"environment": header, "results": results}, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out}")


if __name__ == "__main__":
    xla_options.relaunch_with_huge_pages()  # Same allocator as the training CLI.
    np.set_printoptions(precision=4)
    main()

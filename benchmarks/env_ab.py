"""Compare the TimeDP train step under two process environments, alternating calls between them.

Some settings take effect only when a process starts, such as glibc's GLIBC_TUNABLES. This
script starts one child process per environment, and each compiles the train step of
bench_core.py (configs/timedp.py at length --seq_len, batch --train_batch). The script then
requests one timed step from each in turn, A then B, then B then A, and so on, with a pause
between calls. Each round starts a fresh pair of processes, so a slow or fast process shows up
as one round, not as the result. The script prints per-round and overall median ratios B / A
and writes them as JSON.

Example (the direct comparison in docs/benchmarks.md):

    python benchmarks/env_ab.py --seq_len 96 --steps 8 --rounds 2 \\
        --env_b GLIBC_TUNABLES=glibc.malloc.hugetlb=1 --out benchmarks/results/env_ab_hugetlb.json

The children call `keep_host_memory()` but never relaunch themselves, so each runs with exactly
the environment given here. Both children run on the same cores, one at a time. On 2 cores a
round of 4 steps at L = 24 took 3.3 minutes, most of it compiling the two children's steps.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import bench_core  # benchmarks/ is on sys.path when run as a script. Importing it starts no JAX backend.


CHILD = """
import sys, time
sys.path.insert(0, {benchmarks!r})
from timecraft_jax import xla_options
xla_options.keep_host_memory()
import bench_core
config, model, variables = bench_core.timedp_model({seq_len})
run = bench_core.build_train_step(config, model, variables, {train_batch}).run
run()
print("ready", flush=True)
for line in sys.stdin:
    start = time.perf_counter()
    run()
    elapsed = time.perf_counter() - start
    print(elapsed, bench_core.memory_reply(bench_core.memory_mib()), flush=True)
"""


def parse_assignments(values: list[str], flag: str) -> dict[str, str]:
    """Turn `NAME=VALUE` words into a dict, exiting with a message on a word without `=` or name."""
    assignments = {}
    for value in values:
        name, sep, setting = value.partition("=")
        if not sep or not name:
            raise SystemExit(f"{flag} {value!r} is invalid; expected NAME=VALUE, for example "
                             "GLIBC_TUNABLES=glibc.malloc.hugetlb=1")
        assignments[name] = setting
    return assignments


class Child:
    """One process that has compiled the train step and times one call per request."""

    def __init__(self, environment: dict[str, str], seq_len: int, train_batch: int):
        code = CHILD.format(benchmarks=str(Path(__file__).resolve().parent), seq_len=seq_len,
                            train_batch=train_batch)
        self.process = subprocess.Popen([sys.executable, "-c", code], env=environment, stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True)
        reply = self.process.stdout.readline().strip()
        if reply != "ready":
            self.close()
            raise RuntimeError(f"a child process failed to build the train step (its stderr is above); got {reply!r}")

    def step(self) -> tuple[float, dict]:
        self.process.stdin.write("step\n")
        self.process.stdin.flush()
        words = self.process.stdout.readline().split()
        if len(words) != 3:
            self.close()
            raise RuntimeError("a child process stopped during a train step (its stderr is above)")
        return float(words[0]), bench_core.parse_memory_reply(words[1:])

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.close()
            self.process.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seq_len", type=int, default=96, help="Sequence length L (a positive multiple of 8).")
    parser.add_argument("--train_batch", type=int, default=64, help="Batch size of the train step.")
    parser.add_argument("--steps", type=int, default=8, help="Timed steps per process and round.")
    parser.add_argument("--rounds", type=int, default=2, help="Fresh pairs of processes.")
    parser.add_argument("--pause", type=float, default=0.2, help="Seconds between timed calls.")
    parser.add_argument("--env_a", nargs="*", default=[], metavar="NAME=VALUE",
                        help="Variables set (over this process's environment) for process A.")
    parser.add_argument("--env_b", nargs="*", default=[], metavar="NAME=VALUE",
                        help="Variables set (over this process's environment) for process B.")
    parser.add_argument("--unset", nargs="*", default=["GLIBC_TUNABLES"], metavar="NAME",
                        help="Variables removed from both environments before --env_a and --env_b apply.")
    parser.add_argument("--out", default="benchmarks/results/env_ab.json", help="JSON output path.")
    args = parser.parse_args()
    if args.seq_len <= 0 or args.seq_len % 8:
        parser.error(f"--seq_len {args.seq_len} is invalid; the UNet needs a positive multiple of 8, such as 96")
    if min(args.train_batch, args.steps, args.rounds) <= 0 or args.pause < 0:
        parser.error("--train_batch, --steps and --rounds must be positive and --pause zero or positive")
    base = {name: value for name, value in os.environ.items() if name not in set(args.unset)}
    settings = [parse_assignments(args.env_a, "--env_a"), parse_assignments(args.env_b, "--env_b")]
    environments = [{**base, **setting} for setting in settings]
    header = {"seq_len": args.seq_len, "train_batch": args.train_batch, "steps": args.steps,
              "rounds": args.rounds, "pause_s": args.pause, "env_a": settings[0], "env_b": settings[1],
              "unset": args.unset, "host": platform.processor() or platform.machine(),
              "cpu": bench_core.cpu_description(), "platform": platform.platform(), "cpu_count": os.cpu_count()}
    print(json.dumps(header), flush=True)

    rounds, all_ratios = [], []
    for index in range(args.rounds):
        children = [Child(environment, args.seq_len, args.train_batch) for environment in environments]
        times, memory = [[], []], [None, None]
        try:
            for step in range(args.steps):
                for side in ((0, 1) if step % 2 == 0 else (1, 0)):
                    time.sleep(args.pause)
                    elapsed, memory[side] = children[side].step()
                    times[side].append(elapsed)
        finally:
            for child in children:
                child.close()
        ratios = [b / a for a, b in zip(*times)]
        all_ratios += ratios
        record = {"a_times_s": times[0], "b_times_s": times[1], "a_median_s": statistics.median(times[0]),
                  "b_median_s": statistics.median(times[1]), "ratio_median": statistics.median(ratios),
                  "b_faster": sum(ratio < 1 for ratio in ratios), "a_memory_after": memory[0],
                  "b_memory_after": memory[1]}
        rounds.append(record)
        print(f"round {index + 1}: A {record['a_median_s']:.3f} s, B {record['b_median_s']:.3f} s, "
              f"ratio B / A {record['ratio_median']:.3f}, B faster in {record['b_faster']} of {args.steps}; "
              f"huge pages MiB A {memory[0]['huge_pages_mib']}, B {memory[1]['huge_pages_mib']}", flush=True)
    summary = {"ratio_median": statistics.median(all_ratios), "b_faster": sum(ratio < 1 for ratio in all_ratios),
               "pairs": len(all_ratios)}
    print(f"all rounds: median ratio B / A {summary['ratio_median']:.3f}, "
          f"B faster in {summary['b_faster']} of {summary['pairs']}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"environment": header, "rounds": rounds, "summary": summary}, indent=2) + "\n",
                   encoding="utf-8")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

"""Helpers that the scripts in benchmarks/ share: CPU naming, memory replies, length parsing."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench_core  # noqa: E402 - benchmarks/ is a folder of scripts, not a package.

INTEL_CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
cpu family\t: 6
model\t\t: 167
model name\t: Intel(R) Xeon(R) Processor
flags\t\t: fpu avx512f

processor\t: 1
vendor_id\t: GenuineIntel
cpu family\t: 6
model\t\t: 167
model name\t: Another name that must not be read
"""


def test_cpu_description_first_processor(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(INTEL_CPUINFO)
    assert bench_core.cpu_description(cpuinfo) == "Intel(R) Xeon(R) Processor (family 6, model 167)"


def test_cpu_description_name_only(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Some ARM core\n")
    assert bench_core.cpu_description(cpuinfo) == "Some ARM core"


def test_cpu_description_missing_file(tmp_path):
    description = bench_core.cpu_description(tmp_path / "missing")
    assert isinstance(description, str)
    assert description


def test_memory_reply_round_trip():
    memory = {"rss_mib": 4152.6, "huge_pages_mib": 3835.9}
    assert bench_core.parse_memory_reply(bench_core.memory_reply(memory).split()) == memory


def test_memory_reply_none_values():
    memory = {"rss_mib": None, "huge_pages_mib": None}
    assert bench_core.memory_reply(memory) == "None None"
    assert bench_core.parse_memory_reply(["None", "None"]) == memory


def test_memory_reply_too_short():
    with pytest.raises(ValueError, match="expected two words"):
        bench_core.parse_memory_reply(["4152.6"])


def test_memory_mib_this_process():
    memory = bench_core.memory_mib()
    assert set(memory) == {"rss_mib", "huge_pages_mib"}
    if Path("/proc/self/smaps_rollup").exists():
        assert memory["rss_mib"] > 0


def test_parse_seq_lens():
    assert bench_core.parse_seq_lens("24, 96,168") == [24, 96, 168]
    with pytest.raises(SystemExit, match="positive multiple of 8"):
        bench_core.parse_seq_lens("24,100")
    with pytest.raises(SystemExit, match="comma-separated integers"):
        bench_core.parse_seq_lens("24;96")

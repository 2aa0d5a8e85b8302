"""What CPU this is, for every figure that must name its machine, and whether it has the units a precision needs.

Read from ``/proc/cpuinfo`` (Linux); elsewhere the name falls back to ``platform`` and the flags are empty.
Standard library only: bench, compare's precision matrix and the benchmark scripts all use it.
"""

from __future__ import annotations

import platform
from pathlib import Path

# What decides which CPU path is fastest (docs/benchmarks.md): vector width, int8 dot products, bf16 units.
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_int8", "amx_tile")
BF16_FLAGS = ("avx512_bf16", "amx_bf16")
LOW_PRECISION_FLAGS = ("avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")  # int8 dot products, bf16 units


def _cpuinfo_field(name: str) -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(name):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_name() -> str:
    """The CPU's model name, e.g. "Intel(R) Xeon(R) Processor"."""
    return _cpuinfo_field("model name") or platform.processor() or platform.machine() or "unknown CPU"


def cpu_flags() -> list[str]:
    """Which of ``CPU_FLAGS`` this CPU has, in that order."""
    present = set((_cpuinfo_field("flags") or "").split())
    return [flag for flag in CPU_FLAGS if flag in present]


def cpu_has_bf16() -> bool:
    """Whether the CPU computes bf16 in hardware (AVX512-BF16 or AMX)."""
    return any(flag in BF16_FLAGS for flag in cpu_flags())


def describe_cpu() -> str:
    """The CPU and its low-precision units, for the first line of a benchmark: "AMD EPYC ... (avx512_vnni, avx512_bf16)"."""
    units = [flag for flag in cpu_flags() if flag in LOW_PRECISION_FLAGS]
    return f"{cpu_name()} ({', '.join(units) or 'no VNNI/AMX'})"

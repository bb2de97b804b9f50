"""What the machine offers a trial, read without importing torch (the planner resolves configs by the thousand).

`train.precision: auto` resolves here, at plan time, so the precision a trial trains in is part of its resolved
config and therefore of its identity: the same study planned on a CPU with bf16 matrix units and on one without
gives different trials, never one trial with two kinds of numbers.
"""

from __future__ import annotations

import functools
from pathlib import Path

__all__ = ["BF16_CPU_FLAGS", "cpu_device_name", "cpu_has_bf16_units", "cpu_model_name", "resolve_precision"]

# AVX-512-BF16 (dot products of bf16 pairs) or AMX (bf16 tile multiplies): the units that make bf16 matmuls several
# times faster than fp32 on a CPU. Without them torch emulates bf16 and autocast only adds conversions.
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.cache
def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: no flags to read, so no bf16 units are assumed
        return ""


def _first_field(name: str) -> str:
    for line in _cpuinfo().splitlines():
        key, _, value = line.partition(":")
        if key.strip() == name:
            return value.strip()
    return ""


def cpu_has_bf16_units() -> bool:
    flags = set(_first_field("flags").split())
    return any(flag in flags for flag in BF16_CPU_FLAGS)


def cpu_model_name() -> str:
    return _first_field("model name") or "unknown CPU"


def cpu_device_name(threads: int) -> str:
    """What a trial on the CPU records as its device: with its CPU model, what its stage times are rates of."""
    return f"cpu x{threads} threads"


def resolve_precision(precision: str, *, gpu: bool) -> str:
    """`auto` -> bf16 where the hardware has bf16 matrix units (any GPU a trial is given is assumed to: Ampere and
    later), fp32 elsewhere; an explicit precision is kept."""
    if precision != "auto":
        return precision
    return "bf16" if gpu or cpu_has_bf16_units() else "fp32"

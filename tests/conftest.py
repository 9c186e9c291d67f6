"""Test-wide JAX setup: 8 fake CPU devices for the sharding tests.

XLA reads the device-count flag once, when the CPU backend starts, so it is added here, before
JAX is imported, to whatever XLA_FLAGS the caller set (GPU hosts and CI images often set some;
an ISA cap such as --xla_cpu_max_isa=SSE4_2 is kept). Tests compile with XLA's optimizations on,
as users run: switching most of them off saved under 10% of the compile-heaviest files' time,
and would calibrate every float tolerance on programs nobody runs.
"""
import os

_DEVICE_FLAG = "--xla_force_host_platform_device_count"
if _DEVICE_FLAG not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_DEVICE_FLAG}=8".strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

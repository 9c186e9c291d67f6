"""Test-wide JAX setup: 8 fake CPU devices for sharding tests, and cheap compiles.

Both must be set before JAX initializes its backends, which is why they live here.
"""
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402

# Tests use tiny shapes: compile time dominates, so skip most XLA optimizations.
jax.config.update("jax_disable_most_optimizations", True)

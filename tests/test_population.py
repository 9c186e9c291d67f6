"""Benchmark members (benchmarks/transfer.py): each (seed, learning rate) member trains alone, so
its result does not depend on the other members, and the members of a method share one step
function, compiled once."""

import os
import sys

import jax
import numpy as np

from pcjax.training import build, sharding
from pcjax.training import config as config_lib
from pcjax.training import spec as spec_lib

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
import transfer  # noqa: E402
from configs import digits  # noqa: E402


def _spec(seed, mesh):
    config = config_lib.complete(digits.get_config())
    config.seed, config.num_devices = seed, 1
    for role in ("teacher", "student"):
        config[role].train = config_lib.phase_config(
            batch_size=16, num_steps=3, augment=False, schedule={"name": "constant"},
            optimizer={"name": "adamw", "learning_rate": 1.0, "weight_decay": 0.0})
    return spec_lib.resolve(config, mesh, num_train_examples=100)


def test_a_member_alone_equals_the_member_trained_after_others(caplog):
    mesh = sharding.make_mesh(1)
    teacher = build.teacher_phase(_spec(1000, mesh)).model()
    rng = np.random.default_rng(0)
    batches = [{"image": rng.normal(size=(16, 8, 8, 1)).astype(np.float32),
                "label": rng.integers(0, 10, 16).astype(np.int32),
                "index": np.arange(16, dtype=np.int32)} for _ in range(3)]

    def train(seed, lr, step=None):
        phase = build.student_phase(_spec(seed, mesh), teacher, rate_factor=True)
        phase = transfer.at_rate(phase, lr)
        state = phase.state
        jitted = build.jit_step(step or phase.step, mesh)
        with jax.set_mesh(mesh):
            for batch in batches:
                state, _ = jitted(state, batch, teacher.variables)
        return phase.step, jax.device_get(state.params)

    with caplog.at_level("WARNING"), jax.log_compiles(True):
        shared, first = train(0, 3e-3)
        _, other = train(1, 1e-2, shared)
        _, again = train(0, 3e-3, shared)
    compiled = [r for r in caplog.records if "Compiling jit(step)" in r.getMessage()]
    assert len(compiled) == 1, [r.getMessage()[:80] for r in compiled]
    # Bitwise: the same program on the same inputs, whatever ran before it.
    jax.tree.map(np.testing.assert_array_equal, first, again)
    # The shared step (built for seed 0) trains seed 1 exactly as seed 1's own step does.
    _, own = train(1, 1e-2)
    jax.tree.map(np.testing.assert_array_equal, other, own)
    assert not all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(first),
                                                        jax.tree.leaves(other)))

"""Train a teacher, distill a student, evaluate both.

  python train.py                                   # configs/digits.py into ./workdir/digits
  python train.py --config configs/cifar100.py:resnet32x4_resnet8x4 --workdir runs/r32x4_r8x4
  python train.py --config configs/digits.py --config.distill.loss=rkd --config.seed=1

--config takes a config file (``path[:arg]``, big_vision style) and ``--config.key=value``
overrides; --workdir defaults to ./workdir/<config.name>. Rerunning the same command resumes from
the workdir's latest checkpoints. Multi-host: set --config.distributed=True (or the
JAX_COORDINATOR_ADDRESS environment variable) to call jax.distributed.initialize() first.
SIGTERM or Ctrl-C saves a checkpoint, prints where, and exits with status 128 + the signal number.
"""

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "digits.py")
_CONFIG = config_flags.DEFINE_config_file("config", _DEFAULT_CONFIG, "Config file (path[:arg]).")
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Output directory (default ./workdir/<config.name>)."
)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # Library INFO chatter would bury the progress bars.
    config = _CONFIG.value
    from pcjax.training import sharding  # Devices must not be touched before distributed init.

    sharding.maybe_initialize_distributed(
        config.distributed, heartbeat_timeout_seconds=config.heartbeat_timeout_seconds
    )
    from pcjax.training import preemption, trainer

    workdir = _WORKDIR.value or trainer.default_workdir(config)
    try:
        results = trainer.run(config, workdir)
    except preemption.Preempted as e:  # SIGTERM / Ctrl-C: a checkpoint was saved; say where.
        print(e, file=sys.stderr)
        sys.exit(e.exit_code)
    print(trainer.summary_table(config, results))
    print(f"workdir: {os.path.abspath(workdir)}")


if __name__ == "__main__":
    app.run(main)

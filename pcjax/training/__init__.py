"""Training: teacher phase, distillation phase, evaluation (see train.py and configs/).

    from pcjax import training
    results = training.run(config, workdir)      # config: an ml_collections.ConfigDict
    print(training.summary_table(config, results))
"""

from pcjax.training.checkpoint import CheckpointError
from pcjax.training.config import ConfigError, base_config, phase_config, validate
from pcjax.training.sharding import make_mesh
from pcjax.training.state import TrainState
from pcjax.training.trainer import TrainingDivergedError, default_workdir, run, summary_table

__all__ = [
    "CheckpointError",
    "ConfigError",
    "TrainState",
    "TrainingDivergedError",
    "base_config",
    "default_workdir",
    "make_mesh",
    "phase_config",
    "run",
    "summary_table",
    "validate",
]

"""Training: teacher phase, distillation phase, evaluation (see train.py and configs/).

    from pcjax import training
    config = training.complete({"student": {"train": {"num_epochs": 5.0}}})
    results = training.run(config, workdir)      # config: an ml_collections.ConfigDict
    print(training.summary_table(config, results))

Names are imported on first use, so importing the config schema does not load the trainer, the
input pipeline or the checkpointer.
"""

import importlib

_LAZY = {
    "CheckpointError": "pcjax.training.checkpoint",
    "ConfigError": "pcjax.training.config",
    "RunSpec": "pcjax.training.spec",
    "TrainState": "pcjax.training.state",
    "TrainingDivergedError": "pcjax.training.loop",
    "base_config": "pcjax.training.config",
    "complete": "pcjax.training.config",
    "make_mesh": "pcjax.training.sharding",
    "phase_config": "pcjax.training.config",
    "resolve": "pcjax.training.spec",
    "run": "pcjax.training.trainer",
    "summary_table": "pcjax.training.report",
}


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module 'pcjax.training' has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name]), name)


__all__ = sorted(_LAZY)

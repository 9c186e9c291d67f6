"""The resume policy (`pcjax.training.resume`): which saved runs a rerun may continue, what
`--extend` may change, and that a workdir without a checkpoint holds nothing to refuse."""

import json
import os
import re

import pytest

from pcjax.training import config as config_lib
from pcjax.training import resume, sharding, trainer
from pcjax.training import spec as spec_lib


def _spec(config):
    return spec_lib.resolve(config, sharding.make_mesh(1), num_train_examples=50000)


def _saved(config) -> dict:
    return json.loads(_spec(config).config.to_json_best_effort())


def test_cadence_may_differ_and_with_extend_a_longer_length():
    saved = _saved(config_lib.base_config())
    config = config_lib.base_config()
    config.student.train.log_every = 7
    config.teacher.train.checkpoint_every = 5
    config.eval.knn_k = 3
    config.num_devices = 1
    resume.check_resume(saved, _spec(config), workdir="w")
    config.student.train.num_epochs = 300.0
    with pytest.raises(config_lib.ConfigError, match=r"num_epochs: 240.0 -> 300.0\).*--extend"):
        resume.check_resume(saved, _spec(config), workdir="w")
    resume.check_resume(saved, _spec(config), workdir="w", extend=True)
    config.student.train.schedule.decay_epochs = (100,)
    with pytest.raises(config_lib.ConfigError, match=r"decay_epochs: \[150, 180, 210\] -> \[100\]"):
        resume.check_resume(saved, _spec(config), workdir="w", extend=True)


def test_an_option_set_to_its_default_equals_the_option_left_out():
    saved = _saved(config_lib.base_config())
    # A config.json written before options were recorded with their defaults reads the same.
    saved_bare = {**saved, "distill": {**saved["distill"], "loss_kwargs": {}}}
    config = config_lib.base_config()
    config.distill.loss_kwargs.regularization_strength = 1.0
    for old in (saved, saved_bare):
        resume.check_resume(old, _spec(config), workdir="w")
    config.distill.loss_kwargs.regularization_strength = 0.5
    with pytest.raises(config_lib.ConfigError, match=re.escape(
            "distill.loss_kwargs.regularization_strength: 1.0 -> 0.5")):
        resume.check_resume(saved_bare, _spec(config), workdir="w")


@pytest.mark.parametrize("role, epochs, ended, message", [
    ("student", 100.0, {}, "student: 78100 steps is shorter than the 187440 it was started with"),
    ("teacher", 300.0, {"teacher": True}, "teacher: the phase has ended"),
])
def test_extend_refuses_a_shorter_length_or_a_phase_that_has_ended(role, epochs, ended, message):
    saved = _saved(config_lib.base_config())
    config = config_lib.base_config()
    config[role].train.num_epochs = epochs
    with pytest.raises(config_lib.ConfigError, match=re.escape(
            f"--extend: only extends a phase that has not ended ({message}")):
        resume.check_resume(saved, _spec(config), workdir="w", extend=True, ended=ended)
    # The phase still running may grow.
    config[role].train.num_epochs = 300.0
    resume.check_resume(saved, _spec(config), workdir="w", extend=True, ended={})


class _Started(Exception):
    pass


def _tiny_digits():
    config = config_lib.base_config()
    config.teacher.model, config.student.model = "digits_cnn", "digits_student"
    config.eval.batch_size = 64
    return config


def test_a_workdir_without_a_checkpoint_takes_any_config(tmp_path, monkeypatch):
    """A run that stopped before its first checkpoint (here: a config.json and nothing else)
    does not hold its workdir to that config; one with a checkpoint does."""
    workdir = str(tmp_path)
    old = _tiny_digits()
    old.seed = 5
    with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(old.to_json_best_effort())

    def started(ctx):
        raise _Started

    monkeypatch.setattr(trainer, "teacher_phase", started)
    with pytest.raises(_Started):
        trainer.run(_tiny_digits(), workdir, mesh=sharding.make_mesh(1))
    assert json.load(open(os.path.join(workdir, "config.json")))["seed"] == 0
    os.makedirs(os.path.join(workdir, "teacher", "checkpoints", "10"))
    with pytest.raises(config_lib.ConfigError, match=re.escape("seed: 0 -> 5")):
        trainer.run(old, workdir, mesh=sharding.make_mesh(1))

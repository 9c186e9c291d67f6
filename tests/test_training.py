"""Tests of pcjax.training: schedules, optimizer, config checks, checkpoints, NaN stop, sharding,
and the whole job end to end on digits (tiny step counts), including resume after a crash."""

import json
import math
import os
import re
import shutil
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from float32 import assert_close
from pcjax.metrics import pc_score
from pcjax.training import build, checkpoint, evaluation, loop, optim, report
from pcjax.training import sharding, spec as spec_lib, trainer
from pcjax.training import config as config_lib
from pcjax.training import logging as log_lib
from pcjax.training import state as state_lib

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from configs import digits  # noqa: E402


def tiny_digits_config(teacher_steps=6, student_steps=6):
    """The default digits job shrunk to a few steps of batch 16 on a 2-device mesh.

    Two devices exercise the sharded path at a fraction of the compile time of eight; the
    8-versus-1-device equivalence has its own test.
    """
    config = config_lib.complete(digits.get_config())
    config.num_devices = 2
    for role, n in (("teacher", teacher_steps), ("student", student_steps)):
        phase = config[role].train
        phase.batch_size = 16
        phase.num_epochs = 0.0
        phase.num_steps = n
        phase.log_every = 2
        phase.checkpoint_every = 3
        phase.schedule.warmup_steps = 2
    return config


@pytest.fixture(scope="module")
def teacher():
    """The tiny digits job's teacher on one device, built once for the module's step tests (its
    init compiles in seconds); only the teacher phase's config reaches it."""
    spec = spec_lib.resolve(tiny_digits_config(), sharding.make_mesh(1), num_train_examples=100)
    return build.teacher_phase(spec).model()


# ----------------------------------------------------------------------------- optimizer


def _phase(**kw):
    return config_lib.phase_config(**kw)


def test_piecewise_schedule_matches_multistep_reference():
    phase = _phase(
        batch_size=10,
        num_epochs=6.0,
        schedule=dict(name="piecewise", decay_epochs=(2, 4), decay_factor=0.1),
    )
    steps = optim.resolve_steps(phase, num_train_examples=105)  # 10 steps per epoch
    assert (steps.total, steps.steps_per_epoch, steps.decay_boundaries) == (60, 10, (20, 40))
    _, lr = optim.make_optimizer(phase, steps)
    for t in range(60):
        expected = 0.05 * 0.1 ** sum(t >= b for b in (20, 40))
        np.testing.assert_allclose(float(lr(t)), expected, rtol=1e-5)


def test_cosine_schedule_with_warmup_matches_closed_form():
    phase = _phase(
        num_steps=100,
        optimizer=dict(learning_rate=0.2),
        schedule=dict(name="cosine", warmup_steps=10, end_factor=0.0),
    )
    steps = optim.resolve_steps(phase, num_train_examples=1000)
    _, lr = optim.make_optimizer(phase, steps)
    for t in (0, 5, 10, 40, 99):
        if t < 10:
            expected = 0.2 * t / 10
        else:
            expected = 0.1 * (1 + math.cos(math.pi * (t - 10) / 90))
        # atol: float32 rounding of cos, relative to the peak rate 0.2.
        np.testing.assert_allclose(float(lr(t)), expected, rtol=1e-5, atol=0.2 * 1e-5)


def test_sgd_matches_pytorch_momentum_and_weight_decay():
    phase = _phase(
        num_steps=10,
        schedule=dict(name="constant"),
        optimizer=dict(learning_rate=0.1, momentum=0.9, weight_decay=0.01),
    )
    tx, _ = optim.make_optimizer(phase, optim.resolve_steps(phase, 100))
    w = jnp.array([1.0, -2.0])
    grads = [jnp.array([0.5, 0.25]), jnp.array([-1.0, 2.0]), jnp.array([0.0, 1.0])]
    opt_state = tx.init(w)
    w_ref, buf = np.array([1.0, -2.0]), np.zeros(2)
    for g in grads:
        updates, opt_state = tx.update(g, opt_state, w)
        w = optax.apply_updates(w, updates)
        d = np.asarray(g) + 0.01 * w_ref  # torch.optim.SGD: decay, then momentum buffer
        buf = 0.9 * buf + d
        w_ref = w_ref - 0.1 * buf
    np.testing.assert_allclose(np.asarray(w), w_ref, rtol=1e-5)


# ----------------------------------------------------------------------------- config checks


@pytest.mark.parametrize(
    "key,value,message",
    [
        ("teacher.model", "resnet9000", "config.teacher.model: unknown model 'resnet9000'"),
        ("student.model", "nope", "config.student.model: unknown model"),
        ("dataset", "mnist_missing", "config.dataset: unknown dataset"),
        ("distill.loss", "crd_typo", "config.distill.loss: unknown loss"),
        ("distill.protocol", "both", "config.distill.protocol: unknown protocol"),
        (
            "student.train.optimizer.learning_rate",
            -0.1,
            "config.student.train.optimizer.learning_rate: must be a finite number > 0, got -0.1",
        ),
        (
            "teacher.train.optimizer.name",
            "lamb",
            "config.teacher.train.optimizer.name: unknown optimizer",
        ),
        (
            "teacher.train.batch_size",
            12,
            "config.teacher.train.batch_size: 12 does not split evenly over the 8 devices",
        ),
        (
            "student.train.schedule.decay_epochs",
            (20, 10),
            "config.student.train.schedule.decay_epochs",
        ),
        ("distill.beta", -1.0, "config.distill.beta: must be a finite number >= 0, got -1.0"),
        ("distill.beta", math.nan, "config.distill.beta: must be a finite number >= 0, got nan"),
        ("student.train.num_epochs", math.inf, "config.student.train.num_epochs: must be a "
         "finite number >= 0, got inf"),
        ("distill.loss_kwargs", {"regularization_strength": -1.0},
         "config.distill.loss_kwargs: perception_coherence refuses them: regularization_strength"),
        ("distill.loss_kwargs", {"objective": "l1"},
         "config.distill.loss_kwargs: perception_coherence refuses them: objective"),
        ("distill.loss_kwargs", {"teacher_dissimilarity": "manhattan"},
         "config.distill.loss_kwargs: perception_coherence refuses them: teacher_dissimilarity"),
        ("teacher.checkpoint", "/nonexistent/teacher",
         "config.teacher.checkpoint: no exported teacher at /nonexistent/teacher"),
    ],
)
def test_bad_config_value_is_rejected_naming_the_key(key, value, message):
    config = tiny_digits_config()
    *parents, leaf = key.split(".")
    node = config
    for p in parents:
        node = node[p]
    node[leaf] = value
    with pytest.raises(config_lib.ConfigError, match=re.escape(message)):
        spec_lib.resolve(config, sharding.make_mesh(8), num_train_examples=1000)


def test_bad_split_and_uneven_eval_batch_are_refused_before_any_work():
    config = tiny_digits_config()
    config.eval_split = "test[:2]"
    with pytest.raises(config_lib.ConfigError, match=re.escape(
            "config.eval_split: split 'test[:2]' holds 2 examples; the evaluation needs more "
            "than eval.knn_k = 5")):
        spec_lib.resolve(config, sharding.make_mesh(2))
    config.eval_split, config.eval.batch_size = "test", 10
    with pytest.raises(config_lib.ConfigError, match="config.eval.batch_size: 10 does not split "
                       "evenly over the 8 devices"):
        spec_lib.resolve(config, sharding.make_mesh(8))


def test_bad_config_fails_before_anything_is_trained(tmp_path):
    config = tiny_digits_config()
    config.student.train.batch_size = 13
    with pytest.raises(ValueError, match="config.student.train.batch_size: 13 does not split"):
        trainer.run(config, str(tmp_path))
    assert os.listdir(tmp_path) == []


def test_resolve_reads_the_config_once_into_a_typed_run():
    config = tiny_digits_config()
    config.distill.loss_kwargs.regularization_strength = 1  # an int where the option is a float
    spec = spec_lib.resolve(config, sharding.make_mesh(2))
    assert (spec.dataset.name, spec.num_train_examples) == ("digits", 1442)  # 1797 - 355 test
    assert (spec.teacher.steps.total, spec.student.steps.total) == (6, 6)
    assert (spec.teacher.seed, spec.student.seed, spec.loss_seed) == (0, 1, 3)
    assert dict(spec.weights) == {"ce": 0.0, "kd": 0.0, "transfer": 10.0}
    assert spec.loss.name == "perception_coherence"
    # Every option with its value, so an option given at its default equals one left out.
    assert spec.loss_options["regularization_strength"] == 1.0
    assert dict(spec.config.distill.loss_kwargs) == dict(spec.loss_options)
    assert spec.probe_split == "train"


# ----------------------------------------------------------------------------- checkpoints, NaN


def test_checkpointer_keeps_last_k_and_restores_exactly(tmp_path):
    mesh = sharding.make_mesh(1)
    rep = sharding.replicated(mesh)
    tree = {"w": jnp.arange(6.0).reshape(2, 3), "n": jnp.int32(0)}
    ckpt = checkpoint.Checkpointer(str(tmp_path), max_to_keep=2)
    for step in (2, 4, 6):
        ckpt.save(step, {"w": tree["w"] * step, "n": jnp.int32(step)})
    ckpt.wait()
    assert ckpt.latest_step() == 6
    assert sorted(int(d) for d in os.listdir(tmp_path) if d.isdigit()) == [4, 6]
    restored = ckpt.restore(4, checkpoint.abstract_like(tree, rep))
    np.testing.assert_array_equal(restored["w"], np.arange(6.0).reshape(2, 3) * 4)
    assert int(restored["n"]) == 4
    ckpt.close()


def test_nan_loss_stops_the_run_naming_the_step_and_keeps_last_good_checkpoint(
    tmp_path, monkeypatch
):
    config = tiny_digits_config()
    phase = config.teacher.train
    phase.num_steps, phase.log_every, phase.checkpoint_every = 12, 2, 4
    mesh = sharding.make_mesh()
    spec = spec_lib.resolve(config, mesh, num_train_examples=1000)
    ctx = loop.Context(spec, str(tmp_path), log_lib.MetricWriter(str(tmp_path)))
    nan_at = 7  # loss of the step that brings the count to 7 is NaN

    def step_fn(state, batch):
        loss = jnp.where(state.step + 1 == nan_at, jnp.nan, jnp.mean(batch["image"]))
        return state.replace(step=state.step + 1, params=state.params + 1.0), {"loss": loss}

    state = state_lib.TrainState(jnp.int32(0), jnp.zeros(3), {}, {})
    fake = build.Phase(spec.teacher, None, state,
                       lambda state, batch, teacher: step_fn(state, batch))
    with pytest.raises(loop.TrainingDivergedError, match=r"loss is nan at step 7.*step 4"):
        loop.run_phase(ctx, fake)
    ckpt = checkpoint.Checkpointer(str(tmp_path / "teacher" / "checkpoints"), max_to_keep=2)
    assert ckpt.latest_step() == 4
    restored = ckpt.restore(4, checkpoint.abstract_like(state, sharding.replicated(mesh)))
    np.testing.assert_array_equal(restored.params, np.full(3, 4.0))
    ctx.writer.close()


@pytest.mark.parametrize("bad, message", [
    ("metric", r"grad_norm is nan at step 5.*checkpoint \(step 4\)"),
    ("params", r"a parameter is not finite at step 8.*checkpoint \(step 4\)"),
])
def test_divergence_of_any_term_or_parameter_stops_the_run_keeping_a_finite_checkpoint(
    tmp_path, bad, message
):
    """A NaN in a logged term other than the loss, or in the parameters while every metric is
    finite, stops the run too; the checkpoint it names holds finite parameters."""
    config = tiny_digits_config()
    phase = config.teacher.train
    phase.num_steps, phase.log_every, phase.checkpoint_every = 12, 1, 4
    spec = spec_lib.resolve(config, sharding.make_mesh(1), num_train_examples=1000)
    ctx = loop.Context(spec, str(tmp_path), log_lib.MetricWriter(str(tmp_path)))

    def step_fn(state, batch, teacher):
        del teacher
        count = state.step + 1
        params = jnp.where((bad == "params") & (count >= 6), jnp.nan, state.params + 1.0)
        grad_norm = jnp.where((bad == "metric") & (count == 5), jnp.nan, 1.0)
        return state.replace(step=count, params=params), {
            "loss": jnp.mean(batch["image"]), "grad_norm": grad_norm}

    state = state_lib.TrainState(jnp.int32(0), jnp.zeros(3), {}, {})
    with pytest.raises(loop.TrainingDivergedError, match=message):
        loop.run_phase(ctx, build.Phase(spec.teacher, None, state, step_fn))
    ckpt = checkpoint.Checkpointer(str(tmp_path / "teacher" / "checkpoints"), max_to_keep=2)
    assert ckpt.latest_step() == 4
    restored = ckpt.restore(4, checkpoint.abstract_like(state, sharding.replicated(spec.mesh)))
    np.testing.assert_array_equal(restored.params, np.full(3, 4.0))
    ctx.writer.close()


# ----------------------------------------------------------------------------- sharding


def test_eight_devices_give_the_one_device_loss_trajectory(teacher):
    """Same global batch on a 1-device and an 8-device mesh: same losses and parameters."""
    config = tiny_digits_config()
    config.distill.protocol, config.distill.alpha = "class_aware", 0.5
    config.distill.beta, config.distill.kd_temperature = 10.0, 4.0
    config.student.train = _phase(
        num_steps=3, schedule=dict(name="constant"), optimizer=dict(name="sgd", learning_rate=0.1)
    )
    rng = np.random.default_rng(0)
    batches = [
        {
            "image": rng.normal(size=(16, 8, 8, 1)).astype(np.float32),
            "label": rng.integers(0, 10, 16).astype(np.int32),
        }
        for _ in range(3)
    ]
    trajectories = []
    for n in (1, 8):
        spec = spec_lib.resolve(config, sharding.make_mesh(n), num_train_examples=100)
        mesh = spec.mesh
        if n > 1:  # On 8 devices the teacher is built there too (the one-device one is shared).
            teacher = build.teacher_phase(spec).model()
        student = build.student_phase(spec, teacher)
        state, step = student.state, build.jit_step(student.step, mesh)
        losses_seen = []
        with jax.set_mesh(mesh):
            for b in batches:
                state, metrics = step(state, b, teacher.variables)
                losses_seen.append([float(metrics[k]) for k in ("loss", "ce", "kd", "transfer")])
        trajectories.append((np.array(losses_seen), jax.device_get(state.params)))
    # 8 devices reduce the gradients in another order: equal to float32 rounding, which three
    # SGD steps carry into the parameters and the later losses.
    assert_close(trajectories[0][0], trajectories[1][0], rtol=1e-4)
    jax.tree.map(
        lambda a, b: assert_close(a, b, rtol=1e-4), trajectories[0][1], trajectories[1][1]
    )


# ----------------------------------------------------------------------------- rate factor, forward


def test_a_rate_factor_in_the_state_equals_the_rate_times_the_factor(teacher):
    """A student built with ``rate_factor=True``, its step compiled once, ends at factors 0.5 and 3
    where plain runs at 0.5x and 3x the learning rate end (adamw updates are linear in the
    rate)."""
    config = tiny_digits_config()
    mesh = sharding.make_mesh(1)
    rng = np.random.default_rng(0)
    batches = [{"image": rng.normal(size=(16, 8, 8, 1)).astype(np.float32),
                "label": rng.integers(0, 10, 16).astype(np.int32)} for _ in range(4)]

    def phase(learning_rate_times=1.0, rate_factor=False):
        cfg = config.copy_and_resolve_references()
        cfg.student.train.optimizer.learning_rate *= learning_rate_times
        return build.student_phase(spec_lib.resolve(cfg, mesh, num_train_examples=100),
                                   teacher, rate_factor=rate_factor)

    def run(step, state):
        for b in batches:
            state, metrics = step(state, b, teacher.variables)
        return state.params, metrics["loss"]

    scaled_phase = phase(rate_factor=True)
    scaled_step = jax.jit(scaled_phase.step)
    for factor in (0.5, 3.0):
        *opt_state, scale = scaled_phase.state.opt_state
        scale = scale._replace(hyperparams={"step_size": jnp.float32(factor)})
        scaled, scaled_loss = run(scaled_step,
                                  scaled_phase.state.replace(opt_state=(*opt_state, scale)))
        plain_phase = phase(learning_rate_times=factor)
        plain, plain_loss = run(jax.jit(plain_phase.step), plain_phase.state)
        assert_close(scaled_loss, plain_loss)
        # Four adamw steps from equal states: the factor applied after the update instead of in
        # the rate rounds differently, and the next gradients carry it.
        jax.tree.map(lambda a, b: assert_close(a, b, rtol=1e-4, rel_atol=1e-4), scaled, plain)


def test_jitting_a_models_forward_twice_compiles_it_once(caplog, teacher):
    spec = spec_lib.resolve(tiny_digits_config(), sharding.make_mesh(1), num_train_examples=100)
    model = build.Model(build.abstract_teacher(spec).graphdef, teacher.variables)
    images = np.zeros((3, 8, 8, 1), np.float32)
    with caplog.at_level("WARNING"), jax.log_compiles(True):
        for _ in range(2):
            jax.jit(model.forward)(model.variables, images)
    compiled = [r for r in caplog.records if "Compiling jit(forward)" in r.getMessage()]
    assert len(compiled) == 1, [r.getMessage()[:80] for r in caplog.records]


# ----------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("digits_run"))
    config = tiny_digits_config()
    return config, workdir, trainer.run(config, workdir)


def test_digits_job_reports_every_metric_in_range(finished_run):
    _, _, results = finished_run
    expected = {
        "teacher/top1",
        "teacher/linear_probe",
        "teacher/knn",
        "student/top1",
        "student/linear_probe",
        "student/knn",
        "student/pc_score",
        "student/cka",
        "student/neighbourhood_recall",
    }
    assert set(results) == expected
    for key, value in results.items():
        low = -1.0 if key.endswith("pc_score") else 0.0
        assert low <= value <= 1.0, (key, value)


def test_digits_job_writes_config_metrics_events_and_checkpoints(finished_run):
    config, workdir, results = finished_run
    saved = json.load(open(os.path.join(workdir, "config.json")))
    assert saved["student"]["train"]["num_steps"] == config.student.train.num_steps
    records = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    train_steps = {(r["phase"], r["step"]) for r in records if r["split"] == "train"}
    assert {("teacher", 2), ("teacher", 6), ("student", 4), ("student", 6)} <= train_steps
    assert json.load(open(os.path.join(workdir, "results.json"))) == pytest.approx(results)
    for phase in ("teacher", "student", "final"):
        events = os.listdir(os.path.join(workdir, "tensorboard", phase))
        assert any(e.startswith("events.out.tfevents") for e in events)
    assert checkpoint.model_exists(os.path.join(workdir, "teacher", "model"))
    student_ckpts = os.listdir(os.path.join(workdir, "student", "checkpoints"))
    assert "6" in student_ckpts and "3" in student_ckpts


def test_summary_table_shows_each_model_row(finished_run):
    config, _, results = finished_run
    table = report.summary_table(config, results)
    assert f"{100 * results['student/linear_probe']:.2f}" in table
    assert f"{results['student/pc_score']:.4f}" in table
    assert table.count("\n") >= 3


@pytest.mark.parametrize("protocol, shown", [("class_unaware", False), ("class_aware", True)])
def test_summary_table_reports_student_top1_only_when_its_head_was_trained(protocol, shown):
    config = config_lib.base_config()
    config.distill.protocol = protocol
    results = {"teacher/top1": 0.9912, "student/top1": 0.1234, "student/pc_score": 0.5}
    student_row = next(
        line for line in report.summary_table(config, results).splitlines()
        if line.startswith("student")
    )
    assert ("12.34" in student_row) is shown
    assert "0.5000" in student_row


def test_pc_score_uses_the_dissimilarities_of_the_perception_coherence_loss():
    config = config_lib.base_config()
    assert dict(spec_lib.resolve(config, num_train_examples=100).pc_dissimilarities) == {
        "student_dissimilarity": "euclidean", "teacher_dissimilarity": "euclidean"
    }
    config.distill.loss_kwargs.teacher_dissimilarity = "cosine"
    dissimilarities = dict(spec_lib.resolve(config, num_train_examples=100).pc_dissimilarities)
    assert dissimilarities["teacher_dissimilarity"] == "cosine"
    rng = np.random.default_rng(0)
    student, teacher = ({"features": rng.normal(size=(12, d)).astype(np.float32)} for d in (3, 5))
    expected = pc_score(student["features"], teacher["features"], teacher_dissimilarity="cosine")
    assert_close(
        evaluation.coherence(student, teacher, chunk_size=0, **dissimilarities), expected
    )


def test_evaluation_scores_the_student_against_the_teacher_on_what_pc_does_not_train():
    """CKA and the k=10 neighbourhood recall of the eval split's features, next to pc_score: the
    values of a direct NumPy evaluation of their definitions."""
    rng = np.random.default_rng(0)
    label = np.arange(40) % 4
    teacher_f = rng.normal(size=(40, 6))
    student_f = teacher_f[:, :3] + 0.3 * rng.normal(size=(40, 3))
    pred = {"test": {"features": student_f, "logits": student_f, "label": label},
            "train": {"features": student_f, "logits": student_f, "label": label}}
    scores, _ = evaluation.evaluate(
        pred.__getitem__, ["test"], probe_split="train", knn_k=3, num_classes=4,
        teacher={"test": {"features": teacher_f, "logits": teacher_f, "label": label}})
    xc, yc = student_f - student_f.mean(0), teacher_f - teacher_f.mean(0)
    cka = np.sum((yc.T @ xc) ** 2) / (np.linalg.norm(xc.T @ xc) * np.linalg.norm(yc.T @ yc))

    def neighbours(f):
        d = np.linalg.norm(f[:, None] - f[None], axis=-1)
        np.fill_diagonal(d, np.inf)
        return np.argsort(d, axis=1)[:, :10]

    recall = np.mean([len(set(a) & set(b)) / 10
                      for a, b in zip(neighbours(student_f), neighbours(teacher_f))])
    assert_close(scores["test"]["cka"], cka)
    assert_close(scores["test"]["neighbourhood_recall"], recall)
    assert -1 <= scores["test"]["pc_score"] <= 1


class _Crash(Exception):
    pass


def test_crash_after_a_checkpoint_then_rerun_gives_the_uninterrupted_results(
    finished_run, tmp_path, monkeypatch
):
    """The student phase dies right after its step-3 checkpoint; the same run again resumes there,
    reads the exported teacher, and ends with the uninterrupted run's metrics."""
    config, finished_workdir, expected = finished_run
    workdir = str(tmp_path)
    shutil.copytree(os.path.join(finished_workdir, "teacher"), os.path.join(workdir, "teacher"))
    real_save = checkpoint.Checkpointer.save
    crash = {"armed": True}

    def save_then_crash(self, step, state):
        real_save(self, step, state)
        if crash["armed"] and step == 3:
            self.wait()
            raise _Crash

    monkeypatch.setattr(checkpoint.Checkpointer, "save", save_then_crash)
    with pytest.raises(_Crash):
        trainer.run(config, workdir)
    assert (
        checkpoint.Checkpointer(
            os.path.join(workdir, "student", "checkpoints"), max_to_keep=2
        ).latest_step()
        == 3
    )
    crash["armed"] = False
    resumed = trainer.run(config, workdir)
    assert resumed == pytest.approx(expected, rel=1e-5, abs=1e-6)

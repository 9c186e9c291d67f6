"""Perception-coherence transfer on MNIST-1D (offline, procedurally generated 1-D digits).

Teacher mnist1d_cnn (cross-entropy), then student mnist1d_student (an MLP) trained on the
teacher's features with the perception coherence loss alone (class-unaware protocol); scored by
linear probe, kNN and pc_score.

Run:

  python train.py --config configs/mnist1d.py --workdir workdir/mnist1d

Time: not measured.
"""

from pcjax.training.config import base_config, phase_config


def get_config():
    config = base_config()
    config.name = "mnist1d"
    config.dataset = "mnist1d"
    config.teacher.model = "mnist1d_cnn"
    config.student.model = "mnist1d_student"
    cosine = dict(name="cosine", warmup_steps=50, decay_epochs=())
    # Teacher and student share the recipe; the student gets more epochs.
    recipe = dict(
        batch_size=128,
        augment=False,
        log_every=100,
        checkpoint_every=500,
        optimizer=dict(name="adamw", learning_rate=3e-3, weight_decay=1e-4),
        schedule=cosine,
    )
    config.teacher.train = phase_config(num_epochs=40.0, **recipe)
    config.student.train = phase_config(num_epochs=60.0, **recipe)
    config.distill.protocol = "class_unaware"
    config.distill.loss = "perception_coherence"
    config.eval.batch_size = 500
    return config

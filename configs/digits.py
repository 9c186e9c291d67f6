"""Default job: perception-coherence transfer on scikit-learn's digits (offline, CPU-sized).

Teacher digits_cnn is trained with cross-entropy, then the much smaller digits_student learns from
the frozen teacher's features with the perception coherence loss alone (class-unaware protocol);
its frozen features are scored by a linear probe, kNN, and pc_score against the teacher.

Run (this is also what `python train.py` with no arguments runs, into ./workdir/digits):

    python train.py --config configs/digits.py --workdir workdir/digits

Time: 38 s on a quiet 2-core CPU (the figure the README quotes).
"""

from pcjax.training.config import base_config, phase_config


def get_config():
    config = base_config()
    config.name = "digits"
    config.dataset = "digits"
    config.teacher.model = "digits_cnn"
    config.student.model = "digits_student"
    cosine = dict(name="cosine", warmup_steps=20, decay_epochs=())
    # Teacher and student share the recipe; the student gets more epochs.
    recipe = dict(
        batch_size=128,
        augment=False,
        log_every=50,
        checkpoint_every=200,
        eval_every=0,
        optimizer=dict(name="adamw", learning_rate=3e-3, weight_decay=1e-4),
        schedule=cosine,
    )
    config.teacher.train = phase_config(num_epochs=15.0, **recipe)
    config.student.train = phase_config(num_epochs=30.0, **recipe)
    config.distill.protocol = "class_unaware"
    config.distill.loss = "perception_coherence"
    config.eval.batch_size = 512
    config.eval.knn_k = 5
    return config

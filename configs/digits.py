"""Default job: perception-coherence transfer on scikit-learn's digits (offline, CPU-sized).

Teacher digits_cnn is trained with cross-entropy, then the much smaller digits_student learns from
the frozen teacher's features with the perception coherence loss alone (class-unaware protocol);
its frozen features are scored by a linear probe, kNN, and pc_score against the teacher.

Run (this is also what `python train.py` with no arguments runs, into ./workdir/digits):

    python train.py --config configs/digits.py --workdir workdir/digits

Time: 46 s on a 2-core CPU with one other process running (load average 3, 2026-12-05; the
figure the README quotes), most of the first seconds of each phase compiling its step.
"""

import ml_collections


def get_config():
    """The keys that differ from the schema's defaults (pcjax.training.config.base_config)."""
    # Teacher and student share the recipe; the student gets more epochs.
    recipe = dict(
        batch_size=128,
        augment=False,
        log_every=50,
        checkpoint_every=200,
        eval_every=0,
        optimizer=dict(name="adamw", learning_rate=3e-3, weight_decay=1e-4),
        schedule=dict(name="cosine", warmup_steps=20, decay_epochs=()),
    )
    return ml_collections.ConfigDict(dict(
        name="digits",
        dataset="digits",
        teacher=dict(model="digits_cnn", train=dict(num_epochs=15.0, **recipe)),
        student=dict(model="digits_student", train=dict(num_epochs=30.0, **recipe)),
        distill=dict(protocol="class_unaware", loss="perception_coherence"),
        eval=dict(batch_size=512, knn_k=5),
    ))

"""Perception-coherence transfer on MNIST-1D (offline, procedurally generated 1-D digits).

Teacher mnist1d_cnn (cross-entropy), then student mnist1d_student (an MLP) trained on the
teacher's features with the perception coherence loss alone (class-unaware protocol); scored by
linear probe, kNN and pc_score. The recipe is configs/digits.py's with longer phases.

Run:

  python train.py --config configs/mnist1d.py --workdir workdir/mnist1d

Time: not measured.
"""

import os
import runpy

_DIGITS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "digits.py")


def get_config():
    config = runpy.run_path(_DIGITS)["get_config"]()
    config.update(name="mnist1d", dataset="mnist1d")
    config.teacher.model = "mnist1d_cnn"
    config.student.model = "mnist1d_student"
    for phase, epochs in ((config.teacher.train, 40.0), (config.student.train, 60.0)):
        phase.update(num_epochs=epochs, log_every=100, checkpoint_every=500)
        phase.schedule.warmup_steps = 50
    config.eval.batch_size = 500
    return config

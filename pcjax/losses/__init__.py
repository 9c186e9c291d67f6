"""Transfer losses: perception coherence and the RepDistiller baselines, as pure functions.

    from pcjax.losses import perception_coherence_loss, rkd
    loss = perception_coherence_loss(student_features, teacher_features)

`pcjax.losses.transfer` holds them by name in the form a training step uses (heads, state across
steps, options), CRD (`pcjax.losses.crd`) included.
"""

from pcjax.losses import crd
from pcjax.losses.baselines import cc, fitnet, kd, pkt, rkd, sp
from pcjax.losses.perception_coherence import pc_score, perception_coherence_loss

__all__ = [
    "cc", "crd", "fitnet", "kd", "pc_score", "perception_coherence_loss", "pkt", "rkd", "sp",
]

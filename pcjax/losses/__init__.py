"""Transfer losses by name: perception coherence and the RepDistiller baselines.

    spec = pcjax.losses.get("rkd")
    loss = spec.default_weight * spec.fn(student_out, teacher_out)

``spec.inputs`` says which model output the loss consumes ("features" or "logits");
``spec.projection == "linear"`` means the student side must first pass through a learned linear map
to the teacher's width, trained with the student (FitNet's regressor, CC's embedding).
``spec.stateful`` marks CRD, which is not a plain ``fn(student_x, teacher_x)``: see `crd`.
"""

import dataclasses
from collections.abc import Callable
from typing import Literal

from pcjax.losses import crd
from pcjax.losses.baselines import cc, fitnet, kd, pkt, rkd, sp
from pcjax.losses.perception_coherence import pc_score, perception_coherence_loss


@dataclasses.dataclass(frozen=True)
class LossSpec:
    """How a training loop uses a transfer loss.

    Attributes:
      fn: the pure loss, called ``fn(student_x, teacher_x, **kwargs)``.
      inputs: the model output it consumes, ``"features"`` or ``"logits"``.
      projection: None, or ``"linear"``: the student side first goes through a learned linear map
        to the teacher's width.
      default_weight: the weight of this term in CE + weight * loss (RepDistiller's beta; for KD,
        its alpha).
      accepts_mask: whether ``fn`` takes ``mask=`` (a (B,) bool of valid samples).
      stateful: the loss keeps state across steps and reads each example's dataset index: ``fn``
        is ``crd.crd_loss(state, emb_s, emb_t, contrast_idx)``, fed by its own embedding heads
        (``crd.CRDHeads``), with negatives from ``crd.sample_contrast_indices`` and the memory
        written by ``crd.update_banks`` after each step.
    """

    fn: Callable
    inputs: Literal["features", "logits"]
    projection: Literal["linear"] | None
    default_weight: float
    accepts_mask: bool = False
    stateful: bool = False


# perception_coherence's weight is not from a reference: 10 makes the loss of an unrelated student
# (mse of independent uniform ranks, about 1/6) contribute about 1.7, the order of an early
# cross-entropy, like the RepDistiller betas do for their losses.
_REGISTRY = {
    "perception_coherence": LossSpec(
        perception_coherence_loss, "features", None, 10.0, accepts_mask=True
    ),
    "kd": LossSpec(kd, "logits", None, 0.9),
    "fitnet": LossSpec(fitnet, "features", "linear", 100.0),
    "rkd": LossSpec(rkd, "features", None, 1.0),
    "pkt": LossSpec(pkt, "features", None, 30000.0),
    "sp": LossSpec(sp, "features", None, 3000.0),
    "cc": LossSpec(cc, "features", "linear", 0.02),
    "crd": LossSpec(crd.crd_loss, "features", None, 0.8, stateful=True),
}


def names() -> tuple[str, ...]:
    """The registered loss names."""
    return tuple(_REGISTRY)


def get(name: str) -> LossSpec:
    """The LossSpec registered under ``name``; ValueError listing the names if unknown."""
    if name not in _REGISTRY:
        raise ValueError(f"Unknown loss {name!r}; registered losses: {', '.join(_REGISTRY)}.")
    return _REGISTRY[name]


__all__ = [
    "LossSpec", "cc", "crd", "fitnet", "get", "kd", "names", "pc_score",
    "perception_coherence_loss", "pkt", "rkd", "sp",
]

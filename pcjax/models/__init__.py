"""Model zoo: Flax NNX teachers and students, built by name.

Every model is called as ``model(x, *, train)`` on a channels-last float batch and returns
:class:`ModelOutput` ``(features, logits)``; ``features`` ``(B, D)`` is the penultimate embedding,
the input of the final linear classifier (always ``model.fc``, an ``nnx.Linear``). ``train=True``
normalizes with batch statistics and updates the BatchNorm running averages (``nnx.BatchStat``);
``train=False`` uses the running averages, so each example's output is independent of the rest
of the batch. No model has dropout (the reference architectures use none), so calls need no
random keys.

Families: CIFAR (32x32x3) ``resnet{8,14,20,32,44,56,110}``, ``resnet{8,32}x4``, ``resnet50``,
``wrn_{16,40}_{1,2}``, ``vgg{8,11,13,16,19}``, ``mobilenetv2``, ``shufflev1``, ``shufflev2``
(the RepDistiller zoo); ImageNet (224x224x3) ``imagenet_resnet{18,34,50}``; offline
``digits_cnn``, ``digits_student`` (8x8x1) and ``mnist1d_cnn``, ``mnist1d_student``,
``mnist1d_small_cnn`` (40x1).

Example::

    model = pcjax.models.create("resnet8x4", num_classes=100, rngs=nnx.Rngs(0))
    features, logits = model(images, train=False)

A zoo model's state is its ``nnx.Param`` and ``nnx.BatchStat`` variables (no rng streams); the
train step splits it into ``params`` and ``model_state`` (everything else: the BatchNorm running
statistics) and merges them back (``pcjax.training.state.split`` / ``merge``).
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
from flax import nnx

from pcjax.models import mobilenetv2, resnet, shufflenet, small, vgg, wrn
from pcjax.models.common import Layers, ModelOutput

_REGISTRY = {**resnet.MODELS, **wrn.MODELS, **vgg.MODELS, **mobilenetv2.MODELS,
             **shufflenet.MODELS, **small.MODELS}


def names() -> tuple[str, ...]:
    """Names accepted by :func:`create`, sorted."""
    return tuple(sorted(_REGISTRY))


def create(name: str, *, num_classes: int, rngs: nnx.Rngs, dtype: Any = jnp.float32,
           param_dtype: Any = jnp.float32) -> nnx.Module:
    """Builds the model registered as ``name``.

    Args:
      name: one of :func:`names`.
      num_classes: number of logits (>= 1).
      rngs: ``nnx.Rngs`` with a ``params`` (or default) stream for initialization.
      dtype: compute dtype of every layer (e.g. ``jnp.bfloat16``); BatchNorm statistics are
        still reduced in float32.
      param_dtype: dtype in which parameters are stored; BatchNorm running statistics are
        always float32.

    Raises:
      ValueError: unknown ``name`` (the message lists the known names) or ``num_classes < 1``.
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(names())}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    layers = Layers(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
    return _REGISTRY[name](layers, num_classes=num_classes)


__all__ = ["ModelOutput", "create", "names"]

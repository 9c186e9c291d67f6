"""Building blocks shared by every model family.

Conventions (all families follow them, so the registry can treat models alike):

* inputs are channels-last: ``(B, H, W, C)`` images or ``(B, L, C)`` sequences;
* BatchNorm follows PyTorch's defaults (running average ``0.9 * old + 0.1 * batch``,
  ``epsilon = 1e-5``) because the reference zoo (RepDistiller, torchvision) was trained with
  them; its running statistics are ``nnx.BatchStat`` variables;
* convolutions pad symmetrically by ``kernel // 2`` like PyTorch's ``padding=k//2`` (XLA's
  ``"SAME"`` pads stride-2 convolutions asymmetrically, which would shift every feature map);
* ``dtype`` is the compute dtype and ``param_dtype`` the storage dtype of every layer.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

# PyTorch's BatchNorm momentum 0.1 weighs the *new* batch; Flax's momentum weighs the *old* average.
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5

# Kaiming-normal with fan_out = k*k*out_channels: how the reference zoo initializes every conv.
conv_init = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")
# PyTorch's nn.Linear default, U(-1/sqrt(fan_in), 1/sqrt(fan_in)), which has variance 1/(3*fan_in).
dense_init = nnx.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


class ModelOutput(NamedTuple):
    """What every model returns.

    Attributes:
      features: ``(B, D)`` penultimate embedding, the input of the final linear classifier.
      logits: ``(B, num_classes)`` classifier output, in the model's compute dtype.
    """

    features: jax.Array
    logits: jax.Array


@dataclasses.dataclass(frozen=True)
class Layers:
    """Makes layers that draw from one ``nnx.Rngs`` and share one precision policy.

    Attributes:
      rngs: source of the ``params`` keys used for initialization.
      dtype: compute dtype (e.g. ``jnp.bfloat16`` for mixed precision).
      param_dtype: dtype in which parameters are stored.
    """

    rngs: nnx.Rngs
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def conv(self, in_features: int, out_features: int, kernel_size: int | Sequence[int],
             stride: int = 1, *, groups: int = 1, use_bias: bool = False) -> nnx.Conv:
        """Convolution with PyTorch-style symmetric ``kernel // 2`` padding.

        An int ``kernel_size`` means a square 2-D kernel; pass a 1-tuple for 1-D convolutions.
        """
        kernel = (kernel_size, kernel_size) if isinstance(kernel_size, int) else tuple(kernel_size)
        return nnx.Conv(
            in_features, out_features, kernel, strides=(stride,) * len(kernel),
            padding=tuple((k // 2, k // 2) for k in kernel), feature_group_count=groups,
            use_bias=use_bias, kernel_init=conv_init, dtype=self.dtype,
            param_dtype=self.param_dtype, rngs=self.rngs,
        )

    def batch_norm(self, num_features: int) -> nnx.BatchNorm:
        """BatchNorm over the last axis; statistics are reduced in float32 whatever ``dtype``."""
        return nnx.BatchNorm(
            num_features, momentum=BN_MOMENTUM, epsilon=BN_EPSILON, use_fast_variance=False,
            dtype=self.dtype, param_dtype=self.param_dtype, rngs=self.rngs,
        )

    def linear(self, in_features: int, out_features: int, *, kernel_init=dense_init) -> nnx.Linear:
        return nnx.Linear(in_features, out_features, kernel_init=kernel_init, dtype=self.dtype,
                          param_dtype=self.param_dtype, rngs=self.rngs)


class ConvBN(nnx.Module):
    """Convolution (no bias unless asked) followed by BatchNorm; no activation."""

    def __init__(self, layers: Layers, in_features: int, out_features: int,
                 kernel_size: int | Sequence[int], stride: int = 1, *, groups: int = 1,
                 use_bias: bool = False):
        self.conv = layers.conv(in_features, out_features, kernel_size, stride, groups=groups,
                                use_bias=use_bias)
        self.bn = layers.batch_norm(out_features)

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        return self.bn(self.conv(x), use_running_average=not train)


class BlockStack(nnx.Module):
    """Forward pass of the nets built as stem -> blocks -> optional head -> pooled features.

    ``x`` -> relu(``stem``) -> each of ``blocks`` -> relu(``head``) when the net has one ->
    global average pooling (``features``) -> ``fc`` (logits). Subclasses build ``stem`` and
    ``head`` (``ConvBN``), ``blocks`` (an ``nnx.List``) and ``fc`` in ``__init__``.
    """

    head = None

    def __call__(self, x: jax.Array, *, train: bool) -> ModelOutput:
        check_input(x, spatial_dims=2, channels=3, model=type(self).__name__)
        x = nnx.relu(self.stem(x, train=train))
        for block in self.blocks:
            x = block(x, train=train)
        if self.head is not None:
            x = nnx.relu(self.head(x, train=train))
        features = global_avg_pool(x)
        return ModelOutput(features, self.fc(features))


def global_avg_pool(x: jax.Array) -> jax.Array:
    """Mean over every spatial axis: ``(B, *spatial, C) -> (B, C)``."""
    return x.mean(axis=tuple(range(1, x.ndim - 1)))


def channel_shuffle(x: jax.Array, groups: int) -> jax.Array:
    """ShuffleNet's channel shuffle on the last axis.

    Output channel ``i * groups + j`` is input channel ``j * (C // groups) + i``: channels are
    viewed as a ``(groups, C // groups)`` grid and transposed (Zhang et al., CVPR 2018).
    """
    *lead, channels = x.shape
    return x.reshape(*lead, groups, channels // groups).swapaxes(-1, -2).reshape(*lead, channels)


def check_input(x: jax.Array, *, spatial_dims: int, channels: int, model: str) -> None:
    """Raises ValueError unless ``x`` is ``(B, *spatial, channels)`` with ``spatial_dims`` axes."""
    if x.ndim != spatial_dims + 2 or x.shape[-1] != channels:
        layout = ("(batch, height, width, channels)" if spatial_dims == 2
                  else "(batch, length, channels)")
        raise ValueError(
            f"{model}: x must be channels-last {layout} with {channels} channel(s), "
            f"got shape {tuple(x.shape)}"
        )

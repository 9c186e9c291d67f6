"""MobileNetV2 for CIFAR as in the RepDistiller zoo (``mobilenetv2`` = the reference's
``mobile_half``: expansion 6, width multiplier 0.5).

Sandler, Howard, Zhu, Zhmoginov, Chen, "MobileNetV2: Inverted Residuals and Linear Bottlenecks",
CVPR 2018.

Stem: 3x3 conv stride 2 to ``int(32 * width)`` channels (32x32 -> 16x16). Then inverted residual
stages ``(t, c, n, s)``: ``(1, 16, 1, 1), (T, 24, 2, 1), (T, 32, 3, 2), (T, 64, 4, 2),
(T, 96, 3, 1), (T, 160, 3, 2), (T, 320, 1, 1)`` with ``c`` scaled by ``width``; every block,
the ``t = 1`` one included, has its 1x1 expansion conv. Head: 1x1 conv to 1280 channels + BN +
relu, global average pooling (``features``, 1280 wide), one linear classifier (no dropout).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
from flax import nnx

from pcjax.models.common import BlockStack, ConvBN, Layers

# (expansion, channels, blocks, first stride); expansion None means "the model's T".
STAGES = ((1, 16, 1, 1), (None, 24, 2, 1), (None, 32, 3, 2), (None, 64, 4, 2),
           (None, 96, 3, 1), (None, 160, 3, 2), (None, 320, 1, 1))

_classifier_init = nnx.initializers.normal(0.01)


class InvertedResidual(nnx.Module):
    """1x1 expand + relu -> 3x3 depthwise (strided) + relu -> 1x1 linear projection; the input is
    added back when the stride is 1 and the width is unchanged."""

    def __init__(self, layers: Layers, in_planes: int, out_planes: int, stride: int,
                 expansion: int):
        hidden = in_planes * expansion
        self.expand = ConvBN(layers, in_planes, hidden, 1)
        self.depthwise = ConvBN(layers, hidden, hidden, 3, stride, groups=hidden)
        self.project = ConvBN(layers, hidden, out_planes, 1)
        self.residual = stride == 1 and in_planes == out_planes

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        out = nnx.relu(self.expand(x, train=train))
        out = nnx.relu(self.depthwise(out, train=train))
        out = self.project(out, train=train)
        return x + out if self.residual else out


class MobileNetV2(BlockStack):
    """MobileNetV2 with expansion ``expansion`` (the reference's T) and width ``width``.

    ``stages`` lists ``(t, channels, blocks, first stride)``; ``t=None`` stands for ``expansion``.
    """

    def __init__(self, layers: Layers, *, expansion: int, width: float, num_classes: int,
                 stages: Sequence[tuple[int | None, int, int, int]] = STAGES):
        in_planes = int(32 * width)
        self.stem = ConvBN(layers, 3, in_planes, 3, 2)
        blocks = []
        for t, channels, count, first_stride in stages:
            out_planes = int(channels * width)
            for index in range(count):
                stride = first_stride if index == 0 else 1
                blocks.append(InvertedResidual(layers, in_planes, out_planes, stride,
                                               expansion if t is None else t))
                in_planes = out_planes
        self.blocks = nnx.List(blocks)
        head_planes = int(1280 * width) if width > 1.0 else 1280
        self.head = ConvBN(layers, in_planes, head_planes, 1)
        self.fc = layers.linear(head_planes, num_classes, kernel_init=_classifier_init)


# name -> factory(layers, *, num_classes)
MODELS = {"mobilenetv2": functools.partial(MobileNetV2, expansion=6, width=0.5)}

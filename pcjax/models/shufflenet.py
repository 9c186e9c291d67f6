"""ShuffleNet V1 and V2 for CIFAR as in the RepDistiller zoo (``shufflev1``, ``shufflev2``).

Zhang, Zhou, Lin, Sun, "ShuffleNet", CVPR 2018; Ma, Zhang, Zheng, Sun, "ShuffleNet V2", ECCV 2018.

Both start with a 1x1 conv to 24 channels + BN + relu at full resolution and have three stages,
each halving the resolution once (32 -> 16 -> 8 -> 4), and end with global average pooling
(``features``) and a linear classifier.

* ``shufflev1``: 3 groups, stage outputs ``(240, 480, 960)``, ``(4, 8, 4)`` bottlenecks.
* ``shufflev2``: net size 1, stage outputs ``(116, 232, 464)``, each stage one down-sampling
  block followed by ``(3, 7, 3)`` basic blocks, then a 1x1 conv to 1024 + BN + relu.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from pcjax.models.common import BlockStack, ConvBN, Layers, channel_shuffle

_STEM_WIDTH = 24


class ShuffleV1Block(nnx.Module):
    """Grouped 1x1 -> channel shuffle -> 3x3 depthwise (strided) -> grouped 1x1.

    Stride 1 adds the input; stride 2 concatenates a 3x3 stride-2 average pool of the input
    (zero padding counted, as PyTorch's ``AvgPool2d(3, 2, 1)`` does), so ``out_planes`` is the
    width of the branch only. The first 1x1 is not grouped when it reads the 24-channel stem.
    """

    def __init__(self, layers: Layers, in_planes: int, out_planes: int, stride: int, groups: int):
        mid_planes = out_planes // 4
        self.first_groups = 1 if in_planes == _STEM_WIDTH else groups
        self.reduce = ConvBN(layers, in_planes, mid_planes, 1, groups=self.first_groups)
        self.depthwise = ConvBN(layers, mid_planes, mid_planes, 3, stride, groups=mid_planes)
        self.expand = ConvBN(layers, mid_planes, out_planes, 1, groups=groups)
        self.stride = stride

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        out = nnx.relu(self.reduce(x, train=train))
        out = channel_shuffle(out, self.first_groups)
        out = nnx.relu(self.depthwise(out, train=train))
        out = self.expand(out, train=train)
        if self.stride == 2:
            pooled = nnx.avg_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)),
                                  count_include_pad=True)
            return nnx.relu(jnp.concatenate([out, pooled], axis=-1))
        return nnx.relu(out + x)


class ShuffleNetV1(BlockStack):
    """ShuffleNet V1; the first block of each stage has stride 2 and concatenates its shortcut."""

    def __init__(self, layers: Layers, *, stage_planes: Sequence[int], stage_sizes: Sequence[int],
                 groups: int, num_classes: int):
        self.stem = ConvBN(layers, 3, _STEM_WIDTH, 1)
        blocks = []
        in_planes = _STEM_WIDTH
        for planes, size in zip(stage_planes, stage_sizes, strict=True):
            for index in range(size):
                if index == 0:
                    blocks.append(ShuffleV1Block(layers, in_planes, planes - in_planes, 2, groups))
                else:
                    blocks.append(ShuffleV1Block(layers, in_planes, planes, 1, groups))
                in_planes = planes
        self.blocks = nnx.List(blocks)
        self.fc = layers.linear(in_planes, num_classes)


class ShuffleV2Block(nnx.Module):
    """Split the channels in halves, transform the second (1x1 + relu, 3x3 depthwise, 1x1 +
    relu), concatenate it after the untouched first half, shuffle with 2 groups."""

    def __init__(self, layers: Layers, planes: int):
        half = planes // 2
        self.half = half
        self.conv1 = ConvBN(layers, half, half, 1)
        self.depthwise = ConvBN(layers, half, half, 3, groups=half)
        self.conv3 = ConvBN(layers, half, half, 1)

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        kept, transformed = x[..., : self.half], x[..., self.half:]
        out = nnx.relu(self.conv1(transformed, train=train))
        out = self.depthwise(out, train=train)
        out = nnx.relu(self.conv3(out, train=train))
        return channel_shuffle(jnp.concatenate([kept, out], axis=-1), 2)


class ShuffleV2DownBlock(nnx.Module):
    """Two stride-2 branches, each ending in ``out_planes / 2`` channels, concatenated and
    shuffled: left = depthwise 3x3 -> 1x1 + relu; right = 1x1 + relu -> depthwise 3x3 -> 1x1 +
    relu."""

    def __init__(self, layers: Layers, in_planes: int, out_planes: int):
        mid = out_planes // 2
        self.left_depthwise = ConvBN(layers, in_planes, in_planes, 3, 2, groups=in_planes)
        self.left_pointwise = ConvBN(layers, in_planes, mid, 1)
        self.right_reduce = ConvBN(layers, in_planes, mid, 1)
        self.right_depthwise = ConvBN(layers, mid, mid, 3, 2, groups=mid)
        self.right_pointwise = ConvBN(layers, mid, mid, 1)

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        left = self.left_depthwise(x, train=train)
        left = nnx.relu(self.left_pointwise(left, train=train))
        right = nnx.relu(self.right_reduce(x, train=train))
        right = self.right_depthwise(right, train=train)
        right = nnx.relu(self.right_pointwise(right, train=train))
        return channel_shuffle(jnp.concatenate([left, right], axis=-1), 2)


class ShuffleNetV2(BlockStack):
    """ShuffleNet V2: per stage one down-sampling block then ``stage_sizes[i]`` basic blocks."""

    def __init__(self, layers: Layers, *, stage_planes: Sequence[int], stage_sizes: Sequence[int],
                 head_planes: int, num_classes: int):
        self.stem = ConvBN(layers, 3, _STEM_WIDTH, 1)
        blocks = []
        in_planes = _STEM_WIDTH
        for planes, size in zip(stage_planes, stage_sizes, strict=True):
            blocks.append(ShuffleV2DownBlock(layers, in_planes, planes))
            blocks.extend(ShuffleV2Block(layers, planes) for _ in range(size))
            in_planes = planes
        self.blocks = nnx.List(blocks)
        self.head = ConvBN(layers, in_planes, head_planes, 1)
        self.fc = layers.linear(head_planes, num_classes)


# name -> factory(layers, *, num_classes)
MODELS = {
    "shufflev1": functools.partial(ShuffleNetV1, stage_planes=(240, 480, 960),
                                   stage_sizes=(4, 8, 4), groups=3),
    "shufflev2": functools.partial(ShuffleNetV2, stage_planes=(116, 232, 464),
                                   stage_sizes=(3, 7, 3), head_planes=1024),
}

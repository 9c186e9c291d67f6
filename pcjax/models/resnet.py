"""Post-activation residual networks: RepDistiller's CIFAR ResNets and the ImageNet ResNets.

He, Zhang, Ren, Sun, "Deep Residual Learning for Image Recognition", CVPR 2016.

One network, three layouts:

* CIFAR ``resnet{8,14,20,32,44,56,110}`` and ``resnet{8,32}x4`` (RepDistiller ``resnet.py``):
  3x3 stem conv at stride 1, three stages of ``(depth - 2) / 6`` BasicBlocks with widths
  ``(16, 32, 64)`` (``x4``: stem 32, widths ``(64, 128, 256)``), strides ``(1, 2, 2)``.
* CIFAR ``resnet50`` (RepDistiller ``resnetv2.py``): 3x3 stem of 64 at stride 1, four stages of
  ``(3, 4, 6, 3)`` Bottlenecks with widths ``(64, 128, 256, 512)``, strides ``(1, 2, 2, 2)``.
* ImageNet ``imagenet_resnet{18,34,50}`` (torchvision layout): 7x7 stride-2 stem + 3x3 stride-2
  max-pool, then the four stages above with BasicBlocks ``(2, 2, 2, 2)`` / ``(3, 4, 6, 3)`` or
  Bottlenecks ``(3, 4, 6, 3)``; the Bottleneck strides in its 3x3 conv ("ResNet v1.5").

A block gets a 1x1 conv + BN projection shortcut whenever its stride or width changes.
``features`` is the globally average-pooled output of the last stage.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Literal

import jax
from flax import nnx

from pcjax.models.common import ConvBN, Layers, ModelOutput, check_input, global_avg_pool


class BasicBlock(nnx.Module):
    """``relu(bn(conv3x3(relu(bn(conv3x3(x))))) + shortcut(x))``."""

    expansion = 1

    def __init__(self, layers: Layers, in_planes: int, planes: int, stride: int):
        self.conv1 = ConvBN(layers, in_planes, planes, 3, stride)
        self.conv2 = ConvBN(layers, planes, planes, 3)
        needs_projection = stride != 1 or in_planes != planes
        self.shortcut = ConvBN(layers, in_planes, planes, 1, stride) if needs_projection else None

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        out = nnx.relu(self.conv1(x, train=train))
        out = self.conv2(out, train=train)
        residual = x if self.shortcut is None else self.shortcut(x, train=train)
        return nnx.relu(out + residual)


class Bottleneck(nnx.Module):
    """1x1 reduce -> 3x3 (strided) -> 1x1 expand to ``4 * planes``, plus shortcut, then relu."""

    expansion = 4

    def __init__(self, layers: Layers, in_planes: int, planes: int, stride: int):
        out_planes = planes * self.expansion
        self.conv1 = ConvBN(layers, in_planes, planes, 1)
        self.conv2 = ConvBN(layers, planes, planes, 3, stride)
        self.conv3 = ConvBN(layers, planes, out_planes, 1)
        needs_projection = stride != 1 or in_planes != out_planes
        self.shortcut = (ConvBN(layers, in_planes, out_planes, 1, stride)
                         if needs_projection else None)

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        out = nnx.relu(self.conv1(x, train=train))
        out = nnx.relu(self.conv2(out, train=train))
        out = self.conv3(out, train=train)
        residual = x if self.shortcut is None else self.shortcut(x, train=train)
        return nnx.relu(out + residual)


class ResNet(nnx.Module):
    """Stem, stages of residual blocks (first stage stride 1, later ones stride 2), pool, linear.

    Args:
      layers: layer factory (rngs and precision).
      block: ``BasicBlock`` or ``Bottleneck``.
      stage_sizes: number of blocks per stage.
      stage_widths: block width (``planes``) per stage.
      stem_width: output channels of the stem convolution.
      stem: ``"cifar"`` (3x3 conv, stride 1) or ``"imagenet"`` (7x7 conv stride 2 + max-pool).
      num_classes: size of the logits.
    """

    def __init__(self, layers: Layers, *, block: type[BasicBlock] | type[Bottleneck],
                 stage_sizes: Sequence[int], stage_widths: Sequence[int], stem_width: int,
                 stem: Literal["cifar", "imagenet"], num_classes: int):
        self.stem_kind = stem
        self.stage_sizes = tuple(stage_sizes)  # names blocks as stage.index (pcjax.convert)
        kernel, stride = (7, 2) if stem == "imagenet" else (3, 1)
        self.stem = ConvBN(layers, 3, stem_width, kernel, stride)
        blocks = []
        in_planes = stem_width
        for stage, (size, width) in enumerate(zip(stage_sizes, stage_widths, strict=True)):
            for index in range(size):
                stride = 2 if stage > 0 and index == 0 else 1
                blocks.append(block(layers, in_planes, width, stride))
                in_planes = width * block.expansion
        self.blocks = nnx.List(blocks)
        self.fc = layers.linear(in_planes, num_classes)

    def __call__(self, x: jax.Array, *, train: bool) -> ModelOutput:
        check_input(x, spatial_dims=2, channels=3, model=type(self).__name__)
        x = nnx.relu(self.stem(x, train=train))
        if self.stem_kind == "imagenet":
            x = nnx.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        for block in self.blocks:
            x = block(x, train=train)
        features = global_avg_pool(x)
        return ModelOutput(features, self.fc(features))


def cifar_resnet(layers: Layers, *, num_classes: int, depth: int, widths: Sequence[int]) -> ResNet:
    """RepDistiller CIFAR ResNet of ``depth = 6n + 2`` layers; ``widths`` = (stem, stage1..3)."""
    if (depth - 2) % 6:
        raise ValueError(f"depth must be 6n + 2 for a BasicBlock CIFAR ResNet, got {depth}")
    n = (depth - 2) // 6
    return ResNet(layers, block=BasicBlock, stage_sizes=(n, n, n), stage_widths=widths[1:],
                  stem_width=widths[0], stem="cifar", num_classes=num_classes)


_STAGE_WIDTHS = (64, 128, 256, 512)
_BASIC_18 = dict(block=BasicBlock, stage_sizes=(2, 2, 2, 2), stage_widths=_STAGE_WIDTHS,
                 stem_width=64)
_BASIC_34 = dict(block=BasicBlock, stage_sizes=(3, 4, 6, 3), stage_widths=_STAGE_WIDTHS,
                 stem_width=64)
_BOTTLENECK_50 = dict(block=Bottleneck, stage_sizes=(3, 4, 6, 3), stage_widths=_STAGE_WIDTHS,
                      stem_width=64)

# name -> factory(layers, *, num_classes)
MODELS = {
    **{f"resnet{d}": functools.partial(cifar_resnet, depth=d, widths=(16, 16, 32, 64))
       for d in (8, 14, 20, 32, 44, 56, 110)},
    **{f"resnet{d}x4": functools.partial(cifar_resnet, depth=d, widths=(32, 64, 128, 256))
       for d in (8, 32)},
    "resnet50": functools.partial(ResNet, stem="cifar", **_BOTTLENECK_50),
    "imagenet_resnet18": functools.partial(ResNet, stem="imagenet", **_BASIC_18),
    "imagenet_resnet34": functools.partial(ResNet, stem="imagenet", **_BASIC_34),
    "imagenet_resnet50": functools.partial(ResNet, stem="imagenet", **_BOTTLENECK_50),
}

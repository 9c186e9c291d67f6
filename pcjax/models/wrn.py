"""Wide residual networks as in the RepDistiller zoo (``wrn_16_1``, ``wrn_16_2``, ``wrn_40_1``,
``wrn_40_2``).

Zagoruyko & Komodakis, "Wide Residual Networks", BMVC 2016.

``wrn_{depth}_{k}``: a 3x3 stem conv of 16 channels, then three stages of ``(depth - 4) / 6``
pre-activation blocks with widths ``(16k, 32k, 64k)`` and strides ``(1, 2, 2)``, a final
BN + relu, global average pooling (``features``, ``64k`` wide) and a linear classifier. The
reference builds these with dropout rate 0, so there is no dropout.
"""

from __future__ import annotations

import functools

import jax
from flax import nnx

from pcjax.models.common import Layers, ModelOutput, check_input, global_avg_pool


class WideBlock(nnx.Module):
    """Pre-activation block: ``conv(relu(bn(conv(relu(bn(x)))))) + shortcut``.

    When the width changes (every stride-2 block here changes it too) the shortcut is a 1x1 conv
    applied to the *activated* input ``relu(bn1(x))``; otherwise it is ``x`` itself.
    """

    def __init__(self, layers: Layers, in_planes: int, out_planes: int, stride: int):
        self.bn1 = layers.batch_norm(in_planes)
        self.conv1 = layers.conv(in_planes, out_planes, 3, stride)
        self.bn2 = layers.batch_norm(out_planes)
        self.conv2 = layers.conv(out_planes, out_planes, 3)
        self.shortcut = (layers.conv(in_planes, out_planes, 1, stride)
                         if in_planes != out_planes else None)

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        activated = nnx.relu(self.bn1(x, use_running_average=not train))
        out = nnx.relu(self.bn2(self.conv1(activated), use_running_average=not train))
        out = self.conv2(out)
        residual = x if self.shortcut is None else self.shortcut(activated)
        return out + residual


class WideResNet(nnx.Module):
    """WRN-``depth``-``widen_factor`` for 32x32 inputs (see the module docstring)."""

    def __init__(self, layers: Layers, *, depth: int, widen_factor: int, num_classes: int):
        if (depth - 4) % 6:
            raise ValueError(f"depth must be 6n + 4 for a wide ResNet, got {depth}")
        n = (depth - 4) // 6
        widths = (16 * widen_factor, 32 * widen_factor, 64 * widen_factor)
        self.stage_sizes = (n,) * len(widths)  # names blocks as stage.index (pcjax.convert)
        self.stem = layers.conv(3, 16, 3)
        blocks = []
        in_planes = 16
        for stage, width in enumerate(widths):
            for index in range(n):
                stride = 2 if stage > 0 and index == 0 else 1
                blocks.append(WideBlock(layers, in_planes, width, stride))
                in_planes = width
        self.blocks = nnx.List(blocks)
        self.bn = layers.batch_norm(in_planes)
        self.fc = layers.linear(in_planes, num_classes)

    def __call__(self, x: jax.Array, *, train: bool) -> ModelOutput:
        check_input(x, spatial_dims=2, channels=3, model=type(self).__name__)
        x = self.stem(x)
        for block in self.blocks:
            x = block(x, train=train)
        features = global_avg_pool(nnx.relu(self.bn(x, use_running_average=not train)))
        return ModelOutput(features, self.fc(features))


# name -> factory(layers, *, num_classes)
MODELS = {f"wrn_{depth}_{k}": functools.partial(WideResNet, depth=depth, widen_factor=k)
          for depth in (16, 40) for k in (1, 2)}

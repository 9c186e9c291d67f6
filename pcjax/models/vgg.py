"""VGG with BatchNorm as in the RepDistiller zoo (``vgg8``, ``vgg11``, ``vgg13``, ``vgg16``,
``vgg19``; the reference's ``*_bn`` variants, which its model dictionary uses under these names).

Simonyan & Zisserman, "Very Deep Convolutional Networks for Large-Scale Image Recognition",
ICLR 2015; CIFAR variant without the fully connected layers.

Five stages of 3x3 conv (with bias) + BN + relu. On 32x32 inputs a 2x2 max-pool follows each of
the first three stages (32 -> 16 -> 8 -> 4); the reference pools after the fourth stage too only
for 64x64 inputs, and so does this module. Stage five is followed by global average pooling:
``features`` is 512 wide, then one linear classifier.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
from flax import nnx

from pcjax.models.common import ConvBN, Layers, ModelOutput, check_input, global_avg_pool

# Channels of each conv, per stage (the reference's cfg 'S', 'A', 'B', 'D', 'E').
CONFIGS: dict[str, tuple[tuple[int, ...], ...]] = {
    "vgg8": ((64,), (128,), (256,), (512,), (512,)),
    "vgg11": ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    "vgg13": ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
    "vgg16": ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),
    "vgg19": ((64, 64), (128, 128), (256, 256, 256, 256), (512, 512, 512, 512),
              (512, 512, 512, 512)),
}

# The classifier of the reference is initialized N(0, 0.01^2).
_classifier_init = nnx.initializers.normal(0.01)


class VGG(nnx.Module):
    """VGG-BN for CIFAR; ``stages`` lists the conv widths of each of the five stages."""

    def __init__(self, layers: Layers, *, stages: Sequence[Sequence[int]], num_classes: int):
        convs = []
        in_channels = 3
        for widths in stages:
            stage = []
            for width in widths:
                stage.append(ConvBN(layers, in_channels, width, 3, use_bias=True))
                in_channels = width
            convs.append(nnx.List(stage))
        self.stages = nnx.List(convs)
        self.fc = layers.linear(in_channels, num_classes, kernel_init=_classifier_init)

    def __call__(self, x: jax.Array, *, train: bool) -> ModelOutput:
        check_input(x, spatial_dims=2, channels=3, model=type(self).__name__)
        pool_after = (0, 1, 2, 3) if x.shape[1] == 64 else (0, 1, 2)
        for index, stage in enumerate(self.stages):
            for conv_bn in stage:
                x = nnx.relu(conv_bn(x, train=train))
            if index in pool_after:
                x = nnx.max_pool(x, (2, 2), strides=(2, 2))
        features = global_avg_pool(x)
        return ModelOutput(features, self.fc(features))


# name -> factory(layers, *, num_classes)
MODELS = {name: functools.partial(VGG, stages=stages) for name, stages in CONFIGS.items()}

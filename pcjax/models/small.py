"""Small networks for the offline datasets: 8x8 ``digits`` and 40-sample ``mnist1d``.

Teachers are plain conv nets (conv + BN + relu, stride-2 convs to downsample, global average
pooling, linear classifier); students are much smaller. ``features`` is always the vector the
final linear classifier reads.

=====================  ============  ===================================================  ========
name                   input         layers                                               features
=====================  ============  ===================================================  ========
``digits_cnn``         (B, 8, 8, 1)  3x3 convs 32, 64, 128/s2 -> avg pool                 128
``digits_student``     (B, 8, 8, 1)  3x3 convs 8, 16/s2, 32/s2 -> avg pool                32
``mnist1d_cnn``        (B, 40, 1)    5-tap convs 32, 64/s2, 128/s2 -> avg pool            128
``mnist1d_student``    (B, 40, 1)    flatten -> dense 64 + relu -> dense 32 + relu        32
``mnist1d_small_cnn``  (B, 40, 1)    5-tap convs 4, 8/s2, 16/s2 -> avg pool (~1k params)  16
=====================  ============  ===================================================  ========

``mnist1d_small_cnn`` is the conv student: with about a thousand parameters its supervised accuracy
lies between chance and the teacher's, which leaves a transfer loss room to help.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
from flax import nnx

from pcjax.models.common import ConvBN, Layers, ModelOutput, check_input, global_avg_pool


class ConvNet(nnx.Module):
    """Stack of conv + BN + relu layers, global average pooling, linear classifier.

    Args:
      layers: layer factory (rngs and precision).
      convs: ``(out_channels, stride)`` per conv layer.
      kernel_size: kernel shape; its length is the number of spatial axes (1 or 2).
      in_channels: channels of the input.
      num_classes: size of the logits.
    """

    def __init__(self, layers: Layers, *, convs: Sequence[tuple[int, int]],
                 kernel_size: tuple[int, ...], in_channels: int, num_classes: int):
        self.in_channels = in_channels
        self.spatial_dims = len(kernel_size)
        stack = []
        for out_channels, stride in convs:
            stack.append(ConvBN(layers, in_channels, out_channels, kernel_size, stride))
            in_channels = out_channels
        self.convs = nnx.List(stack)
        self.fc = layers.linear(in_channels, num_classes)

    def __call__(self, x: jax.Array, *, train: bool) -> ModelOutput:
        check_input(x, spatial_dims=self.spatial_dims, channels=self.in_channels,
                    model=type(self).__name__)
        for conv_bn in self.convs:
            x = nnx.relu(conv_bn(x, train=train))
        features = global_avg_pool(x)
        return ModelOutput(features, self.fc(features))


class MLP(nnx.Module):
    """Flattens a ``(B, L, C)`` input, then dense + relu layers, then a linear classifier.

    No BatchNorm: the model has no ``nnx.BatchStat`` and ``train`` changes nothing.
    """

    def __init__(self, layers: Layers, *, input_shape: tuple[int, int], hidden: Sequence[int],
                 num_classes: int):
        self.input_shape = input_shape
        in_features = input_shape[0] * input_shape[1]
        dense = []
        for width in hidden:
            dense.append(layers.linear(in_features, width))
            in_features = width
        self.hidden = nnx.List(dense)
        self.fc = layers.linear(in_features, num_classes)

    def __call__(self, x: jax.Array, *, train: bool) -> ModelOutput:
        del train  # no BatchNorm or dropout
        check_input(x, spatial_dims=1, channels=self.input_shape[1], model=type(self).__name__)
        if x.shape[1] != self.input_shape[0]:
            raise ValueError(f"MLP: x must have length {self.input_shape[0]}, got shape {x.shape}")
        x = x.reshape(x.shape[0], -1)
        for layer in self.hidden:
            x = nnx.relu(layer(x))
        return ModelOutput(x, self.fc(x))


# name -> factory(layers, *, num_classes)
MODELS = {
    "digits_cnn": functools.partial(ConvNet, convs=((32, 1), (64, 1), (128, 2)),
                                    kernel_size=(3, 3), in_channels=1),
    "digits_student": functools.partial(ConvNet, convs=((8, 1), (16, 2), (32, 2)),
                                        kernel_size=(3, 3), in_channels=1),
    "mnist1d_cnn": functools.partial(ConvNet, convs=((32, 1), (64, 2), (128, 2)),
                                     kernel_size=(5,), in_channels=1),
    "mnist1d_student": functools.partial(MLP, input_shape=(40, 1), hidden=(64, 32)),
    "mnist1d_small_cnn": functools.partial(ConvNet, convs=((4, 1), (8, 2), (16, 2)),
                                           kernel_size=(5,), in_channels=1),
}

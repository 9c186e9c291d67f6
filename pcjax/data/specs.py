"""What every supported dataset looks like: classes, shapes, splits, normalization, augmentation.

Images reach the models as float32, channels last, normalized per channel:

        image = (stored_pixel / pixel_scale - mean) / std

`mean` and `std` are in units of `stored_pixel / pixel_scale`. For the prepared TFDS datasets they
are the per-channel statistics of the training images in [0, 1] used throughout the distillation
literature (CIFAR-100: RepDistiller, Tian et al., ICLR 2020; ImageNet: the torchvision constants).
For digits they are the training split's pixel statistics (a test recomputes them); mnist1d is
already standardized by its generator (mean 0, std 1 over the whole dataset). Image folder
datasets (`python -m pcjax.data.prepare folder`) carry their own spec in the data dir: classes,
shapes, augmentation and the training images' per-channel statistics, computed when prepared.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Literal

Augmentation = Literal["none", "cifar", "imagenet"]


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """Static description of a dataset as the input pipeline delivers it.

    Attributes:
        name: the TFDS name.
        num_classes: number of label classes; labels are int32 in [0, num_classes).
        image_shape: shape of one model input, channels last (after augmentation / center crop).
        splits: split name -> number of examples (the standard TFDS sizes for prepared datasets).
        mean: per-channel mean of `stored_pixel / pixel_scale`.
        std: per-channel standard deviation of `stored_pixel / pixel_scale`.
        pixel_scale: divisor that maps stored pixels to [0, 1] (255 for uint8 photos, 16 for the
            0..16 digits, 1 for mnist1d's real-valued signals).
        augmentation: "none"; "cifar" (zero-pad 4, random 32x32 crop, horizontal flip); or
            "imagenet" (random resized crop to 224 + flip; evaluation resizes the short side to
            256 and center-crops 224).
        local: True when pcjax builds the dataset itself from an installed package (no network);
            False when it must be prepared beforehand with `prepare_command`.
        prepare_command: how to prepare a non-local dataset; `{data_dir}` is substituted.
    """

    name: str
    num_classes: int
    image_shape: tuple[int, ...]
    splits: Mapping[str, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    pixel_scale: float
    augmentation: Augmentation
    local: bool
    prepare_command: str | None = None


# ImageNet's builder needs TensorFlow (the `tfds` command line imports it); it is run once, on any
# machine, and the data dir is then copied where jobs run. CIFAR is prepared by pcjax itself
# (`pcjax.data.prepare`), so TFDS's own build is only offered second.
_TFDS_BUILD = (
    "pip install tensorflow tensorflow-datasets && "
    "tfds build {name} --data_dir={{data_dir}} --file_format=array_record"
)
_PREPARE_CIFAR = (
    "python -m pcjax.data.prepare {name} --data_dir={{data_dir}} (offline: add --archive "
    "PATH/{name_dash}-python.tar.gz, copied from a machine with internet), or: " + _TFDS_BUILD
)

SPECS: Mapping[str, DatasetSpec] = {
    "digits": DatasetSpec(
        name="digits", num_classes=10, image_shape=(8, 8, 1), splits={"train": 1442, "test": 355},
        mean=(0.3051,), std=(0.3762,), pixel_scale=16.0, augmentation="none", local=True,
    ),
    "mnist1d": DatasetSpec(
        name="mnist1d", num_classes=10, image_shape=(40, 1), splits={"train": 4000, "test": 1000},
        mean=(0.0,), std=(1.0,), pixel_scale=1.0, augmentation="none", local=True,
    ),
    "cifar10": DatasetSpec(
        name="cifar10", num_classes=10, image_shape=(32, 32, 3),
        splits={"train": 50000, "test": 10000},
        mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616), pixel_scale=255.0,
        augmentation="cifar", local=False,
        prepare_command=_PREPARE_CIFAR.format(name="cifar10", name_dash="cifar-10"),
    ),
    "cifar100": DatasetSpec(
        name="cifar100", num_classes=100, image_shape=(32, 32, 3),
        splits={"train": 50000, "test": 10000},
        mean=(0.5071, 0.4867, 0.4408), std=(0.2675, 0.2565, 0.2761), pixel_scale=255.0,
        augmentation="cifar", local=False,
        prepare_command=_PREPARE_CIFAR.format(name="cifar100", name_dash="cifar-100"),
    ),
    "imagenet2012": DatasetSpec(
        name="imagenet2012", num_classes=1000, image_shape=(224, 224, 3),
        splits={"train": 1281167, "validation": 50000, "test": 100000},
        mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), pixel_scale=255.0,
        augmentation="imagenet", local=False,
        prepare_command=(
            "download ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar from image-net.org "
            "into {data_dir}/downloads/manual/, then "
            + _TFDS_BUILD.format(name="imagenet2012")
            + " --manual_dir={data_dir}/downloads/manual"
        ),
    ),
}


def names() -> tuple[str, ...]:
    """Names of the built-in datasets (image folder datasets come from a data dir).

    Examples:
      >>> from pcjax import data
      >>> data.names()
      ('digits', 'mnist1d', 'cifar10', 'cifar100', 'imagenet2012')
    """
    return tuple(SPECS)

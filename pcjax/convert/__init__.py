"""PyTorch checkpoints -> pcjax teacher exports, read without PyTorch.

    python -m pcjax.convert --arch resnet32x4 --from ckpt_epoch_240.pth --to teachers/r32x4
    python train.py --config configs/cifar100.py:resnet32x4_resnet8x4 \\
        --config.teacher.checkpoint=teachers/r32x4

Sources (``--arch`` is the pcjax model name):

* RepDistiller's CIFAR teachers, a dict whose ``"model"`` entry is the state_dict:
  ``resnet{8,14,20,32,44,56,110}``, ``resnet{8,32}x4`` (its models/resnet.py), ``resnet50``
  (models/resnetv2.py's ``ResNet50``), ``wrn_{16,40}_{1,2}`` (wrn.py), ``vgg{8,11,13,16,19}``
  (vgg.py's ``*_bn``);
* torchvision's ``resnet18/34/50`` state_dicts: ``imagenet_resnet{18,34,50}``.

A plain state_dict is accepted as well as one under ``"model"``, and the ``module.`` prefix that
``nn.DataParallel`` adds is removed. The number of classes is read from the classifier's weight.

:mod:`~pcjax.convert.pth` reads ``.pth`` files without running their code;
:mod:`~pcjax.convert.mapping` maps the state_dict by name onto the pcjax model; ``__main__``
writes the teacher export that train.py reads.
"""

from pcjax.convert.mapping import (ConversionError, archs, convert_state_dict, read_state_dict,
                                   unwrap_state_dict)
from pcjax.convert.pth import PthError, read_pth

__all__ = ["ConversionError", "PthError", "archs", "convert_state_dict", "read_pth",
           "read_state_dict", "unwrap_state_dict"]

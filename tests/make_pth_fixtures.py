"""Writes tests/fixtures/pth with PyTorch: the checkpoints tests/test_convert.py reads without it.

    python -m venv /tmp/torch && /tmp/torch/bin/pip install torch numpy
    /tmp/torch/bin/python tests/make_pth_fixtures.py

Files (1.6 MB):

* ``tensors.pth`` (zip format) and ``tensors_legacy.pth`` (``_use_new_zipfile_serialization=
  False``): one checkpoint holding float64/float32/float16/bfloat16/int64/int32/int8/uint8/bool
  tensors, views with offsets and strides (transposed, sliced, stepped, expanded), 0-d and empty
  tensors, a Parameter, the state_dict of a small model, argparse options, torch.Size, nested
  containers; ``tensors_big_endian.pth``: float32 tensors as a big-endian machine writes them
  (records byte-swapped, ``byteorder`` ``big``); ``tensors.npz``: every tensor as NumPy
  (bfloat16 as its uint16 bits), by ``/``-joined path;
* ``resnet8_ckpt_epoch_240.pth``: a RepDistiller checkpoint (``epoch``, ``model``, ``accuracy``,
  ``optimizer`` after one SGD step) of a CIFAR-100 resnet8 with tests/reference_weights.py's
  weights (seed 1);
  ``wrn_16_1_last_half_legacy.pth``: RepDistiller's ``*_last.pth`` layout (``opt``, ``model``;
  its ``optimizer`` left out for size) in the legacy format, float16 weights under
  nn.DataParallel's ``module.`` prefix;
* ``layouts.json``: the state_dict layout (name, shape, dtype) of every architecture the converter
  maps, from tests/torch_references.py;
* ``outputs.npz``: the input images and each architecture's PyTorch features and logits with the
  reference weights (seed 0), ``wrn_16_1_half/...`` with the float16 weights and
  ``resnet8_cifar100/...`` of the CIFAR-100 checkpoint on ``cifar100_images``.

A rerun with the same torch writes the same bytes, except the legacy files' storage keys (torch
names them by memory address).
"""

import argparse
import collections
import json
import os
import zipfile

import numpy as np
import torch

import reference_weights
import torch_references as refs

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "pth")


def _tensors():
    """The reader's checkpoint: every storage type, views, and the containers torch.save meets."""
    torch.manual_seed(0)
    base = torch.randn(4, 6)
    small = refs.load_numpy(
        refs.RefCifarResNet(8, (4, 4, 4, 4), num_classes=3),
        reference_weights.state_dict(refs.layout(refs.RefCifarResNet(8, (4, 4, 4, 4), 3))),
    )
    dtypes = {
        "float64": torch.float64, "float32": torch.float32, "float16": torch.float16,
        "bfloat16": torch.bfloat16, "int64": torch.int64, "int32": torch.int32,
        "int8": torch.int8, "uint8": torch.uint8,
    }
    typed = {name: (torch.randn(2, 3) * 50).to(dtype) for name, dtype in dtypes.items()}
    views = {
        "base": base,
        "transposed": base.t(),
        "sliced": base[1:3, 2:5],  # storage offset 8, strides (6, 1)
        "stepped": base[::2, ::3],  # strides (12, 3)
        "row": base[3],  # offset 18
        "expanded": torch.arange(3.0).expand(4, 3),  # stride 0
        "half_transposed": torch.randn(3, 5).half().t()[1:],
        "bfloat16_sliced": torch.randn(4, 4).bfloat16()[:, 1::2],
    }
    return {
        "epoch": 240,
        "model": small.state_dict(),
        "typed": collections.OrderedDict(typed, bool=torch.tensor([True, False, True])),
        "views": views,
        "scalar": torch.tensor(70.5),
        "empty": torch.zeros(0, 3),
        "num_batches_tracked": torch.tensor(1000),
        "parameter": torch.nn.Parameter(torch.randn(2)),
        "opt": argparse.Namespace(model="resnet8", learning_rate=0.05, weight=torch.ones(2)),
        "size": torch.Size([2, 3]),
        "nested": [(1, "a", torch.arange(4)), {"x": None, "y": [0.5, base[0]]}],
    }


def _flat(obj, prefix=""):
    """``{path: tensor}`` of every tensor in `obj` (dict keys, list/tuple indices, attributes)."""
    if isinstance(obj, torch.Tensor):
        return {prefix: obj}
    if isinstance(obj, argparse.Namespace):
        obj = vars(obj)
    if isinstance(obj, (list, tuple)):
        obj = dict(enumerate(obj))
    if not isinstance(obj, dict):
        return {}
    flat = {}
    for key, value in obj.items():
        flat.update(_flat(value, f"{prefix}/{key}" if prefix else str(key)))
    return flat


def _numpy(tensor):
    tensor = tensor.detach().contiguous()
    if tensor.dtype == torch.bfloat16:
        return tensor.view(torch.int16).numpy().view(np.uint16)
    return tensor.numpy()


def _big_endian(source, destination):
    """`source` (a zip checkpoint of float32 tensors) as a big-endian machine writes it."""
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(destination, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if "/data/" in info.filename:
                data = np.frombuffer(data, "<f4").astype(">f4").tobytes()
            elif info.filename.endswith("/byteorder"):
                data = b"big"
            dst.writestr(info, data)


def _optimizer_state(model):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    model.train()
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    optimizer.step()
    model.eval()
    return optimizer.state_dict()


def main():
    os.makedirs(HERE, exist_ok=True)
    path = lambda name: os.path.join(HERE, name)  # noqa: E731

    checkpoint = _tensors()
    torch.save(checkpoint, path("tensors.pth"))
    torch.save(checkpoint, path("tensors_legacy.pth"), _use_new_zipfile_serialization=False)
    expected = {k: _numpy(v) for k, v in _flat(checkpoint).items()}
    big = {"a": torch.randn(3, 4), "b": torch.randn(5, 2).t()}
    torch.save(big, path("tensors_little_endian.pth"))
    _big_endian(path("tensors_little_endian.pth"), path("tensors_big_endian.pth"))
    os.remove(path("tensors_little_endian.pth"))
    expected.update({f"big_endian/{k}": _numpy(v) for k, v in big.items()})
    np.savez(path("tensors.npz"), **expected)

    rng = np.random.default_rng(1)
    outputs = {f"images{s}": rng.normal(size=(2, s, s, 3)).astype(np.float32) for s in (32, 64)}
    layouts = {}
    for arch, make in sorted(refs.REFERENCES.items()):
        model = make()
        layouts[arch] = refs.layout(model)
        refs.load_numpy(model, reference_weights.state_dict(layouts[arch]))
        images = outputs[f"images{refs.image_size(arch)}"]
        outputs[f"{arch}/features"], outputs[f"{arch}/logits"] = refs.forward(model, images)
        if arch == "wrn_16_1":
            half = {k: v.half() if v.is_floating_point() else v
                    for k, v in model.state_dict().items()}
            model.load_state_dict({k: v.float() for k, v in half.items()})
            outputs["wrn_16_1_half/features"], outputs["wrn_16_1_half/logits"] = refs.forward(
                model, outputs["images32"]
            )
            last = {
                "opt": argparse.Namespace(model="wrn_16_1", epochs=240, learning_rate=0.05),
                "model": {f"module.{k}": v for k, v in half.items()},
            }
            torch.save(last, path("wrn_16_1_last_half_legacy.pth"),
                       _use_new_zipfile_serialization=False)
    # A CIFAR-100 teacher as RepDistiller saves it, with its outputs on a batch of 8 (one image
    # per device of the tests' 8-device mesh).
    model = refs.RefCifarResNet(8, (16, 16, 32, 64), num_classes=100)
    refs.load_numpy(model, reference_weights.state_dict(refs.layout(model), seed=1))
    outputs["cifar100_images"] = rng.normal(size=(8, 32, 32, 3)).astype(np.float32)
    outputs["resnet8_cifar100/features"], outputs["resnet8_cifar100/logits"] = refs.forward(
        model, outputs["cifar100_images"]
    )
    state = {
        "epoch": 240,
        "model": model.state_dict(),
        "accuracy": torch.tensor(70.5),
        "optimizer": _optimizer_state(refs.RefCifarResNet(8, (16, 16, 32, 64), num_classes=100)),
    }
    torch.save(state, path("resnet8_ckpt_epoch_240.pth"))
    with open(path("layouts.json"), "w") as f:
        json.dump(layouts, f, separators=(",", ":"))
        f.write("\n")
    np.savez(path("outputs.npz"), **outputs)
    print(f"torch {torch.__version__}: wrote {', '.join(sorted(os.listdir(HERE)))} to {HERE}")


if __name__ == "__main__":
    main()

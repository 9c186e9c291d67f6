"""PyTorch checkpoints -> pcjax teachers: forward equivalence, the export format, the errors.

The CIFAR references below are written from RepDistiller's published architecture (models/
resnet.py, resnetv2.py, wrn.py, vgg.py: the same module names, shapes and forward pass); the
ImageNet ones are torchvision's own ResNets. Weights are random (nothing is downloaded) and the
BatchNorm running statistics are randomized too, so that eval mode depends on every tensor.
"""

import argparse
import os
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

import torch.nn.functional as F  # noqa: E402
from flax import nnx  # noqa: E402
from torch import nn  # noqa: E402

from pcjax.models import convert  # noqa: E402
from pcjax.training import base_config, make_mesh, trainer  # noqa: E402
from pcjax.training import logging as log_lib  # noqa: E402

NUM_CLASSES = 10


# ----------------------------------------------------------------------------- references


def _conv3x3(cin, cout, stride=1):
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


class _CifarBasicBlock(nn.Module):
    """RepDistiller resnet.py BasicBlock (post-activation, `downsample` projection)."""

    def __init__(self, cin, planes, stride):
        super().__init__()
        self.conv1 = _conv3x3(cin, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or cin != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class RefCifarResNet(nn.Module):
    """RepDistiller resnet.py ResNet(depth, num_filters, 'basicblock')."""

    classifier_name = "fc"

    def __init__(self, depth, filters, num_classes):
        super().__init__()
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, filters[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(filters[0])
        cin = filters[0]
        for s, (planes, stride) in enumerate(zip(filters[1:], (1, 2, 2)), 1):
            blocks = [_CifarBasicBlock(cin if i == 0 else planes, planes, stride if i == 0 else 1)
                      for i in range(n)]
            setattr(self, f"layer{s}", nn.Sequential(*blocks))
            cin = planes
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(F.avg_pool2d(x, 8).flatten(1))


class _Bottleneck(nn.Module):
    """RepDistiller resnetv2.py Bottleneck (projection named `shortcut`)."""

    def __init__(self, cin, planes, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, 4 * planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(4 * planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != 4 * planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, 4 * planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(4 * planes),
            )

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        return F.relu(self.bn3(self.conv3(out)) + self.shortcut(x))


class RefResNet50(nn.Module):
    """RepDistiller resnetv2.py ResNet50: 3x3 stem, (3, 4, 6, 3) Bottlenecks, `linear`."""

    classifier_name = "linear"

    def __init__(self, num_classes):
        super().__init__()
        self.conv1 = _conv3x3(3, 64)
        self.bn1 = nn.BatchNorm2d(64)
        cin = 64
        for s, (n, planes) in enumerate(zip((3, 4, 6, 3), (64, 128, 256, 512)), 1):
            blocks = []
            for i in range(n):
                blocks.append(_Bottleneck(cin, planes, 2 if s > 1 and i == 0 else 1))
                cin = 4 * planes
            setattr(self, f"layer{s}", nn.Sequential(*blocks))
        self.linear = nn.Linear(2048, num_classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.linear(F.adaptive_avg_pool2d(x, 1).flatten(1))


class _WideBlock(nn.Module):
    """RepDistiller wrn.py BasicBlock: pre-activation; the 1x1 `convShortcut` (only when the
    width changes) sees the activated input."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = _conv3x3(cin, cout, stride)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = _conv3x3(cout, cout)
        self.equal = cin == cout
        self.convShortcut = None if self.equal else nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x):
        act = F.relu(self.bn1(x))
        out = self.conv2(F.relu(self.bn2(self.conv1(act))))
        return out + (x if self.equal else self.convShortcut(act))


class _NetworkBlock(nn.Module):
    def __init__(self, n, cin, cout, stride):
        super().__init__()
        self.layer = nn.Sequential(
            *[_WideBlock(cin if i == 0 else cout, cout, stride if i == 0 else 1) for i in range(n)]
        )

    def forward(self, x):
        return self.layer(x)


class RefWRN(nn.Module):
    """RepDistiller wrn.py WideResNet(depth, widen_factor), dropout 0."""

    classifier_name = "fc"

    def __init__(self, depth, k, num_classes):
        super().__init__()
        n = (depth - 4) // 6
        self.conv1 = _conv3x3(3, 16)
        self.block1 = _NetworkBlock(n, 16, 16 * k, 1)
        self.block2 = _NetworkBlock(n, 16 * k, 32 * k, 2)
        self.block3 = _NetworkBlock(n, 32 * k, 64 * k, 2)
        self.bn1 = nn.BatchNorm2d(64 * k)
        self.fc = nn.Linear(64 * k, num_classes)

    def forward(self, x):
        x = self.block3(self.block2(self.block1(self.conv1(x))))
        return self.fc(F.avg_pool2d(F.relu(self.bn1(x)), 8).flatten(1))


class RefVGG(nn.Module):
    """RepDistiller vgg.py VGG(cfg, batch_norm=True): block{s} = (conv, BN, relu)* minus the last
    relu; max-pool after blocks 0-2 (and 3 for 64x64 inputs), global average pool, `classifier`."""

    classifier_name = "classifier"

    def __init__(self, cfg, num_classes):
        super().__init__()
        cin = 3
        for s, widths in enumerate(cfg):
            layers = []
            for w in widths:
                layers += [nn.Conv2d(cin, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU()]
                cin = w
            setattr(self, f"block{s}", nn.Sequential(*layers[:-1]))
        self.classifier = nn.Linear(512, num_classes)

    def forward(self, x):
        pooled = (0, 1, 2, 3) if x.shape[2] == 64 else (0, 1, 2)
        for s in range(5):
            x = F.relu(getattr(self, f"block{s}")(x))
            if s in pooled:
                x = F.max_pool2d(x, 2)
        return self.classifier(F.adaptive_avg_pool2d(x, 1).flatten(1))


_VGG13 = [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]]
_VGG8 = [[64], [128], [256], [512], [512]]

# The teachers of configs/cifar100.py's 13 pairs (resnet110 only in the mapping test below: it is
# resnet56 with 18 instead of 9 blocks per stage), students of the same families whose layouts
# differ (wrn_16_1's first block keeps its width, so it has no shortcut; vgg8 has one conv per
# stage), and torchvision's ImageNet ResNets.
REFERENCES = {
    "resnet56": lambda: RefCifarResNet(56, (16, 16, 32, 64), NUM_CLASSES),
    "resnet32x4": lambda: RefCifarResNet(32, (32, 64, 128, 256), NUM_CLASSES),
    "resnet50": lambda: RefResNet50(NUM_CLASSES),
    "wrn_40_2": lambda: RefWRN(40, 2, NUM_CLASSES),
    "wrn_16_1": lambda: RefWRN(16, 1, NUM_CLASSES),
    "vgg13": lambda: RefVGG(_VGG13, NUM_CLASSES),
    "vgg8": lambda: RefVGG(_VGG8, NUM_CLASSES),
    "imagenet_resnet18": lambda: torchvision.models.resnet18(weights=None, num_classes=NUM_CLASSES),
    "imagenet_resnet34": lambda: torchvision.models.resnet34(weights=None, num_classes=NUM_CLASSES),
    "imagenet_resnet50": lambda: torchvision.models.resnet50(weights=None, num_classes=NUM_CLASSES),
}


def _classifier(module):
    """The final linear layer (torchvision's is `fc`)."""
    return getattr(module, getattr(module, "classifier_name", "fc"))


def randomized(model):
    """`model` in eval mode with random BatchNorm affine parameters and running statistics."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.1)
                m.running_mean.normal_(0.0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.num_batches_tracked.fill_(1000)
    return model.eval()


def reference(arch, seed=0):
    """The eval-mode PyTorch model of `arch` with random weights and BatchNorm statistics."""
    torch.manual_seed(seed)
    return randomized(REFERENCES[arch]())


def torch_forward(model, images_nhwc):
    """(penultimate features, logits) of the PyTorch model, as NumPy."""
    seen = []
    hook = _classifier(model).register_forward_pre_hook(lambda _, args: seen.append(args[0]))
    with torch.no_grad():
        logits = model(torch.from_numpy(images_nhwc.transpose(0, 3, 1, 2).copy()))
    hook.remove()
    return seen[0].numpy(), logits.numpy()


def state_dict(model):
    return {k: v.numpy() for k, v in model.state_dict().items()}


def _assert_close(actual, expected):
    # float32 sums over thousands of terms per layer and ~100 layers: relative 1e-4 of the
    # output's scale (observed errors are ~1e-6 of it).
    scale = float(np.abs(expected).max())
    np.testing.assert_allclose(np.asarray(actual), expected, rtol=1e-4, atol=1e-4 * scale)


# ----------------------------------------------------------------------------- equivalence


@pytest.mark.parametrize("arch", sorted(REFERENCES))
def test_converted_model_gives_the_pytorch_features_and_logits(arch):
    size = 64 if arch.startswith("imagenet") else 32
    images = np.random.default_rng(1).normal(size=(2, size, size, 3)).astype(np.float32)
    model = reference(arch)
    features, logits = torch_forward(model, images)

    graphdef, variables = convert.convert_state_dict(arch, state_dict(model))
    ours = nnx.merge(graphdef, variables["params"], variables["model_state"])
    out = ours(images, train=False)

    assert out.logits.shape == (2, NUM_CLASSES)
    _assert_close(out.features, features)
    _assert_close(out.logits, logits)


def test_every_cifar100_teacher_is_covered_and_resnet110_maps_every_tensor():
    from configs import cifar100

    teachers = {t for t, _ in cifar100.PAIRS}
    assert teachers <= set(REFERENCES) | {"resnet110"} and teachers <= set(convert.archs())
    torch.manual_seed(0)
    model = randomized(RefCifarResNet(110, (16, 16, 32, 64), NUM_CLASSES))
    _, variables = convert.convert_state_dict("resnet110", state_dict(model))
    # Spot checks of the layouts at the deepest block: OIHW -> HWIO, running_var as is (copies,
    # so exact).
    kernel = variables["params"]["blocks"][53]["conv2"]["conv"]["kernel"][...]
    weight = model.layer3[17].conv2.weight.detach().numpy()
    np.testing.assert_array_equal(kernel, weight.transpose(2, 3, 1, 0))
    var = variables["model_state"]["blocks"][53]["conv2"]["bn"]["var"][...]
    np.testing.assert_array_equal(var, model.layer3[17].bn2.running_var.numpy())


# ----------------------------------------------------------------------------- errors


@pytest.fixture(scope="module")
def resnet8_state():
    return state_dict(RefCifarResNet(8, (16, 16, 32, 64), NUM_CLASSES))


def test_missing_extra_and_misshapen_tensors_are_all_named_in_one_error(resnet8_state):
    broken = dict(resnet8_state)
    del broken["layer1.0.conv1.weight"]
    broken["layer4.0.conv1.weight"] = np.zeros((3, 3, 3, 3), np.float32)
    broken["layer2.0.bn1.running_var"] = np.ones(5, np.float32)
    # Dropped only where pcjax has that BatchNorm.
    broken["layer4.0.bn1.num_batches_tracked"] = np.zeros((), np.int64)
    with pytest.raises(convert.ConversionError) as info:
        convert.convert_state_dict("resnet8", broken)
    message = str(info.value)
    assert "1 pcjax variables with no tensor" in message
    assert "layer1.0.conv1.weight (16, 16, 3, 3) (pcjax blocks/0/conv1/conv/kernel)" in message
    assert "2 tensors left over" in message and "layer4.0.conv1.weight (3, 3, 3, 3)" in message
    assert "layer4.0.bn1.num_batches_tracked ()" in message
    assert "layer2.0.bn1.running_var: checkpoint (5,), resnet8 expects (32,)" in message


def test_wrong_arch_is_refused_with_the_mismatches(resnet8_state):
    # resnet14 has two blocks per stage: the second block of each stage has no tensors.
    missing = r"30 pcjax variables with no tensor:\n    layer1\.1\.bn1\.bias"
    with pytest.raises(convert.ConversionError, match=missing):
        convert.convert_state_dict("resnet14", resnet8_state)
    with pytest.raises(convert.ConversionError, match="no 2-D classifier weight 'classifier.wei"):
        convert.convert_state_dict("vgg8", resnet8_state)
    with pytest.raises(ValueError, match="arch: unknown architecture 'resnet9'; known: "):
        convert.convert_state_dict("resnet9", resnet8_state)


def test_state_dict_is_taken_from_model_key_and_dataparallel_prefix_is_dropped(resnet8_state):
    wrapped = {"epoch": 240, "model": {f"module.{k}": v for k, v in resnet8_state.items()}}
    assert convert.unwrap_state_dict(wrapped) == resnet8_state
    assert convert.unwrap_state_dict(resnet8_state) == resnet8_state
    with pytest.raises(convert.ConversionError, match=r'under "model", got dict \(empty\)'):
        convert.unwrap_state_dict({"model": {}})


def test_reading_a_last_checkpoint_with_its_options_and_refusing_non_tensors(
    resnet8_state, tmp_path
):
    # RepDistiller's *_last.pth also holds its argparse options.
    path = tmp_path / "resnet8_last.pth"
    tensors = {k: torch.from_numpy(v) for k, v in resnet8_state.items()}
    torch.save({"opt": argparse.Namespace(model="resnet8"), "model": tensors}, path)
    arrays = convert.read_torch_checkpoint(str(path))
    assert arrays.keys() == resnet8_state.keys()
    for key, value in resnet8_state.items():
        np.testing.assert_array_equal(arrays[key], value)  # a copy: exact
    torch.save({"model": {**tensors, "note": 3}}, path)
    with pytest.raises(convert.ConversionError, match="entry 'note' is a int, not a tensor"):
        convert.read_torch_checkpoint(str(path))


# ----------------------------------------------------------------------------- files and train.py


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """A RepDistiller-style resnet8 checkpoint for CIFAR-100 on disk, converted by the CLI."""
    root = tmp_path_factory.mktemp("convert")
    torch.manual_seed(0)
    model = randomized(RefCifarResNet(8, (16, 16, 32, 64), 100))
    source = root / "ckpt_epoch_240.pth"
    torch.save({"epoch": 240, "model": model.state_dict(), "accuracy": torch.tensor(70.0)}, source)
    destination = root / "teacher"
    assert convert.main(["--arch", "resnet8", "--from", str(source), "--to", str(destination)]) == 0
    return model, source, destination


def test_cli_refuses_an_existing_destination_and_a_missing_file(converted, capsys):
    _, source, destination = converted
    assert convert.main(["--arch", "resnet8", "--from", str(source), "--to", str(destination)]) == 1
    assert "--to: " in capsys.readouterr().err
    missing = os.path.join(os.path.dirname(source), "nope.pth")
    args = ["--arch", "resnet8", "--from", missing, "--to", str(destination) + "2"]
    assert convert.main(args) == 1
    assert "--from: no checkpoint file at" in capsys.readouterr().err


def test_trainer_loads_the_export_as_train_py_does_and_prints_its_top1(
    converted, tmp_path, capsys
):
    model, _, destination = converted
    images = np.random.default_rng(2).normal(size=(8, 32, 32, 3)).astype(np.float32)
    features, logits = torch_forward(model, images)
    # 5 of 8 labels are the PyTorch model's prediction: its top-1 is 62.50%.
    labels = logits.argmax(1)
    labels[5:] = (labels[5:] + 1) % 100

    config = base_config()
    config.dataset = "cifar100"
    config.teacher.model = "resnet8"
    config.teacher.checkpoint = str(destination)
    ctx = trainer.Context(config, str(tmp_path), make_mesh(), log_lib.MetricWriter(str(tmp_path)))
    batch = {"image": images, "label": labels.astype(np.int32), "mask": np.ones(8, np.int32)}
    ctx.eval_batches = lambda split: (b for b in [batch])  # stands in for the CIFAR-100 test split

    teacher = trainer.teacher_phase(ctx)
    ctx.writer.close()

    assert f"teacher resnet8 from {destination}: test top-1 62.50%" in capsys.readouterr().out
    out = teacher.forward(teacher.variables, images)
    _assert_close(out.features, features)
    _assert_close(out.logits, logits)


def test_pcjax_imports_torch_only_in_the_converters_file_reader():
    # pcjax.training is left out: tensorboardX (its metric writer) imports torch when installed.
    code = "import sys, pcjax, pcjax.models, pcjax.models.convert; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"

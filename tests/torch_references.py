"""PyTorch references of the architectures pcjax converts (needs torch; imported by
tests/test_convert_torch.py and tests/make_pth_fixtures.py only).

The CIFAR references are written from RepDistiller's published architecture (models/resnet.py,
resnetv2.py, wrn.py, vgg.py: the same module names, shapes and forward pass). The ImageNet ResNets
follow torchvision's models/resnet.py (ResNet v1.5: the stride on the 3x3 convolution, the
projection named ``downsample``); tests/test_convert_torch.py checks them against torchvision
itself when it is installed.
"""

import torch
import torch.nn.functional as F
from torch import nn

NUM_CLASSES = 10


def _conv3x3(cin, cout, stride=1):
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


def _projection(cin, cout, stride):
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))


class _BasicBlock(nn.Module):
    """RepDistiller resnet.py's and torchvision's BasicBlock (post-activation, `downsample`)."""

    def __init__(self, cin, planes, stride):
        super().__init__()
        self.conv1 = _conv3x3(cin, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or cin != planes:
            self.downsample = _projection(cin, planes, stride)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class _Bottleneck(nn.Module):
    """RepDistiller resnetv2.py's Bottleneck (projection `shortcut`) and torchvision's
    (`downsample`): the stride is on the 3x3 convolution in both."""

    def __init__(self, cin, planes, stride, shortcut_name):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, 4 * planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(4 * planes)
        self.shortcut_name = shortcut_name
        projection = None
        if stride != 1 or cin != 4 * planes:
            projection = _projection(cin, 4 * planes, stride)
        setattr(self, shortcut_name, projection)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        projection = getattr(self, self.shortcut_name)
        return F.relu(self.bn3(self.conv3(out)) + (x if projection is None else projection(x)))


class RefCifarResNet(nn.Module):
    """RepDistiller resnet.py ResNet(depth, num_filters, 'basicblock')."""

    classifier_name = "fc"

    def __init__(self, depth, filters, num_classes=NUM_CLASSES):
        super().__init__()
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, filters[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(filters[0])
        cin = filters[0]
        for s, (planes, stride) in enumerate(zip(filters[1:], (1, 2, 2)), 1):
            blocks = [_BasicBlock(cin if i == 0 else planes, planes, stride if i == 0 else 1)
                      for i in range(n)]
            setattr(self, f"layer{s}", nn.Sequential(*blocks))
            cin = planes
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(F.avg_pool2d(x, 8).flatten(1))


class RefResNet(nn.Module):
    """Four stages of BasicBlocks or Bottlenecks: RepDistiller resnetv2.py's ResNet50 (3x3 stem,
    `shortcut`, `linear`) or torchvision's resnet18/34/50 (7x7 stride-2 stem and max-pool,
    `downsample`, `fc`)."""

    def __init__(self, stage_sizes, bottleneck, imagenet, num_classes=NUM_CLASSES):
        super().__init__()
        self.imagenet = imagenet
        self.classifier_name = "fc" if imagenet else "linear"
        if imagenet:
            self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        else:
            self.conv1 = _conv3x3(3, 64)
        self.bn1 = nn.BatchNorm2d(64)
        cin = 64
        for s, (n, planes) in enumerate(zip(stage_sizes, (64, 128, 256, 512)), 1):
            blocks = []
            for i in range(n):
                stride = 2 if s > 1 and i == 0 else 1
                if bottleneck:
                    shortcut = "downsample" if imagenet else "shortcut"
                    blocks.append(_Bottleneck(cin, planes, stride, shortcut))
                    cin = 4 * planes
                else:
                    blocks.append(_BasicBlock(cin, planes, stride))
                    cin = planes
            setattr(self, f"layer{s}", nn.Sequential(*blocks))
        setattr(self, self.classifier_name, nn.Linear(cin, num_classes))

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        if self.imagenet:
            x = F.max_pool2d(x, 3, stride=2, padding=1)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return getattr(self, self.classifier_name)(F.adaptive_avg_pool2d(x, 1).flatten(1))


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

    def __init__(self, depth, k, num_classes=NUM_CLASSES):
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

    def __init__(self, cfg, num_classes=NUM_CLASSES):
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


# RepDistiller vgg.py's cfg 'S', 'A', 'B', 'D', 'E'.
_VGG = {
    8: [[64], [128], [256], [512], [512]],
    11: [[64], [128], [256, 256], [512, 512], [512, 512]],
    13: [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
    16: [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]],
    19: [[64, 64], [128, 128], [256, 256, 256, 256], [512, 512, 512, 512],
         [512, 512, 512, 512]],
}

# Every architecture the converter maps: pcjax name -> () -> the PyTorch model (10 classes).
REFERENCES = {
    **{f"resnet{d}": (lambda d=d: RefCifarResNet(d, (16, 16, 32, 64)))
       for d in (8, 14, 20, 32, 44, 56, 110)},
    **{f"resnet{d}x4": (lambda d=d: RefCifarResNet(d, (32, 64, 128, 256))) for d in (8, 32)},
    "resnet50": lambda: RefResNet((3, 4, 6, 3), bottleneck=True, imagenet=False),
    "imagenet_resnet18": lambda: RefResNet((2, 2, 2, 2), bottleneck=False, imagenet=True),
    "imagenet_resnet34": lambda: RefResNet((3, 4, 6, 3), bottleneck=False, imagenet=True),
    "imagenet_resnet50": lambda: RefResNet((3, 4, 6, 3), bottleneck=True, imagenet=True),
    **{f"wrn_{d}_{k}": (lambda d=d, k=k: RefWRN(d, k)) for d in (16, 40) for k in (1, 2)},
    **{f"vgg{d}": (lambda d=d: RefVGG(_VGG[d])) for d in _VGG},
}


def image_size(arch):
    """The input side the tests use: 64 for the ImageNet ResNets (enough for their 32x
    downsampling), 32 (CIFAR) otherwise."""
    return 64 if arch.startswith("imagenet") else 32


def load_numpy(model, arrays):
    """`model` in eval mode holding `arrays` (name -> NumPy array, its state_dict's layout)."""
    model.load_state_dict({k: torch.from_numpy(v) for k, v in arrays.items()})
    return model.eval()


def layout(model):
    """``[(name, shape, dtype), ...]`` of `model`'s state_dict, in its order."""
    return [(k, list(v.shape), str(v.numpy().dtype)) for k, v in model.state_dict().items()]


def forward(model, images_nhwc):
    """(penultimate features, logits) of `model` on channels-last float32 images, as NumPy."""
    seen = []
    classifier = getattr(model, getattr(model, "classifier_name", "fc"))
    hook = classifier.register_forward_pre_hook(lambda _, args: seen.append(args[0]))
    with torch.no_grad():
        logits = model(torch.from_numpy(images_nhwc.transpose(0, 3, 1, 2).copy()))
    hook.remove()
    return seen[0].numpy(), logits.numpy()

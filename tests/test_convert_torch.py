"""The converter against live PyTorch (skipped without torch; needs ``pip install -e '.[torch]'``):

    python -m pytest -m torch tests/test_convert_torch.py

Every architecture with PyTorch's own initialization and random BatchNorm statistics, saved by
torch.save in both formats, read by pcjax's reader and converted, against the PyTorch model's
features and logits; torchvision's ResNets themselves when torchvision is installed; the reader
against torch.load on random checkpoints; the committed fixtures against live PyTorch.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import torch_references as refs  # noqa: E402
from flax import nnx  # noqa: E402
from test_convert import OUTPUTS, _assert_close, _flat, _pytorch_weights  # noqa: E402
from torch import nn  # noqa: E402

from pcjax import convert  # noqa: E402

pytestmark = pytest.mark.torch

try:
    import torchvision
except ImportError:
    torchvision = None


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


def _through_a_file(model, tmp_path, legacy):
    """The model's state_dict as RepDistiller saves it, read back by pcjax's reader."""
    path = tmp_path / "ckpt.pth"
    torch.save({"epoch": 240, "model": model.state_dict()}, path,
               _use_new_zipfile_serialization=not legacy)
    return convert.read_state_dict(str(path))


def _check(arch, model, tmp_path, legacy):
    images = np.random.default_rng(1).normal(
        size=(2, refs.image_size(arch), refs.image_size(arch), 3)
    ).astype(np.float32)
    features, logits = refs.forward(model, images)
    graphdef, variables = convert.convert_state_dict(arch, _through_a_file(model, tmp_path, legacy))
    out = nnx.merge(graphdef, variables["params"], variables["model_state"])(images, train=False)
    _assert_close(out.features, features)
    _assert_close(out.logits, logits)


@pytest.mark.parametrize("arch", sorted(refs.REFERENCES))
def test_converted_model_gives_the_pytorch_features_and_logits(arch, tmp_path):
    torch.manual_seed(0)
    _check(arch, randomized(refs.REFERENCES[arch]()), tmp_path, legacy=arch.endswith("0"))


@pytest.mark.skipif(torchvision is None, reason="torchvision is not installed")
@pytest.mark.parametrize("depth", [18, 34, 50])
def test_torchvision_resnets_convert_and_the_references_follow_them(depth, tmp_path):
    torch.manual_seed(0)
    model = randomized(getattr(torchvision.models, f"resnet{depth}")(weights=None, num_classes=10))
    _check(f"imagenet_resnet{depth}", model, tmp_path, legacy=False)
    reference = refs.REFERENCES[f"imagenet_resnet{depth}"]()
    assert refs.layout(reference) == refs.layout(model)
    images = OUTPUTS["images64"]
    weights = {k: v.numpy() for k, v in model.state_dict().items()}
    for ours, theirs in zip(refs.forward(refs.load_numpy(reference, weights), images),
                            refs.forward(model, images)):
        np.testing.assert_array_equal(ours, theirs)


def _random_checkpoint(rng):
    """Tensors of every storage type, with random views, in nested containers."""
    dtypes = [torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.int64,
              torch.int32, torch.int16, torch.int8, torch.uint8, torch.bool]
    tensors = {}
    for i in range(40):
        shape = tuple(int(n) for n in rng.integers(1, 6, size=rng.integers(0, 4)))
        values = np.asarray(rng.normal(size=shape) * 100)
        base = torch.from_numpy(values).to(dtypes[i % len(dtypes)])
        if base.ndim >= 2 and rng.random() < 0.5:
            base = base.transpose(0, base.ndim - 1)
        if base.ndim >= 1 and base.shape[0] > 1 and rng.random() < 0.5:
            base = base[1::2]
        tensors[f"t{i}"] = base
    return {"model": tensors, "list": [tensors["t0"], (tensors["t1"], 3)], "epoch": 7}


@pytest.mark.parametrize("legacy", [False, True])
def test_reader_agrees_with_torch_load(legacy, tmp_path):
    rng = np.random.default_rng(0)
    for trial in range(5):
        checkpoint = _random_checkpoint(rng)
        path = tmp_path / f"r{trial}.pth"
        torch.save(checkpoint, path, _use_new_zipfile_serialization=not legacy)
        ours = _flat(convert.read_pth(str(path)))
        theirs = torch.load(path, weights_only=True)
        flat = {}
        for key, value in {**theirs["model"], "list/0": theirs["list"][0],
                           "list/1/0": theirs["list"][1][0]}.items():
            flat[key if "/" in key else f"model/{key}"] = value
        assert ours.keys() == flat.keys()
        for key, tensor in flat.items():
            expected = tensor.contiguous()
            if expected.dtype == torch.bfloat16:
                expected, ours[key] = expected.view(torch.int16), ours[key].view(np.int16)
            assert ours[key].tobytes() == expected.numpy().tobytes(), key
            assert ours[key].shape == tuple(tensor.shape), key


@pytest.mark.parametrize("arch", sorted(refs.REFERENCES))
def test_committed_outputs_are_what_pytorch_computes(arch):
    model = refs.load_numpy(refs.REFERENCES[arch](), _pytorch_weights(arch))
    images = OUTPUTS[f"images{refs.image_size(arch)}"]
    features, logits = refs.forward(model, images)
    _assert_close(features, OUTPUTS[f"{arch}/features"])
    _assert_close(logits, OUTPUTS[f"{arch}/logits"])

"""PyTorch checkpoints -> pcjax teachers, without PyTorch.

The fixtures in tests/fixtures/pth were written by PyTorch (tests/make_pth_fixtures.py): the
reader must give back the arrays PyTorch saved bit for bit, and every converted architecture the
features and logits PyTorch computed (weights from tests/reference_weights.py, rebuilt here in
NumPy). Hostile, damaged and foreign files must stop with one line naming the file. The same
comparison against live PyTorch models is tests/test_convert_torch.py.
"""

import argparse
import collections
import functools
import json
import os
import pickle
import subprocess
import sys
import zipfile

import jax
import ml_dtypes
import numpy as np
import pytest
from flax import nnx

import reference_weights
from pcjax import convert
from pcjax.convert import __main__ as cli
from pcjax.convert import pth
from pcjax.training import base_config, loop, make_mesh, resolve, trainer
from pcjax.training import logging as log_lib

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "pth")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def fixture(name):
    return os.path.join(FIXTURES, name)


with open(fixture("layouts.json")) as _f:
    LAYOUTS = json.load(_f)
OUTPUTS = dict(np.load(fixture("outputs.npz")))


def _flat(obj, prefix=""):
    """``{path: array}`` of every array in `obj`, by the fixture script's path scheme."""
    if isinstance(obj, np.ndarray):
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


def _assert_close(actual, expected):
    # float32 sums over thousands of terms per layer and ~100 layers, in another library's
    # order: relative 1e-4 of the output's scale (observed errors are ~1e-6 of it).
    scale = float(np.abs(expected).max())
    np.testing.assert_allclose(np.asarray(actual), expected, rtol=1e-4, atol=1e-4 * scale)


def _one_line_error(call, path):
    """The PthError `call` raises: one line, starting with `path`."""
    with pytest.raises(pth.PthError) as info:
        call()
    message = str(info.value)
    assert message.startswith(f"{path}: ") and "\n" not in message, message
    return message


# ----------------------------------------------------------------------------- hand-made pickles


def _torch_pickle(tensors, storage="FloatStorage", numel=4, pid_extra=()):
    """A pickle of ``{name: tensor}`` as torch.save writes it, by hand (text opcodes).

    `tensors` maps a name to ``(offset, size, stride)`` views of storage ``"0"`` (`storage`
    type, `numel` elements); `pid_extra` is appended to the persistent id (the legacy format's
    view entry).
    """
    def tup(*items):
        return b"(" + b"".join(items) + b"t"

    def num(n):
        return b"I%d\n" % n

    def text(s):
        return b"V" + s.encode() + b"\n"

    pid = tup(text("storage"), b"ctorch\n" + storage.encode() + b"\n", text("0"), text("cpu"),
              num(numel), *pid_extra) + b"Q"
    out = b"}"
    for name, (offset, size, stride) in tensors.items():
        hooks = b"ccollections\nOrderedDict\n)R"
        args = tup(pid, num(offset), tup(*map(num, size)), tup(*map(num, stride)), b"I00\n", hooks)
        out += text(name) + b"ctorch._utils\n_rebuild_tensor_v2\n" + args + b"R" + b"s"
    return out + b"."


def _zip(path, data_pkl, records):
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", data_pkl)
        for key, data in records.items():
            archive.writestr(f"archive/data/{key}", data)
    return str(path)


def _legacy(path, main_pickle, keys=("0",), storages=()):
    """A legacy-format file: magic, version, sys_info, `main_pickle`, the keys, the storages
    (each ``(count, bytes)``)."""
    head = b"".join(pickle.dumps(x, 2) for x in (pth._LEGACY_MAGIC, 1001, {"little_endian": True}))
    keys_pickle = pickle.dumps(list(keys), 2)
    body = b"".join(count.to_bytes(8, "little") + data for count, data in storages)
    path.write_bytes(head + main_pickle + keys_pickle + body)
    return str(path)


FOUR = np.arange(4, dtype=np.float32)


# ----------------------------------------------------------------------------- the reader


@pytest.mark.parametrize("name", ["tensors.pth", "tensors_legacy.pth"])
def test_reader_gives_the_arrays_pytorch_saved_bit_for_bit(name):
    checkpoint = pth.read_pth(fixture(name))
    expected = {k: v for k, v in np.load(fixture("tensors.npz")).items()
                if not k.startswith("big_endian/")}
    arrays = _flat(checkpoint)
    assert arrays.keys() == expected.keys()
    for key, array in arrays.items():
        bits = array.view(np.uint16) if array.dtype == ml_dtypes.bfloat16 else array
        assert (bits.dtype, bits.shape) == (expected[key].dtype, expected[key].shape), key
        assert bits.tobytes() == expected[key].tobytes(), key
        assert array.flags.c_contiguous and array.flags.writeable, key
    views = checkpoint["views"]
    assert views["transposed"].dtype == np.float32 and views["transposed"].shape == (6, 4)
    assert views["half_transposed"].dtype == np.float16
    assert views["bfloat16_sliced"].dtype == ml_dtypes.bfloat16
    assert checkpoint["num_batches_tracked"].dtype == np.int64
    assert checkpoint["typed"]["bool"].dtype == np.bool_


@pytest.mark.parametrize("name", ["tensors.pth", "tensors_legacy.pth"])
def test_reader_keeps_the_containers_and_plain_values(name):
    checkpoint = pth.read_pth(fixture(name))
    assert checkpoint["epoch"] == 240 and checkpoint["size"] == (2, 3)
    model = checkpoint["model"]
    assert isinstance(model, collections.OrderedDict)
    assert list(model)[:3] == ["conv1.weight", "bn1.weight", "bn1.bias"]
    assert model._metadata["bn1"] == {"version": 2}  # the attribute state_dict() carries
    opt = checkpoint["opt"]
    assert isinstance(opt, argparse.Namespace) and type(opt) is not argparse.Namespace
    assert (opt.model, opt.learning_rate) == ("resnet8", 0.05)
    first, second = checkpoint["nested"]
    assert isinstance(first, tuple) and first[:2] == (1, "a")
    assert second["x"] is None and second["y"][0] == 0.5
    np.testing.assert_array_equal(second["y"][1], checkpoint["views"]["base"][0])
    assert checkpoint["parameter"].shape == (2,)


def test_reader_byte_swaps_a_big_endian_file():
    expected = np.load(fixture("tensors.npz"))
    arrays = pth.read_pth(fixture("tensors_big_endian.pth"))
    for key, array in arrays.items():
        assert array.dtype == np.dtype("=f4")
        assert array.tobytes() == expected[f"big_endian/{key}"].tobytes()


def test_hand_made_views_are_read_as_torch_defines_them(tmp_path):
    views = {"all": (0, (4,), (1,)), "tail": (1, (2, 1), (2, 0)), "none": (4, (0, 3), (3, 1)),
             "scalar": (3, (), ())}
    path = _zip(tmp_path / "v.pth", _torch_pickle(views), {"0": FOUR.tobytes()})
    out = pth.read_pth(path)
    np.testing.assert_array_equal(out["all"], FOUR)
    np.testing.assert_array_equal(out["tail"], [[1.0], [3.0]])  # elements 1 + 2i
    assert out["none"].shape == (0, 3) and out["scalar"].shape == () and out["scalar"] == 3.0
    legacy = _legacy(tmp_path / "l.pth", _torch_pickle(views, pid_extra=(b"N",)),
                     storages=[(4, FOUR.tobytes())])
    for key, array in pth.read_pth(legacy).items():
        np.testing.assert_array_equal(array, out[key])


# ----------------------------------------------------------------------------- hostile files


class _System:
    """Pickles as ``os.system(command)``: unpickled by pickle.load, it would run `command`."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def test_a_pickle_that_calls_os_system_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "ran"
    payload = pickle.dumps({"model": _System(f"touch {marker}")}, 2)
    refused = f"refuses global {os.system.__module__}.system"
    paths = [
        _zip(tmp_path / "zip.pth", payload, {}),
        _legacy(tmp_path / "legacy.pth", payload, keys=()),
        str(tmp_path / "bare.pth"),
    ]
    (tmp_path / "bare.pth").write_bytes(payload)
    for path in paths:
        assert refused in _one_line_error(lambda: pth.read_pth(path), path)
    assert not marker.exists()
    pickle.loads(payload)  # the payload is live: plain pickle runs it
    assert marker.exists()


@pytest.mark.parametrize("module, name", [
    ("builtins", "eval"), ("subprocess", "Popen"), ("numpy", "load"),
    ("collections", "OrderedDict.fromkeys"), ("torch", "load"),
    ("torch._utils", "_rebuild_qtensor"),
])
def test_every_unknown_global_is_refused(tmp_path, module, name):
    path = str(tmp_path / "g.pth")
    (tmp_path / "g.pth").write_bytes(f"c{module}\n{name}\n.".encode())
    assert f"refuses global {module}.{name} " in _one_line_error(lambda: pth.read_pth(path), path)


def test_a_pickle_cannot_change_what_later_reads_use(tmp_path):
    # BUILD sets attributes on what the pickle holds: here on the Namespace class it was given.
    path = tmp_path / "build.pth"
    path.write_bytes(b"\x80\x02cargparse\nNamespace\nN}X\x01\x00\x00\x00xK\x01s\x86b.")
    _one_line_error(lambda: pth.read_pth(str(path)), str(path))
    assert not hasattr(argparse.Namespace, "x")
    path.write_bytes(b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n}X\x01\x00\x00\x00xK\x01sb.")
    _one_line_error(lambda: pth.read_pth(str(path)), str(path))
    assert pth.read_pth(fixture("tensors_big_endian.pth")).keys() == {"a", "b"}


# ----------------------------------------------------------------------------- damaged files


def test_empty_random_and_foreign_files_get_one_line(tmp_path):
    cases = {
        "empty.pth": (b"", "empty file, not a PyTorch checkpoint"),
        "random.pth": (np.random.default_rng(0).bytes(4096), "not a PyTorch checkpoint (neither"),
        "random_zip.pth": (b"PK\x03\x04" + np.random.default_rng(1).bytes(4096),
                           "a truncated or damaged zip archive (BadZipFile"),
        "text.pth": (b'{"model": 1}\n', "not a PyTorch checkpoint (neither"),
        "plain_pickle.pth": (pickle.dumps({"model": {}}), "not a PyTorch checkpoint (neither"),
    }
    for name, (data, reason) in cases.items():
        (tmp_path / name).write_bytes(data)
        path = str(tmp_path / name)
        assert reason in _one_line_error(lambda: pth.read_pth(path), path)
    npz = str(tmp_path / "arrays.npz")
    np.savez(npz, a=FOUR)
    assert "without one <name>/data.pkl" in _one_line_error(lambda: pth.read_pth(npz), npz)
    with pytest.raises(FileNotFoundError, match="no checkpoint file at "):
        pth.read_pth(str(tmp_path / "missing.pth"))


@pytest.mark.parametrize("name", ["tensors.pth", "tensors_legacy.pth",
                                  "wrn_16_1_last_half_legacy.pth"])
def test_truncated_files_get_one_line(tmp_path, name):
    data = open(fixture(name), "rb").read()
    messages = []
    for cut in (1, 100, len(data) // 3, len(data) // 2, len(data) - 1):
        path = str(tmp_path / f"cut{cut}.pth")
        with open(path, "wb") as f:
            f.write(data[:cut])
        messages.append(_one_line_error(lambda: pth.read_pth(path), path))
    assert "not a PyTorch checkpoint (neither" in messages[0]  # not even the format's magic
    if "legacy" in name:  # cut inside the last storage: the reader says how much is missing
        assert "truncated: storage " in messages[-1]
    else:
        assert all("a truncated or damaged zip archive" in m for m in messages[1:])


def test_damaged_zip_records_and_malformed_views_get_one_line(tmp_path):
    data = bytearray(open(fixture("tensors.pth"), "rb").read())
    with zipfile.ZipFile(fixture("tensors.pth")) as archive:
        record = archive.read("tensors/data/0")
    data[data.find(record) + len(record) // 2] ^= 0xFF  # the record's CRC no longer matches
    (tmp_path / "flipped.pth").write_bytes(bytes(data))
    path = str(tmp_path / "flipped.pth")
    assert "Bad CRC-32" in _one_line_error(lambda: pth.read_pth(path), path)
    cases = [  # (views, storage type, records, expected message)
        ({"w": (1, (2, 2), (2, 1))}, "FloatStorage", {"0": FOUR.tobytes()},
         "reaches element 4 of storage 0, which has 4"),
        ({"w": (0, (2,), (-1,))}, "FloatStorage", {"0": FOUR.tobytes()}, "is malformed"),
        ({"w": (0, (4,), (1,))}, "FloatStorage", {"0": FOUR.tobytes()[:12]},
         "record archive/data/0 holds 12 bytes; storage 0 needs 16"),
        ({"w": (0, (4,), (1,))}, "FloatStorage", {}, "storage 0 has no record archive/data/0"),
        ({"w": (0, (4,), (1,))}, "ComplexFloatStorage", {}, "refuses global torch.ComplexFloat"),
    ]
    for i, (views, storage, records, reason) in enumerate(cases):
        path = _zip(tmp_path / f"case{i}.pth", _torch_pickle(views, storage), records)
        assert reason in _one_line_error(lambda: pth.read_pth(path), path)


def test_malformed_legacy_files_get_one_line(tmp_path):
    views = {"w": (0, (4,), (1,))}
    cases = [  # (main pickle, keys, storages, expected message)
        (_torch_pickle(views, pid_extra=(b"N",)), ("0",), [(3, FOUR.tobytes())],
         "storage 0 holds 3 elements; the object uses 4"),
        (_torch_pickle(views, pid_extra=(b"N",)), ("1",), [(4, FOUR.tobytes())],
         "the storage key list does not match"),
        (_torch_pickle(views, pid_extra=(b"(V0\nI0\nI4\nt",)), ("0",), [(4, FOUR.tobytes())],
         "storage 0 is a storage view (torch < 0.4): not supported"),
        (_torch_pickle(views, pid_extra=(b"N",)), ("0",), [(2**40, FOUR.tobytes())],
         "storage 0 holds 1099511627776 elements"),
    ]
    for i, (main, keys, storages, reason) in enumerate(cases):
        path = _legacy(tmp_path / f"case{i}.pth", main, keys, storages)
        assert reason in _one_line_error(lambda: pth.read_pth(path), path)
    path = str(tmp_path / "version.pth")
    with open(path, "wb") as f:
        f.write(pickle.dumps(pth._LEGACY_MAGIC, 2) + pickle.dumps(1000, 2))
    assert "legacy format version 1000, expected 1001" in _one_line_error(
        lambda: pth.read_pth(path), path
    )


# ----------------------------------------------------------------------------- architectures

# One architecture per naming and block layout; the rest differ only in depth or width and run
# with -m slow (their mapping is checked below without a forward pass).
FORWARD = ["resnet8", "resnet8x4", "resnet50", "wrn_16_1", "wrn_40_2", "vgg8", "vgg13",
           "imagenet_resnet18", "imagenet_resnet50"]
ALL = sorted(LAYOUTS)


def _pytorch_weights(arch, seed=0):
    return reference_weights.state_dict(LAYOUTS[arch], seed=seed)


@functools.partial(jax.jit, static_argnums=0)
def _forward(graphdef, variables, images):
    """The eval-mode forward pass, compiled as one program (op by op, each layer shape would
    compile its own convolution, normalization and activation programs)."""
    model = nnx.merge(graphdef, variables["params"], variables["model_state"])
    return model(images, train=False)


@pytest.mark.parametrize("arch", [
    *FORWARD, *(pytest.param(a, marks=pytest.mark.slow) for a in ALL if a not in FORWARD)
])
def test_converted_model_gives_the_pytorch_features_and_logits(arch):
    images = OUTPUTS["images64" if arch.startswith("imagenet") else "images32"]
    out = _forward(*convert.convert_state_dict(arch, _pytorch_weights(arch)), images)
    assert out.logits.shape == (2, 10)
    _assert_close(out.features, OUTPUTS[f"{arch}/features"])
    _assert_close(out.logits, OUTPUTS[f"{arch}/logits"])


@pytest.mark.parametrize("arch", [a for a in ALL if a not in FORWARD])
def test_every_other_architecture_maps_every_tensor_once(arch):
    weights = _pytorch_weights(arch)
    _, variables = convert.convert_state_dict(arch, weights)
    # num_batches_tracked (int64) is dropped; every other number lands in one variable.
    counted = sum(np.size(v) for v in weights.values() if v.dtype != np.int64)
    assert sum(np.size(x) for x in jax.tree.leaves(variables)) == counted


def test_every_architecture_and_cifar100_teacher_is_covered():
    from configs import cifar100

    assert set(LAYOUTS) == set(convert.archs())
    assert {t for t, _ in cifar100.PAIRS} <= set(LAYOUTS)


def test_layouts_are_copied_exactly_at_the_deepest_block():
    weights = _pytorch_weights("resnet110")
    _, variables = convert.convert_state_dict("resnet110", weights)
    block = variables["params"]["blocks"][53]["conv2"]
    np.testing.assert_array_equal(  # OIHW -> HWIO
        block["conv"]["kernel"][...], weights["layer3.17.conv2.weight"].transpose(2, 3, 1, 0)
    )
    var = variables["model_state"]["blocks"][53]["conv2"]["bn"]["var"][...]
    np.testing.assert_array_equal(var, weights["layer3.17.bn2.running_var"])
    np.testing.assert_array_equal(variables["params"]["fc"]["kernel"][...],
                                  weights["fc.weight"].T)


# ----------------------------------------------------------------------------- checkpoint files


def test_repdistiller_checkpoint_file_gives_the_pytorch_outputs():
    arrays = convert.read_state_dict(fixture("resnet8_ckpt_epoch_240.pth"))
    layout = [(k, list(v.shape), str(v.dtype)) for k, v in arrays.items()]
    expected = reference_weights.state_dict(layout, seed=1)
    assert all(arrays[k].tobytes() == v.tobytes() for k, v in expected.items())
    out = _forward(*convert.convert_state_dict("resnet8", arrays), OUTPUTS["cifar100_images"])
    _assert_close(out.features, OUTPUTS["resnet8_cifar100/features"])
    _assert_close(out.logits, OUTPUTS["resnet8_cifar100/logits"])


def test_legacy_float16_dataparallel_checkpoint_gives_the_pytorch_outputs():
    arrays = convert.read_state_dict(fixture("wrn_16_1_last_half_legacy.pth"))
    weights = _pytorch_weights("wrn_16_1")
    assert arrays.keys() == weights.keys()  # the module. prefix is gone
    for key, value in weights.items():
        half = value.astype(np.float16) if value.dtype == np.float32 else value
        assert arrays[key].dtype == half.dtype and arrays[key].tobytes() == half.tobytes(), key
    out = _forward(*convert.convert_state_dict("wrn_16_1", arrays), OUTPUTS["images32"])
    assert out.logits.dtype == np.float32
    _assert_close(out.features, OUTPUTS["wrn_16_1_half/features"])
    _assert_close(out.logits, OUTPUTS["wrn_16_1_half/logits"])


def test_a_checkpoint_without_a_tensor_state_dict_is_refused(tmp_path):
    cases = [
        ({"model": {"fc.weight": 3}}, "entry 'fc.weight' is a int, not a tensor"),
        ({"model": {}}, 'under "model", got dict (empty)'),
        ([1, 2], "expected a dict, got list"),
    ]
    for i, (obj, reason) in enumerate(cases):
        path = _zip(tmp_path / f"c{i}.pth", pickle.dumps(obj, 2), {})
        with pytest.raises(convert.ConversionError) as info:
            convert.read_state_dict(path)
        assert str(info.value).startswith(f"{path}: ") and reason in str(info.value)


# ----------------------------------------------------------------------------- mapping errors


@pytest.fixture(scope="module")
def resnet8_state():
    return _pytorch_weights("resnet8")


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
    with pytest.raises(convert.ConversionError, match="got dict"):
        convert.unwrap_state_dict({0: FOUR})


# ----------------------------------------------------------------------------- CLI and train.py


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """The RepDistiller CIFAR-100 resnet8 checkpoint, converted by the CLI."""
    destination = tmp_path_factory.mktemp("convert") / "teacher"
    args = ["--arch", "resnet8", "--from", fixture("resnet8_ckpt_epoch_240.pth")]
    assert cli.main([*args, "--to", str(destination)]) == 0
    return destination


def test_cli_errors_are_one_line(converted, tmp_path, capsys):
    source = fixture("resnet8_ckpt_epoch_240.pth")
    assert cli.main(["--arch", "resnet8", "--from", source, "--to", str(converted)]) == 1
    assert capsys.readouterr().err.startswith("error: --to: ")
    missing = str(tmp_path / "nope.pth")
    assert cli.main(["--arch", "resnet8", "--from", missing, "--to", str(tmp_path / "t")]) == 1
    assert capsys.readouterr().err == f"error: no checkpoint file at {missing}\n"
    assert cli.main(["--arch", "vgg8", "--from", source, "--to", str(tmp_path / "t")]) == 1
    assert "no 2-D classifier weight 'classifier.weight'" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "t")


def test_cli_process_prints_one_line_for_a_random_file(tmp_path):
    path = tmp_path / "random.pth"
    path.write_bytes(np.random.default_rng(0).bytes(1000))
    command = [sys.executable, "-m", "pcjax.convert", "--arch", "resnet8", "--from", str(path),
               "--to", str(tmp_path / "t")]
    out = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 1 and out.stdout == ""
    assert out.stderr == (f"error: {path}: not a PyTorch checkpoint (neither a zip archive nor a "
                          "legacy torch.save file)\n")


def test_trainer_loads_the_export_as_train_py_does_and_prints_its_top1(
    converted, tmp_path, capsys
):
    images = OUTPUTS["cifar100_images"]
    logits = OUTPUTS["resnet8_cifar100/logits"]
    # 5 of 8 labels are the PyTorch model's prediction: its top-1 is 62.50%.
    labels = logits.argmax(1)
    labels[5:] = (labels[5:] + 1) % 100

    config = base_config()
    config.dataset = "cifar100"
    config.teacher.model = "resnet8"
    config.teacher.checkpoint = str(converted)
    spec = resolve(config, make_mesh(), num_train_examples=50000)
    ctx = loop.Context(spec, str(tmp_path), log_lib.MetricWriter(str(tmp_path)))
    batch = {"image": images, "label": labels.astype(np.int32), "mask": np.ones(8, np.int32)}
    ctx.eval_batches = lambda split: (b for b in [batch])  # stands in for the CIFAR-100 test split

    teacher = trainer.teacher_phase(ctx)
    ctx.writer.close()

    assert f"teacher resnet8 from {converted}: test top-1 62.50%" in capsys.readouterr().out
    out = teacher.forward(teacher.variables, images)
    _assert_close(out.features, OUTPUTS["resnet8_cifar100/features"])
    _assert_close(out.logits, logits)


def test_no_pcjax_module_imports_torch():
    sources = []
    for folder, _, files in os.walk(os.path.join(ROOT, "pcjax")):
        sources += [os.path.join(folder, f) for f in files if f.endswith(".py")]
    assert any(s.endswith(os.path.join("convert", "pth.py")) for s in sources)
    for source in sources:
        with open(source) as f:
            lines = [line.strip() for line in f]
        assert not any(line.startswith(("import torch", "from torch")) for line in lines), source

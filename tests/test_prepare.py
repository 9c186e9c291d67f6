"""Tests of `python -m pcjax.data.prepare`: CIFAR archives and image folders to TFDS, no TensorFlow.

The archives are small synthetic ones in the exact official python-version format (same member
paths, pickled dicts with the same keys, dtypes and shapes, fewer images); the image folder is
written with Pillow. Both are prepared once per module into a temporary data dir, read back with
`tfds.data_source`, and trained on by a short `train.py` job each.
"""

import dataclasses
import hashlib
import io
import os
import runpy
import pickle
import subprocess
import sys
import tarfile
import urllib.error
import urllib.request

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from pcjax import data
from pcjax.data import prepare
from pcjax.training import config as config_lib
from pcjax.training import sharding, spec as spec_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CIFAR10_NAMES = "airplane automobile bird cat deer dog frog horse ship truck".split()
# (images per train batch file, test images); the official archives hold 10,000 per file.
SIZES = {"cifar10": (24, 30), "cifar100": (120, 40)}
CLASSES = ("cat", "dog", "owl")
PER_CLASS = 10
SIDE = 16


def _pickled_member(tar, name, content):
    payload = pickle.dumps(content, protocol=2)
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    tar.addfile(info, io.BytesIO(payload))


def _batch(rng, n, labels, label_name):
    """One official batch: b"data" uint8 (n, 3072) of red, green, blue row-major 32x32 planes."""
    batch = {
        b"batch_label": label_name,
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        b"filenames": [f"image_{i}.png".encode() for i in range(n)],
    }
    for key, num_classes in labels.items():
        batch[key] = rng.integers(0, num_classes, n).tolist()  # Python ints, as in the archives
    return batch


def write_archive(path, name, *, rng, skip=(), edit=None):
    """Writes a small official-format archive; returns {split: [batches in order]} and names.

    `skip` leaves members out; `edit(member, content)` may alter a member's dict (bad archives).
    """
    if name == "cifar10":
        prefix, test = "cifar-10-batches-py", "test_batch"
        train = [f"data_batch_{i}" for i in range(1, 6)]
        labels = {b"labels": 10}
        meta = ("batches.meta", {b"label_names": [n.encode() for n in CIFAR10_NAMES],
                                 b"num_cases_per_batch": SIZES[name][0], b"num_vis": 3072})
    else:
        prefix, train, test = "cifar-100-python", ["train"], "test"
        labels = {b"fine_labels": 100, b"coarse_labels": 20}
        meta = ("meta", {b"fine_label_names": [f"fine{i}".encode() for i in range(100)],
                         b"coarse_label_names": [f"coarse{i}".encode() for i in range(20)]})
    per_train, n_test = SIZES[name]
    members = {meta[0]: meta[1]}
    for member in train:
        members[member] = _batch(rng, per_train, labels, b"training batch")
    members[test] = _batch(rng, n_test, labels, b"testing batch")
    with tarfile.open(path, "w:gz") as tar:
        for member, content in members.items():
            if member in skip:
                continue
            if edit is not None:
                content = edit(member, dict(content))
            _pickled_member(tar, f"{prefix}/{member}", content)
    return {"train": [members[m] for m in train], "test": [members[test]]}, meta[1]


def _png_bytes(pixels):
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def write_folder(root, rng):
    """CLASSES x PER_CLASS images: SIDE x SIDE RGB PNGs, plus per class one grayscale PNG, one
    JPEG, and one larger non-square PNG (resized when prepared). Returns {relative path: label}."""
    labels = {}
    for label, name in enumerate(CLASSES):
        os.makedirs(root / name)
        for i in range(PER_CLASS - 3):
            Image.fromarray(rng.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)).save(
                root / name / f"{i:02d}.png"
            )
        Image.fromarray(rng.integers(0, 256, (SIDE, SIDE), dtype=np.uint8)).save(
            root / name / "gray.png"
        )
        Image.fromarray(rng.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)).save(
            root / name / "photo.jpg", quality=90
        )
        Image.fromarray(rng.integers(0, 256, (2 * SIDE, 3 * SIDE, 3), dtype=np.uint8)).save(
            root / name / "wide.png"
        )
        (root / name / "notes.txt").write_text("not an image: left out")
        labels.update({f"{name}/{f}": label for f in os.listdir(root / name) if f != "notes.txt"})
    return labels


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """Both CIFARs and the image folder "shapes" (resized to SIDE) prepared into one data dir."""
    rng = np.random.default_rng(0)
    inputs = tmp_path_factory.mktemp("inputs")
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    archives = {}
    for name in SIZES:
        path = inputs / f"{name.replace('cifar', 'cifar-')}-python.tar.gz"
        archives[name] = write_archive(path, name, rng=rng)
        prepare.main([name, "--archive", str(path), "--data_dir", data_dir])
    folder_labels = write_folder(inputs / "shapes", rng)
    prepare.main(["folder", "--dir", str(inputs / "shapes"), "--name", "shapes",
                  "--image_size", str(SIDE), "--data_dir", data_dir])
    return {"data_dir": data_dir, "archives": archives, "folder": inputs / "shapes",
            "folder_labels": folder_labels, "inputs": inputs}


def _all(source):
    return [source[i] for i in range(len(source))]


# ----------------------------------------------------------------------------- CIFAR


@pytest.mark.parametrize("name", list(SIZES))
def test_cifar_examples_round_trip_exactly_through_tfds_data_source(prepared, name):
    batches, _ = prepared["archives"][name]
    label_keys = {"label": b"labels"} if name == "cifar10" else {
        "label": b"fine_labels", "coarse_label": b"coarse_labels"}
    for split in ("train", "test"):
        pixels = np.concatenate([b[b"data"] for b in batches[split]])
        labels = {f: np.concatenate([b[k] for b in batches[split]]) for f, k in label_keys.items()}
        examples = _all(tfds.data_source(name, split=split, data_dir=prepared["data_dir"]))
        assert len(examples) == len(pixels)
        # TFDS's id is "<split>_<index in archive order>": every index appears exactly once.
        indices = sorted(int(e["id"].decode().removeprefix(f"{split}_")) for e in examples)
        assert indices == list(range(len(pixels)))
        for e in examples:
            i = int(e["id"].decode().removeprefix(f"{split}_"))
            assert set(e) == {"id", "image", *label_keys}
            assert e["image"].dtype == np.uint8 and e["image"].shape == (32, 32, 3)
            # The archive row is three 32x32 planes (red, green, blue), each row-major.
            np.testing.assert_array_equal(e["image"][..., 0].ravel(), pixels[i, :1024])
            np.testing.assert_array_equal(e["image"][..., 2].ravel(), pixels[i, 2048:])
            planes = pixels[i].reshape(3, 32, 32)
            np.testing.assert_array_equal(e["image"], planes.transpose(1, 2, 0))
            for feature in label_keys:
                assert e[feature] == labels[feature][i]


@pytest.mark.parametrize("name", list(SIZES))
def test_cifar_metadata_is_that_of_the_tfds_builder(prepared, name, tmp_path):
    builder = tfds.builder(name, data_dir=prepared["data_dir"])
    code_info = tfds.builder(name, data_dir=str(tmp_path)).info  # TFDS's own, nothing prepared
    assert builder.is_prepared()
    assert str(builder.info.version) == str(code_info.version) == "3.0.2"
    # Same feature types, shapes, dtypes and class counts as TFDS's own builder declares.
    assert builder.info.features.to_json() == code_info.features.to_json()
    per_train, n_test = SIZES[name]
    files = 5 if name == "cifar10" else 1
    assert {s: i.num_examples for s, i in builder.info.splits.items()} == {
        "train": files * per_train, "test": n_test}
    image = builder.info.features["image"]
    assert image.shape == (32, 32, 3) and image.np_dtype == np.uint8
    _, meta = prepared["archives"][name]
    if name == "cifar10":
        assert builder.info.features["label"].names == CIFAR10_NAMES
    else:
        label, coarse = builder.info.features["label"], builder.info.features["coarse_label"]
        assert label.names == [n.decode() for n in meta[b"fine_label_names"]]
        assert coarse.names == [n.decode() for n in meta[b"coarse_label_names"]]
        assert (label.num_classes, coarse.num_classes) == (100, 20)
    assert builder.info.supervised_keys == code_info.supervised_keys


def test_preparing_cifar_again_keeps_the_prepared_dataset(prepared, capsys):
    info = os.path.join(prepared["data_dir"], "cifar10", "3.0.2", "dataset_info.json")
    before = os.stat(info).st_mtime_ns
    # No archive and no network needed: the dataset is already there.
    prepare.main(["cifar10", "--data_dir", prepared["data_dir"]])
    assert os.stat(info).st_mtime_ns == before
    assert "--config.dataset=cifar10" in capsys.readouterr().out


def test_missing_cifar_offers_the_prepare_command_first(tmp_path):
    with pytest.raises(data.DatasetNotFoundError) as error:
        data.source("cifar100", "train", data_dir=tmp_path)
    message = str(error.value)
    command = f"python -m pcjax.data.prepare cifar100 --data_dir={tmp_path}"
    assert command in message and "--archive PATH/cifar-100-python.tar.gz" in message
    assert message.index(command) < message.index("tfds build cifar100")


def test_offline_download_says_to_pass_the_archive(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(prepare.PrepareError) as error:
        prepare.prepare_cifar("cifar100", data_dir=tmp_path)
    message = str(error.value)
    assert "\n" not in message
    assert prepare.CIFAR["cifar100"].url in message and "--archive PATH" in message
    assert not os.listdir(tmp_path / "downloads")  # no partial download left behind


def test_download_checks_the_md5_and_prepares_from_the_downloaded_archive(tmp_path, monkeypatch):
    archive = tmp_path / "served.tar.gz"
    write_archive(archive, "cifar10", rng=np.random.default_rng(3))
    payload = archive.read_bytes()
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout: io.BytesIO(payload))
    layout = prepare.CIFAR["cifar10"]
    with pytest.raises(prepare.PrepareError, match=f"has md5 .*, expected {layout.md5}"):
        prepare.prepare_cifar("cifar10", data_dir=tmp_path / "tfds")
    assert not os.listdir(tmp_path / "tfds" / "downloads")  # the bad download is removed
    md5 = hashlib.md5(payload).hexdigest()
    monkeypatch.setitem(prepare.CIFAR, "cifar10", dataclasses.replace(layout, md5=md5))
    prepare.prepare_cifar("cifar10", data_dir=tmp_path / "tfds")
    assert (tmp_path / "tfds" / "downloads" / "cifar-10-python.tar.gz").read_bytes() == payload
    assert len(data.source("cifar10", "test", data_dir=tmp_path / "tfds")) == SIZES["cifar10"][1]


def _shape_edit(member, content):
    if b"data" in content:
        content[b"data"] = content[b"data"][:, :3000]
    return content


def _key_edit(member, content):
    if b"labels" in content:
        content[b"fine_labels"] = content.pop(b"labels")
    return content


def _label_edit(member, content):
    if b"labels" in content:
        content[b"labels"] = [10] * len(content[b"labels"])
    return content


@pytest.mark.parametrize(
    "damage, expected",
    [
        ("not_tar", "not a readable cifar-10-python.tar.gz archive"),
        ("truncated", "not a readable cifar-10-python.tar.gz archive"),
        ("missing_member", "no member cifar-10-batches-py/test_batch"),
        ("wrong_keys", "data_batch_1[b'labels'] must hold 24 integer labels"),
        ("wrong_shape", "data_batch_1[b'data'] must be uint8 of shape (N, 3072), got uint8 (24, "),
        ("labels_out_of_range", "data_batch_1[b'labels'] has labels outside [0, 10)"),
        ("cifar100_archive", "no member cifar-10-batches-py/batches.meta"),
        ("code_in_pickle", "is not a CIFAR pickle (refusing to unpickle"),
    ],
)
def test_bad_archive_gives_one_line_naming_the_file(tmp_path, damage, expected):
    path = tmp_path / "cifar-10-python.tar.gz"
    rng = np.random.default_rng(1)
    if damage == "not_tar":
        path.write_bytes(b"this is not a tar archive\n" * 100)
    elif damage == "truncated":
        write_archive(path, "cifar10", rng=rng)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "missing_member":
        write_archive(path, "cifar10", rng=rng, skip=("test_batch",))
    elif damage == "cifar100_archive":
        write_archive(path, "cifar100", rng=rng)
    elif damage == "code_in_pickle":
        with tarfile.open(path, "w:gz") as tar:
            _pickled_member(tar, "cifar-10-batches-py/batches.meta", _RunsCode())
    else:
        edit = {"wrong_keys": _key_edit, "wrong_shape": _shape_edit,
                "labels_out_of_range": _label_edit}[damage]
        write_archive(path, "cifar10", rng=rng, edit=edit)
    with pytest.raises(prepare.PrepareError) as error:
        prepare.prepare_cifar("cifar10", archive=str(path), data_dir=tmp_path / "tfds")
    message = str(error.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    assert expected in message
    assert not tfds.builder("cifar10", data_dir=str(tmp_path / "tfds")).is_prepared()


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("true",))


def test_command_line_error_is_one_line_on_stderr_with_status_1(tmp_path):
    path = tmp_path / "cifar-100-python.tar.gz"
    path.write_bytes(b"\x1f\x8b broken gzip")
    result = subprocess.run(
        [sys.executable, "-m", "pcjax.data.prepare", "cifar100", "--archive", str(path),
         "--data_dir", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True,
    )
    assert result.returncode == 1
    assert result.stderr.startswith(f"error: {path}: not a readable cifar-100-python.tar.gz")
    assert result.stderr.count("\n") == 1
    assert "tensorflow" not in result.stderr.lower()


# ----------------------------------------------------------------------------- image folders


def _reference(path):
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def test_folder_round_trips_labels_and_pixels_and_holds_out_one_in_five(prepared):
    labels = prepared["folder_labels"]
    stored = {
        split: {e["id"].decode(): e for e in _all(
            tfds.data_source("shapes", split=split, data_dir=prepared["data_dir"]))}
        for split in ("train", "test")
    }
    assert set(stored["train"]) | set(stored["test"]) == set(labels)
    assert not set(stored["train"]) & set(stored["test"])
    # Held out: the files at positions 4 and 9 of each class in sorted order.
    expected_test = {
        f"{c}/{f}" for c in CLASSES
        for i, f in enumerate(sorted(set(os.listdir(prepared["folder"] / c)) - {"notes.txt"}))
        if i % 5 == 4
    }
    assert set(stored["test"]) == expected_test
    for split in stored.values():
        for image_id, e in split.items():
            assert e["label"] == labels[image_id]
            assert e["image"].shape == (SIDE, SIDE, 3) and e["image"].dtype == np.uint8
            if not image_id.endswith("wide.png"):  # Already SIDE x SIDE: stored unchanged.
                np.testing.assert_array_equal(e["image"], _reference(prepared["folder"] / image_id))
    wide = _reference(prepared["folder"] / "cat" / "wide.png")  # 32 x 48: center 32 x 32, halved
    center = wide[:, SIDE // 2 : SIDE // 2 + 2 * SIDE].astype(np.float64)
    halved = center.reshape(SIDE, 2, SIDE, 2, 3).mean((1, 3))
    ours = stored["train"].get("cat/wide.png", stored["test"].get("cat/wide.png"))["image"]
    # Bicubic downsampling is close to, not equal to, the 2x2 box average.
    assert np.abs(ours - halved).mean() < 20


def test_folder_spec_comes_from_the_data_dir(prepared):
    spec = data.spec("shapes", data_dir=prepared["data_dir"])
    assert spec.num_classes == 3 and spec.image_shape == (SIDE, SIDE, 3)
    assert spec.augmentation == "cifar" and spec.pixel_scale == 255.0
    assert spec.splits == {"train": 3 * 8, "test": 3 * 2}
    train_ids = [e["id"].decode() for e in _all(
        tfds.data_source("shapes", split="train", data_dir=prepared["data_dir"]))]
    pixels = np.concatenate([
        (_reference(prepared["folder"] / i) if not i.endswith("wide.png") else
         _all_stored(prepared, i)).reshape(-1, 3) / 255.0 for i in train_ids
    ])
    np.testing.assert_allclose(spec.mean, pixels.mean(0), rtol=1e-6)
    np.testing.assert_allclose(spec.std, pixels.std(0), rtol=1e-6)
    builder = tfds.builder("shapes", data_dir=prepared["data_dir"])
    assert builder.info.features["label"].names == list(CLASSES)
    assert str(builder.info.version) == "1.0.0"
    with pytest.raises(ValueError, match="prepare folder --dir DIR --name shapes"):
        data.spec("shapes", data_dir=prepared["inputs"])


def _all_stored(prepared, image_id):
    for e in _all(tfds.data_source("shapes", split="train", data_dir=prepared["data_dir"])):
        if e["id"].decode() == image_id:
            return e["image"]
    raise KeyError(image_id)


def test_folder_dataset_passes_config_validation_only_with_its_data_dir(prepared):
    config = config_lib.base_config()
    config.dataset = "shapes"
    config.teacher.model = config.student.model = "resnet8"
    config.data_dir = prepared["data_dir"]
    mesh = sharding.make_mesh(1)
    spec_lib.resolve(config, mesh, num_train_examples=100)
    config.data_dir = str(prepared["inputs"])
    with pytest.raises(ValueError, match="config.dataset: unknown dataset 'shapes'"):
        spec_lib.resolve(config, mesh, num_train_examples=100)


def test_folder_config_resolves_on_a_small_prepared_folder(prepared):
    """configs/folder.py:NAME is the README's small-folder job: it resolves (batch sizes within
    the split, eval split larger than its kNN k) on the prepared folder, and names its command."""
    path = os.path.join(os.path.dirname(__file__), "..", "configs", "folder.py")
    module = runpy.run_path(path)
    assert "python train.py --config configs/folder.py:photos" in module["__doc__"]
    config = config_lib.complete(module["get_config"]("shapes"))
    config.data_dir = prepared["data_dir"]
    spec = spec_lib.resolve(config, sharding.make_mesh(1))
    assert spec.dataset.name == "shapes" and spec.num_train_examples >= 8
    with pytest.raises(ValueError, match="name the prepared dataset"):
        module["get_config"]()


def test_flat_test_folder_with_label_file_and_original_sizes(prepared, tmp_path):
    rng = np.random.default_rng(2)
    val = tmp_path / "val"
    os.makedirs(val)
    expected = {}
    for i in range(6):
        size = (20 + 3 * i, 30)
        pixels = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
        name = f"val_{i}.jpg" if i % 2 else f"val_{i}.png"
        Image.fromarray(pixels).save(val / name)
        expected[name] = (CLASSES[i % 3], _reference(val / name))
    labels_file = tmp_path / "val.txt"
    labels_file.write_text("".join(f"{f} {c}\n" for f, (c, _) in expected.items()))
    data_dir = tmp_path / "tfds"
    prepare.prepare_folder(prepared["folder"], "shapes_full", test_dir=str(val),
                           test_labels=str(labels_file), data_dir=str(data_dir))
    spec = data.spec("shapes_full", data_dir=data_dir)
    assert spec.augmentation == "imagenet" and spec.image_shape == (224, 224, 3)
    assert spec.splits == {"train": 3 * PER_CLASS, "test": 6}
    for e in _all(tfds.data_source("shapes_full", split="test", data_dir=str(data_dir))):
        label, pixels = expected[e["id"].decode()]
        assert e["label"] == CLASSES.index(label)
        np.testing.assert_array_equal(e["image"], pixels)  # original size, JPEG bytes kept
    batch = next(data.eval_batches("shapes_full", "test", data_dir=data_dir, global_batch_size=8))
    assert batch["image"].shape == (8, 224, 224, 3) and batch["mask"].sum() == 6


def _folder_error(tmp_path, setup, **kwargs):
    root = tmp_path / "dir"
    os.makedirs(root)
    setup(root)
    with pytest.raises(prepare.PrepareError) as error:
        prepare.prepare_folder(
            str(root), kwargs.pop("name", "mine"), data_dir=str(tmp_path / "tfds"), **kwargs
        )
    assert "\n" not in str(error.value)
    return str(error.value)


def _image(path):
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(path)


def test_folder_errors_name_the_file(tmp_path, prepared):
    def one_class(root):
        os.makedirs(root / "a")
        _image(root / "a" / "x.png")

    def empty_class(root):
        for c in "ab":
            os.makedirs(root / c)
        _image(root / "a" / "x.png")
        (root / "b" / "readme.txt").write_text("no images")

    def corrupt(root):  # 5 images per class: one of them is held out as test
        for c in "ab":
            os.makedirs(root / c)
            for i in range(4):
                _image(root / c / f"x{i}.png")
        (root / "b" / "y.png").write_bytes(b"not a png")

    assert "expected at least 2" in _folder_error(tmp_path / "1", one_class)
    message = _folder_error(tmp_path / "2", empty_class)
    assert message.startswith(f"{tmp_path / '2' / 'dir' / 'b'}: no images")
    message = _folder_error(tmp_path / "3", corrupt)
    assert message.startswith(f"{tmp_path / '3' / 'dir' / 'b' / 'y.png'}: not a readable image")
    assert "--name 'Bad-Name'" in _folder_error(tmp_path / "4", corrupt, name="Bad-Name")
    assert "TFDS or pcjax already defines" in _folder_error(tmp_path / "5", corrupt, name="mnist")
    assert "TFDS or pcjax already defines" in _folder_error(tmp_path / "6", corrupt, name="digits")
    message = _folder_error(tmp_path / "7", corrupt, test_dir=str(tmp_path), test_labels="no.txt")
    assert message == "no.txt: no such file (--test_labels)"
    os.makedirs(tmp_path / "empty")
    message = _folder_error(tmp_path / "8", corrupt, test_dir=str(tmp_path / "empty"))
    assert message.startswith(f"{tmp_path / 'empty'}: no test images")
    with pytest.raises(prepare.PrepareError, match="already prepared"):
        prepare.prepare_folder(str(prepared["folder"]), "shapes", data_dir=prepared["data_dir"])


def test_folder_with_fewer_than_five_images_per_class_is_one_line_with_status_1(tmp_path):
    """No image would be held out for the test split (TFDS would fail on the empty split)."""
    for c, count in (("a", 4), ("b", 3), ("c", 1)):
        os.makedirs(tmp_path / "dir" / c)
        for i in range(count):
            _image(tmp_path / "dir" / c / f"{i}.png")
    result = subprocess.run(
        [sys.executable, "-m", "pcjax.data.prepare", "folder", "--dir", str(tmp_path / "dir"),
         "--name", "few", "--data_dir", str(tmp_path / "tfds")],
        cwd=ROOT, capture_output=True, text=True,
    )
    assert result.returncode == 1
    assert result.stderr == (
        f"error: {tmp_path / 'dir'}: every class has fewer than 5 images, so none is held out "
        "for the test split; add images or pass --test_dir\n"
    )
    assert not (tmp_path / "tfds" / "few").exists()


def test_command_line_turns_os_errors_and_interrupts_into_one_line(tmp_path, prepared, monkeypatch,
                                                                   capsys):
    (tmp_path / "file").write_text("a file where the data dir should be")
    argv = ["folder", "--dir", str(prepared["folder"]), "--name", "blocked",
            "--data_dir", str(tmp_path / "file" / "tfds")]
    with pytest.raises(SystemExit) as error:
        prepare.main(argv)
    assert error.value.code == f"error: {tmp_path / 'file' / 'tfds'}: Not a directory"

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(prepare.cli, "prepare_folder", interrupted)
    with pytest.raises(SystemExit) as error:
        prepare.main(argv)
    assert error.value.code == 130
    assert capsys.readouterr().err == "error: interrupted; no dataset was written\n"


def test_label_file_errors_name_the_line(tmp_path, prepared):
    val = tmp_path / "val"
    os.makedirs(val)
    _image(val / "a.png")
    _image(val / "b.png")
    cases = {
        "a.png cat extra\n": "val.txt:1: expected '<file name> <class>'",
        "a.png elephant\n": "val.txt:1: 'elephant' is not a class of the training folder",
        "a.png cat\nc.png dog\n": f"val.txt:2: no image {val / 'c.png'}",
        "a.png cat\n": f"no label for {val / 'b.png'}",
    }
    for text, expected in cases.items():
        labels = tmp_path / "val.txt"
        labels.write_text(text)
        with pytest.raises(prepare.PrepareError) as error:
            prepare.prepare_folder(str(prepared["folder"]), "shapes_val", test_dir=str(val),
                                   test_labels=str(labels), data_dir=str(tmp_path / "tfds"))
        assert expected in str(error.value)


# ----------------------------------------------------------------------------- train.py


@pytest.mark.parametrize(
    "dataset",
    # Each job costs ~27 s of CPU, nearly all of it compiling resnet8's steps. The folder job is
    # worth it: it is the only end-to-end check that train.py takes a dataset's classes, shape and
    # augmentation from the data dir. CIFAR-100's spec is fixed and its pipeline is tested on a
    # stand-in in test_data.py, so its job runs with -m slow.
    [pytest.param("cifar100", marks=pytest.mark.slow), "shapes"],
)
def test_train_py_runs_on_the_prepared_dataset(prepared, dataset, tmp_path):
    """A 2-step teacher and student (resnet8, the smallest CIFAR network) on each dataset."""
    overrides = {
        "dataset": dataset, "data_dir": prepared["data_dir"], "teacher.model": "resnet8",
        "student.model": "resnet8", "eval.batch_size": 64, "eval.knn_k": 3, "num_devices": 1,
    }
    for phase in ("teacher", "student"):
        overrides.update({f"{phase}.train.num_steps": 2, f"{phase}.train.batch_size": 8,
                          f"{phase}.train.eval_every": 0})
    env = dict(os.environ, JAX_DISABLE_MOST_OPTIMIZATIONS="1", JAX_PLATFORMS="cpu")
    result = subprocess.run(
        [sys.executable, "train.py", "--config", "configs/cifar100.py:resnet32x4_resnet8x4",
         "--workdir", str(tmp_path / "run")] + [f"--config.{k}={v}" for k, v in overrides.items()],
        cwd=ROOT, capture_output=True, text=True, env=env, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"{dataset}: resnet8 -> resnet8" in result.stdout
    results = (tmp_path / "run" / "results.json").read_text()
    assert '"student/pc_score"' in results and '"teacher/top1"' in results

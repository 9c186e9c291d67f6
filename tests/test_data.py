"""Tests of pcjax.data: offline builders, sources, the grain pipeline, augmentation, sharding.

CIFAR-100 cannot be downloaded here, so a tiny stand-in is written with the real `cifar100`
builder's features (PNG images encoded with PIL, because TFDS's own PNG encoder needs TensorFlow)
into a temporary data dir. It exercises the real read path (array_record, PNG decoding, split
slicing), and its metadata lets `tfds.testing.mock_data` run with the real split information:
`mock_data` replaces the records, but pcjax first checks that the dataset is prepared, and without
metadata files it would (rightly) report the dataset missing.
"""

import collections
import io
import itertools

import jax
import mnist1d.data
import numpy as np
import pytest
import tensorflow_datasets as tfds
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from PIL import Image
from sklearn.datasets import load_digits

from pcjax import data
from pcjax.data import augment, builders

DIGITS_TRAIN, DIGITS_TEST = 1442, 355
CIFAR_TRAIN, CIFAR_TEST = 24, 10


def _examples(src):
    return [src[i] for i in range(len(src))]


def _content_counts(images, labels):
    """Multiset of (pixels, label): the identity of examples, whatever their order."""
    return collections.Counter(
        (np.asarray(image).tobytes(), int(label)) for image, label in zip(images, labels)
    )


def _take(iterator, n):
    return list(itertools.islice(iterator, n))


def _digits_pixels(images):
    """Normalized digits batches back to the stored uint8 counts 0..16."""
    spec = data.spec("digits")
    counts = (np.asarray(images) * spec.std[0] + spec.mean[0]) * spec.pixel_scale
    return np.rint(counts).astype(np.uint8)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tfds")


@pytest.fixture(scope="module")
def digits_sources(data_dir):
    return {split: data.source("digits", split, data_dir=data_dir) for split in ("train", "test")}


def _encoded(pixels, image_format):
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=image_format)
    return buffer.getvalue()


def _cifar_example(rng, i):
    pixels = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    image = _encoded(pixels, "png")
    return i, {"id": f"ex_{i}", "image": image, "label": i % 100, "coarse_label": i % 20}


def _imagenet_example(rng, i):
    height, width = rng.integers(40, 90, size=2)
    pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    return i, {"file_name": f"{i}.JPEG", "image": _encoded(pixels, "jpeg"), "label": i}


def _write_tiny(root, name, make_example, sizes):
    """Writes `sizes` = {split: n} examples with the real TFDS builder `name`'s features.

    Split s holds make_example(np.random.default_rng(k), i) for i < n, k the split's rank.
    """

    def generate(n, rng):
        return (make_example(rng, i) for i in range(n))

    class Tiny(tfds.builder_cls(name), skip_registration=True):
        def _split_generators(self, dl_manager):
            return {
                split: generate(n, np.random.default_rng(k))
                for k, (split, n) in enumerate(sizes.items())
            }

    Tiny.name = name
    Tiny(data_dir=root, file_format="array_record").download_and_prepare(
        download_config=tfds.download.DownloadConfig(
            compute_stats=tfds.download.ComputeStatsMode.SKIP
        )
    )
    return root


@pytest.fixture(scope="module")
def cifar_dir(tmp_path_factory):
    sizes = {"train": CIFAR_TRAIN, "test": CIFAR_TEST}
    return _write_tiny(tmp_path_factory.mktemp("cifar"), "cifar100", _cifar_example, sizes)


@pytest.fixture(scope="module")
def imagenet_dir(tmp_path_factory):
    sizes = {"train": 6, "validation": 5}
    root = tmp_path_factory.mktemp("imagenet")
    return _write_tiny(root, "imagenet2012", _imagenet_example, sizes)


# Builders and sources.


def test_digits_builder_holds_sklearn_digits_with_their_labels(digits_sources):
    examples = _examples(digits_sources["train"]) + _examples(digits_sources["test"])
    reference = load_digits()
    assert len(examples) == 1797
    built = _content_counts([e["image"][..., 0] for e in examples], [e["label"] for e in examples])
    expected = _content_counts(reference.images.astype(np.uint8), reference.target)
    assert built == expected


def test_local_dataset_is_built_once_and_reused(data_dir, digits_sources):
    info = data_dir / "digits" / "1.0.0" / "dataset_info.json"
    built_at = info.stat().st_mtime_ns
    assert len(data.source("digits", "test", data_dir=data_dir)) == DIGITS_TEST
    assert info.stat().st_mtime_ns == built_at


def test_digits_split_is_disjoint_stratified_and_sized_as_the_spec(digits_sources):
    labels = load_digits().target
    train = {int(e["index"]) for e in _examples(digits_sources["train"])}
    test = {int(e["index"]) for e in _examples(digits_sources["test"])}
    assert not train & test and len(train | test) == 1797
    assert (len(train), len(test)) == (DIGITS_TRAIN, DIGITS_TEST)
    assert data.spec("digits").splits == {"train": DIGITS_TRAIN, "test": DIGITS_TEST}
    test_labels = np.bincount(labels[sorted(test)], minlength=10)
    np.testing.assert_array_equal(test_labels, np.bincount(labels, minlength=10) // 5)


def test_digits_spec_normalization_is_the_train_split_statistics():
    reference = load_digits()
    train = reference.images[~builders.stratified_holdout(reference.target)] / 16.0
    spec = data.spec("digits")
    assert spec.mean[0] == pytest.approx(train.mean(), abs=1e-4)
    assert spec.std[0] == pytest.approx(train.std(), abs=1e-4)


def test_mnist1d_builder_holds_the_generator_output(data_dir):
    reference = mnist1d.data.make_dataset(mnist1d.data.get_dataset_args())
    for split, x, y in (("train", "x", "y"), ("test", "x_test", "y_test")):
        examples = _examples(data.source("mnist1d", split, data_dir=data_dir))
        assert len(examples) == len(reference[y]) == data.spec("mnist1d").splits[split]
        images = np.stack([e["image"] for e in examples])
        assert images.shape == (len(examples), 40, 1) and images.dtype == np.float32
        np.testing.assert_allclose(images[..., 0], reference[x], rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal([e["label"] for e in examples], reference[y])


def test_generate_mnist1d_leaves_global_random_state_untouched():
    np.random.seed(123)
    expected = np.random.random(3)
    np.random.seed(123)
    builders.generate_mnist1d()
    np.testing.assert_array_equal(np.random.random(3), expected)


def test_split_slices_partition_the_train_split(data_dir, digits_sources):
    head = _examples(data.source("digits", "train[:90%]", data_dir=data_dir))
    tail = _examples(data.source("digits", "train[90%:]", data_dir=data_dir))
    assert len(head) == round(0.9 * DIGITS_TRAIN) and len(head) + len(tail) == DIGITS_TRAIN
    indices = [int(e["index"]) for e in head + tail]
    assert indices == [int(e["index"]) for e in _examples(digits_sources["train"])]


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "imagenet2012"])
def test_missing_dataset_raises_with_name_path_and_command(tmp_path, name):
    with pytest.raises(data.DatasetNotFoundError) as error:
        data.source(name, "train", data_dir=tmp_path)
    message = str(error.value)
    assert isinstance(error.value, FileNotFoundError)
    assert repr(name) in message
    assert str(tmp_path / name) in message
    assert f"tfds build {name} --data_dir={tmp_path} --file_format=array_record" in message
    if name == "imagenet2012":
        assert f"--manual_dir={tmp_path}/downloads/manual" in message


def test_default_data_dir_follows_tfds_data_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
    assert data.default_data_dir() == str(tmp_path)
    monkeypatch.delenv("TFDS_DATA_DIR")
    assert data.default_data_dir().endswith("tensorflow_datasets")


def test_empty_or_none_data_dir_means_the_default(monkeypatch, data_dir, digits_sources):
    monkeypatch.setenv("TFDS_DATA_DIR", str(data_dir))
    for default in ("", None):
        assert len(data.source("digits", "test", data_dir=default)) == DIGITS_TEST
        with pytest.raises(ValueError, match=f"prepared in {data_dir} with"):
            data.spec("photos", data_dir=default)


def test_building_says_so_in_one_line_and_nothing_about_downloads(tmp_path, capsys, caplog):
    data.source("digits", "test", data_dir=tmp_path)
    where = tmp_path / "digits" / "1.0.0"
    assert capsys.readouterr().out == f"Building digits in {where} from local files (no download)\n"
    assert "Variant folder" not in caplog.text  # TFDS's warning that nothing is built yet
    data.source("digits", "test", data_dir=tmp_path)
    assert capsys.readouterr().out == ""  # built once


def test_spec_rejects_unknown_names():
    with pytest.raises(ValueError, match="Unknown dataset 'cifar1000'"):
        data.spec("cifar1000")


# Training stream.


def test_same_seed_gives_identical_batches(data_dir):
    first = _take(data.train_batches("digits", data_dir=data_dir, global_batch_size=32, seed=3), 3)
    again = _take(data.train_batches("digits", data_dir=data_dir, global_batch_size=32, seed=3), 3)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["label"], b["label"])


def test_different_seeds_give_different_orders(data_dir):
    a = next(data.train_batches("digits", data_dir=data_dir, global_batch_size=32, seed=0))
    b = next(data.train_batches("digits", data_dir=data_dir, global_batch_size=32, seed=1))
    assert not np.array_equal(a["image"], b["image"])


def test_start_step_resumes_the_same_stream(data_dir):
    kwargs = dict(data_dir=data_dir, global_batch_size=32, seed=5)
    uninterrupted = _take(data.train_batches("digits", **kwargs), 50)[45:]
    resumed = _take(data.train_batches("digits", start_step=45, **kwargs), 5)
    for a, b in zip(uninterrupted, resumed, strict=True):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["label"], b["label"])


def test_every_epoch_is_a_permutation_of_the_split(data_dir, digits_sources):
    # 100 does not divide 1442, so batches straddle the epoch boundaries.
    stream = data.train_batches("digits", data_dir=data_dir, global_batch_size=100, seed=0)
    batches = _take(stream, 29)
    images = _digits_pixels(np.concatenate([b["image"] for b in batches]))
    labels = np.concatenate([b["label"] for b in batches])
    examples = _examples(digits_sources["train"])
    split = _content_counts([e["image"] for e in examples], [e["label"] for e in examples])
    epochs = [slice(0, DIGITS_TRAIN), slice(DIGITS_TRAIN, 2 * DIGITS_TRAIN)]
    for epoch in epochs:
        assert _content_counts(images[epoch], labels[epoch]) == split
    assert not np.array_equal(images[epochs[0]], images[epochs[1]])


def test_train_batches_are_normalized_float32_with_int32_labels(data_dir):
    batch = next(data.train_batches("digits", data_dir=data_dir, global_batch_size=64, seed=0))
    assert batch["image"].shape == (64, 8, 8, 1) and batch["image"].dtype == np.float32
    assert batch["label"].shape == (64,) and batch["label"].dtype == np.int32
    spec = data.spec("digits")
    pixels = _digits_pixels(batch["image"])
    np.testing.assert_allclose(
        batch["image"], (pixels / 16.0 - spec.mean[0]) / spec.std[0], rtol=1e-5, atol=1e-6
    )


def test_each_process_reads_its_half_of_the_global_batch(data_dir, monkeypatch):
    kwargs = dict(data_dir=data_dir, global_batch_size=32, seed=2)
    whole = next(data.train_batches("digits", **kwargs))
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    monkeypatch.setattr(jax, "process_index", lambda: 1)
    second = next(data.train_batches("digits", **kwargs))
    np.testing.assert_array_equal(second["image"], whole["image"][16:])
    np.testing.assert_array_equal(second["label"], whole["label"][16:])


# Evaluation stream.


def test_eval_batches_count_every_example_exactly_once(data_dir, digits_sources):
    batches = list(data.eval_batches("digits", "test", data_dir=data_dir, global_batch_size=64))
    assert len(batches) == -(-DIGITS_TEST // 64)
    mask = np.concatenate([b["mask"] for b in batches])
    assert mask.dtype == bool and mask.sum() == DIGITS_TEST and not mask[DIGITS_TEST:].any()
    images = _digits_pixels(np.concatenate([b["image"] for b in batches]))[mask]
    labels = np.concatenate([b["label"] for b in batches])[mask]
    examples = _examples(digits_sources["test"])
    split = _content_counts([e["image"] for e in examples], [e["label"] for e in examples])
    assert _content_counts(images, labels) == split


# Sharding on a mesh of the 8 fake CPU devices.


@pytest.mark.parametrize(
    "mesh_shape, axes, batch_axes",
    [((8,), ("data",), "data"), ((4, 2), ("data", "model"), "data"),
     ((4, 2), ("batch", "model"), ("batch", "model"))],
)
def test_sharded_batches_are_global_arrays_with_that_sharding(
    data_dir, mesh_shape, axes, batch_axes
):
    """The pipeline knows no axis name: it reads the rows the sharding gives its devices."""
    mesh = Mesh(np.array(jax.devices()).reshape(mesh_shape), axes)
    sharding = NamedSharding(mesh, PartitionSpec(batch_axes))
    kwargs = dict(data_dir=data_dir, global_batch_size=16, seed=4)
    sharded = next(data.train_batches("digits", sharding=sharding, **kwargs))
    plain = next(data.train_batches("digits", **kwargs))
    for key in ("image", "label"):
        assert isinstance(sharded[key], jax.Array)
        assert sharded[key].shape == plain[key].shape
        assert sharded[key].sharding.is_equivalent_to(sharding, sharded[key].ndim)
        np.testing.assert_array_equal(np.asarray(sharded[key]), plain[key])
    shards = 8 if batch_axes == ("batch", "model") else mesh_shape[0]
    shard_rows = {shard.data.shape[0] for shard in sharded["image"].addressable_shards}
    assert shard_rows == {16 // shards}


def test_replicated_batches_hold_the_whole_batch_on_every_device(data_dir):
    sharding = NamedSharding(Mesh(np.array(jax.devices()), ("data",)), PartitionSpec())
    kwargs = dict(data_dir=data_dir, global_batch_size=6, seed=4)
    replicated = next(data.train_batches("digits", sharding=sharding, **kwargs))
    plain = next(data.train_batches("digits", **kwargs))
    for shard in replicated["label"].addressable_shards:
        np.testing.assert_array_equal(np.asarray(shard.data), plain["label"])


def test_sharded_eval_batches_carry_the_mask(data_dir):
    sharding = NamedSharding(Mesh(np.array(jax.devices()), ("data",)), PartitionSpec("data"))
    batches = list(data.eval_batches(
        "digits", "test", data_dir=data_dir, global_batch_size=64, sharding=sharding))
    assert int(sum(np.asarray(b["mask"]).sum() for b in batches)) == DIGITS_TEST


def test_sharding_rejects_a_batch_size_its_shards_do_not_divide(data_dir, tmp_path):
    mesh = Mesh(np.array(jax.devices()).reshape(4, 2), ("rows", "model"))
    sharding = NamedSharding(mesh, PartitionSpec("rows"))
    # Checked before the dataset is opened: cifar10 is not prepared in tmp_path.
    message = "global_batch_size: 10 is not divisible by the 4 shards of `sharding`"
    with pytest.raises(ValueError, match=message):
        data.train_batches("cifar10", data_dir=tmp_path, global_batch_size=10, seed=0,
                           sharding=sharding)
    with pytest.raises(ValueError, match=message):
        data.eval_batches("cifar10", "test", data_dir=tmp_path, global_batch_size=10,
                          sharding=sharding)
    data.train_batches("digits", data_dir=data_dir, global_batch_size=12, seed=0,
                       sharding=sharding).close()  # 12 = 4 x 3 rows: accepted


def test_sharding_that_is_not_a_batch_sharding_is_rejected(data_dir):
    mesh = Mesh(np.array(jax.devices()), ("data",))
    with pytest.raises(ValueError, match="sharding: expected a jax.sharding.Sharding .* got Mesh"):
        data.eval_batches("digits", "test", data_dir=data_dir, global_batch_size=8, sharding=mesh)
    second_axis = NamedSharding(mesh, PartitionSpec(None, "data"))
    with pytest.raises(ValueError, match="does not apply to the 1-D labels"):
        data.eval_batches("digits", "test", data_dir=data_dir, global_batch_size=8,
                          sharding=second_axis)


def test_negative_seed_is_rejected(data_dir):
    with pytest.raises(ValueError, match="seed must be an integer >= 0"):
        data.train_batches("digits", data_dir=data_dir, global_batch_size=8, seed=-1)


# Augmentation.


def _crop_flip_candidates(image, padding=augment.CIFAR_PADDING):
    """Every zero-padded crop of `image`, flipped or not: (offset, flipped) -> array."""
    h, w = image.shape[:2]
    padded = np.pad(image, ((padding, padding), (padding, padding), (0, 0)))
    return {
        (top, left, flip): crop[:, ::-1] if flip else crop
        for top in range(2 * padding + 1)
        for left in range(2 * padding + 1)
        for flip in (False, True)
        for crop in [padded[top : top + h, left : left + w]]
    }


def test_cifar_crop_flip_is_a_padded_crop_and_really_crops_and_flips():
    image = np.random.default_rng(0).integers(1, 256, size=(32, 32, 3), dtype=np.uint8)
    candidates = _crop_flip_candidates(image)
    seen = set()
    for position in range(40):
        out = augment.cifar_crop_flip(image, augment.example_rng(7, position))
        assert out.shape == image.shape and out.dtype == image.dtype
        matches = [key for key, crop in candidates.items() if np.array_equal(crop, out)]
        assert len(matches) == 1
        seen.add(matches[0])
    assert {flip for _, _, flip in seen} == {False, True}
    assert any((top, left) != (4, 4) for top, left, _ in seen)


def test_augmentation_depends_only_on_seed_and_position():
    image = np.random.default_rng(1).integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    same = [augment.cifar_crop_flip(image, augment.example_rng(3, 10)) for _ in range(2)]
    np.testing.assert_array_equal(*same)
    others = [
        augment.cifar_crop_flip(image, augment.example_rng(s, p)) for s, p in [(4, 10), (3, 11)]
    ]
    assert any(not np.array_equal(same[0], other) for other in others)


def test_imagenet_train_and_eval_crops_have_the_model_input_shape():
    image = np.random.default_rng(2).integers(0, 256, size=(300, 451, 3), dtype=np.uint8)
    crops = [augment.random_resized_crop(image, augment.example_rng(0, p)) for p in range(3)]
    assert all(c.shape == (224, 224, 3) and c.dtype == np.uint8 for c in crops)
    assert not np.array_equal(crops[0], crops[1])
    thin = image[:10]  # no sampled crop fits its aspect ratio: the central fallback is used
    assert augment.random_resized_crop(thin, augment.example_rng(0, 0)).shape == (224, 224, 3)
    assert augment.center_crop(image).shape == (224, 224, 3)


def test_center_crop_takes_the_middle_when_the_short_side_is_256():
    image = np.random.default_rng(3).integers(0, 256, size=(256, 320, 3), dtype=np.uint8)
    np.testing.assert_array_equal(augment.center_crop(image), image[16:240, 48:272])


# CIFAR-100 end to end.


def test_cifar100_eval_batches_decode_and_normalize_the_stored_images(cifar_dir):
    batches = list(data.eval_batches("cifar100", "test", data_dir=cifar_dir, global_batch_size=8))
    spec = data.spec("cifar100")
    mask = np.concatenate([b["mask"] for b in batches])
    images = np.concatenate([b["image"] for b in batches])[mask]
    labels = np.concatenate([b["label"] for b in batches])[mask]
    assert images.shape == (CIFAR_TEST, 32, 32, 3)
    pixels = (images * np.array(spec.std) + np.array(spec.mean)) * 255.0
    np.testing.assert_allclose(pixels, np.rint(pixels), atol=1e-3)
    rng = np.random.default_rng(1)  # the test split's generator in `_write_tiny`
    written = [_cifar_example(rng, i)[1] for i in range(CIFAR_TEST)]
    expected = _content_counts(
        [np.asarray(Image.open(io.BytesIO(e["image"]))) for e in written],
        [e["label"] for e in written],
    )
    assert _content_counts(np.rint(pixels).astype(np.uint8), labels) == expected


def test_cifar100_train_batches_are_augmented_deterministically(cifar_dir):
    def first(**kwargs):
        it = data.train_batches("cifar100", data_dir=cifar_dir, global_batch_size=8, **kwargs)
        return next(it)["image"]

    augmented = first(seed=0)
    assert augmented.shape == (8, 32, 32, 3) and augmented.dtype == np.float32
    np.testing.assert_array_equal(augmented, first(seed=0))
    assert not np.array_equal(augmented, first(seed=0, augment=False))


def test_cifar100_pipeline_runs_under_tfds_mock_data(cifar_dir):
    with tfds.testing.mock_data(num_examples=12, data_dir=cifar_dir):
        stream = data.train_batches(
            "cifar100", data_dir=cifar_dir, split="train[:90%]", global_batch_size=4, seed=0
        )
        train = _take(stream, 4)
        evaluation = list(
            data.eval_batches("cifar100", "test", data_dir=cifar_dir, global_batch_size=8)
        )
    for batch in train:
        assert batch["image"].shape == (4, 32, 32, 3) and batch["image"].dtype == np.float32
        assert ((batch["label"] >= 0) & (batch["label"] < 100)).all()
    assert len(evaluation) == 2 and int(sum(b["mask"].sum() for b in evaluation)) == 12


# ImageNet end to end.


def test_imagenet_batches_bring_every_image_to_224(imagenet_dir):
    def first_train(seed):
        kwargs = dict(data_dir=imagenet_dir, global_batch_size=4, seed=seed)
        return next(data.train_batches("imagenet2012", **kwargs))

    batch = first_train(0)
    assert batch["image"].shape == (4, 224, 224, 3) and batch["image"].dtype == np.float32
    np.testing.assert_array_equal(batch["image"], first_train(0)["image"])
    evaluation = list(
        data.eval_batches("imagenet2012", "validation", data_dir=imagenet_dir, global_batch_size=4)
    )
    assert [b["image"].shape for b in evaluation] == [(4, 224, 224, 3)] * 2
    assert [b["mask"].tolist() for b in evaluation] == [[True] * 4, [True] + [False] * 3]

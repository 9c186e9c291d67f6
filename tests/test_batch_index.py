"""Training batches carry `index`, each example's position in the split, global under sharding."""

import itertools

import jax
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from pcjax import data
from pcjax.data.augment import preprocess

DIGITS_TRAIN = 1442


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tfds")


def _stored(data_dir):
    """The train split's images (normalized as the pipeline does, no augmentation) and labels."""
    examples = data.source("digits", "train", data_dir=data_dir)
    spec = data.spec("digits")
    images = np.stack([preprocess(examples[i]["image"], spec, rng=None)
                       for i in range(len(examples))])
    labels = np.array([examples[i]["label"] for i in range(len(examples))], np.int32)
    return images, labels


def test_indices_of_an_epoch_are_a_permutation_and_name_the_rows_read(data_dir):
    # 100 does not divide 1442: the 15th batch straddles the first epoch boundary.
    stream = data.train_batches("digits", data_dir=data_dir, global_batch_size=100, seed=0)
    batches = list(itertools.islice(stream, 15))
    stream.close()
    index = np.concatenate([b["index"] for b in batches])
    assert all(b["index"].dtype == np.int32 and b["index"].shape == (100,) for b in batches)
    np.testing.assert_array_equal(np.sort(index[:DIGITS_TRAIN]), np.arange(DIGITS_TRAIN))
    images, labels = _stored(data_dir)
    np.testing.assert_array_equal(np.concatenate([b["label"] for b in batches]), labels[index])
    np.testing.assert_allclose(np.concatenate([b["image"] for b in batches]), images[index],
                               rtol=0, atol=0)


def test_sharded_and_per_process_batches_carry_the_global_index(data_dir, monkeypatch):
    kwargs = dict(data_dir=data_dir, global_batch_size=16, seed=4)
    plain = next(data.train_batches("digits", **kwargs))
    mesh = Mesh(np.array(jax.devices()[:8]), ("data",))
    sharded = next(data.train_batches(
        "digits", sharding=NamedSharding(mesh, PartitionSpec("data")), **kwargs))
    np.testing.assert_array_equal(np.asarray(sharded["index"]), plain["index"])
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    monkeypatch.setattr(jax, "process_index", lambda: 1)
    second = next(data.train_batches("digits", **kwargs))
    np.testing.assert_array_equal(second["index"], plain["index"][8:])

"""The transfer-loss protocol (`pcjax.losses.transfer`): the registry, options resolved and
checked by each loss, and bound losses equal to the pure functions they wrap (stateless, with a
projection head, row-sharded over a mesh, and CRD with its heads and memory)."""

import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from float32 import assert_close
from pcjax.losses import crd, perception_coherence_loss, rkd, transfer
from pcjax.training import sharding


def test_registry_lists_every_loss_with_its_inputs_heads_and_weight():
    assert transfer.names() == ("perception_coherence", "kd", "fitnet", "rkd", "pkt", "sp", "cc",
                                "crd")
    assert [n for n in transfer.names() if transfer.get(n).reads_labels] == ["crd"]
    assert [n for n in transfer.names() if transfer.get(n).projection] == ["fitnet", "cc"]
    assert [n for n in transfer.names() if transfer.get(n).axis_name] == ["perception_coherence"]
    assert transfer.get("kd").inputs == "logits"
    assert {name: transfer.get(name).default_weight for name in transfer.names()} == dict(
        perception_coherence=10.0, fitnet=100.0, rkd=1.0, pkt=30000.0, sp=3000.0, cc=0.02,
        kd=0.9, crd=0.8)
    with pytest.raises(ValueError, match="Unknown loss 'crdd'; registered losses: perception"):
        transfer.get("crdd")


def test_options_are_completed_with_defaults_and_typed_like_them():
    loss = transfer.get("perception_coherence")
    given = loss.resolve_options({"regularization_strength": 1, "objective": "spearman"})
    assert given == {"student_dissimilarity": "euclidean", "teacher_dissimilarity": "euclidean",
                     "regularization_strength": 1.0, "regularization": "l2",
                     "objective": "spearman", "neighbourhood": None}
    assert type(given["regularization_strength"]) is float
    # An option at its default is the option left out.
    assert loss.resolve_options({"regularization_strength": 1.0}) == loss.resolve_options({})
    assert transfer.get("crd").resolve_options({"nce_t": 1}) == {
        "feat_dim": 128, "nce_k": 16384, "nce_t": 1.0, "momentum": 0.5}


@pytest.mark.parametrize("name, given, key, message", [
    ("rkd", {"distance": 1.0}, "distance",
     "not an option of rkd; expected some of distance_weight, angle_weight"),
    ("fitnet", {"eps": 1.0}, "eps", "not an option of fitnet; it takes none"),
    ("perception_coherence", {"mask": None}, "mask", "not an option"),
    ("perception_coherence", {"regularization_strength": "high"}, "regularization_strength",
     "expected a float like the default 1.0, got 'high'"),
    ("perception_coherence", {"regularization_strength": -1.0}, None,
     "perception_coherence refuses them: regularization_strength"),
    ("perception_coherence", {"objective": "l1"}, None, "refuses them: objective"),
    ("crd", {"momentum": float("nan")}, "momentum", "must be a number in [0, 1], got nan"),
    ("crd", {"nce_k": 2.0}, "nce_k", "must be an integer >= 1, got 2.0"),
])
def test_bad_options_are_refused_by_the_loss_naming_the_option(name, given, key, message):
    with pytest.raises(transfer.OptionError, match=re.escape(message)) as error:
        transfer.get(name).resolve_options(given)
    assert error.value.key == key


def _features(batch=8, width=5, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(batch, width)).astype(np.float32),
            rng.normal(size=(batch, width + 2)).astype(np.float32))


class StatelessLossTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    def test_a_stateless_loss_applies_its_pure_function(self):
        student, teacher = _features()
        options = transfer.get("rkd").resolve_options({"angle_weight": 10.0})
        bound = transfer.get("rkd").bind(options, num_examples=100)
        assert bound.heads(5, 7, nnx.Rngs(0)) is None and bound.init(jax.random.key(0)) is None
        apply = self.variant(lambda s, t: bound.apply(None, None, s, t, {}, 0))
        value, state = apply(student, teacher)
        assert state is None
        assert_close(value, rkd(student, teacher, distance_weight=25.0, angle_weight=10.0))


def test_a_projected_loss_maps_the_student_to_the_teachers_width_first():
    student, teacher = _features()
    bound = transfer.get("fitnet").bind({}, num_examples=100)
    heads = bound.heads(5, 7, nnx.Rngs(0))
    value, _ = bound.apply(heads, None, student, teacher, {}, 0)
    projected = student @ np.asarray(heads.kernel.value) + np.asarray(heads.bias.value)
    assert_close(value, np.mean((projected - teacher) ** 2))


def test_row_sharded_loss_equals_the_global_batch_loss_and_gradient():
    """Bound with the mesh's batch axis, the perception coherence loss runs in a shard_map (each
    device ranks its own rows): the value and the student gradient are the unsharded ones."""
    student, teacher = _features(batch=16)
    loss = transfer.get("perception_coherence")
    options = loss.resolve_options({})
    mesh = sharding.make_mesh(8)
    sharded = loss.bind(options, num_examples=100, batch_axis=(mesh, sharding.DATA_AXIS))

    def total(bound):
        return lambda s, t: bound.apply(None, None, s, t, {}, 0)[0]

    rows = sharding.batch_sharded(mesh)
    args = (jax.device_put(student, rows), jax.device_put(teacher, rows))
    value, grad = jax.jit(jax.value_and_grad(total(sharded)))(*args)
    expected, expected_grad = jax.value_and_grad(
        lambda s, t: perception_coherence_loss(s, t, **options))(student, teacher)
    assert_close(value, expected)
    assert_close(grad, expected_grad, rel_atol=1e-4)
    # One device on the axis: the pure function itself, no shard_map.
    single = loss.bind(options, num_examples=100,
                       batch_axis=(sharding.make_mesh(1), sharding.DATA_AXIS))
    assert_close(total(single)(student, teacher), expected)


def test_crd_owns_its_heads_memory_and_negatives():
    """CRD's bound loss equals the pure functions called by hand: heads, negatives from the
    state's key folded with the step, the NCE loss and the bank update."""
    num_examples, options = 40, {"feat_dim": 4, "nce_k": 6}
    loss = transfer.get("crd")
    options = loss.resolve_options(options)
    labels = np.arange(num_examples) % 4
    bound = loss.bind(options, num_examples=num_examples, labels=labels)
    heads = bound.heads(5, 7, nnx.Rngs(0))
    state = bound.init(jax.random.key(3))
    assert state["crd"].bank_s.shape == (num_examples, 4)
    student, teacher = _features()
    batch = {"index": jnp.arange(8) * 3, "label": jnp.asarray(labels[np.arange(8) * 3])}
    value, new_state = bound.apply(heads, state, student, teacher, batch, 5)

    emb_s, emb_t = heads(student, teacher)
    contrast = crd.sample_contrast_indices(
        jax.random.fold_in(state["key"], 5), batch["index"], nce_k=6, num_examples=num_examples,
        label=batch["label"], classes=crd.class_index(labels))
    expected, memory = crd.crd_loss(state["crd"], emb_s, emb_t, contrast, nce_t=0.07)
    memory = crd.update_banks(memory, emb_s, emb_t, batch["index"], momentum=0.5)
    assert_close(value, expected)
    chex.assert_trees_all_close(new_state["crd"], memory, rtol=1e-5, atol=1e-6)
    assert new_state["key"] is state["key"]

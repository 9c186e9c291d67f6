"""CRD (pcjax.losses.crd) against an independent float64 NumPy reference of RepDistiller's formulas.

Tiny shapes (N=64 examples, K=8 negatives, B=8, feat_dim=16) keep compiles cheap; each numeric
test runs eagerly and under jit (chex variants). Tolerances: values at rtol 1e-5 (float32 exp of
<w, v> / T with T = 0.07 carries ~1e-6 relative error per score, the sums a few eps more);
gradients against float64 central differences at 1e-4 of max|g| (cancelling sums).

The last section trains CRD through `pcjax.training.build` on digits (batch 16, nce_k 8,
feat_dim 16): memory updates, checkpoint round trip, 8 devices against 1, config errors.
"""

import functools
import os
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from float32 import assert_close
from pcjax.losses import crd
from pcjax.losses.crd_heads import CRDHeads
from pcjax.training import build, checkpoint, sharding, spec as spec_lib
from pcjax.training import config as config_lib

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from configs import digits  # noqa: E402

N, K, B, D, T = 64, 8, 8, 16, 0.07
LABELS = np.arange(N) % 4


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _inputs(seed=0):
    rng = np.random.default_rng(seed)
    state = crd.init_state(jax.random.key(seed), N, D)
    index = rng.permutation(N)[:B].astype(np.int32)
    contrast_idx = np.concatenate([index[:, None], rng.integers(0, N, (B, K))], 1).astype(np.int32)
    emb_s, emb_t = (_unit(rng.normal(size=(B, D))).astype(np.float32) for _ in range(2))
    return state, emb_s, emb_t, index, contrast_idx


def _reference(state, emb_s, emb_t, contrast_idx, z_s=None, z_t=None):
    """RepDistiller ContrastMemory + ContrastLoss in float64: (loss, z_s, z_t)."""
    bank_s, bank_t = (np.asarray(b, np.float64) for b in (state.bank_s, state.bank_t))

    def term(bank, emb, z):
        out = np.exp(np.einsum("bkd,bd->bk", bank[contrast_idx], emb) / T)
        z = out.mean() * len(bank) if z is None else z
        p, noise = out / z, (out.shape[1] - 1) / len(bank)
        log_d1 = np.log(p[:, 0] / (p[:, 0] + noise + 1e-7))
        log_d0 = np.log(noise / (p[:, 1:] + noise + 1e-7))
        return -(log_d1.sum() + log_d0.sum()) / len(emb), z

    loss_s, z_s = term(bank_t, np.float64(emb_s), z_s)  # student anchor, teacher bank
    loss_t, z_t = term(bank_s, np.float64(emb_t), z_t)  # teacher anchor, student bank
    return loss_s + loss_t, z_s, z_t


def _reference_update(bank, emb, index, momentum=0.5):
    bank = np.array(bank, np.float64)
    rows = _unit(momentum * bank[index] + (1 - momentum) * emb)
    for i, row in zip(index, rows):  # in batch order: the last occurrence is written last
        bank[i] = row
    return bank


class CRDNumericsTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    def test_loss_and_z_match_the_reference_and_z_is_kept_after_the_first_call(self):
        state, emb_s, emb_t, _, contrast_idx = _inputs()
        loss_fn = self.variant(functools.partial(crd.crd_loss, nce_t=T))
        loss, state = loss_fn(state, emb_s, emb_t, contrast_idx)
        expected, z_s, z_t = _reference(state, emb_s, emb_t, contrast_idx)
        assert_close(loss, expected)
        assert_close(state.z_s, z_s)
        assert_close(state.z_t, z_t)
        assert not np.isclose(z_s, z_t)  # the pairing of anchors and banks is visible
        # A second batch scores with the first batch's Z.
        _, emb_s2, emb_t2, _, contrast_idx2 = _inputs(seed=1)
        loss2, state2 = loss_fn(state, emb_s2, emb_t2, contrast_idx2)
        assert_close(loss2, _reference(state, emb_s2, emb_t2, contrast_idx2, z_s, z_t)[0])
        np.testing.assert_array_equal([state2.z_s, state2.z_t], [state.z_s, state.z_t])

    @chex.variants(with_jit=True, without_jit=True)
    def test_gradient_matches_central_differences_with_z_held_fixed(self):
        state, emb_s, emb_t, _, contrast_idx = _inputs()
        _, z_s, z_t = _reference(state, emb_s, emb_t, contrast_idx)
        # Z unset: it is set inside the differentiated call, and carries no gradient.
        grad_fn = self.variant(jax.grad(
            lambda s, t: crd.crd_loss(state, s, t, contrast_idx, nce_t=T)[0], argnums=(0, 1)))
        grads = grad_fn(emb_s, emb_t)
        h = 1e-6
        for which, grad in enumerate(grads):
            expected = np.zeros((B, D))
            for b, d in np.ndindex(B, D):
                pair = [np.float64(emb_s), np.float64(emb_t)]
                plus, minus = pair[which].copy(), pair[which].copy()
                plus[b, d] += h
                minus[b, d] -= h
                f = lambda x: _reference(state, *(x if i == which else pair[i] for i in (0, 1)),
                                         contrast_idx, z_s, z_t)[0]
                expected[b, d] = (f(plus) - f(minus)) / (2 * h)
            assert_close(grad, expected, rtol=1e-4, rel_atol=1e-4)

    @chex.variants(with_jit=True, without_jit=True)
    def test_bank_update_is_a_renormalized_momentum_average_last_duplicate_wins(self):
        state, emb_s, emb_t, index, _ = _inputs()
        index = index.copy()
        index[5] = index[2]  # a duplicate: row 5's update is written, row 2's is not
        update = self.variant(functools.partial(crd.update_banks, momentum=0.5))
        new = update(state, emb_s, emb_t, index)
        assert_close(new.bank_s, _reference_update(state.bank_s, emb_s, index))
        assert_close(new.bank_t, _reference_update(state.bank_t, emb_t, index))
        np.testing.assert_allclose(np.linalg.norm(new.bank_s[index], axis=1), 1.0, rtol=1e-6)
        untouched = np.setdiff1d(np.arange(N), index)
        np.testing.assert_array_equal(new.bank_t[untouched], state.bank_t[untouched])
        np.testing.assert_array_equal([new.z_s, new.z_t], [state.z_s, state.z_t])

    @chex.variants(with_jit=True, without_jit=True)
    def test_exact_negatives_come_from_other_classes_and_cover_them(self):
        classes = crd.class_index(LABELS)
        index = np.arange(N, dtype=np.int32)
        sample = self.variant(lambda key, i, y, c: crd.sample_contrast_indices(
            key, i, nce_k=10_000, num_examples=N, label=y, classes=c))
        idx = np.asarray(sample(jax.random.key(0), index, LABELS.astype(np.int32), classes))
        assert idx.shape == (N, N) and idx.dtype == np.int32  # K capped at N - 1
        np.testing.assert_array_equal(idx[:, 0], index)
        negatives = idx[:, 1:]
        assert not (LABELS[negatives] == LABELS[index][:, None]).any()
        assert not (negatives == index[:, None]).any()
        for c in range(4):  # ~1000 draws per class over its 48 candidates
            assert set(negatives[LABELS == c].ravel()) == set(np.flatnonzero(LABELS != c))

    @chex.variants(with_jit=True, without_jit=True)
    def test_class_unaware_negatives_are_uniform_over_all_examples(self):
        index = np.arange(B, dtype=np.int32)
        sample = self.variant(lambda key, i: crd.sample_contrast_indices(
            key, i, nce_k=K, num_examples=N))
        idx = np.asarray(sample(jax.random.key(1), index))
        assert idx.shape == (B, K + 1)
        np.testing.assert_array_equal(idx[:, 0], index)
        assert idx.min() >= 0 and idx.max() < N
        np.testing.assert_array_equal(idx, sample(jax.random.key(1), index))


def test_init_state_bank_range_and_unset_z():
    state = crd.init_state(jax.random.key(0), N, D)
    stdv = 1 / np.sqrt(D / 3)
    for bank in (state.bank_s, state.bank_t):
        assert bank.shape == (N, D) and bank.dtype == jnp.float32
        assert np.abs(bank).max() <= stdv and np.abs(bank).max() > 0.9 * stdv
    assert not np.array_equal(state.bank_s, state.bank_t)
    assert state.z_s < 0 and state.z_t < 0


def test_heads_embed_to_unit_vectors_and_pass_no_gradient_to_teacher_features():
    heads = CRDHeads(5, 7, feat_dim=D, rngs=nnx.Rngs(0))
    f_s, f_t = jnp.ones((B, 5)), jnp.ones((B, 7))
    emb_s, emb_t = heads(f_s, f_t)
    np.testing.assert_allclose(np.linalg.norm(emb_s, axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(emb_t, axis=1), 1.0, rtol=1e-6)
    grad_t = jax.grad(lambda t: heads(f_s, t)[1][:, 0].sum())(f_t)
    np.testing.assert_array_equal(grad_t, 0.0)


def test_sharded_batch_gives_the_loss_and_banks_of_the_whole_batch():
    state, emb_s, emb_t, index, contrast_idx = _inputs()
    mesh = Mesh(np.array(jax.devices()[:8]), ("data",))
    rows, rep = NamedSharding(mesh, PartitionSpec("data")), NamedSharding(mesh, PartitionSpec())

    def step(state, emb_s, emb_t, index, contrast_idx):
        loss, state = crd.crd_loss(state, emb_s, emb_t, contrast_idx, nce_t=T)
        return loss, crd.update_banks(state, emb_s, emb_t, index)

    sharded = jax.jit(step, out_shardings=rep)(
        jax.device_put(state, rep), *(jax.device_put(x, rows) for x in
                                      (emb_s, emb_t, index, contrast_idx)))
    plain = step(state, emb_s, emb_t, index, contrast_idx)
    chex.assert_trees_all_close(sharded, plain, rtol=1e-5, atol=1e-6)
    assert sharded[1].bank_s.sharding.is_fully_replicated


@pytest.mark.parametrize("call,message", [
    (lambda s, e, i, c: crd.crd_loss(s, e[:, :4], e, c), r"emb_s must have shape \(batch, "
     r"feat_dim=16\)"),
    (lambda s, e, i, c: crd.crd_loss(s, e, e, c[:, :1]), r"contrast_idx must have shape"),
    (lambda s, e, i, c: crd.crd_loss(s, e, e, c[:4]), r"contrast_idx must have shape"),
    (lambda s, e, i, c: crd.crd_loss(s, e, e, c, nce_t=0.0), "nce_t must be positive"),
    (lambda s, e, i, c: crd.update_banks(s, e, e, c), r"index must be a \(batch,\) integer"),
    (lambda s, e, i, c: crd.update_banks(s, e, e[:, :4], i), r"emb_t must have shape"),
    (lambda s, e, i, c: crd.update_banks(s, e, e, i, momentum=1.5), "momentum must lie"),
    (lambda s, e, i, c: crd.sample_contrast_indices(
        jax.random.key(0), i, nce_k=0, num_examples=N), "nce_k must be an integer >= 1"),
    (lambda s, e, i, c: crd.sample_contrast_indices(
        jax.random.key(0), c, nce_k=K, num_examples=N), r"index must be a \(batch,\) integer"),
    (lambda s, e, i, c: crd.sample_contrast_indices(
        jax.random.key(0), i, nce_k=K, num_examples=N, classes=crd.class_index(LABELS)),
     "label is required"),
    (lambda s, e, i, c: crd.sample_contrast_indices(
        jax.random.key(0), i, nce_k=K, num_examples=N + 1, label=i,
        classes=crd.class_index(LABELS)), "classes covers 64 examples, but num_examples=65"),
    (lambda s, e, i, c: crd.class_index(np.zeros(N, int)), "at least two classes"),
    (lambda s, e, i, c: crd.class_index(LABELS, num_classes=3), r"labels must lie in \[0, "),
    (lambda s, e, i, c: crd.init_state(jax.random.key(0), 1, D), "num_examples must be"),
])
def test_bad_input_raises_value_error_naming_the_argument(call, message):
    state, emb_s, _, index, contrast_idx = _inputs()
    with pytest.raises(ValueError, match=message):
        call(state, emb_s, jnp.asarray(index), jnp.asarray(contrast_idx))


# ----------------------------------------------------------------------------- training step


def _crd_config(protocol="class_unaware"):
    config = config_lib.complete(digits.get_config())
    config.distill.loss, config.distill.protocol = "crd", protocol
    config.distill.loss_kwargs.update(nce_k=8, feat_dim=16)
    config.student.train = config_lib.phase_config(
        batch_size=16, num_steps=4, schedule=dict(name="constant"),
        optimizer=dict(name="sgd", learning_rate=0.1),
    )
    return config


@pytest.fixture(scope="module")
def teacher():
    """The digits teacher on one device, built once for the module (its init compiles in
    seconds); the CRD options do not reach the teacher phase."""
    return build.teacher_phase(spec_lib.resolve(_crd_config(), sharding.make_mesh(1))).model()


def _crd_phase(config, mesh, teacher):
    """The student phase on `mesh`, its teacher's variables replicated over the mesh."""
    spec = spec_lib.resolve(config, mesh)
    teacher = build.Model(teacher.graphdef,
                          jax.device_put(teacher.variables, sharding.replicated(mesh)))
    return build.student_phase(spec, teacher)


def _batch(rng, num_examples):
    return {
        "image": rng.normal(size=(16, 8, 8, 1)).astype(np.float32),
        "label": rng.integers(0, 10, 16).astype(np.int32),
        "index": rng.permutation(num_examples)[:16].astype(np.int32),
    }


def test_distillation_step_trains_crd_and_its_memory_restores_exactly(tmp_path, teacher):
    """Steps of the student phase's step: finite loss, bank rows move at the batch's indices
    only, Z set by step 1 and kept; a checkpointed state resumes to the uninterrupted state."""
    mesh = sharding.make_mesh(1)
    phase = _crd_phase(_crd_config(), mesh, teacher)
    memory = phase.state.loss_state["crd"]
    num_examples = memory.bank_s.shape[0]
    assert (memory.bank_s.shape, float(memory.z_s)) == ((num_examples, 16), -1.0)
    step, state = jax.jit(phase.step), phase.state
    rng = np.random.default_rng(0)
    batches = [_batch(rng, num_examples) for _ in range(3)]
    z = None
    for batch in batches[:2]:
        before = jax.device_get(state.loss_state["crd"])
        state, metrics = step(state, batch, phase.teacher)
        after = jax.device_get(state.loss_state["crd"])
        assert np.isfinite(float(metrics["transfer"])) and float(metrics["grad_norm"]) > 0
        for old, new in ((before.bank_s, after.bank_s), (before.bank_t, after.bank_t)):
            moved = np.flatnonzero(np.any(old != new, axis=1))
            np.testing.assert_array_equal(moved, np.sort(batch["index"]))
        z = z or (float(after.z_s), float(after.z_t))
        assert min(z) > 0 and (float(after.z_s), float(after.z_t)) == z
    ckpt = checkpoint.Checkpointer(str(tmp_path), max_to_keep=1)
    ckpt.save(2, state)
    ckpt.wait()
    restored = ckpt.restore(2, checkpoint.abstract_like(state, sharding.replicated(mesh)))
    ckpt.close()
    jax.tree.map(np.testing.assert_array_equal, restored, state)
    ends = [step(s, batches[2], phase.teacher)[0] for s in (state, restored)]
    jax.tree.map(np.testing.assert_array_equal, *ends)


def test_eight_devices_give_the_one_device_crd_step(teacher):
    """One class-aware CRD step on a global batch: the 8-device mesh gives the 1-device loss,
    update (lr * gradient, at 1e-5 of its largest entry) and memory."""
    results = []
    for n in (1, 8):
        mesh = sharding.make_mesh(n)
        phase = _crd_phase(_crd_config("class_aware"), mesh, teacher)
        num_examples = phase.state.loss_state["crd"].bank_s.shape[0]
        before = jax.device_get(phase.state.params)
        with jax.set_mesh(mesh):
            state, metrics = build.jit_step(phase.step, mesh)(
                phase.state, _batch(np.random.default_rng(0), num_examples), phase.teacher)
        update = jax.tree.map(lambda a, b: np.asarray(a) - b, state.params, before)
        results.append((jax.device_get(metrics), update, jax.device_get(state.loss_state)))
    (m1, u1, s1), (m8, u8, s8) = results
    for key in ("loss", "ce", "kd", "transfer", "grad_norm"):
        assert_close(m8[key], m1[key], err_msg=key)
    jax.tree.map(lambda a, b: assert_close(a, b, rel_atol=1e-5), u8, u1)
    jax.tree.map(assert_close, s8, s1)


@pytest.mark.parametrize("kwargs,message", [
    (dict(nce_m=0.5), r"loss_kwargs.nce_m: not an option of crd"),
    (dict(feat_dim=0), r"loss_kwargs.feat_dim: must be an integer >= 1"),
    (dict(nce_k=-1), r"loss_kwargs.nce_k: must be an integer >= 1"),
    (dict(nce_t=0.0), r"loss_kwargs.nce_t: must be a number positive"),
    (dict(momentum=1.5), r"loss_kwargs.momentum: must be a number in \[0, 1\]"),
    (dict(momentum="0.5"), r"loss_kwargs.momentum: must be a number in \[0, 1\], got '0.5'"),
])
def test_bad_crd_option_is_rejected_naming_the_key(kwargs, message):
    config = _crd_config()
    config.distill.loss_kwargs.update(kwargs)
    with pytest.raises(config_lib.ConfigError, match=f"config.distill.{message}"):
        spec_lib.resolve(config, sharding.make_mesh(1), num_train_examples=100)

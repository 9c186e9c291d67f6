"""Tests for pcjax.models: registry, parameter counts, shapes, BatchNorm modes, precision, training.

Big models are only traced abstractly (``nnx.eval_shape`` / ``jax.eval_shape``: no allocation, no
compilation); real computation runs on one cheap member of each family at batch 2.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import pcjax.models as models
from pcjax.models import mobilenetv2, resnet, shufflenet
from pcjax.models.common import Layers, channel_shuffle

CIFAR = (32, 32, 3)
INPUT_SHAPES = {"digits": (8, 8, 1), "mnist1d": (40, 1), "imagenet": (224, 224, 3)}


def input_shape(name):
    return INPUT_SHAPES.get(name.split("_")[0], CIFAR)


# Exact parameter counts (weights + biases + BatchNorm scale/shift; running statistics are not
# parameters, as in PyTorch's `sum(p.numel() for p in model.parameters())`), with the number of
# classes they are counted at. CIFAR models follow HobbitLong/RepDistiller models/*.py (the `vggN`
# names are its `vggN_bn`, `mobilenetv2` its `mobile_half`, `resnet50` its resnetv2 ResNet50).
# How the numbers were obtained: `reference_count` below re-derives every entry from the layer
# arithmetic of the reference definitions (checked by test_expected_counts_follow_from_reference_
# arithmetic), and the published sizes (CRD paper / issue 4: resnet8x4 1.23M, resnet32x4 7.43M,
# wrn_40_2 2.26M, mobile_half 0.81M; torchvision docs: ResNet18/34/50 11,689,512 / 21,797,672 /
# 25,557,032 at 1000 classes) are checked by test_expected_counts_agree_with_published_sizes.
EXPECTED_PARAMS = {
    "resnet8": (100, 83_892),
    "resnet14": (100, 181_108),
    "resnet20": (100, 278_324),
    "resnet32": (100, 472_756),
    "resnet44": (100, 667_188),
    "resnet56": (100, 861_620),
    "resnet110": (100, 1_736_564),
    "resnet8x4": (100, 1_233_540),
    "resnet32x4": (100, 7_433_860),
    "resnet50": (100, 23_705_252),
    "wrn_16_1": (100, 180_916),
    "wrn_16_2": (100, 703_284),
    "wrn_40_1": (100, 569_780),
    "wrn_40_2": (100, 2_255_156),
    "vgg8": (100, 3_965_028),
    "vgg11": (100, 9_277_284),
    "vgg13": (100, 9_462_180),
    "vgg16": (100, 14_774_436),
    "vgg19": (100, 20_086_692),
    "mobilenetv2": (100, 812_836),
    "shufflev1": (100, 949_258),
    "shufflev2": (100, 1_355_528),
    "imagenet_resnet18": (1000, 11_689_512),
    "imagenet_resnet34": (1000, 21_797_672),
    "imagenet_resnet50": (1000, 25_557_032),
    "digits_cnn": (10, 94_186),
    "digits_student": (10, 6_274),
    "mnist1d_cnn": (10, 53_098),
    "mnist1d_student": (10, 5_034),
    "mnist1d_small_cnn": (10, 1_046),
}

PUBLISHED_MILLIONS = {
    "resnet8x4": 1.23, "resnet32x4": 7.43, "wrn_40_2": 2.26, "mobilenetv2": 0.81,
    "imagenet_resnet18": 11.69, "imagenet_resnet34": 21.80, "imagenet_resnet50": 25.56,
}


# ---- Independent layer arithmetic of the reference definitions (PyTorch parameter counting). ----
def _conv(taps, c_in, c_out, groups=1, bias=False):
    """`taps` = kernel area (k*k for 2-D, k for 1-D)."""
    return taps * (c_in // groups) * c_out + (c_out if bias else 0)


def _bn(c):
    return 2 * c


def _fc(c_in, n):
    return c_in * n + n


def _resnet(block, stem_taps, stem, widths, sizes, n):
    """RepDistiller resnet.py / resnetv2.py and torchvision ResNet: projection shortcut (1x1 conv
    + BN) whenever the stride or the width changes; stage 0 has stride 1, later ones 2."""
    total, c = _conv(stem_taps, 3, stem) + _bn(stem), stem
    for stage, (w, size) in enumerate(zip(widths, sizes, strict=True)):
        for i in range(size):
            out = 4 * w if block == "bottleneck" else w
            if block == "bottleneck":
                total += _conv(1, c, w) + _conv(9, w, w) + _conv(1, w, out)
                total += _bn(w) + _bn(w) + _bn(out)
            else:
                total += _conv(9, c, w) + _bn(w) + _conv(9, w, w) + _bn(w)
            if (stage > 0 and i == 0) or c != out:
                total += _conv(1, c, out) + _bn(out)
            c = out
    return total + _fc(c, n)


def _wrn(depth, k, n):
    total, c = _conv(9, 3, 16), 16
    for w in (16 * k, 32 * k, 64 * k):
        for _ in range((depth - 4) // 6):
            total += _bn(c) + _conv(9, c, w) + _bn(w) + _conv(9, w, w)
            total += _conv(1, c, w) if c != w else 0
            c = w
    return total + _bn(c) + _fc(c, n)


def _vgg(cfg, n):
    widths = [v for stage in cfg for v in stage]
    pairs = zip([3, *widths[:-1]], widths, strict=True)
    return sum(_conv(9, c, v, bias=True) + _bn(v) for c, v in pairs) + _fc(512, n)


def _mobile_half(n):
    total, c = _conv(9, 3, 16) + _bn(16), 16
    for t, ch, size in ((1, 16, 1), (6, 24, 2), (6, 32, 3), (6, 64, 4), (6, 96, 3), (6, 160, 3),
                        (6, 320, 1)):
        for _ in range(size):
            h, out = c * t, ch // 2
            total += _conv(1, c, h) + _conv(9, h, h, h) + _conv(1, h, out)
            total += _bn(h) + _bn(h) + _bn(out)
            c = out
    return total + _conv(1, c, 1280) + _bn(1280) + _fc(1280, n)


def _shufflev1(n):
    total, c = _conv(1, 3, 24) + _bn(24), 24
    for planes, size in ((240, 4), (480, 8), (960, 4)):
        for i in range(size):
            out = planes - c if i == 0 else planes
            mid, g1 = out // 4, (1 if c == 24 else 3)
            total += _conv(1, c, mid, g1) + _bn(mid) + _conv(9, mid, mid, mid) + _bn(mid)
            total += _conv(1, mid, out, 3) + _bn(out)
            c = planes
    return total + _fc(960, n)


def _shufflev2(n):
    total, c = _conv(1, 3, 24) + _bn(24), 24
    for planes, size in ((116, 3), (232, 7), (464, 3)):
        m = planes // 2
        total += _conv(9, c, c, c) + _bn(c) + _conv(1, c, m) + _bn(m)  # down block, left
        total += _conv(1, c, m) + _conv(9, m, m, m) + _conv(1, m, m) + 3 * _bn(m)  # right
        total += size * (2 * _conv(1, m, m) + _conv(9, m, m, m) + 3 * _bn(m))
        c = planes
    return total + _conv(1, c, 1024) + _bn(1024) + _fc(1024, n)


def _convnet(taps, c_in, widths, n):
    pairs = zip([c_in, *widths[:-1]], widths, strict=True)
    return sum(_conv(taps, a, b) + _bn(b) for a, b in pairs) + _fc(widths[-1], n)


_VGG_CFGS = {
    "vgg8": [[64], [128], [256], [512], [512]],
    "vgg11": [[64], [128], [256, 256], [512, 512], [512, 512]],
    "vgg13": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
    "vgg16": [[64, 64], [128, 128], [256] * 3, [512] * 3, [512] * 3],
    "vgg19": [[64, 64], [128, 128], [256] * 4, [512] * 4, [512] * 4],
}
_IMAGENET_WIDTHS = (64, 128, 256, 512)


def reference_count(name, n):
    if name in _VGG_CFGS:
        return _vgg(_VGG_CFGS[name], n)
    if name.startswith("wrn_"):
        _, depth, k = name.split("_")
        return _wrn(int(depth), int(k), n)
    if name.startswith("imagenet_resnet"):
        block, sizes = {"18": ("basic", (2, 2, 2, 2)), "34": ("basic", (3, 4, 6, 3)),
                        "50": ("bottleneck", (3, 4, 6, 3))}[name.removeprefix("imagenet_resnet")]
        return _resnet(block, 49, 64, _IMAGENET_WIDTHS, sizes, n)
    if name == "resnet50":
        return _resnet("bottleneck", 9, 64, _IMAGENET_WIDTHS, (3, 4, 6, 3), n)
    if name.startswith("resnet"):
        depth, x4 = name.removeprefix("resnet").removesuffix("x4"), name.endswith("x4")
        widths = (32, 64, 128, 256) if x4 else (16, 16, 32, 64)
        return _resnet("basic", 9, widths[0], widths[1:], ((int(depth) - 2) // 6,) * 3, n)
    return {
        "mobilenetv2": _mobile_half,
        "shufflev1": _shufflev1,
        "shufflev2": _shufflev2,
        "digits_cnn": lambda n: _convnet(9, 1, (32, 64, 128), n),
        "digits_student": lambda n: _convnet(9, 1, (8, 16, 32), n),
        "mnist1d_cnn": lambda n: _convnet(5, 1, (32, 64, 128), n),
        "mnist1d_student": lambda n: _fc(40, 64) + _fc(64, 32) + _fc(32, n),
        "mnist1d_small_cnn": lambda n: _convnet(5, 1, (4, 8, 16), n),
    }[name](n)


def count(state):
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(state))


# ---- Registry ----
def test_registry_lists_every_contract_name():
    assert set(models.names()) == set(EXPECTED_PARAMS)
    assert list(models.names()) == sorted(models.names())


def test_unknown_name_raises_value_error_listing_known_names():
    with pytest.raises(ValueError, match="unknown model 'resnet9'.*resnet8x4.*wrn_40_2"):
        models.create("resnet9", num_classes=10, rngs=nnx.Rngs(0))


def test_nonpositive_num_classes_raises_value_error():
    with pytest.raises(ValueError, match="num_classes must be >= 1"):
        models.create("digits_student", num_classes=0, rngs=nnx.Rngs(0))


# ---- Every registered model, abstractly ----
@pytest.fixture(scope="module")
def abstract_models():
    """name -> model with ShapeDtypeStruct leaves (built by tracing, no memory allocated)."""
    return {
        name: nnx.eval_shape(
            lambda name=name, n=n: models.create(name, num_classes=n, rngs=nnx.Rngs(0)))
        for name, (n, _) in EXPECTED_PARAMS.items()
    }


def test_expected_counts_follow_from_reference_arithmetic():
    derived = {name: reference_count(name, n) for name, (n, _) in EXPECTED_PARAMS.items()}
    assert derived == {name: c for name, (_, c) in EXPECTED_PARAMS.items()}


def test_expected_counts_agree_with_published_sizes():
    for name, millions in PUBLISHED_MILLIONS.items():
        assert round(EXPECTED_PARAMS[name][1] / 1e6, 2) == millions, name


@pytest.mark.parametrize("name", sorted(EXPECTED_PARAMS))
def test_parameter_count_matches_reference_zoo(abstract_models, name):
    assert count(nnx.state(abstract_models[name], nnx.Param)) == EXPECTED_PARAMS[name][1]


@pytest.mark.parametrize("name", sorted(EXPECTED_PARAMS))
def test_output_shapes_and_state_partition(abstract_models, name):
    n = EXPECTED_PARAMS[name][0]
    graphdef, params, batch_stats = nnx.split(abstract_models[name], nnx.Param, nnx.BatchStat)

    def forward(params, batch_stats, x):
        return nnx.merge(graphdef, params, batch_stats)(x, train=False)

    out = jax.eval_shape(forward, params, batch_stats,
                         jax.ShapeDtypeStruct((2, *input_shape(name)), jnp.float32))
    assert isinstance(out, models.ModelOutput)
    assert out.logits.shape == (2, n) and out.logits.dtype == jnp.float32
    # `features` is what the classifier reads, so its width is the classifier's input width.
    assert out.features.shape == (2, abstract_models[name].fc.in_features)
    # BatchNorm running statistics: a mean and a variance per normalized channel.
    norms = [m for _, m in nnx.iter_graph(abstract_models[name]) if isinstance(m, nnx.BatchNorm)]
    assert count(batch_stats) == 2 * sum(m.num_features for m in norms)


def test_wrong_input_layout_raises_value_error(abstract_models):
    model = abstract_models["resnet8"]
    nchw = jax.ShapeDtypeStruct((2, 3, 32, 32), jnp.float32)
    with pytest.raises(ValueError, match=r"x must be channels-last .* 3 channel\(s\), got shape "
                                         r"\(2, 3, 32, 32\)"):
        jax.eval_shape(lambda x: model(x, train=False), nchw)


# ---- Real computation on one cheap member of each family (batch 2) ----
# The registered mobilenetv2 / shufflev1 / shufflev2 / resnet50 / imagenet_resnet* take tens of
# seconds to compile with gradients on a shared 2-core machine, so those families run at toy
# size through the same classes: every block type, stride and shortcut kind still appears.
TOY_FAMILIES = {
    "mobilenetv2_toy": lambda layers, num_classes: mobilenetv2.MobileNetV2(
        layers, expansion=6, width=0.5, stages=((1, 16, 1, 1), (None, 24, 2, 2)),
        num_classes=num_classes),
    "shufflev1_toy": lambda layers, num_classes: shufflenet.ShuffleNetV1(
        layers, stage_planes=(48, 96), stage_sizes=(2, 1), groups=3, num_classes=num_classes),
    "shufflev2_toy": lambda layers, num_classes: shufflenet.ShuffleNetV2(
        layers, stage_planes=(16, 32), stage_sizes=(1, 1), head_planes=64, num_classes=num_classes),
    "bottleneck_resnet_toy": lambda layers, num_classes: resnet.ResNet(
        layers, block=resnet.Bottleneck, stage_sizes=(1, 1), stage_widths=(4, 8), stem_width=8,
        stem="imagenet", num_classes=num_classes),
}
# One per model class (digits_cnn shares digits_student's class).
FAMILY_REPRESENTATIVES = ["resnet8", "wrn_16_1", "vgg8", *TOY_FAMILIES, "digits_student",
                          "mnist1d_cnn", "mnist1d_student"]


def materialize(abstract_model, seed=0):
    """Concrete copy of an abstract model, its values drawn on the host.

    Running the initializers eagerly compiles one small program per distinct shape, which costs
    seconds per model here; the behaviour under test does not depend on the initializer, so
    kernels are He-normal, BatchNorm scales/variances ones, biases/means zeros, as at init.
    """
    rng = np.random.default_rng(seed)

    def value(path, leaf):
        if len(leaf.shape) >= 2:  # conv / dense kernel (..., in, out)
            std = np.sqrt(2.0 / math.prod(leaf.shape[:-1]))
            return jnp.asarray(rng.normal(0.0, std, leaf.shape), leaf.dtype)
        ones = {"scale", "var"} & {getattr(key, "key", None) for key in path}
        return jnp.full(leaf.shape, 1.0 if ones else 0.0, leaf.dtype)

    graphdef, state = nnx.split(abstract_model)
    return nnx.merge(graphdef, jax.tree.map_with_path(value, state))


def build(name, *, num_classes=5, seed=0, **kwargs):
    """Registered model or toy family member with host-drawn values (see `materialize`)."""
    def make():
        if name in TOY_FAMILIES:
            return TOY_FAMILIES[name](Layers(nnx.Rngs(0), **kwargs), num_classes)
        return models.create(name, num_classes=num_classes, rngs=nnx.Rngs(0), **kwargs)

    return materialize(nnx.eval_shape(make), seed)


def batch(name, seed=0):
    shape = CIFAR if name in TOY_FAMILIES else input_shape(name)
    x = jax.random.normal(jax.random.key(seed), (2, *shape), jnp.float32)
    return x, jnp.array([1, 3])


@functools.partial(jax.jit, static_argnums=0)
def sgd_step(graphdef, params, batch_stats, x, labels):
    """The pure train step a trainer jits: train-mode forward, cross-entropy, one SGD update.

    The update moves the parameters by 1e-3 (L2 norm) along -grad: small enough for the
    first-order decrease to dominate even where BatchNorm over 2 examples makes the loss sharp.
    Returns the updated params and running statistics, the loss *before* the update and the
    model output.
    """

    def loss_fn(params):
        # copy=True makes fresh Variables owned by this (grad) trace: the train-mode forward pass
        # writes the new running averages into them, which NNX refuses for Variables created
        # in the enclosing jit trace.
        model = nnx.merge(graphdef, params, batch_stats, copy=True)
        out = model(x, train=True)
        loss = optax.softmax_cross_entropy_with_integer_labels(out.logits, labels).mean()
        return loss, (out, nnx.state(model, nnx.BatchStat))

    (loss, (out, new_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    scale = 1e-3 / optax.global_norm(grads)
    params = jax.tree.map(lambda p, g: p - scale * g, params, grads)
    return params, new_stats, loss, out


@pytest.fixture(scope="module")
def trained_once():
    """family -> (state before, state after one SGD step, loss before, output, loss after).

    Each family compiles `sgd_step` once; the second call hits the cache.
    """
    results = {}
    for name in FAMILY_REPRESENTATIVES:
        graphdef, params, stats = nnx.split(build(name), nnx.Param, nnx.BatchStat)
        x, labels = batch(name)
        new_params, new_stats, loss, out = sgd_step(graphdef, params, stats, x, labels)
        _, _, loss_after, _ = sgd_step(graphdef, new_params, new_stats, x, labels)
        results[name] = dict(params=params, stats=stats, new_params=new_params,
                             new_stats=new_stats, loss=loss, out=out, loss_after=loss_after)
    return results


@pytest.mark.parametrize("name", FAMILY_REPRESENTATIVES)
def test_features_are_the_classifier_input(trained_once, name):
    run = trained_once[name]
    fc = run["params"]["fc"]
    features, logits = (np.asarray(a) for a in run["out"])
    assert np.all(np.isfinite(features))
    kernel, bias = np.asarray(fc["kernel"].value), np.asarray(fc["bias"].value)
    np.testing.assert_allclose(logits, features @ kernel + bias, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", FAMILY_REPRESENTATIVES)
def test_sgd_step_decreases_training_loss(trained_once, name):
    # For a small step along -grad the loss on the same batch must drop (first-order Taylor).
    run = trained_once[name]
    assert np.isfinite(run["loss"]) and run["loss_after"] < run["loss"]
    assert all(np.all(np.isfinite(p)) for p in jax.tree.leaves(run["new_params"]))


@pytest.mark.parametrize("name", [n for n in FAMILY_REPRESENTATIVES if n != "mnist1d_student"])
def test_train_step_updates_every_running_variance(trained_once, name):
    # (Some running means legitimately stay 0: a BatchNorm fed by a linear conv of a BatchNorm
    # output sees zero-mean inputs.)
    run = trained_once[name]
    variances = [(b, a) for (path, b), a in zip(jax.tree.leaves_with_path(run["stats"]),
                                               jax.tree.leaves(run["new_stats"]), strict=True)
                 if "var" in jax.tree_util.keystr(path)]
    assert variances and all(not np.allclose(b, a) for b, a in variances)


def test_mlp_student_has_no_batch_statistics(trained_once):
    assert jax.tree.leaves(trained_once["mnist1d_student"]["new_stats"]) == []


# ---- BatchNorm train / eval modes ----
@nnx.jit(static_argnames="train")
def apply(model, x, *, train):
    return model(x, train=train)


def running_stats(model):
    return [np.asarray(v) for v in jax.tree.leaves(nnx.state(model, nnx.BatchStat))]


def test_train_mode_updates_running_averages_with_pytorch_momentum():
    model = build("digits_student", num_classes=10)
    x, _ = batch("digits_student")
    bn_input = np.asarray(model.convs[0].conv(x), np.float64)
    apply(model, x, train=True)
    # PyTorch momentum 0.1 from the initial mean 0 / variance 1; Flax keeps the biased variance.
    bn = model.convs[0].bn
    np.testing.assert_allclose(bn.mean.value, 0.1 * bn_input.mean(axis=(0, 1, 2)),
                               rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(bn.var.value, 0.9 + 0.1 * bn_input.var(axis=(0, 1, 2)), rtol=1e-4)


def test_eval_mode_leaves_running_averages_unchanged():
    model = build("digits_student", num_classes=10)
    x, _ = batch("digits_student")
    apply(model, x, train=True)
    before = running_stats(model)
    apply(model, x, train=False)
    for b, a in zip(before, running_stats(model), strict=True):
        np.testing.assert_array_equal(b, a)


def test_eval_output_is_independent_of_batch_composition_and_train_output_is_not():
    model = build("digits_student", num_classes=10)
    x, _ = batch("digits_student")
    apply(model, x, train=True)  # move the running averages away from their initial values
    other = x.at[1].set(3.0 * x[1] + 1.0)
    np.testing.assert_allclose(apply(model, x, train=False).logits[0],
                               apply(model, other, train=False).logits[0], rtol=1e-6, atol=1e-6)
    assert not np.allclose(apply(model, x, train=True).logits[0],
                           apply(model, other, train=True).logits[0], atol=1e-3)


# ---- Precision ----
def test_bfloat16_compute_keeps_float32_params_and_tracks_float32_outputs():
    x, _ = batch("digits_student")
    model16 = build("digits_student", num_classes=10, dtype=jnp.bfloat16)
    model32 = build("digits_student", num_classes=10)  # same host-drawn values
    out16, out32 = apply(model16, x, train=True), apply(model32, x, train=True)
    assert out16.features.dtype == out16.logits.dtype == jnp.bfloat16
    assert {v.dtype for v in jax.tree.leaves(nnx.state(model16))} == {jnp.dtype(jnp.float32)}
    assert np.all(np.isfinite(np.asarray(out16.logits, np.float32)))
    scale = np.abs(np.asarray(out32.logits)).max()
    np.testing.assert_allclose(np.asarray(out16.logits, np.float32), out32.logits,
                               atol=0.05 * scale)


def test_param_dtype_sets_params_and_running_statistics_stay_float32():
    model = nnx.eval_shape(lambda: models.create("resnet8", num_classes=10, rngs=nnx.Rngs(0),
                                                 param_dtype=jnp.bfloat16))
    def dtypes(kind):
        return {v.dtype for v in jax.tree.leaves(nnx.state(model, kind))}

    assert dtypes(nnx.Param) == {jnp.dtype(jnp.bfloat16)}
    assert dtypes(nnx.BatchStat) == {jnp.dtype(jnp.float32)}


# ---- Initialization and helpers ----
def test_initialization_follows_the_reference_zoo():
    model = models.create("digits_student", num_classes=10, rngs=nnx.Rngs(0))
    kernel = np.asarray(model.convs[2].conv.kernel.value)  # (3, 3, 16, 32): 4608 draws
    # Kaiming normal, fan_out = 3 * 3 * 32 (PyTorch kaiming_normal_(mode="fan_out")).
    assert abs(kernel.std() / np.sqrt(2.0 / (9 * 32)) - 1.0) < 0.05
    fc = np.abs(np.asarray(model.fc.kernel.value))  # U(-1/sqrt(32), 1/sqrt(32)): PyTorch's Linear
    assert 0.9 / np.sqrt(32) < fc.max() <= 1 / np.sqrt(32)
    bn = model.convs[2].bn
    np.testing.assert_array_equal(bn.scale.value, 1.0)
    np.testing.assert_array_equal(bn.bias.value, 0.0)
    np.testing.assert_array_equal(bn.var.value, 1.0)


def test_channel_shuffle_matches_the_reference_nchw_view_permute():
    x = np.arange(2 * 3 * 3 * 12, dtype=np.float32).reshape(2, 3, 3, 12)  # NHWC
    nchw = x.transpose(0, 3, 1, 2)
    expected = nchw.reshape(2, 3, 4, 3, 3).transpose(0, 2, 1, 3, 4).reshape(2, 12, 3, 3)
    np.testing.assert_array_equal(channel_shuffle(jnp.asarray(x), 3),
                                  expected.transpose(0, 2, 3, 1))

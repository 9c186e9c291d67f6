"""Maps a RepDistiller or torchvision state_dict by name onto a pcjax model's variables.

Every tensor is mapped onto one pcjax variable: convolution weights OIHW -> HWIO, linear weights
transposed, BatchNorm ``weight``/``bias``/``running_mean``/``running_var`` onto
``scale``/``bias``/``mean``/``var``. BatchNorm's ``num_batches_tracked`` is consumed and dropped:
PyTorch uses it only for ``momentum=None`` (a cumulative average), which neither zoo uses. Every
pcjax variable must be filled and every tensor used, with the shape pcjax expects; otherwise
:class:`ConversionError` lists everything missing, left over and mismatched at once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence

import jax.numpy as jnp
import numpy as np
from flax import nnx, traverse_util

from pcjax import models
from pcjax.convert import pth
from pcjax.training import state as state_lib

Path = tuple  # a module's path in the NNX graph, e.g. ("blocks", 3, "conv1", "bn")


class ConversionError(ValueError):
    """The checkpoint does not fit the architecture; the message lists every problem."""


# ----------------------------------------------------------------------------- tensor names


def _block_positions(stage_sizes: Sequence[int], first: int) -> list[tuple[int, int]]:
    """(stage number, index in the stage) of each block; stages are numbered from `first`."""
    return [(stage + first, i) for stage, size in enumerate(stage_sizes) for i in range(size)]


@dataclasses.dataclass(frozen=True)
class Naming:
    """How a PyTorch checkpoint names an architecture's layers.

    Attributes:
      classifier: the final linear layer's name (its weight gives the number of classes).
      module: ``(model, pcjax module path) -> PyTorch module name`` for every other layer.
    """

    classifier: str
    module: Callable[[nnx.Module, Path], str]


def _resnet_naming(shortcut: str, classifier: str) -> Naming:
    """RepDistiller's resnet.py / resnetv2.py and torchvision: stem ``conv1``/``bn1``, blocks
    ``layer{s}.{i}.conv{k}``/``bn{k}``, the projection shortcut ``{shortcut}.0`` (conv) and
    ``{shortcut}.1`` (BN)."""

    def module(model: nnx.Module, path: Path) -> str:
        if path[0] == "stem":
            return {"conv": "conv1", "bn": "bn1"}[path[1]]
        _, block, layer, part = path
        stage, i = _block_positions(model.stage_sizes, first=1)[block]
        if layer == "shortcut":
            return f"layer{stage}.{i}.{shortcut}.{0 if part == 'conv' else 1}"
        return f"layer{stage}.{i}.{part}{layer.removeprefix('conv')}"

    return Naming(classifier, module)


def _wrn_module(model: nnx.Module, path: Path) -> str:
    """RepDistiller's wrn.py: stem ``conv1``, blocks
    ``block{s}.layer.{i}.{bn1,conv1,bn2,conv2,convShortcut}``, the final BN ``bn1``."""
    if path[0] in ("stem", "bn"):
        return {"stem": "conv1", "bn": "bn1"}[path[0]]
    _, block, layer = path
    stage, i = _block_positions(model.stage_sizes, first=1)[block]
    return f"block{stage}.layer.{i}.{'convShortcut' if layer == 'shortcut' else layer}"


def _vgg_module(model: nnx.Module, path: Path) -> str:
    """RepDistiller's vgg.py: stage ``s`` is ``block{s}``, an ``nn.Sequential`` of (conv, BN,
    relu) triples, so its ``j``-th conv is entry ``3j`` and that conv's BN entry ``3j + 1``."""
    del model
    _, stage, j, part = path
    return f"block{stage}.{3 * j + (part == 'bn')}"


_RESNET = _resnet_naming(shortcut="downsample", classifier="fc")
NAMINGS: dict[str, Naming] = {
    **{f"resnet{d}": _RESNET for d in (8, 14, 20, 32, 44, 56, 110)},
    "resnet8x4": _RESNET,
    "resnet32x4": _RESNET,
    "resnet50": _resnet_naming(shortcut="shortcut", classifier="linear"),
    **{f"imagenet_resnet{d}": _RESNET for d in (18, 34, 50)},
    **{f"wrn_{d}_{k}": Naming("fc", _wrn_module) for d in (16, 40) for k in (1, 2)},
    **{f"vgg{d}": Naming("classifier", _vgg_module) for d in (8, 11, 13, 16, 19)},
}

# Per layer type: pcjax variable -> (PyTorch tensor suffix, axis permutation PyTorch -> pcjax).
_CONV = (2, 3, 1, 0)  # OIHW -> HWIO
_LAYOUTS: dict[type, dict[str, tuple[str, tuple[int, ...] | None]]] = {
    nnx.Conv: {"kernel": ("weight", _CONV), "bias": ("bias", None)},
    nnx.Linear: {"kernel": ("weight", (1, 0)), "bias": ("bias", None)},
    nnx.BatchNorm: {"scale": ("weight", None), "bias": ("bias", None),
                    "mean": ("running_mean", None), "var": ("running_var", None)},
}
# A BatchNorm tensor that is read and dropped (see the module docstring).
_DROPPED = "num_batches_tracked"


def archs() -> tuple[str, ...]:
    """The ``--arch`` names the converter knows, sorted.

    Examples:
      >>> print(archs()[:3])
      ('imagenet_resnet18', 'imagenet_resnet34', 'imagenet_resnet50')
    """
    return tuple(sorted(NAMINGS))


# ----------------------------------------------------------------------------- checkpoint files


def unwrap_state_dict(checkpoint: Mapping) -> dict:
    """The state_dict in a RepDistiller checkpoint (``"model"``) or a plain one, without the
    ``module.`` prefix of ``nn.DataParallel``.

    Examples:
      >>> ckpt = {"epoch": 240, "model": {"module.fc.bias": 0.5, "module.fc.weight": 1.5}}
      >>> print(unwrap_state_dict(ckpt))
      {'fc.bias': 0.5, 'fc.weight': 1.5}
    """
    state = checkpoint.get("model", checkpoint)
    if not isinstance(state, Mapping) or not state or not all(isinstance(k, str) for k in state):
        raise ConversionError(
            'expected a state_dict (name -> tensor) or a dict holding one under "model", got '
            f"{type(state).__name__}{'' if state else ' (empty)'}"
        )
    prefix = "module."
    if all(k.startswith(prefix) for k in state):
        state = {k.removeprefix(prefix): v for k, v in state.items()}
    return dict(state)


def read_state_dict(path: str) -> dict[str, np.ndarray]:
    """The state_dict in the ``.pth`` file `path` (see :func:`unwrap_state_dict`), by name.

    Raises FileNotFoundError and :class:`pcjax.convert.pth.PthError` as
    :func:`pcjax.convert.pth.read_pth` does, and ConversionError for a checkpoint that holds no
    state_dict or one with entries that are not tensors.

    Examples:
      >>> try:
      ...     read_state_dict("no/such/ckpt_epoch_240.pth")
      ... except FileNotFoundError as e:
      ...     print(e)
      no checkpoint file at no/such/ckpt_epoch_240.pth
    """
    checkpoint = pth.read_pth(path)
    if not isinstance(checkpoint, Mapping):
        raise ConversionError(f"{path}: expected a dict, got {type(checkpoint).__name__}")
    try:
        arrays = unwrap_state_dict(checkpoint)
    except ConversionError as e:
        raise ConversionError(f"{path}: {e}") from None
    for key, value in arrays.items():
        if not isinstance(value, np.ndarray):
            raise ConversionError(
                f"{path}: entry {key!r} is a {type(value).__name__}, not a tensor")
    return arrays


# ----------------------------------------------------------------------------- the mapping


def _plan(arch: str, model: nnx.Module):
    """``(plan, dropped)``: pcjax variable path -> (PyTorch tensor name, axis permutation) for
    every mapped layer, and the names of the tensors that are read and dropped."""
    naming = NAMINGS[arch]
    plan, dropped = {}, set()
    for path, module in nnx.iter_modules(model):
        layout = _LAYOUTS.get(type(module))
        if layout is None:
            continue
        name = naming.classifier if path == ("fc",) else naming.module(model, path)
        for leaf, (suffix, perm) in layout.items():
            if getattr(module, leaf, None) is not None:
                plan[(*path, leaf)] = (f"{name}.{suffix}", perm)
        if isinstance(module, nnx.BatchNorm):
            dropped.add(f"{name}.{_DROPPED}")
    return plan, dropped


def _torch_shape(shape: tuple[int, ...], perm: tuple[int, ...] | None) -> tuple[int, ...]:
    """The PyTorch shape whose permutation by `perm` has pcjax shape `shape`."""
    if perm is None:
        return tuple(shape)
    out = [0] * len(shape)
    for axis, source in enumerate(perm):
        out[source] = shape[axis]
    return tuple(out)


def _listing(title: str, items: list[str], limit: int = 12) -> str:
    more = f"    ... and {len(items) - limit} more\n" if len(items) > limit else ""
    return f"  {len(items)} {title}:\n" + "".join(f"    {i}\n" for i in items[:limit]) + more


def convert_state_dict(arch: str, state_dict: Mapping[str, np.ndarray]):
    """Maps a PyTorch state_dict (NumPy arrays by name) onto the pcjax model `arch`.

    Returns:
      ``(graphdef, variables)``: ``variables`` is the teacher export
      ``{"params": ..., "model_state": ...}`` and
      ``nnx.merge(graphdef, variables["params"], variables["model_state"])`` the model.

    Raises:
      ValueError: `arch` unknown (the message lists the known ones).
      ConversionError: no classifier weight; pcjax variables without a tensor, tensors left
        over, or shapes that differ (all listed in one message).

    Examples:
      >>> state_dict = {"fc.weight": np.zeros((10, 64), np.float32)}
      >>> try:
      ...     convert_state_dict("resnet8", state_dict)
      ... except ConversionError as e:
      ...     for line in str(e).splitlines()[:3]:
      ...         print(line)
      the checkpoint does not fit resnet8 (10 classes):
        46 pcjax variables with no tensor:
          layer1.0.bn1.bias (16,) (pcjax blocks/0/conv1/bn/bias)
    """
    if arch not in NAMINGS:
        raise ValueError(f"arch: unknown architecture {arch!r}; known: {', '.join(archs())}")
    classifier = NAMINGS[arch].classifier + ".weight"
    if classifier not in state_dict or np.ndim(state_dict[classifier]) != 2:
        raise ConversionError(
            f"{arch}: the checkpoint has no 2-D classifier weight {classifier!r} (is --arch "
            f"right?); its first tensors: {', '.join(list(state_dict)[:8])}"
        )
    num_classes = int(np.shape(state_dict[classifier])[0])
    abstract = nnx.eval_shape(
        lambda: models.create(arch, num_classes=num_classes, rngs=nnx.Rngs(0))
    )
    plan, dropped = _plan(arch, abstract)
    graphdef, params, model_state = state_lib.split(abstract)

    missing, mismatched, used, filled = [], [], set(), []
    for state in (params, model_state):
        flat = traverse_util.flatten_dict(nnx.to_pure_dict(state))
        for path, target in flat.items():
            key, perm = plan[path]
            expected = _torch_shape(target.shape, perm)
            if key not in state_dict:
                missing.append(f"{key} {expected} (pcjax {'/'.join(map(str, path))})")
                continue
            used.add(key)
            value = np.asarray(state_dict[key])
            if value.shape != expected:
                mismatched.append(f"{key}: checkpoint {value.shape}, {arch} expects {expected}")
                continue
            flat[path] = jnp.asarray(value if perm is None else value.transpose(perm), target.dtype)
        filled.append((state, flat))
    leftover = [f"{k} {tuple(np.shape(v))}" for k, v in state_dict.items()
                if k not in used and k not in dropped]
    if missing or leftover or mismatched:
        raise ConversionError(
            f"the checkpoint does not fit {arch} ({num_classes} classes):\n"
            + (_listing("pcjax variables with no tensor", missing) if missing else "")
            + (_listing("tensors left over", leftover) if leftover else "")
            + (_listing("shapes that differ", mismatched) if mismatched else "")
        )
    for state, flat in filled:
        nnx.replace_by_pure_dict(state, traverse_util.unflatten_dict(flat))
    return graphdef, {"params": params, "model_state": model_state}

"""Converts a PyTorch checkpoint of a reference-zoo teacher into a pcjax teacher export.

    python -m pcjax.models.convert --arch resnet32x4 --from ckpt_epoch_240.pth --to teachers/r32x4
    python train.py --config configs/cifar100.py:resnet32x4_resnet8x4 \\
        --config.teacher.checkpoint=teachers/r32x4

Sources (``--arch`` is the pcjax model name):

* RepDistiller's CIFAR teachers, a dict whose ``"model"`` entry is the state_dict:
  ``resnet{8,14,20,32,44,56,110}``, ``resnet{8,32}x4`` (its models/resnet.py), ``resnet50``
  (models/resnetv2.py's ``ResNet50``), ``wrn_{16,40}_{1,2}`` (wrn.py), ``vgg{8,11,13,16,19}``
  (vgg.py's ``*_bn``);
* torchvision's ``resnet18/34/50`` state_dicts: ``imagenet_resnet{18,34,50}``.

A plain state_dict is accepted as well as one under ``"model"``, and the ``module.`` prefix that
``nn.DataParallel`` adds is removed. The number of classes is read from the classifier's weight.

Every tensor is mapped by name onto one pcjax variable: convolution weights OIHW -> HWIO, linear
weights transposed, BatchNorm ``weight``/``bias``/``running_mean``/``running_var`` onto
``scale``/``bias``/``mean``/``var``. BatchNorm's ``num_batches_tracked`` is consumed and dropped:
PyTorch uses it only for ``momentum=None`` (a cumulative average), which neither zoo uses. Every
pcjax variable must be filled and every tensor used, with the shape pcjax expects; otherwise
:class:`ConversionError` lists everything missing, left over and mismatched at once.

The output is exactly the teacher export that train.py writes and reads
(``{"params", "model_state"}`` through ``pcjax.training.checkpoint.save_model``). PyTorch is
imported only to read the file (``pip install 'pcjax[torch]'``); mapping and writing use NumPy
and JAX.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Callable, Mapping, Sequence

import jax.numpy as jnp
import numpy as np
from flax import nnx, traverse_util

from pcjax import models

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
    nnx.BatchNorm: {
        "scale": ("weight", None),
        "bias": ("bias", None),
        "mean": ("running_mean", None),
        "var": ("running_var", None),
    },
}
# A BatchNorm tensor that is read and dropped (see the module docstring).
_DROPPED = "num_batches_tracked"


def archs() -> tuple[str, ...]:
    """The ``--arch`` names the converter knows, sorted."""
    return tuple(sorted(NAMINGS))


# ----------------------------------------------------------------------------- checkpoint files


def unwrap_state_dict(checkpoint: Mapping) -> dict:
    """The state_dict in a RepDistiller checkpoint (``"model"``) or a plain one, without the
    ``module.`` prefix of ``nn.DataParallel``."""
    state = checkpoint.get("model", checkpoint)
    if not isinstance(state, Mapping) or not state:
        raise ConversionError(
            'expected a state_dict (name -> tensor) or a dict holding one under "model", got '
            f"{type(state).__name__}{'' if state else ' (empty)'}"
        )
    prefix = "module."
    if all(k.startswith(prefix) for k in state):
        state = {k.removeprefix(prefix): v for k, v in state.items()}
    return dict(state)


def read_torch_checkpoint(path: str) -> dict[str, np.ndarray]:
    """Loads `path` with ``torch.load`` (tensors only, onto the CPU) as NumPy arrays by name."""
    try:
        import torch
    except ImportError as e:
        raise ImportError(
            "reading PyTorch checkpoints needs PyTorch: pip install 'pcjax[torch]'"
        ) from e
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--from: no checkpoint file at {path}")
    # weights_only refuses arbitrary pickled objects; RepDistiller's *_last.pth also stores its
    # argparse options, which are plain data.
    with torch.serialization.safe_globals([argparse.Namespace]):
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(checkpoint, Mapping):
        raise ConversionError(f"{path}: expected a dict, got {type(checkpoint).__name__}")
    arrays = {}
    for key, value in unwrap_state_dict(checkpoint).items():
        if not isinstance(value, torch.Tensor):
            raise ConversionError(
                f"{path}: entry {key!r} is a {type(value).__name__}, not a tensor"
            )
        arrays[key] = value.detach().cpu().numpy()
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
    """
    if arch not in NAMINGS:
        raise ValueError(f"arch: unknown architecture {arch!r}; known: {', '.join(archs())}")
    # The split the trainer exports with; imported here because pcjax.training also brings in the
    # input pipeline and the metric writer, which reading the mapping does not need.
    from pcjax.training import state as state_lib

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

    missing, mismatched, used = [], [], set()
    filled = []
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
    leftover = [
        f"{k} {tuple(np.shape(v))}"
        for k, v in state_dict.items()
        if k not in used and k not in dropped
    ]
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


def convert(arch: str, source: str, destination: str) -> dict:
    """Reads the PyTorch checkpoint `source`, converts it to `arch`, exports it to `destination`.

    Returns the exported variables. Raises FileExistsError if `destination` exists (an export is
    written once), plus the errors of :func:`read_torch_checkpoint` and
    :func:`convert_state_dict`.
    """
    from pcjax.training import checkpoint

    if os.path.exists(destination):
        raise FileExistsError(f"--to: {destination} already exists; choose a new directory")
    _, variables = convert_state_dict(arch, read_torch_checkpoint(source))
    checkpoint.save_model(destination, variables)
    return variables


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pcjax.models.convert",
        description="Convert a RepDistiller or torchvision checkpoint into a pcjax teacher "
        "export (use it with --config.teacher.checkpoint=DIR).",
    )
    parser.add_argument("--arch", required=True, choices=archs(), metavar="NAME",
                        help=f"pcjax model name: {', '.join(archs())}")
    parser.add_argument("--from", dest="source", required=True, metavar="PATH.pth",
                        help="PyTorch checkpoint (RepDistiller ckpt or torchvision state_dict)")
    parser.add_argument("--to", dest="destination", required=True, metavar="DIR",
                        help="new directory for the exported teacher")
    args = parser.parse_args(argv)
    try:
        variables = convert(args.arch, args.source, args.destination)
    except (ConversionError, FileNotFoundError, FileExistsError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    kernel = variables["params"]["fc"]["kernel"]
    print(
        f"{args.arch} ({kernel.shape[-1]} classes) from {args.source} -> "
        f"{os.path.abspath(args.destination)}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

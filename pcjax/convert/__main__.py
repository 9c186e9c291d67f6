"""``python -m pcjax.convert``: a PyTorch checkpoint -> a pcjax teacher export (see the package)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from pcjax.convert import mapping, pth
from pcjax.training import checkpoint


def convert(arch: str, source: str, destination: str) -> dict:
    """Reads the PyTorch checkpoint `source`, converts it to `arch`, exports it to `destination`.

    Returns the exported variables. Raises FileExistsError if `destination` exists (an export is
    written once), plus the errors of :func:`pcjax.convert.read_state_dict` and
    :func:`pcjax.convert.convert_state_dict`.

    Examples:
      >>> try:
      ...     convert("resnet8", "no/such/ckpt_epoch_240.pth", "teachers/resnet8")
      ... except FileNotFoundError as e:
      ...     print(e)
      no checkpoint file at no/such/ckpt_epoch_240.pth
    """
    if os.path.exists(destination):
        raise FileExistsError(f"--to: {destination} already exists; choose a new directory")
    _, variables = mapping.convert_state_dict(arch, mapping.read_state_dict(source))
    checkpoint.save_model(destination, variables)
    return variables


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; returns the exit status (errors print one ``error:`` line, status 1)."""
    parser = argparse.ArgumentParser(
        prog="python -m pcjax.convert",
        description="Convert a RepDistiller or torchvision checkpoint into a pcjax teacher "
        "export (use it with --config.teacher.checkpoint=DIR). PyTorch is not needed.",
    )
    parser.add_argument("--arch", required=True, choices=mapping.archs(), metavar="NAME",
                        help=f"pcjax model name: {', '.join(mapping.archs())}")
    parser.add_argument("--from", dest="source", required=True, metavar="PATH.pth",
                        help="PyTorch checkpoint (RepDistiller ckpt or torchvision state_dict)")
    parser.add_argument("--to", dest="destination", required=True, metavar="DIR",
                        help="new directory for the exported teacher")
    args = parser.parse_args(argv)
    try:
        variables = convert(args.arch, args.source, args.destination)
    except (mapping.ConversionError, pth.PthError, FileNotFoundError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    kernel = variables["params"]["fc"]["kernel"]
    print(f"{args.arch} ({kernel.shape[-1]} classes) from {args.source} -> "
          f"{os.path.abspath(args.destination)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`python -m pcjax.data.prepare`: one line of output, or one error line and exit status 1."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from pcjax.data import sources
from pcjax.data.prepare.archive import CIFAR
from pcjax.data.prepare.cifar import prepare_cifar
from pcjax.data.prepare.errors import PrepareError
from pcjax.data.prepare.folder import prepare_folder


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pcjax.data.prepare",
        description="Prepare CIFAR or an image folder as a TFDS array_record dataset.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for name, layout in CIFAR.items():
        cifar_parser = commands.add_parser(name, help=f"{name} from {layout.filename}")
        cifar_parser.add_argument("--archive", help=f"{layout.filename} (default: download it)")
    folder = commands.add_parser("folder", help="a folder of class subfolders of images")
    folder.add_argument("--dir", required=True, help="one subfolder of images per class")
    folder.add_argument("--name", required=True, help="dataset name for --config.dataset")
    folder.add_argument("--image_size", type=int, help="resize to S x S (default: keep)")
    folder.add_argument("--test_dir", help="test images (default: hold out 1 in 5 per class)")
    folder.add_argument("--test_labels", help="'<file name> <class>' lines for a flat --test_dir")
    for sub in commands.choices.values():
        sub.add_argument("--data_dir", help="TFDS data dir (default: $TFDS_DATA_DIR or "
                         "~/tensorflow_datasets)")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    try:
        if args.command == "folder":
            where = prepare_folder(args.dir, args.name, image_size=args.image_size,
                                   test_dir=args.test_dir, test_labels=args.test_labels,
                                   data_dir=args.data_dir)
        else:
            where = prepare_cifar(args.command, archive=args.archive, data_dir=args.data_dir)
    except PrepareError as e:
        sys.exit(f"error: {e}")
    except OSError as e:  # An unreadable input, an unwritable data dir, a full disk.
        sys.exit(f"error: {e.filename}: {e.strerror}" if e.filename else f"error: {e}")
    except KeyboardInterrupt:
        # TFDS writes into a temporary directory that it removes when interrupted.
        print("error: interrupted; no dataset was written", file=sys.stderr)
        sys.exit(130)
    name = args.name if args.command == "folder" else args.command
    data_dir = sources.resolve_data_dir(args.data_dir)
    print(f"{name} is ready in {where}; train with --config.dataset={name} "
          f"--config.data_dir={data_dir}")

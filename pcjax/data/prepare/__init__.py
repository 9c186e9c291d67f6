r"""Prepare CIFAR-10/100 and image folders as TFDS array_record datasets, without TensorFlow.

  python -m pcjax.data.prepare cifar100 [--archive cifar-100-python.tar.gz] [--data_dir DIR]
  python -m pcjax.data.prepare folder --dir DIR --name NAME [--image_size S] [--test_dir DIR
      [--test_labels FILE]] [--data_dir DIR]

The data dir defaults to `pcjax.data.default_data_dir()` (TFDS_DATA_DIR, else
~/tensorflow_datasets); `--config.dataset=NAME --config.data_dir=DIR` then trains on the dataset.
CIFAR (`cifar`) is written from the official python-version archive, read in place (`archive`)
and downloaded into <data_dir>/downloads/ (`download`) when --archive is not given. Image folders:
`folder`. Every error is one line naming the file at fault (`PrepareError`; the command line,
`cli`, prints it and exits with status 1).
"""

from pcjax.data.prepare.archive import CIFAR
from pcjax.data.prepare.cifar import prepare_cifar
from pcjax.data.prepare.cli import main
from pcjax.data.prepare.errors import PrepareError
from pcjax.data.prepare.folder import prepare_folder

__all__ = ["CIFAR", "PrepareError", "main", "prepare_cifar", "prepare_folder"]

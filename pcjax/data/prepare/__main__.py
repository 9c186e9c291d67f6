"""`python -m pcjax.data.prepare`: see `pcjax.data.prepare`."""

from absl import logging

from pcjax.data.prepare.cli import main

# TFDS warns about the half-written dataset directory it is about to fill; errors stay one line.
logging.set_verbosity(logging.ERROR)
main()

"""Datasets and input pipelines: TFDS array_record sources read by grain, offline by default."""

from pcjax.data.specs import DatasetSpec, names, spec
from pcjax.data.sources import DatasetNotFoundError, default_data_dir, source
from pcjax.data.pipeline import eval_batches, train_batches

__all__ = [
    "DatasetNotFoundError",
    "DatasetSpec",
    "default_data_dir",
    "names",
    "source",
    "spec",
    "train_batches",
    "eval_batches",
]

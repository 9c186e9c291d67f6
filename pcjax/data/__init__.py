"""Datasets and input pipelines: TFDS array_record sources read by grain, offline by default."""

from pcjax.data.specs import DatasetSpec, names
from pcjax.data.sources import DatasetNotFoundError, default_data_dir, source, spec
from pcjax.data.pipeline import eval_batches, train_batches

__all__ = ["DatasetNotFoundError", "DatasetSpec", "default_data_dir", "names", "source", "spec",
           "train_batches", "eval_batches"]

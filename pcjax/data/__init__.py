"""Datasets and input pipelines: TFDS array_record sources read by grain, offline by default."""

from pcjax.data.specs import DatasetSpec, names, spec
from pcjax.data.sources import DatasetNotFoundError, default_data_dir, source

__all__ = [
    "DatasetNotFoundError",
    "DatasetSpec",
    "default_data_dir",
    "names",
    "source",
    "spec",
]

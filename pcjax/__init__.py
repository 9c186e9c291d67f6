"""pcjax: feature representation transfer by perception coherence, in JAX/Flax.

The student learns to rank the dissimilarities between inputs the way the teacher does
(Nguyen et al., "Feature Representation Transferring to Lightweight Models via Perception
Coherence", arXiv:2505.06595). The loss functions are pure JAX and run under ``jit``, ``vmap``,
``grad`` and ``shard_map``::

    from pcjax import perception_coherence_loss, pc_score
    loss = perception_coherence_loss(student_features, teacher_features)
"""

import importlib

from pcjax import losses, metrics
from pcjax.dissimilarity import pairwise_dissimilarity
from pcjax.losses import pc_score, perception_coherence_loss
from pcjax.metrics import accuracy, knn_accuracy, linear_probe_accuracy
from pcjax.ranking import rank, soft_rank, soft_sort

__version__ = "0.1.0"

# The input pipeline (tensorflow_datasets, grain) and the model zoo (flax) are imported on first
# use, so code that only needs the loss functions pays for JAX alone.
_LAZY = {
    "data": ("pcjax.data", None),
    "models": ("pcjax.models", None),
    "training": ("pcjax.training", None),
    "DatasetNotFoundError": ("pcjax.data", "DatasetNotFoundError"),
    "DatasetSpec": ("pcjax.data", "DatasetSpec"),
    "ModelOutput": ("pcjax.models", "ModelOutput"),
}


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module 'pcjax' has no attribute {name!r}")
    module_name, attribute = _LAZY[name]
    module = importlib.import_module(module_name)
    return module if attribute is None else getattr(module, attribute)


__all__ = [
    "DatasetNotFoundError", "DatasetSpec", "ModelOutput", "accuracy", "data", "knn_accuracy",
    "linear_probe_accuracy", "losses", "metrics", "models", "pairwise_dissimilarity", "pc_score",
    "perception_coherence_loss", "rank", "soft_rank", "soft_sort", "training",
]

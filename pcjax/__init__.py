"""pcjax: feature representation transfer by perception coherence, in JAX/Flax."""

__version__ = "0.1.0"

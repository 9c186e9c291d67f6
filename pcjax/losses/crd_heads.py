"""CRD's embedding heads: RepDistiller ``crd/criterion.py`` Embed (Tian et al., ICLR 2020).

Kept apart from `pcjax.losses.crd` so that importing the losses does not import flax.
"""

import jax
from flax import nnx

from pcjax.dissimilarity import l2_normalize

# PyTorch's nn.Linear kernel init, U(-1/sqrt(fan_in), 1/sqrt(fan_in)), as RepDistiller's Embed.
_DENSE_INIT = nnx.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


class CRDHeads(nnx.Module):
    """RepDistiller's two Embed heads: a linear map to feat_dim, then l2 normalization.

    Initialized as PyTorch's nn.Linear kernel (U(+-1/sqrt(fan_in))), zero bias. Gradients do not
    reach the teacher features (the teacher is frozen) but do reach the teacher head's weights.
    """

    def __init__(self, s_dim: int, t_dim: int, feat_dim: int = 128, *, rngs: nnx.Rngs):
        self.embed_s = nnx.Linear(s_dim, feat_dim, kernel_init=_DENSE_INIT, rngs=rngs)
        self.embed_t = nnx.Linear(t_dim, feat_dim, kernel_init=_DENSE_INIT, rngs=rngs)

    def __call__(self, f_s: jax.Array, f_t: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(B, ...) student and teacher features -> (B, feat_dim) unit embeddings each."""
        f_s = f_s.reshape(f_s.shape[0], -1)
        f_t = jax.lax.stop_gradient(f_t.reshape(f_t.shape[0], -1))
        return (l2_normalize(self.embed_s(f_s), eps=1e-12),
                l2_normalize(self.embed_t(f_t), eps=1e-12))

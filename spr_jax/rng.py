"""One PRNG key per run, split by purpose and folded with the chunk index.

docs/algorithm.md section 6: unlike the reference (which re-seeds its global generators at every chunk), every
random draw of a run derives from `PRNGKey(seed)`: first folded with a purpose id, then with the chunk
index where the draw belongs to one chunk. Any chunk's expert can therefore be recomputed alone, in any
order and on any device, and give the same result.
"""
import jax

# Purpose ids (stable: changing one changes every run's numbers).
EXPERT = 1  # expert init, augmentations and training of chunk c
FILTER = 2  # stochastic graph ensemble and keep draws of chunk c
BASE_INIT = 3  # the base model's initial parameters
REPLAY = 4  # self-replay augmentations and buffer draws of chunk c
BUFFER = 5  # purified-buffer admission/eviction draws of chunk c
EVAL = 6  # linear-head init and fine-tuning shuffles at evaluation e


def purpose_key(seed: int, purpose: int) -> jax.Array:
    return jax.random.fold_in(jax.random.PRNGKey(seed), purpose)


def chunk_key(seed: int, purpose: int, index) -> jax.Array:
    """Key of one chunk (or evaluation) for one purpose; `index` may be traced."""
    return jax.random.fold_in(purpose_key(seed, purpose), index)

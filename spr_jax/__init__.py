"""spr_jax: Self-Purified Replay (SPR) as pure JAX functions."""

__version__ = "0.1.0"

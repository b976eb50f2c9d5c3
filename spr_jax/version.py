"""spr_jax's version (a module of its own so that what records it, e.g. config.json, needs no other import)."""

__version__ = "0.1.0"

"""Shared fixtures: the repository root on sys.path (so `configs.tiny` imports) and the tiny config."""
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def tiny():
    """A fresh tiny config (configs/tiny.py): a seconds-long run on generated 8x8 data."""
    from configs import tiny as tiny_module
    return tiny_module.get_config()


@pytest.fixture
def tiny_config():
    return tiny()

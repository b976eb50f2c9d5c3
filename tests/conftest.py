"""Shared fixtures: the repository root on sys.path (so `configs.tiny` imports), the tiny config, and a
folder digest."""
import hashlib
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


def file_digests(folder):
    """{relative path: sha256} of every file under folder (None if it does not exist): to show that a folder
    was left untouched."""
    if not os.path.exists(folder):
        return None
    out = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            out[os.path.relpath(path, folder)] = hashlib.sha256(open(path, "rb").read()).hexdigest()
    return out

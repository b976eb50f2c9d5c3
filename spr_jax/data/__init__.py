"""Datasets, label noise and the chunked stream."""

"""Independent references for tests and benchmarks (they need the `test` extras: networkx, scipy)."""

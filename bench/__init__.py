"""Benchmarks of the engine: `python -m bench.NAME [--quick] [--json]`."""

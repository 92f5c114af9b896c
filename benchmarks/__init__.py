"""Benchmark suite: nbcluster against dask.distributed.

Run from the repository root with ``python -m benchmarks`` (see README.md).
This package must stay cheap to import: worker processes import
``benchmarks.tasks`` and the cold-start probe imports ``benchmarks.coldstart``.
"""

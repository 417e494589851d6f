"""Logic behind the ``helical_embedding`` DAG, importable and unit-tested.

The DAG files in ``dags/`` only declare the graph; everything they decide
(which datasets, which shards, which command, which backend, retry or not)
lives here. Nothing in this package imports helical or torch: the runner is
reached only through its command line (docs/contracts.md).
"""

"""Benchmark suites behind ``python -m workbench bench SUITE`` and the report that turns their JSON into
``docs/benchmarks.md``. A leaf: only the CLI imports it."""

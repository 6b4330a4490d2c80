"""Operator and developer tooling: the ``herald`` command (cli, admin), the local stack (demo, tests,
benchmarks) and the doc generators. Not needed by the services at run time: no service and nothing
in shared/ imports it (tests/repo/test_import_rules.py)."""

"""Developer tooling: run the whole stack locally (demo, tests, benchmarks). Not used by services."""

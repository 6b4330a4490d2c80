"""The hostile-tenant suite runs all services as processes, like tests/e2e: the same
module-scoped ``env`` (topics of the module's own)."""

from tests.e2e.conftest import env  # noqa: F401  (the fixture, reused)

"""Integration tests run on the real Kafka and PostgreSQL, each module on topics of its own
(tests/module_topics.py); tests/conftest.py marks them ``integration``."""

from tests.module_topics import env  # noqa: F401  (the fixture, shared by every integration folder)

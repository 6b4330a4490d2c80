"""schemathesis against the running ingest and reports: no 5xx, no answer outside the
OpenAPI document, bad input rejected with a 4xx. Bounded by max_examples per operation."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import checks

from herald_tools.stack import Stack
from tests.conftest import make_tenant

pytestmark = pytest.mark.e2e
# Semantic checks beyond the schema (a valid-looking number that is not a real mobile) make
# "schema-valid data must be accepted" unsatisfiable; every other check applies.
EXCLUDED = [checks.positive_data_acceptance]
FUZZ = settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), database=None)


def fuzz(url: str, key: str) -> tuple[list[str], dict[str, str]]:
    """Run every operation of the schema at ``url``; return the operations and failures by operation."""
    schema = schemathesis.openapi.from_url(url)
    failures: dict[str, str] = {}
    tested: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        tested.append(operation.label)

        @given(case=operation.as_strategy())
        @FUZZ
        def check(case) -> None:
            case.call_and_validate(headers={"Authorization": f"Bearer {key}"}, excluded_checks=EXCLUDED)

        try:
            check()
        except BaseException as exc:  # noqa: BLE001 - collect, so one run reports every operation
            if isinstance(exc, KeyboardInterrupt):
                raise
            failures[operation.label] = str(exc)[:2000]
    return tested, failures


@pytest.mark.parametrize("service", ["ingest", "reports"])
async def test_openapi_conformance(stack: Stack, pool, service: str) -> None:
    tenant = await make_tenant(pool)
    tested, failures = fuzz(f"{stack.url(service)}/openapi.json", tenant.key)
    expected = {"ingest": "POST /v1/messages/batch", "reports": "GET /v1/messages/{message_id}"}[service]
    assert expected in tested, tested
    assert not failures, "\n\n".join(f"{op}:\n{text}" for op, text in failures.items())

"""Which body limit applies to a request, and which paths need an API key (pure)."""

from __future__ import annotations

import re

from services.ingest.api import MAX_RECEIPT_BODY, guard_policy
from services.ingest.settings import IngestSettings


def test_each_route_gets_its_own_limit_and_the_rest_the_default() -> None:
    s = IngestSettings(message_body_max_bytes=1111, batch_body_max_bytes=2222, import_body_max_bytes=3333,
                       body_max_bytes=4444)
    policy = guard_policy(s)
    assert policy.limit("POST", "/v1/messages") == 1111
    assert policy.limit("POST", "/v1/messages/batch") == 2222
    assert policy.limit("POST", "/v1/events/batch") == 2222
    assert policy.limit("POST", "/v1/contacts/import") == 3333
    assert policy.limit("POST", "/v1/receipts/sim") == MAX_RECEIPT_BODY
    assert policy.limit("POST", "/v1/messages/batchx") == 4444
    assert policy.limit("PUT", "/v1/messages") == 4444
    assert policy.limit("POST", "/v1/templates") == 4444
    assert policy.rule("POST", "/v1/contacts/import").timeout_s == s.import_body_timeout_s  # type: ignore[union-attr]


def test_gateways_callbacks_and_ops_routes_need_no_key() -> None:
    policy = guard_policy(IngestSettings())
    for path in ("/v1/receipts/sim", "/v1/callbacks/twilio/tw/status", "/healthz", "/metrics", "/docs", "/l/abc"):
        assert not policy.needs_key(path), path
    for path in ("/v1/messages", "/v1/messages/batch", "/v1/contacts/import", "/v1/policy", "/v1/receiptsx"):
        assert policy.needs_key(path), path
    assert all(isinstance(p, re.Pattern) for p in policy.keyless)

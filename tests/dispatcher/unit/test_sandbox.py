"""Test keys' messages: the sandbox gateway and the route that is theirs alone."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from services.dispatcher.domain.routing import Route, Router
from services.dispatcher.gateways.base import Refused, Submitted
from services.dispatcher.gateways.sandbox import SANDBOX, SandboxGateway, sandbox_outcome
from shared.contracts import DeliveryReceipt, MessageOutbound
from shared.statuses import MessageType, ReceiptStatus
from tests import factories


def message(to: str = "+34600000123", sandbox: bool = True) -> MessageOutbound:
    now = datetime.now(UTC)
    return factories.outbound(to=to, type=MessageType.TRANSACTIONAL, accepted_at=now, released_at=now, sandbox=sandbox)


def test_a_sandbox_message_has_one_route_whatever_the_rules() -> None:
    router = Router([Route("es", ("a",), countries=frozenset({"ES"}))], ("a", "b"))
    assert router.route_for(message()).gateways == (SANDBOX,)
    assert router.choose(message(), available=lambda g: g != SANDBOX).gateway == SANDBOX
    assert router.choose(message(sandbox=False), available=lambda g: True).gateway == "a"


def test_no_configured_route_or_gateway_can_be_the_sandbox() -> None:
    with pytest.raises(ValueError, match="reserved"):
        Router([], ("a", SANDBOX))
    with pytest.raises(ValueError, match="unknown gateways"):
        Router([Route("sneaky", (SANDBOX,))], ("a",))


def test_outcomes_follow_the_last_four_digits() -> None:
    m = message("+34600000123")
    outcome, receipt = sandbox_outcome(m)
    assert outcome == Submitted(f"sbx-{m.message_id.hex}")
    assert receipt is not None and (receipt.status, receipt.gateway, receipt.gateway_message_id) == (
        ReceiptStatus.DELIVERED, SANDBOX, outcome.gateway_message_id)
    assert sandbox_outcome(message("+34600000001"))[1].status is ReceiptStatus.UNDELIVERED
    assert sandbox_outcome(message("+34600000002"))[1].status is ReceiptStatus.REJECTED
    refused, none = sandbox_outcome(message("+34600000003"))
    assert isinstance(refused, Refused) and not refused.retriable and none is None


class Sink:
    def __init__(self) -> None:
        self.got: list[DeliveryReceipt] = []

    async def receipts(self, items: list[DeliveryReceipt]) -> None:
        self.got += items

    async def inbound(self, items) -> None:  # pragma: no cover
        raise AssertionError


async def test_the_gateway_publishes_receipts_and_refuses_a_live_message() -> None:
    sink = Sink()
    gateway = SandboxGateway(sink)
    ok, live = message(), message(sandbox=False)
    outcomes = await gateway.submit_many([ok, live])
    assert isinstance(outcomes[0], Submitted) and outcomes[1] == Refused(
        "not_sandbox", "a live message reached the sandbox gateway", False)
    assert [r.gateway_message_id for r in sink.got] == [outcomes[0].gateway_message_id]
    assert await gateway.lookup(ok) == outcomes[0].gateway_message_id

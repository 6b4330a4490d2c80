"""The sandbox gateway: where messages sent with a test key go, and nowhere else.

It never opens a connection. A submission is answered at once with an id derived from the
message id (so a lookup after a crash finds it), and the delivery receipt is published on the
receipts topic before the answer, like a carrier's would be: the message then goes through
reports, webhooks and metrics as any other. The outcome follows the recipient's last four
digits, so integrators can try every path (docs/providers.md, test keys):

- ``…0001``: undelivered (receipt error 001)
- ``…0002``: failed at the carrier (receipt status rejected, error 002)
- ``…0003``: refused at submission (``sandbox_refused``, not retried)
- anything else: delivered
"""

from __future__ import annotations

from datetime import UTC, datetime

from services.dispatcher.gateways.base import EventSink, Outcome, Refused, Submitted
from shared.contracts import DeliveryReceipt, MessageOutbound
from shared.statuses import ReceiptStatus

SANDBOX = "sandbox"  # its gateway name: reserved, never one of the configured gateways

_RECEIPTS = {"0001": (ReceiptStatus.UNDELIVERED, "001"), "0002": (ReceiptStatus.REJECTED, "002")}


def sandbox_id(message: MessageOutbound) -> str:
    return f"sbx-{message.message_id.hex}"


def sandbox_outcome(message: MessageOutbound) -> tuple[Outcome, DeliveryReceipt | None]:
    """What the sandbox does with one message (pure: the submission's outcome and its receipt)."""
    suffix = message.to[-4:]
    if suffix == "0003":
        return Refused("sandbox_refused", "the sandbox refuses numbers ending in 0003", False), None
    status, error = _RECEIPTS.get(suffix, (ReceiptStatus.DELIVERED, "000"))
    gateway_id = sandbox_id(message)
    receipt = DeliveryReceipt(gateway=SANDBOX, gateway_message_id=gateway_id, status=status, error_code=error,
                              raw_status=status.value, done_at=datetime.now(UTC))
    return Submitted(gateway_id), receipt


class SandboxGateway:
    name = SANDBOX

    def __init__(self, sink: EventSink | None) -> None:
        self.sink = sink

    async def submit_many(self, messages: list[MessageOutbound]) -> list[Outcome]:
        outcomes: list[Outcome] = []
        receipts: list[DeliveryReceipt] = []
        for message in messages:
            if not message.sandbox:  # the router never sends a live message here; refuse it if it ever did
                outcomes.append(Refused("not_sandbox", "a live message reached the sandbox gateway", False))
                continue
            outcome, receipt = sandbox_outcome(message)
            outcomes.append(outcome)
            if receipt is not None:
                receipts.append(receipt)
        if receipts and self.sink is not None:
            await self.sink.receipts(receipts)  # durable before the answer, as a carrier's receipt would be
        return outcomes

    async def lookup(self, message: MessageOutbound) -> str | None:
        outcome, _ = sandbox_outcome(message)
        return outcome.gateway_message_id if isinstance(outcome, Submitted) else None

    async def close(self) -> None:
        return None

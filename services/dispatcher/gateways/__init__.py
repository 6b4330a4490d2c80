"""Gateway adapters. Each implements :class:`~services.dispatcher.gateways.base.Gateway`."""

from services.dispatcher.gateways.base import EventSink, Gateway
from services.dispatcher.gateways.herald_http import HeraldHttpGateway
from services.dispatcher.settings import GatewayConfig


def build_gateway(config: GatewayConfig, sink: EventSink | None = None) -> Gateway:
    """The adapter for ``config.kind``; ``sink`` takes what arrives on the connection (receipts, MO)."""
    if config.kind == "herald-http":
        return HeraldHttpGateway(config)
    raise ValueError(f"unknown gateway kind {config.kind!r}")


__all__ = ["EventSink", "Gateway", "build_gateway"]

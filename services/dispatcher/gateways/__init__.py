"""Gateway adapters. Each implements :class:`~services.dispatcher.gateways.base.Gateway`."""

from services.dispatcher.gateways.base import EventSink, Gateway
from services.dispatcher.gateways.config import GatewayConfig
from services.dispatcher.gateways.herald_http import HeraldHttpConfig, HeraldHttpGateway


def build_gateway(config: GatewayConfig, sink: EventSink | None = None) -> Gateway:
    """The adapter for ``config.kind``; ``sink`` takes what arrives on the connection (receipts, MO)."""
    if isinstance(config, HeraldHttpConfig):
        return HeraldHttpGateway(config)
    raise ValueError(f"unknown gateway kind {config.kind!r}")


__all__ = ["EventSink", "Gateway", "build_gateway"]

"""Gateway adapters. Each implements :class:`~services.dispatcher.gateways.base.Gateway`."""

from services.dispatcher.gateways.base import EventSink, Gateway
from services.dispatcher.gateways.config import GatewayConfig
from services.dispatcher.gateways.herald_http import HeraldHttpConfig, HeraldHttpGateway
from services.dispatcher.gateways.smpp import SmppConfig, SmppGateway
from services.dispatcher.gateways.twilio import TwilioConfig, TwilioGateway
from services.dispatcher.gateways.webhook import WebhookConfig, WebhookGateway


def build_gateway(config: GatewayConfig, sink: EventSink | None = None) -> Gateway:
    """The adapter for ``config.kind``; ``sink`` takes what arrives on the connection (receipts, MO)."""
    if isinstance(config, HeraldHttpConfig):
        return HeraldHttpGateway(config)
    if isinstance(config, TwilioConfig):
        return TwilioGateway(config)
    if isinstance(config, WebhookConfig):
        return WebhookGateway(config)
    if isinstance(config, SmppConfig):
        return SmppGateway(config, sink)
    raise ValueError(f"unknown gateway kind {config.kind!r}")


__all__ = ["EventSink", "Gateway", "build_gateway"]

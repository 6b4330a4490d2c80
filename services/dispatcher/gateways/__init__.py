"""Gateway adapters. Each implements :class:`~services.dispatcher.gateways.base.Gateway`."""

from services.dispatcher.gateways.base import Gateway
from services.dispatcher.gateways.herald_http import HeraldHttpGateway
from services.dispatcher.settings import GatewayConfig


def build_gateway(config: GatewayConfig) -> Gateway:
    if config.kind == "herald-http":
        return HeraldHttpGateway(config)
    raise ValueError(f"unknown gateway kind {config.kind!r}")


__all__ = ["Gateway", "build_gateway"]

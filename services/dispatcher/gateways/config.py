"""All gateway kinds, as one discriminated union on ``kind`` (what ``HERALD_GATEWAYS`` holds).

To add a kind: define ``XConfig(GatewayBase)`` with ``kind: Literal["x"]`` next to its adapter,
add it to ``GatewayConfig`` here and to ``build_gateway`` in ``__init__``.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from services.dispatcher.gateways.herald_http import HeraldHttpConfig
from services.dispatcher.gateways.smpp import SmppConfig
from services.dispatcher.gateways.twilio import TwilioConfig
from services.dispatcher.gateways.webhook import WebhookConfig

GatewayConfig = Annotated[HeraldHttpConfig | TwilioConfig | WebhookConfig | SmppConfig, Field(discriminator="kind")]

__all__ = ["GatewayConfig", "HeraldHttpConfig", "SmppConfig", "TwilioConfig", "WebhookConfig"]

"""What ingest's routers get through FastAPI dependencies: the objects the composition root
(:func:`services.ingest.api.create_app`) puts on ``app.state``.

The routes are module-level functions on module-level routers (``api.py``,
``campaigns/api.py``, ``audience/contacts_api.py``…); each asks for what it needs with
``Depends(...)`` on one of these accessors, so a router can be mounted and tested alone on an
app whose state :func:`install` filled. Derived objects (the erasure keyring, the egress
policy) are made once per app, on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request

from services.ingest.settings import IngestSettings
from shared.egress import EgressPolicy
from shared.kafka import Publisher

if TYPE_CHECKING:
    from services.ingest.repository import IngestRepository
    from services.ingest.service import Acceptor


def install(app: FastAPI, settings: IngestSettings, pool: Any, publisher: Publisher | None, **extra: Any) -> None:
    """Put what the routes depend on on ``app.state`` (``extra``: acceptor, repository…)."""
    app.state.settings = settings
    app.state.pool = pool
    app.state.publisher = publisher
    for name, value in extra.items():
        setattr(app.state, name, value)


def ingest_settings(request: Request) -> IngestSettings:
    return request.app.state.settings


def pool(request: Request) -> Any:
    return request.app.state.pool


def publisher(request: Request) -> Publisher:
    return request.app.state.publisher


def acceptor(request: Request) -> Acceptor:
    return request.app.state.acceptor


def repository(request: Request) -> IngestRepository:
    return request.app.state.repository


def erasure_keyring(request: Request) -> Any:
    """The settings' erasure keys (``suppressed`` in a previewed filter checks erased hashes)."""
    state = request.app.state
    keys = getattr(state, "erasure_keyring", None)
    if keys is None:
        keys = state.erasure_keyring = ingest_settings(request).erasure_keyring()
    return keys


def egress_policy(request: Request) -> EgressPolicy:
    """Where reply webhooks may point (shared/egress.py), from the settings."""
    state = request.app.state
    policy = getattr(state, "egress_policy", None)
    if policy is None:
        policy = state.egress_policy = EgressPolicy.of(ingest_settings(request))
    return policy

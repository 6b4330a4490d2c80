"""The ``env`` fixture of every integration folder (tests/<service>/integration/conftest.py
imports it): the session's database with topics of the module's own (see own_topics)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.conftest import Env, own_topics


@pytest.fixture(scope="module")
async def env(session_env: Env) -> AsyncIterator[Env]:
    """The session's database with topics of this module's own (see own_topics)."""
    async for own in own_topics(session_env):
        yield own

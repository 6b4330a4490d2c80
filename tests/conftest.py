"""Test fixtures. Integration and end-to-end tests run on the real Kafka broker and
PostgreSQL started by deploy/local/infra.py; if they cannot start, the tests fail (never skip).

Each test session gets its own database and topic prefix, so it never touches a running
demo or another session.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest

from herald_tools.stack import infra


@dataclass(frozen=True)
class Env:
    bootstrap: str
    dsn: str
    admin_dsn: str
    prefix: str

    def vars(self) -> dict[str, str]:
        return {"HERALD_KAFKA_BOOTSTRAP": self.bootstrap, "HERALD_DATABASE_URL": self.dsn, "HERALD_TOPIC_PREFIX": self.prefix}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test in an ``integration`` folder (tests/<service>/integration) is marked
    ``integration``, whether or not its module says so."""
    for item in items:
        if item.path.parent.name == "integration":
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def infra_env() -> dict[str, str]:
    """Start (or reuse) the local Kafka and PostgreSQL; return their addresses."""
    infra("start")
    out = infra("env").stdout
    found = dict(re.findall(r"^export (\w+)=(\S+)$", out, re.M))
    return {"bootstrap": found["HERALD_KAFKA_BOOTSTRAP"], "dsn": found["HERALD_DATABASE_URL"]}


@pytest.fixture(scope="session")
async def session_env(infra_env: dict[str, str]) -> AsyncIterator[Env]:
    """A fresh database and topic prefix for this session, migrated, with topics created."""
    from shared.db import create_pool, migrate
    from shared.kafka import ensure_topics
    from shared.settings import ServiceSettings

    tag = uuid.uuid4().hex[:8]
    admin_dsn = infra_env["dsn"]
    db = f"herald_test_{tag}"
    conn = await asyncpg.connect(admin_dsn)
    await conn.execute(f'CREATE DATABASE "{db}"')
    await conn.close()
    dsn = admin_dsn.rsplit("/", 1)[0] + f"/{db}"
    result = Env(bootstrap=infra_env["bootstrap"], dsn=dsn, admin_dsn=admin_dsn, prefix=f"test{tag}.")
    saved = {k: os.environ.get(k) for k in result.vars()}
    os.environ.update(result.vars())
    settings = ServiceSettings()
    pool = await create_pool(settings)
    async with pool.acquire() as c:
        await migrate(c)
    await pool.close()
    await ensure_topics(settings)
    yield result
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    conn = await asyncpg.connect(admin_dsn)
    await conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
    await conn.close()


@pytest.fixture(scope="session")
def env(session_env: Env) -> Env:
    """The session's database and topics; modules that run services override it (own_topics)."""
    return session_env


async def own_topics(env: Env) -> AsyncIterator[Env]:
    """``env`` with a topic prefix of its own (topics created, deleted afterwards).

    Override a module's ``env`` with it when the module runs services as processes: what an
    earlier module left unconsumed on the shared topics (a stack stopped mid-campaign) never
    reaches this module's gateways, and this module's consumer groups start at offset zero.
    The database stays the session's.
    """
    from aiokafka.admin import AIOKafkaAdminClient

    from shared.kafka import client_options, ensure_topics
    from shared.settings import KafkaSettings

    own = Env(bootstrap=env.bootstrap, dsn=env.dsn, admin_dsn=env.admin_dsn,
              prefix=f"{env.prefix}m{uuid.uuid4().hex[:6]}.")
    settings = KafkaSettings(kafka_bootstrap=env.bootstrap, topic_prefix=own.prefix)
    created = await ensure_topics(settings)
    saved = os.environ.get("HERALD_TOPIC_PREFIX")
    os.environ["HERALD_TOPIC_PREFIX"] = own.prefix
    try:
        yield own
    finally:
        if saved is None:
            os.environ.pop("HERALD_TOPIC_PREFIX", None)
        else:
            os.environ["HERALD_TOPIC_PREFIX"] = saved
        admin = AIOKafkaAdminClient(client_id="herald-test-admin", **client_options(settings))
        await admin.start()
        try:
            await admin.delete_topics(created)
        except Exception:  # noqa: BLE001 - best effort: the broker is the session's, and the prefix unique
            pass
        finally:
            await admin.close()


@pytest.fixture(scope="session")
async def pool(session_env: Env) -> AsyncIterator[asyncpg.Pool]:
    from shared.db import create_pool
    from shared.settings import ServiceSettings

    p = await create_pool(ServiceSettings())
    yield p
    await p.close()


@dataclass(frozen=True)
class Tenant:
    tenant_id: str
    key: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


async def make_tenant(
    pool: asyncpg.Pool, scopes: tuple[str, ...] | None = None, marketing_consent: str = "opt_out"
) -> Tenant:
    """A fresh tenant and key. Most tests send marketing to numbers that are not contacts, so
    test tenants default to the 'opt_out' consent mode; consent tests ask for 'required'
    (the production default)."""
    from shared.auth import DEFAULT_SCOPES, create_key, create_tenant

    tenant_id = f"t{uuid.uuid4().hex[:10]}"
    async with pool.acquire() as conn:
        await create_tenant(conn, tenant_id, tenant_id, marketing_consent)
        key = await create_key(conn, tenant_id, scopes or DEFAULT_SCOPES)
    return Tenant(tenant_id, key)


async def register_senders(pool: asyncpg.Pool, tenant_id: str, *senders: str, **options: Any) -> None:
    """Register ``senders`` for the tenant, verified, as an operator would (docs/senders.md): a
    message or template may name only its tenant's verified senders."""
    from herald_tools import admin

    async with pool.acquire() as conn:
        for sender in senders:
            await admin.sender_add(conn, "test", tenant_id, sender, state="verified", **options)


@pytest.fixture
async def tenant(pool: asyncpg.Pool) -> Tenant:
    return await make_tenant(pool)


@pytest.fixture(scope="session")
def anyio_backend() -> Iterator[str]:
    yield "asyncio"

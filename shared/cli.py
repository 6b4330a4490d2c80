"""The ``herald`` command: migrations, tenants and keys, segment counting, the local stack."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from shared.settings import ServiceSettings


async def _migrate(topics: bool) -> dict[str, list[str]]:
    from shared.db import create_pool, migrate
    from shared.kafka import ensure_topics

    settings = ServiceSettings()
    pool = await create_pool(settings)
    try:
        async with pool.acquire() as conn:
            applied = await migrate(conn)
    finally:
        await pool.close()
    created = await ensure_topics(settings) if topics else []
    return {"migrations_applied": applied, "topics_created": created}


async def _tenant_create(tenant_id: str, name: str, scopes: list[str]) -> dict[str, str]:
    from shared.auth import create_key, create_tenant
    from shared.db import create_pool

    pool = await create_pool(ServiceSettings())
    try:
        async with pool.acquire() as conn, conn.transaction():
            await create_tenant(conn, tenant_id, name)
            key = await create_key(conn, tenant_id, tuple(scopes), name="created by herald tenant create")
    finally:
        await pool.close()
    return {"tenant_id": tenant_id, "api_key": key}


async def _key_revoke(key_id: str) -> bool:
    from shared.auth import revoke_key
    from shared.db import create_pool

    pool = await create_pool(ServiceSettings())
    try:
        async with pool.acquire() as conn:
            return await revoke_key(conn, key_id)
    finally:
        await pool.close()


def main(argv: list[str] | None = None) -> int:
    from shared.auth import DEFAULT_SCOPES, SCOPES
    from shared.contracts.envelope import TENANT_PATTERN

    parser = argparse.ArgumentParser(prog="herald", description="Herald: SMS at scale.")
    sub = parser.add_subparsers(dest="command", required=True)

    m = sub.add_parser("migrate", help="apply database migrations and create missing Kafka topics")
    m.add_argument("--no-topics", action="store_true", help="only the database")

    t = sub.add_parser("tenant", help="tenants")
    tsub = t.add_subparsers(dest="action", required=True)
    tc = tsub.add_parser("create", help="create a tenant (or reuse it) and print a new API key")
    tc.add_argument("tenant_id", help=f"lowercase id matching {TENANT_PATTERN}")
    tc.add_argument("--name", default=None)
    tc.add_argument("--scopes", default=",".join(DEFAULT_SCOPES), help=f"comma-separated, of {', '.join(SCOPES)}")

    k = sub.add_parser("key", help="API keys")
    ksub = k.add_subparsers(dest="action", required=True)
    kr = ksub.add_parser("revoke", help="revoke a key at once (give its id: the part after hk_)")
    kr.add_argument("key_id")

    s = sub.add_parser("segments", help="encoding and segment count of a text, as JSON")
    s.add_argument("text")
    s.add_argument("--no-smart", action="store_true", help="do not replace typographic characters")

    up = sub.add_parser("up", help="start Kafka, PostgreSQL, the services and the simulator, and run the demo")
    up.add_argument("--messages", type=int, default=3000, help="demo messages to send")
    up.add_argument("--no-wait", action="store_true", help="stop everything after the summary")
    up.add_argument("--keep-infra", action="store_true", help="leave Kafka and PostgreSQL running on exit")

    sub.add_parser("down", help="stop a stack left running, and Kafka and PostgreSQL")

    args = parser.parse_args(argv)
    if args.command == "migrate":
        print(json.dumps(asyncio.run(_migrate(not args.no_topics))))
    elif args.command == "tenant":
        import re

        if not re.match(TENANT_PATTERN, args.tenant_id):
            parser.error(f"tenant id must match {TENANT_PATTERN}")
        scopes = [x.strip() for x in args.scopes.split(",") if x.strip()]
        print(json.dumps(asyncio.run(_tenant_create(args.tenant_id, args.name or args.tenant_id, scopes))))
    elif args.command == "key":
        if not asyncio.run(_key_revoke(args.key_id)):
            print(f"no active key {args.key_id}", file=sys.stderr)
            return 1
        print(json.dumps({"key_id": args.key_id, "revoked": True}))
    elif args.command == "segments":
        from shared.sms.encoding import analyse

        info = analyse(args.text, smart=not args.no_smart)
        print(json.dumps(info.as_dict(), ensure_ascii=False))
    elif args.command == "up":
        from shared.devtools.demo import run_demo

        return run_demo(args.messages, wait=not args.no_wait, keep_infra=args.keep_infra)
    elif args.command == "down":
        from shared.devtools.demo import down

        return down()
    return 0


if __name__ == "__main__":
    sys.exit(main())

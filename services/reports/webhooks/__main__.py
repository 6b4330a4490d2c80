"""``python -m services.reports.webhooks secret TENANT`` prints a tenant's signing secret
(creating it if needed)."""

from __future__ import annotations

import asyncio
import sys

from services.reports.webhooks.repository import WebhookStore


async def _print_secret(tenant: str) -> None:
    from services.reports.settings import ReportsSettings
    from shared.db import create_pool

    pool = await create_pool(ReportsSettings(), timeout_s=10)
    try:
        print((await WebhookStore(pool).secrets([tenant]))[tenant])
    finally:
        await pool.close()


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] != "secret":
        print("usage: python -m services.reports.webhooks secret TENANT", file=sys.stderr)
        return 2
    asyncio.run(_print_secret(argv[1]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

"""The ``herald`` command: migrations, administration, segment counting, the local stack."""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import re
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import asyncpg

from shared.retention import parse_retention_option
from shared.settings import ServiceSettings

T = TypeVar("T")


def _print(value: Any) -> None:
    print(json.dumps(value, default=str, ensure_ascii=False))


async def _with_db(work: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
    from shared.db import create_pool

    pool = await create_pool(ServiceSettings())
    try:
        async with pool.acquire() as conn:
            return await work(conn)
    finally:
        await pool.close()


async def _migrate(topics: bool) -> dict[str, list[str]]:
    from shared.db import migrate
    from shared.kafka import ensure_topics

    applied = await _with_db(migrate)
    created = await ensure_topics(ServiceSettings()) if topics else []
    return {"migrations_applied": applied, "topics_created": created}


def scopes_arg(value: str) -> tuple[str, ...]:
    """``--scopes a,b``: every name must be a known scope (the error lists the valid ones)."""
    from shared.auth import SCOPES

    scopes = tuple(dict.fromkeys(s.strip() for s in value.split(",") if s.strip()))
    unknown = [s for s in scopes if s not in SCOPES]
    if unknown or not scopes:
        what = f"unknown scope(s): {', '.join(unknown)}" if unknown else "no scope given"
        raise argparse.ArgumentTypeError(f"{what}; valid scopes: {', '.join(SCOPES)}")
    return scopes


def _admin_parser(sub: Any) -> None:
    from shared.auth import DEFAULT_SCOPES, SCOPES

    admin = sub.add_parser("admin", help="tenants, API keys, suppression lists, audit (every action is audited)")
    admin.add_argument("--actor", default=None, help="who is acting (default: $SUDO_USER or $USER)")
    objects = admin.add_subparsers(dest="object", required=True)

    scopes_help = f"comma-separated, of {', '.join(SCOPES)} (default {','.join(DEFAULT_SCOPES)})"
    tenant = objects.add_parser("tenant", help="create, list, disable tenants; their policy and reply webhook").add_subparsers(
        dest="action", required=True)
    c = tenant.add_parser("create", help="create a tenant and print its first API key")
    c.add_argument("tenant_id")
    c.add_argument("--name", default=None)
    c.add_argument("--scopes", type=scopes_arg, default=DEFAULT_SCOPES, help=scopes_help)
    tenant.add_parser("list", help="every tenant, with its state")
    pol = tenant.add_parser(
        "policy", help="show or change a tenant's marketing consent mode, frequency caps and geo permissions")
    pol.add_argument("tenant_id")
    pol.add_argument("--marketing-consent", choices=("required", "opt_out"), default=None,
                     help="required: marketing only to contacts with consent; opt_out: only a refusal blocks it")
    pol.add_argument("--cap", action="append", default=None, metavar="COUNT/WINDOW",
                     help="frequency cap per contact, e.g. 1/24h (repeat: --cap 1/24h --cap 4/7d)")
    pol.add_argument("--no-caps", action="store_true", help="remove every frequency cap")
    pol.add_argument("--country", default=None, metavar="CC",
                     help="the tenant's own country (ISO 3166-1 alpha-2), its only destination without "
                          "--allowed-countries; '' clears it")
    pol.add_argument("--allowed-countries", default=None, metavar="CC,CC",
                     help="the only destination countries allowed, e.g. ES,FR (high-cost ones must be named); "
                          "'' clears the list (docs/senders.md)")
    pol.add_argument("--link-domain", default=None, metavar="HOST",
                     help="the tenant's own short-link domain (host, optional :port and path), e.g. go.brand.example;"
                          " its links answer only there; '' goes back to the shared domain (docs/results.md)")
    pol.add_argument("--link-ttl", default=None, metavar="DURATION",
                     help="how long the tenant's short links live, e.g. 30d or 12h; '' goes back to"
                          " HERALD_LINK_TTL_S")
    pol.add_argument("--retention", action="append", default=None, metavar="KIND=DAYS",
                     help="keep this tenant's data of a kind (messages, inbound, clicks) this many days instead of "
                          "the services' default; KIND=default goes back to it (repeatable; docs/operations.md)")
    rw = tenant.add_parser("reply-webhook", help="show or set where the tenant's ordinary replies are posted, signed")
    rw.add_argument("tenant_id")
    rw.add_argument("url", nargs="?", default=None, help="http or https URL (docs/replies.md)")
    rw.add_argument("--clear", action="store_true", help="stop posting replies (they stay on the replies topic)")
    for verb, what in (("disable", "refuse the tenant's keys, cancel its campaigns, suppress what it has not sent"),
                      ("enable", "accept the tenant's keys and send its new messages again")):
        tenant.add_parser(verb, help=what).add_argument("tenant_id")

    key = objects.add_parser("key", help="API keys: create, list, revoke, rotate").add_subparsers(
        dest="action", required=True)
    c = key.add_parser("create", help="a new key for a tenant (printed once)")
    c.add_argument("tenant_id")
    c.add_argument("--scopes", type=scopes_arg, default=DEFAULT_SCOPES, help=scopes_help)
    c.add_argument("--name", default="", help="a label for the key")
    c.add_argument("--requests-per-minute", type=int, default=None, help="this key's request limit (default: the service's)")
    c.add_argument("--messages-per-minute", type=int, default=None, help="this key's message limit (default: the service's)")
    c.add_argument("--test", action="store_true",
                   help="a test key: its messages run through Herald but go to the sandbox gateway, never to a carrier")
    key.add_parser("list", help="a tenant's keys (never their secrets)").add_argument("tenant_id")
    key.add_parser("revoke", help="stops working at once, on every instance").add_argument("key_id")
    r = key.add_parser("rotate", help="a new key; the old one keeps working for the overlap")
    r.add_argument("key_id")
    r.add_argument("--overlap-hours", type=float, default=24.0)

    kk = objects.add_parser("kafka-key", help="keys a tenant's producers sign trigger and contact events with").add_subparsers(
        dest="action", required=True)
    c = kk.add_parser("create", help="a new key for a tenant's producers (id and secret, printed once)")
    c.add_argument("tenant_id")
    c.add_argument("--name", default="", help="a label (which system produces with it)")
    kk.add_parser("list", help="a tenant's Kafka input keys (never their secrets)").add_argument("tenant_id")
    kk.add_parser("revoke", help="events signed with it are refused from the next batch on").add_argument("key_id")

    supp = objects.add_parser("suppressions", help="import or export a tenant's opt-out list").add_subparsers(
        dest="action", required=True)
    i = supp.add_parser("import", help="CSV with a 'phone' column (E.164) and optional 'reason'")
    i.add_argument("tenant_id")
    i.add_argument("file", help="path, or - for standard input")
    i.add_argument("--reason", default="imported")
    e = supp.add_parser("export", help="CSV to standard output")
    e.add_argument("tenant_id")

    numbers = objects.add_parser("numbers", help="numbers, short codes and sender ids replies are sent to").add_subparsers(
        dest="action", required=True)
    a = numbers.add_parser("add", help="map a number to a tenant, optionally with a brand scope")
    a.add_argument("tenant_id")
    a.add_argument("number")
    a.add_argument("--scope", default=None, help="brand or sender scope: STOP to this number opts out of it only")
    numbers.add_parser("list", help="a tenant's numbers").add_argument("tenant_id")
    rm = numbers.add_parser("remove", help="unmap a number from a tenant")
    rm.add_argument("tenant_id")
    rm.add_argument("number")

    link = objects.add_parser("link", help="short links: show, take down, restore (docs/results.md)").add_subparsers(
        dest="action", required=True)
    target_help = "a link code, or a URL prefix with scheme and host (every link to that destination)"
    for verb, what in (("show", "the links a code or URL prefix names, with their state (100 at most)"),
                       ("takedown", "the redirect answers 410 link_taken_down; who, when and why are kept"),
                       ("restore", "undo a takedown")):
        lp = link.add_parser(verb, help=what)
        lp.add_argument("target", help=target_help)
        lp.add_argument("--tenant", default=None, help="only this tenant's links")
        if verb == "takedown":
            lp.add_argument("--reason", default="operator takedown", help="why (kept on each link and in the audit log)")
    snd = objects.add_parser("sender", help="the sender registry: numbers and sender ids a tenant may send from "
                             "(docs/senders.md)").add_subparsers(dest="action", required=True)
    a = snd.add_parser("add", help="register a sender for a tenant (pending unless --state verified)")
    a.add_argument("tenant_id")
    a.add_argument("sender", help="+E.164 number, short code, or alphanumeric id (up to 11 characters)")
    a.add_argument("--kind", choices=("long_code", "toll_free", "short_code", "alphanumeric"), default=None,
                   help="default: from the sender's form")
    a.add_argument("--countries", default=None, help="destinations it may send to, e.g. ES,FR (default: any the rules allow)")
    a.add_argument("--capabilities", default="sms", help="sms, mo (takes replies) or sms,mo")
    a.add_argument("--state", choices=("pending", "verified", "suspended"), default="pending")
    a.add_argument("--scope", default=None, help="replies: STOP to this sender opts out of this scope only")
    ls = snd.add_parser("list", help="senders, of one tenant or all")
    ls.add_argument("tenant_id", nargs="?", default=None)
    ls.add_argument("--state", choices=("pending", "verified", "suspended"), default=None)
    for verb, what in (("verify", "the tenant may send from it from the next request on"),
                       ("suspend", "refused from the next request on (replies still reach the tenant)"),
                       ("unverify", "back to pending")):
        v = snd.add_parser(verb, help=what)
        v.add_argument("tenant_id")
        v.add_argument("sender")
        v.add_argument("--note", default=None, help="why (kept on the sender and in the audit log)")
    up = snd.add_parser("update", help="change a sender's kind, countries, capabilities or scope (its state stays)")
    up.add_argument("tenant_id")
    up.add_argument("sender")
    up.add_argument("--kind", choices=("long_code", "toll_free", "short_code", "alphanumeric"), default=None)
    up.add_argument("--countries", default=None, help="e.g. ES,FR; '' for any the rules allow")
    up.add_argument("--capabilities", default=None, help="sms, mo or sms,mo")
    up.add_argument("--scope", default=None, help="replies scope; '' clears it")
    up.add_argument("--rate", default=None, help="contracted throughput, segments per second; '' removes it")
    up.add_argument("--burst", default=None, help="segments it may send at once (default: one second's worth); '' clears it")
    rg = snd.add_parser("register", help="record a sender's carrier registrations (docs/senders.md)")
    rg.add_argument("tenant_id")
    rg.add_argument("sender")
    rg.add_argument("--ten-dlc-brand", default=None)
    rg.add_argument("--ten-dlc-campaign", default=None)
    rg.add_argument("--toll-free-verification", default=None)
    rg.add_argument("--dlt-entity", default=None)
    rs = snd.add_parser("remove", help="remove a sender from the registry")
    rs.add_argument("tenant_id")
    rs.add_argument("sender")

    sp = objects.add_parser("sender-pool", help="sender pools: a tenant's ordered senders, with sticky senders per "
                            "recipient (docs/senders.md)").add_subparsers(dest="action", required=True)
    ps = sp.add_parser("set", help="create or replace a pool")
    ps.add_argument("tenant_id")
    ps.add_argument("name")
    ps.add_argument("--senders", required=True, help="the tenant's senders, in order of preference, e.g. +12015550123,+12015550124")
    ps.add_argument("--geo-match", action="store_true", help="prefer a sender of the recipient's country (US/CA: area code)")
    pl = sp.add_parser("list", help="pools, of one tenant or all")
    pl.add_argument("tenant_id", nargs="?", default=None)
    pr = sp.add_parser("remove", help="delete a pool and its recipients' sticky senders")
    pr.add_argument("tenant_id")
    pr.add_argument("name")

    objects.add_parser("audit", help="the latest audit entries").add_argument("--limit", type=int, default=50)

    gw = objects.add_parser("gateways", help="gateways and routes (configuration: HERALD_GATEWAYS, HERALD_ROUTES)")
    gw.add_subparsers(dest="action", required=True).add_parser(
        "list", help="as configured (no secrets), with each gateway's shared throttle and recent submissions"
    )


def _admin(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from herald_tools import admin
    from shared.contracts.envelope import TENANT_PATTERN
    from shared.geo import country_code, parse_country_list

    actor = args.actor or admin.default_actor()
    obj, action = args.object, getattr(args, "action", None)
    if getattr(args, "tenant_id", None) and not re.match(TENANT_PATTERN, args.tenant_id):
        parser.error(f"tenant id must match {TENANT_PATTERN}")

    def scopes() -> list[str]:
        return list(args.scopes)  # already checked by scopes_arg

    if (obj, action) == ("tenant", "create"):
        key = asyncio.run(_with_db(lambda c: admin.tenant_create(c, actor, args.tenant_id, args.name or args.tenant_id, scopes())))
        _print({"tenant_id": args.tenant_id, "api_key": key})
    elif (obj, action) == ("tenant", "policy"):
        try:
            caps = [] if args.no_caps else ([admin.parse_cap(c) for c in args.cap] if args.cap else None)
        except ValueError as exc:
            parser.error(str(exc))
        geo: dict[str, Any] = {}
        try:
            if args.country is not None:
                geo["country"] = country_code(args.country) if args.country.strip() else None
            if args.allowed_countries is not None:
                geo["allowed_countries"] = (parse_country_list(args.allowed_countries)
                                            if args.allowed_countries.strip() else None)
        except ValueError as exc:
            parser.error(str(exc))
        try:
            if args.link_domain is not None:
                from services.ingest.links import check_domain

                geo["link_domain"] = check_domain(args.link_domain) if args.link_domain.strip() else None
            if args.link_ttl is not None:
                geo["link_ttl_s"] = admin.parse_duration(args.link_ttl) if args.link_ttl.strip() else None
                if geo["link_ttl_s"] is not None and not 60 <= geo["link_ttl_s"] <= admin.LINK_TTL_MAX_S:
                    raise ValueError("a link lifetime is between 1 minute and 3650 days")
            kept = parse_retention_option(args.retention) if args.retention else None
        except ValueError as exc:
            parser.error(str(exc))
        if args.marketing_consent is None and caps is None and not geo and kept is None:
            result = asyncio.run(_with_db(lambda c: admin.tenant_policy(c, args.tenant_id)))
        else:
            try:
                result = asyncio.run(_with_db(lambda c: admin.tenant_policy_set(
                    c, actor, args.tenant_id, marketing_consent=args.marketing_consent, caps=caps, retention=kept,
                    **geo)))
            except ValueError as exc:
                print(str(exc), file=sys.stderr)
                return 1
        if result is None:
            print(f"no tenant {args.tenant_id}", file=sys.stderr)
            return 1
        _print(result)
    elif (obj, action) == ("tenant", "reply-webhook"):
        if args.clear and args.url:
            parser.error("give a URL or --clear, not both")
        try:
            if args.url is None and not args.clear:
                result = asyncio.run(_with_db(lambda c: admin.reply_webhook(c, args.tenant_id)))
            else:
                result = asyncio.run(_with_db(lambda c: admin.reply_webhook_set(c, actor, args.tenant_id, args.url)))
        except ValueError as exc:
            print(str(exc), file=sys.stderr)
            return 1
        if result is None:
            print(f"no tenant {args.tenant_id}", file=sys.stderr)
            return 1
        _print(result)
    elif (obj, action) == ("tenant", "list"):
        _print(asyncio.run(_with_db(admin.tenant_list)))
    elif obj == "tenant":
        if not asyncio.run(_with_db(lambda c: admin.tenant_set_disabled(c, actor, args.tenant_id, action == "disable"))):
            print(f"no tenant {args.tenant_id}", file=sys.stderr)
            return 1
        _print({"tenant_id": args.tenant_id, "disabled": action == "disable"})
    elif (obj, action) == ("key", "create"):
        key = asyncio.run(_with_db(lambda c: admin.key_create(
            c, actor, args.tenant_id, scopes(), args.name, args.requests_per_minute, args.messages_per_minute,
            args.test)))
        _print({"tenant_id": args.tenant_id, "api_key": key, **({"test": True} if args.test else {})})
    elif (obj, action) == ("key", "list"):
        _print(asyncio.run(_with_db(lambda c: admin.key_list(c, args.tenant_id))))
    elif (obj, action) == ("key", "revoke"):
        if not asyncio.run(_with_db(lambda c: admin.key_revoke(c, actor, args.key_id))):
            print(f"no active key {args.key_id}", file=sys.stderr)
            return 1
        _print({"key_id": args.key_id, "revoked": True})
    elif (obj, action) == ("kafka-key", "create"):
        try:
            _print(asyncio.run(_with_db(lambda c: admin.kafka_key_create(c, actor, args.tenant_id, args.name))))
        except LookupError as exc:
            print(str(exc), file=sys.stderr)
            return 1
    elif (obj, action) == ("kafka-key", "list"):
        _print(asyncio.run(_with_db(lambda c: admin.kafka_key_list(c, args.tenant_id))))
    elif (obj, action) == ("kafka-key", "revoke"):
        if not asyncio.run(_with_db(lambda c: admin.kafka_key_revoke(c, actor, args.key_id))):
            print(f"no live Kafka input key {args.key_id}", file=sys.stderr)
            return 1
        _print({"key_id": args.key_id, "revoked": True})
    elif (obj, action) == ("key", "rotate"):
        try:
            key = asyncio.run(_with_db(lambda c: admin.key_rotate(c, actor, args.key_id, int(args.overlap_hours * 3600))))
        except LookupError as exc:
            print(str(exc), file=sys.stderr)
            return 1
        _print({"old_key_id": args.key_id, "old_key_expires_in_hours": args.overlap_hours, "api_key": key})
    elif (obj, action) == ("suppressions", "import"):
        handle = sys.stdin if args.file == "-" else open(args.file, newline="", encoding="utf-8")  # noqa: SIM115
        with handle:
            rows = list(csv.DictReader(handle))
        _print(asyncio.run(_with_db(lambda c: admin.suppressions_import(c, actor, args.tenant_id, rows, args.reason))))
    elif (obj, action) == ("suppressions", "export"):
        sys.stdout.write(asyncio.run(_with_db(lambda c: admin.suppressions_export(c, actor, args.tenant_id))))
    elif (obj, action) == ("numbers", "add"):
        try:
            _print(asyncio.run(_with_db(lambda c: admin.number_add(c, actor, args.tenant_id, args.number, args.scope))))
        except (ValueError, LookupError) as exc:
            print(str(exc), file=sys.stderr)
            return 1
    elif (obj, action) == ("numbers", "list"):
        _print(asyncio.run(_with_db(lambda c: admin.number_list(c, args.tenant_id))))
    elif (obj, action) == ("numbers", "remove"):
        try:
            removed = asyncio.run(_with_db(lambda c: admin.number_remove(c, actor, args.tenant_id, args.number)))
        except ValueError as exc:
            print(str(exc), file=sys.stderr)
            return 1
        if not removed:
            print(f"tenant {args.tenant_id} has no number {args.number}", file=sys.stderr)
            return 1
        _print({"number": args.number, "tenant_id": args.tenant_id, "removed": True})
    elif obj == "link":
        tenant_id = args.tenant
        if tenant_id is not None and not re.match(TENANT_PATTERN, tenant_id):
            parser.error(f"tenant id must match {TENANT_PATTERN}")
        try:
            admin.link_filter(args.target, tenant_id)
        except ValueError as exc:
            parser.error(str(exc))
        try:
            if action == "show":
                _print(asyncio.run(_with_db(lambda c: admin.link_show(c, args.target, tenant_id))))
                return 0
            if action == "takedown":
                result = asyncio.run(_with_db(lambda c: admin.link_takedown(c, actor, args.target, args.reason, tenant_id)))
            else:
                result = asyncio.run(_with_db(lambda c: admin.link_restore(c, actor, args.target, tenant_id)))
        except ValueError as exc:
            print(str(exc), file=sys.stderr)
            return 1
        _print(result)
        if not result.get("taken_down", result.get("restored")):
            print(f"no link to {action.replace('takedown', 'take down')} for {args.target}", file=sys.stderr)
            return 1
    elif obj == "sender":
        return _sender(args, actor)
    elif obj == "sender-pool":
        return _sender_pool(args, actor)
    elif (obj, action) == ("gateways", "list"):
        _print(asyncio.run(_with_db(admin.gateways_view)))
    elif obj == "audit":
        _print(asyncio.run(_with_db(lambda c: admin.audit_entries(c, args.limit))))
    return 0


def _sender(args: argparse.Namespace, actor: str) -> int:
    from herald_tools import admin
    from shared.geo import parse_country_list

    action = args.action
    try:
        if action == "add":
            countries = parse_country_list(args.countries) if args.countries is not None else None
            caps = [c.strip() for c in args.capabilities.split(",") if c.strip()]
            _print(asyncio.run(_with_db(lambda c: admin.sender_add(
                c, actor, args.tenant_id, args.sender, kind=args.kind, countries=countries, capabilities=caps,
                state=args.state, scope=args.scope))))
        elif action == "list":
            _print(asyncio.run(_with_db(lambda c: admin.sender_list(c, args.tenant_id, args.state))))
        elif action in ("verify", "suspend", "unverify"):
            state = {"verify": "verified", "suspend": "suspended", "unverify": "pending"}[action]
            _print(asyncio.run(_with_db(lambda c: admin.sender_set_state(c, actor, args.tenant_id, args.sender, state, args.note))))
        elif action == "update":
            changes: dict[str, Any] = {}
            if args.countries is not None:
                changes["countries"] = parse_country_list(args.countries) if args.countries.strip() else None
            if args.scope is not None:
                changes["scope"] = args.scope if args.scope.strip() else None
            if args.capabilities is not None:
                changes["capabilities"] = [c.strip() for c in args.capabilities.split(",") if c.strip()]
            if args.rate is not None:
                changes["rate_per_s"] = float(args.rate) if args.rate.strip() else None
            if args.burst is not None:
                changes["burst"] = float(args.burst) if args.burst.strip() else None
            _print(asyncio.run(_with_db(lambda c: admin.sender_update(c, actor, args.tenant_id, args.sender,
                                                                      kind=args.kind, **changes))))
        elif action == "register":
            regs: dict[str, dict[str, str | None]] = {}
            if args.ten_dlc_brand is not None or args.ten_dlc_campaign is not None:
                regs["ten_dlc"] = {"brand_id": args.ten_dlc_brand, "campaign_id": args.ten_dlc_campaign}
            if args.toll_free_verification is not None:
                regs["toll_free_verification"] = {"verification_id": args.toll_free_verification}
            if args.dlt_entity is not None:
                regs["dlt"] = {"entity_id": args.dlt_entity}
            _print(asyncio.run(_with_db(lambda c: admin.sender_register(c, actor, args.tenant_id, args.sender, regs))))
        elif action == "remove":
            if not asyncio.run(_with_db(lambda c: admin.sender_remove(c, actor, args.tenant_id, args.sender))):
                print(f"no sender {args.sender}", file=sys.stderr)
                return 1
            _print({"sender": args.sender, "removed": True})
    except (ValueError, LookupError) as exc:
        print(str(exc), file=sys.stderr)
        return 1
    return 0


def _sender_pool(args: argparse.Namespace, actor: str) -> int:
    from herald_tools import admin

    try:
        if args.action == "set":
            senders = [x.strip() for x in args.senders.split(",") if x.strip()]
            _print(asyncio.run(_with_db(lambda c: admin.pool_set(c, actor, args.tenant_id, args.name, senders, args.geo_match))))
        elif args.action == "list":
            _print(asyncio.run(_with_db(lambda c: admin.pool_list(c, args.tenant_id))))
        elif args.action == "remove":
            if not asyncio.run(_with_db(lambda c: admin.pool_remove(c, actor, args.tenant_id, args.name))):
                print(f"no pool {args.name}", file=sys.stderr)
                return 1
            _print({"pool": args.name, "removed": True})
    except (ValueError, LookupError) as exc:
        print(str(exc), file=sys.stderr)
        return 1
    return 0


def _report(args: argparse.Namespace) -> int:
    import uuid

    from services.reports.campaign_report import load
    from services.reports.report_cli import print_report, write_png
    from services.reports.settings import ReportsSettings

    try:
        campaign_id = uuid.UUID(args.campaign_id)
    except ValueError:
        print(f"not a campaign id: {args.campaign_id!r}", file=sys.stderr)
        return 2
    alpha = ReportsSettings().ab_alpha
    report = asyncio.run(_with_db(lambda conn: load(conn, campaign_id, args.tenant, alpha)))
    if report is None:
        print(f"no campaign {campaign_id}" + (f" for tenant {args.tenant}" if args.tenant else ""), file=sys.stderr)
        return 1
    if args.json:
        _print(report)
    else:
        print_report(report)
    if args.png:
        print(f"chart written to {write_png(report, args.png)}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="herald", description="Herald: SMS at scale.")
    sub = parser.add_subparsers(dest="command", required=True)

    m = sub.add_parser("migrate", help="apply database migrations and create missing Kafka topics")
    m.add_argument("--no-topics", action="store_true", help="only the database")

    t = sub.add_parser("tenant", help="shortcut: `herald tenant create ID` = `herald admin tenant create ID`")
    t.add_argument("action", choices=["create"])
    t.add_argument("tenant_id")
    t.add_argument("--name", default=None)

    _admin_parser(sub)

    s = sub.add_parser("segments", help="encoding and segment count of a text, as JSON")
    s.add_argument("text")
    s.add_argument("--no-smart", action="store_true", help="do not replace typographic characters")

    up = sub.add_parser("up", help="start Kafka, PostgreSQL, the services and the simulator, and run the demo")
    up.add_argument("--messages", type=int, default=3000, help="demo messages to send")
    up.add_argument("--no-wait", action="store_true", help="stop everything after the summary")
    up.add_argument("--keep-infra", action="store_true", help="leave Kafka and PostgreSQL running on exit")

    sub.add_parser("down", help="stop a stack left running, and Kafka and PostgreSQL")

    sub.add_parser("bench", help="measure throughput, latency and memory; writes docs/benchmarks.md", add_help=False)

    rp = sub.add_parser("report", help="a campaign's results per variant, with a chart (docs/results.md)")
    rp.add_argument("campaign_id")
    rp.add_argument("--tenant", default=None, help="only if the campaign belongs to this tenant")
    rp.add_argument("--png", default=None, metavar="FILE", help="also write the chart as a PNG (needs herald[charts])")
    rp.add_argument("--json", action="store_true", help="print the report as JSON instead")

    raw = sys.argv[1:] if argv is None else argv
    if raw[:1] == ["bench"]:
        from herald_tools.bench import main as bench

        return bench(raw[1:])
    args = parser.parse_args(argv)
    if args.command == "migrate":
        _print(asyncio.run(_migrate(not args.no_topics)))
    elif args.command == "tenant":
        from shared.auth import DEFAULT_SCOPES

        ns = argparse.Namespace(actor=None, object="tenant", action="create", tenant_id=args.tenant_id,
                                name=args.name, scopes=DEFAULT_SCOPES)
        return _admin(ns, parser)
    elif args.command == "admin":
        return _admin(args, parser)
    elif args.command == "segments":
        from shared.sms.encoding import analyse

        _print(analyse(args.text, smart=not args.no_smart).as_dict())
    elif args.command == "up":
        from herald_tools.demo import run_demo

        return run_demo(args.messages, wait=not args.no_wait, keep_infra=args.keep_infra)
    elif args.command == "report":
        return _report(args)
    elif args.command == "down":
        from herald_tools.demo import down

        return down()
    return 0


if __name__ == "__main__":
    sys.exit(main())

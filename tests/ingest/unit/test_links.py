"""Link tracking: URL finding, random codes, segments counted on the rewritten body, and when a
stored link may redirect."""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from herald_tools.admin import parse_duration
from services.ingest.domain import accept, request_hash
from services.ingest.links import (
    CODE_ALPHABET,
    CODE_LENGTH,
    CODE_PATTERN,
    EXPIRED,
    NOT_ACTIVE,
    TAKEN_DOWN,
    WRONG_DOMAIN,
    activations,
    check_domain,
    find_urls,
    new_code,
    records,
    refusal,
    rewrite,
    same_host,
    swap_codes,
    track_message,
)
from shared.contracts import MessageRequest
from shared.phones import SMS_CAPABLE
from shared.sms.encoding import analyse
from shared.statuses import MessageType, Status

MID = uuid.UUID("5b6a0c1e-2f44-4d55-8a9b-0c1d2e3f4a5b")
DOMAIN = "go.example.test"


def test_urls_are_found_with_sentence_punctuation_left_out() -> None:
    body = "Sale! See https://shop.example.com/sale?x=1&y=2. Or (www.example.org/a_(b)), http://x.io/p!"
    assert [u for _, _, u in find_urls(body)] == [
        "https://shop.example.com/sale?x=1&y=2", "www.example.org/a_(b)", "http://x.io/p",
    ]


def test_rewrite_replaces_each_url_with_a_short_link() -> None:
    body = "Hi! 20% off at https://shop.example.com/spring-sale?utm=sms today, or www.example.org/stores."
    new, links = rewrite(body, DOMAIN)
    assert [link.index for link in links] == [0, 1]
    assert [link.url for link in links] == ["https://shop.example.com/spring-sale?utm=sms", "https://www.example.org/stores"]
    assert new == f"Hi! 20% off at https://{DOMAIN}/{links[0].code} today, or https://{DOMAIN}/{links[1].code}."
    assert all(CODE_PATTERN.match(link.code) and len(link.code) == CODE_LENGTH for link in links)


def old_derived_code(message_id: uuid.UUID, index: int) -> str:
    """How codes were made before: a hash of (message id, index), which the tenant knows."""
    digest = int.from_bytes(hashlib.sha256(message_id.bytes + index.to_bytes(2, "big")).digest()[:12], "big")
    chars = []
    for _ in range(CODE_LENGTH):
        digest, rest = divmod(digest, 62)
        chars.append(CODE_ALPHABET[rest])
    return "".join(chars)


def test_codes_are_random_not_derived_from_the_message() -> None:
    body = "https://a.example/x https://b.example/y"
    first, again = rewrite(body, DOMAIN), rewrite(body, DOMAIN)
    assert first[0] != again[0]  # drawn anew; the stored codes win on a retry (links_repo.store_many)
    message = track_message(_accepted(body), DOMAIN, smart=True)[1]
    assert [link.code for link in message] != [old_derived_code(MID, 0), old_derived_code(MID, 1)]
    codes = {new_code() for _ in range(20_000)}
    assert len(codes) == 20_000 and all(CODE_PATTERN.match(c) for c in codes)
    assert set("".join(codes)) == set(CODE_ALPHABET)  # every character used: base62, ≈ 59.5 bits a code
    given = rewrite(body, DOMAIN, codes=["AAAAAAAAAA", "BBBBBBBBBB"])
    assert given[0] == f"https://{DOMAIN}/AAAAAAAAAA https://{DOMAIN}/BBBBBBBBBB"


def test_stored_codes_are_swapped_in_without_changing_the_segments() -> None:
    tracked, links = track_message(_accepted("Hi https://a.example/x and https://b.example/y"), DOMAIN, smart=True)
    swapped = swap_codes(tracked, DOMAIN, {links[1].code: "StoredCode"})
    assert swapped.body == f"Hi https://{DOMAIN}/{links[0].code} and https://{DOMAIN}/StoredCode"
    assert (swapped.segments, swapped.encoding) == (tracked.segments, tracked.encoding)
    assert swap_codes(tracked, DOMAIN, {}) is tracked


def _accepted(body: str, type_: str = "marketing"):
    request = MessageRequest(to="+34600123456", body=body, type=type_)
    return accept(request, message_id=MID, now=datetime(2026, 5, 1, tzinfo=UTC), source="api",
                  allowed_types=SMS_CAPABLE, smart_encoding=True)


def test_segments_are_counted_on_the_rewritten_body() -> None:
    long_url = "https://shop.example.com/" + "a" * 150
    message = _accepted(f"Spring sale, 20% off everything: {long_url}")
    assert message.segments == 2  # the long URL made it two segments
    tracked, links = track_message(message, DOMAIN, smart=True)
    assert len(links) == 1 and links[0].url == long_url
    assert tracked.body == f"Spring sale, 20% off everything: https://{DOMAIN}/{links[0].code}"
    assert tracked.segments == 1 == analyse(tracked.body).segments
    assert (tracked.message_id, tracked.to, tracked.type) == (message.message_id, message.to, message.type)


def test_a_short_body_can_grow_a_segment_and_ucs2_stays_ucs2() -> None:
    body = "x" * 150 + " https://a.io"  # 163 chars → 2 segments; the short link is longer
    tracked, _ = track_message(_accepted(body), DOMAIN, smart=True)
    assert tracked.segments == analyse(tracked.body).segments == 2
    tracked, _ = track_message(_accepted("Oferta 😀 https://a.example/x"), DOMAIN, smart=True)
    assert tracked.encoding == "UCS-2" and tracked.segments == 1


def test_records_carry_the_message_context() -> None:
    message = _accepted("Go https://a.example/x").model_copy(
        update={"campaign_id": uuid.uuid4(), "variant": "B", "contact_id": uuid.uuid4()}
    )
    tracked, links = track_message(message, DOMAIN, smart=True)
    (row,) = records("acme", tracked, links)
    assert (row.tenant_id, row.message_id, row.index, row.variant) == ("acme", MID, 0, "B")
    assert row.campaign_id == message.campaign_id and row.contact_id == message.contact_id
    assert row.created_at == message.accepted_at
    assert (row.expires_at, row.domain) == (message.accepted_at + timedelta(days=90), None)  # the defaults
    (row,) = records("acme", tracked, links, ttl=timedelta(days=7), domain="go.acme.example")
    assert (row.expires_at, row.domain) == (message.accepted_at + timedelta(days=7), "go.acme.example")


def test_track_links_false_only_changes_the_hash_when_set() -> None:
    base = MessageRequest(to="+34600123456", body="hi", type="marketing")
    assert request_hash(base) == request_hash(MessageRequest(to="+34600123456", body="hi", type="marketing",
                                                             track_links=None))
    assert request_hash(base) != request_hash(base.model_copy(update={"track_links": False}))


NOW = datetime(2026, 5, 1, 12, tzinfo=UTC)


def _refusal(**changes):
    facts = {"activated_at": NOW - timedelta(hours=1), "expires_at": NOW + timedelta(days=1), "domain": None,
             "taken_down_at": None, "host": "links.herald.example", "now": NOW, **changes}
    return refusal(**facts)


def test_a_link_redirects_only_when_active_unexpired_not_taken_down_and_on_its_domain() -> None:
    assert _refusal() is None
    assert _refusal(host=None) is None  # a shared-domain link answers on any host
    assert _refusal(activated_at=None) == NOT_ACTIVE  # its message was not submitted
    assert _refusal(expires_at=NOW) == EXPIRED
    assert _refusal(taken_down_at=NOW - timedelta(seconds=1)) == TAKEN_DOWN
    assert _refusal(taken_down_at=NOW, activated_at=None) == TAKEN_DOWN
    assert _refusal(domain="go.acme.example", host="go.acme.example") is None
    assert _refusal(domain="go.acme.example", host="GO.ACME.EXAMPLE:443") is None
    assert _refusal(domain="go.acme.example") == WRONG_DOMAIN
    assert _refusal(domain="go.acme.example", host=None) == WRONG_DOMAIN
    # a wrong host says nothing more, whatever the link's state
    assert _refusal(domain="go.acme.example", host="x.example", taken_down_at=NOW, activated_at=None) == WRONG_DOMAIN


def test_hosts_are_compared_without_a_port_unless_the_domain_names_one() -> None:
    assert same_host("go.acme.example/l", "go.acme.example:8443")
    assert same_host("go.acme.example", "go.acme.example.")
    assert not same_host("go.acme.example", "evil-go.acme.example")
    assert same_host("go.acme.example:8443", "go.acme.example:8443")
    assert not same_host("go.acme.example:8443", "go.acme.example")
    assert not same_host("go.acme.example", "")


def test_only_submitted_marketing_messages_on_a_real_gateway_activate_their_links() -> None:
    a, b, c, d, e, f = (uuid.uuid4() for _ in range(6))
    t = NOW
    batch = [
        (a, Status.SUBMITTED, "sim", MessageType.MARKETING, t + timedelta(seconds=2)),
        (a, Status.SUBMITTED, "sim", MessageType.MARKETING, t),  # redelivered, earlier: the earliest wins
        (b, Status.UNKNOWN, "smsc", None, t),  # the SMS may be out
        (c, Status.SUPPRESSED, None, MessageType.MARKETING, t),
        (d, Status.SCHEDULED, None, MessageType.MARKETING, t),
        (e, Status.SUBMITTED, "sandbox", MessageType.MARKETING, t),  # a test key's: nothing was sent
        (f, Status.SUBMITTED, "sim", MessageType.TRANSACTIONAL, t),  # never has links
        (c, Status.FAILED, "sim", MessageType.MARKETING, t),
    ]
    assert activations(batch) == {a: t, b: t}
    assert activations([]) == {}


def test_link_domains_and_durations_are_checked() -> None:
    assert check_domain(" go.acme.example/ ") == "go.acme.example"
    assert check_domain("go.acme.example:8443/l") == "go.acme.example:8443/l"
    for bad in ("https://go.acme.example", "go acme", "", "go.acme.example/a b"):
        with pytest.raises(ValueError):
            check_domain(bad)
    assert (parse_duration("90d"), parse_duration("12h"), parse_duration(" 30m ")) == (90 * 86400, 43200, 1800)
    with pytest.raises(ValueError):
        parse_duration("1w")


def test_a_resumed_campaign_page_publishes_the_stored_codes() -> None:
    from services.ingest.campaigns.launcher import Launcher
    from services.ingest.service import accepted_event

    tracked, links = track_message(_accepted("Hi https://a.example/x"), DOMAIN, smart=True)
    outgoing = accepted_event("acme", tracked, "trace")
    swapped = Launcher._swap(outgoing, DOMAIN, {links[0].code: "StoredCode"})
    assert swapped.event.payload.body == f"Hi https://{DOMAIN}/StoredCode"
    assert (swapped.topic, swapped.key, swapped.event.event_id) == (outgoing.topic, outgoing.key, outgoing.event.event_id)
    assert Launcher._swap(outgoing, DOMAIN, {"OtherCode0": "StoredCode"}) is outgoing


class _Rows:
    """Stands in for the links table: the row of one code, changed by the test."""

    def __init__(self, row: dict) -> None:
        self.row = row
        self.reads = 0

    async def resolve(self, code: str):
        self.reads += 1
        return dict(self.row)


async def test_the_cache_looks_again_soon_at_a_link_not_active_yet_and_later_at_an_active_one(monkeypatch) -> None:
    from services.ingest import redirect

    clock = [1000.0]
    monkeypatch.setattr(redirect.time, "monotonic", lambda: clock[0])
    row = {"code": "AbCdEfGhIj", "tenant_id": "acme", "message_id": MID, "link_index": 0, "url": "https://a.example/x",
           "contact_id": None, "campaign_id": None, "variant": None, "journey_id": None, "created_at": NOW,
           "activated_at": None, "expires_at": NOW + timedelta(days=90), "domain": None, "taken_down_at": None}
    rows = _Rows(row)
    cache = redirect.LinkCache(rows, size=10, ttl_s=30.0)  # type: ignore[arg-type]
    assert (await cache.get("AbCdEfGhIj")).activated_at is None
    await cache.get("AbCdEfGhIj")
    assert rows.reads == 1  # within the second
    rows.row["activated_at"] = NOW  # its message was submitted
    clock[0] += redirect.INACTIVE_TTL_S + 0.01
    assert (await cache.get("AbCdEfGhIj")).activated_at == NOW and rows.reads == 2
    rows.row["taken_down_at"] = NOW
    clock[0] += 29
    assert (await cache.get("AbCdEfGhIj")).taken_down_at is None and rows.reads == 2  # cached while active
    cache.drop("AbCdEfGhIj")  # what the takedown watcher does
    assert (await cache.get("AbCdEfGhIj")).taken_down_at == NOW and rows.reads == 3

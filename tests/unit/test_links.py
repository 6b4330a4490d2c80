"""Link tracking: URL finding, deterministic codes, and segments counted on the rewritten body."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from services.ingest.domain import accept, request_hash
from services.ingest.links import CODE_LENGTH, CODE_PATTERN, find_urls, link_code, records, rewrite, track_message
from shared.contracts import MessageRequest
from shared.phones import SMS_CAPABLE
from shared.sms.encoding import analyse

MID = uuid.UUID("5b6a0c1e-2f44-4d55-8a9b-0c1d2e3f4a5b")
DOMAIN = "go.example.test"


def test_urls_are_found_with_sentence_punctuation_left_out() -> None:
    body = "Sale! See https://shop.example.com/sale?x=1&y=2. Or (www.example.org/a_(b)), http://x.io/p!"
    assert [u for _, _, u in find_urls(body)] == [
        "https://shop.example.com/sale?x=1&y=2", "www.example.org/a_(b)", "http://x.io/p",
    ]


def test_rewrite_replaces_each_url_with_a_short_link() -> None:
    body = "Hi! 20% off at https://shop.example.com/spring-sale?utm=sms today, or www.example.org/stores."
    new, links = rewrite(body, MID, DOMAIN)
    assert [link.index for link in links] == [0, 1]
    assert [link.url for link in links] == ["https://shop.example.com/spring-sale?utm=sms", "https://www.example.org/stores"]
    assert new == f"Hi! 20% off at https://{DOMAIN}/{links[0].code} today, or https://{DOMAIN}/{links[1].code}."
    assert all(CODE_PATTERN.match(link.code) and len(link.code) == CODE_LENGTH for link in links)


def test_codes_are_deterministic_per_message_and_index() -> None:
    first, again = rewrite("https://a.example/x https://b.example/y", MID, DOMAIN), rewrite(
        "https://a.example/x https://b.example/y", MID, DOMAIN
    )
    assert first == again
    assert link_code(MID, 0) != link_code(MID, 1)
    assert link_code(MID, 0) != link_code(uuid.uuid4(), 0)
    assert len({link_code(uuid.uuid4(), 0) for _ in range(20_000)}) == 20_000


def test_no_url_no_change_and_own_links_are_left_alone() -> None:
    assert rewrite("No links here, see you at 10.30!", MID, DOMAIN) == ("No links here, see you at 10.30!", [])
    own = f"Already short: https://{DOMAIN}/AbCdEfGhIj"
    assert rewrite(own, MID, DOMAIN) == (own, [])


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


def test_track_links_false_only_changes_the_hash_when_set() -> None:
    base = MessageRequest(to="+34600123456", body="hi", type="marketing")
    assert request_hash(base) == request_hash(MessageRequest(to="+34600123456", body="hi", type="marketing",
                                                             track_links=None))
    assert request_hash(base) != request_hash(base.model_copy(update={"track_links": False}))

"""Sending by template, the pure parts: the request's shape, the language and text a send is
rendered with, the refusals, and that the batch's templates and contacts are one look-up each."""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from services.ingest.domain import Rejection, parse_request, request_hash
from services.ingest.service import Accepted, Acceptor
from services.ingest.settings import IngestSettings
from services.ingest.template_sends import StoredTemplate, render_send, send_language
from shared.contracts import MessageAccepted, MessageRequest
from shared.phones import SMS_CAPABLE
from shared.statuses import MessageType
from shared.templates import Template, required_values, validate

TID = uuid.UUID(int=7)
SMS = SMS_CAPABLE
PROMO = Template("marketing", "en", {"en": "Hi {{first_name|there}}, code {{values.code}}",
                                     "es": "Hola {{first_name|}}, código {{values.code}} {{values.extra|}}"})
OTP = Template("transactional", "en", {"en": "Your code is {{values.code}}"}, sender="Acme")


def stored(template: Template | None = PROMO, *, archived: bool = False, version: int | None = 3) -> StoredTemplate:
    return StoredTemplate(TID, 3, archived, version, template)


def req(**fields: Any) -> MessageRequest:
    return MessageRequest.model_validate({"to": "+34600123456", "template_id": str(TID), **fields})


def rejected(call: Any) -> Rejection:
    with pytest.raises(Rejection) as exc:
        call()
    return exc.value


def test_a_message_has_a_body_or_a_template_not_both_nor_neither() -> None:
    for bad in ({"to": "+34600123456"}, {"to": "+34600123456", "body": "x", "template_id": str(TID)},
                {"to": "+34600123456", "body": "x", "values": {"a": "b"}},
                {"to": "+34600123456", "body": "x", "template_version": 2}):
        with pytest.raises(ValidationError) as exc:
            MessageRequest.model_validate(bad)
        assert exc.value.errors()[0]["type"] == "template_or_body"
        assert rejected(lambda bad=bad: parse_request(bad)).code == "template_or_body"
    assert MessageRequest(to="+34600123456", body="hi").template_id is None
    for bad_values in ({"bad key": "x"}, {"k": "x" * 201}, {f"k{i}": 1 for i in range(51)}, {"k": [1]}):
        assert rejected(lambda v=bad_values: parse_request({"to": "+1", "template_id": str(TID), "values": v})).code == (
            "validation_failed")


def test_raw_requests_keep_the_fingerprint_they_had_before_templates_and_secret() -> None:
    r = MessageRequest(to="+34600123456", body="hello", type="marketing", idempotency_key="k1")
    old = {k: v for k, v in r.model_dump(mode="json").items()
           if k not in ("idempotency_key", "track_links", "template_id", "template_version", "values", "secret",
                        "sender_pool")}
    assert request_hash(r) == hashlib.sha256(json.dumps(old, sort_keys=True).encode()).hexdigest()
    assert request_hash(req(values={"code": "1"})) != request_hash(req(values={"code": "2"}))


def test_templates_may_read_per_send_values_and_still_refuse_unknown_fields() -> None:
    assert validate(PROMO) == []
    (problem,) = validate(Template("marketing", "en", {"en": "Hi {{code}}"}))
    assert problem.code == "unknown_field" and "values.<key>" in str(problem)
    assert required_values("{{values.a}} {{values.b|x}} {{values.a}} {{attributes.c}} {{values.c}}") == ["a", "c"]


def test_the_contacts_language_then_the_numbers_countrys_then_the_default() -> None:
    assert send_language({"language": "es"}, "DE") == "es"
    assert send_language({"language": None}, "MX") == "es"
    assert send_language(None, "US") is None
    spanish_contact = render_send(req(values={"code": "77"}), stored(), {"language": "es", "first_name": "Ana"},
                                  allowed_types=SMS)
    assert spanish_contact.request.body == "Hola Ana, código 77\nResponde BAJA para darte de baja"
    assert spanish_contact.request.type is MessageType.MARKETING  # the template's purpose
    assert (spanish_contact.template_id, spanish_contact.version) == (TID, 3)
    spanish_number = render_send(req(values={"code": "77"}), stored(), None, allowed_types=SMS)
    assert spanish_number.request.body.startswith("Hola , código 77")
    us_number = render_send(req(to="+12025550123", values={"code": 77}), stored(), None, allowed_types=SMS)
    assert us_number.request.body == "Hi there, code 77\nReply STOP to opt out"
    otp = render_send(req(values={"code": "123456"}), stored(OTP), {"language": "es"}, allowed_types=SMS)
    assert (otp.request.body, otp.request.sender, otp.request.type) == ("Your code is 123456", "Acme",
                                                                         MessageType.TRANSACTIONAL)
    assert render_send(req(values={"code": "1"}, sender="Other"), stored(OTP), None, allowed_types=SMS).request.sender == "Other"


def test_what_a_send_by_template_is_refused_for() -> None:
    def code(request: MessageRequest, s: StoredTemplate | None, contact: dict | None = None) -> tuple[str, list[str]]:
        r = rejected(lambda: render_send(request, s, contact, allowed_types=SMS))
        return r.code, [d["loc"] for d in r.details]

    assert code(req(values={"code": "1"}), None) == ("template_not_found", ["template_id"])
    assert code(req(values={"code": "1"}), stored(archived=True)) == ("template_archived", ["template_id"])
    assert code(req(values={"code": "1"}, template_version=9), stored(None, version=None)) == (
        "template_version_not_found", ["template_version"])
    assert code(req(), stored(), {"language": "es"}) == ("template_variable_missing", ["values.code"])
    assert code(req(values={"code": "1"}, type="transactional"), stored()) == ("template_type_mismatch", ["type"])
    assert code(req(values={"code": "1"}, to="+3412"), stored())[0] in ("impossible_number", "invalid_number")
    long = Template("transactional", "en", {"en": "{{values.a}}" * 9})
    assert code(req(values={"a": "x" * 200}), stored(long)) == ("rendered_too_long", ["template_id"])
    # an explicit type equal to the template's purpose is fine
    assert render_send(req(values={"code": "1"}, type="marketing"), stored(), None, allowed_types=SMS)


class CountingRepository:
    """Stands in for ingest's repository in this unit test: counts the look-ups a batch makes."""

    def __init__(self) -> None:
        self.calls: dict[str, int] = {}

    def _count(self, name: str) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1

    async def templates_for_send(self, tenant: str, keys: list) -> dict:
        self._count("templates")
        return {k: stored() for k in keys if k[0] == TID}

    async def contacts_for_send(self, tenant: str, phones: list[str]) -> dict:
        self._count("contacts")
        return {p: {"language": "en", "first_name": "Jo"} for p in phones if p.endswith("0")}

    async def marketing_context(self, tenant: str, phones: list[str]) -> tuple[str, dict, tuple[None, None]]:
        self._count("marketing")
        return "append", {}, (None, None)  # no link domain or lifetime of its own

    async def reserve_keys(self, tenant: str, entries: list) -> dict:
        raise AssertionError("no keys in this batch")


async def test_a_batch_loads_its_templates_and_contacts_once_each() -> None:
    repository = CountingRepository()
    acceptor = Acceptor(repository, IngestSettings(link_tracking=False))  # type: ignore[arg-type]
    batch: list[MessageRequest | Rejection] = [
        req(to=f"+3460012{i:04d}", values={"code": str(i)}) for i in range(300)
    ]
    batch.append(req(template_id=str(uuid.UUID(int=8)), values={"code": "x"}))
    batch.append(MessageRequest(to="+34600999999", body="Rebajas", type="marketing"))
    results, outgoing = await acceptor.prepare("t", batch, source="api", now=datetime.now(UTC), trace_id="x")
    assert repository.calls == {"templates": 1, "contacts": 1, "marketing": 1}
    assert isinstance(results[-2], Rejection) and results[-2].code == "template_not_found"
    first, tenth = results[0], results[10]
    assert isinstance(first, Accepted) and isinstance(tenth, Accepted)
    assert first.message.body == "Hi Jo, code 0\nReply STOP to opt out"  # a contact (ends in 0), in English
    assert results[1].message.body.startswith("Hola , código 1")  # type: ignore[union-attr]
    assert (first.message.template_id, first.message.template_version) == (TID, 3)
    raw = results[-1]
    assert isinstance(raw, Accepted) and raw.message.template_id is None
    assert raw.message.body == "Rebajas\nResponde BAJA para darte de baja"
    assert len(outgoing) == 301
    # the event carries the template; a raw message's event is as before (no template keys)
    event = json.loads(outgoing[0].event.model_dump_json())
    assert event["payload"]["template_id"] == str(TID) and event["payload"]["template_version"] == 3
    assert "template_id" not in json.loads(outgoing[-1].event.model_dump_json())["payload"]
    assert MessageAccepted.model_validate(event["payload"]).template_version == 3

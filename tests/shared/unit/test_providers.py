"""The provider modules (shared/providers): status maps, callback and receipt parsers on recorded
payloads, signatures, and what the adapters send."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qsl

import pytest

from services.dispatcher.gateways.smpp_codec import MESSAGE_STATE, STAT
from services.simulator.core import Outcome, Submission
from shared.contracts import MessageOutbound
from shared.providers import herald_http, twilio, webhook
from shared.providers.base import PayloadError
from shared.signatures import SignatureError, verify
from shared.statuses import RECEIPT_TO_STATUS, ReceiptStatus, Status, is_final

NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)


def outbound(**fields: object) -> MessageOutbound:
    base: dict[str, object] = {
        "message_id": uuid.UUID("6f1c2d3e-0000-4000-8000-000000000001"), "to": "+34600000001", "source": "api",
        "country": "ES", "body": "Your code is 123456", "type": "transactional", "encoding": "GSM-7", "segments": 1,
        "accepted_at": NOW, "released_at": NOW,
    }
    return MessageOutbound.model_validate({**base, **fields})


# --- status maps: every provider status the modules know is a Herald receipt status -----------


# Twilio's documented outbound MessageStatus values (Message resource, "Message Status values").
TWILIO_OUTBOUND = ["queued", "sending", "sent", "failed", "delivered", "undelivered", "accepted", "scheduled",
                   "read", "canceled"]


@pytest.mark.parametrize(
    ("name", "mapping"),
    [("twilio", twilio.STATUS_MAP), ("herald-http", herald_http.RECEIPT_STATUS), ("smpp stat", STAT),
     ("smpp message_state", MESSAGE_STATE)],
)
def test_every_status_map_lands_on_a_receipt_status_that_herald_handles(name: str, mapping: dict) -> None:
    assert mapping, name
    for raw, status in mapping.items():
        assert isinstance(status, ReceiptStatus), (name, raw)
        assert status in RECEIPT_TO_STATUS, (name, raw)


def test_twilio_status_map_is_total_over_the_documented_statuses() -> None:
    assert set(twilio.STATUS_MAP) == set(TWILIO_OUTBOUND)
    final = {raw: RECEIPT_TO_STATUS[s] for raw, s in twilio.STATUS_MAP.items() if RECEIPT_TO_STATUS[s] is not None}
    assert final == {"delivered": Status.DELIVERED, "read": Status.DELIVERED, "undelivered": Status.UNDELIVERED,
                     "failed": Status.FAILED, "canceled": Status.FAILED}
    assert all(is_final(s) for s in final.values())
    assert twilio.receipt_status("DELIVERED") is ReceiptStatus.DELIVERED
    assert twilio.receipt_status("partially_delivered") is ReceiptStatus.UNKNOWN  # new to Herald: informational


def test_herald_http_knows_every_receipt_status_in_any_case() -> None:
    assert set(herald_http.RECEIPT_STATUS.values()) == set(ReceiptStatus)
    good, bad = herald_http.parse_receipts("sim", [{"id": f"g{i}", "status": s.value.upper()} for i, s in enumerate(ReceiptStatus)])
    assert bad == [] and [r.status for r in good] == list(ReceiptStatus)


def test_every_status_the_simulator_reports_is_known() -> None:
    for outcome in Outcome:
        assert outcome.value in herald_http.RECEIPT_STATUS
        assert twilio.receipt_status(outcome.value) is not ReceiptStatus.UNKNOWN
    assert twilio.receipt_status("sent") is ReceiptStatus.ENROUTE


# --- Twilio: recorded callbacks --------------------------------------------------------------

SID = "SM" + "3f" * 16
ACCOUNT = "AC" + "0a" * 16
# A status callback as Twilio posts it (form-encoded; the fields of Twilio's status callback docs).
RECORDED_STATUS_CALLBACK = (
    f"SmsSid={SID}&SmsStatus=undelivered&MessageStatus=undelivered&To=%2B34600000001"
    f"&MessagingServiceSid=MG{'1b' * 16}&MessageSid={SID}&AccountSid={ACCOUNT}&From=%2B15005550006"
    "&ApiVersion=2010-04-01&ErrorCode=30003&RawDlrDoneDate=2512051201"
)
RECORDED_INBOUND = (
    f"ToCountry=US&ToState=CA&SmsMessageSid={SID}&NumMedia=0&ToCity=&FromZip=&SmsSid={SID}&FromState="
    f"&SmsStatus=received&FromCity=&Body=Stop%21&FromCountry=ES&To=%2B15005550006&ToZip=&NumSegments=1"
    f"&MessageSid={SID}&AccountSid={ACCOUNT}&From=%2B34600000001&ApiVersion=2010-04-01"
)


def test_twilio_status_callback_parses_into_a_receipt() -> None:
    form = dict(parse_qsl(RECORDED_STATUS_CALLBACK, keep_blank_values=True))
    receipt = twilio.receipt_from("tw", form, "6f1c2d3e-0000-4000-8000-000000000001")
    assert (receipt.gateway, receipt.gateway_message_id, receipt.status, receipt.raw_status, receipt.error_code) == (
        "tw", SID, ReceiptStatus.UNDELIVERED, "undelivered", "30003")
    assert receipt.done_at == datetime(2025, 12, 5, 12, 1, tzinfo=UTC)
    assert receipt.client_ref == "6f1c2d3e-0000-4000-8000-000000000001"
    # The legacy Sms* names alone are enough; an intermediate status carries no done_at.
    legacy = twilio.receipt_from("tw", {"SmsSid": SID, "SmsStatus": "sent", "RawDlrDoneDate": "2512051201"}, None)
    assert (legacy.status, legacy.done_at, legacy.client_ref) == (ReceiptStatus.ENROUTE, None, None)


def test_twilio_incomplete_callbacks_are_payload_errors() -> None:
    with pytest.raises(PayloadError) as info:
        twilio.receipt_from("tw", {"MessageStatus": "sent"}, None)
    assert info.value.as_dict() == {"code": "validation_failed", "message": "missing Twilio parameter(s): MessageSid",
                                    "details": [{"loc": "form.MessageSid", "code": "missing", "msg": "field required"}]}
    with pytest.raises(PayloadError) as info:
        twilio.inbound_from("tw", {"MessageSid": SID, "From": "+34600000001", "To": "+15005550006"})
    assert [d["loc"] for d in info.value.details] == ["form.Body"]


def test_twilio_inbound_parses_and_an_empty_body_is_allowed() -> None:
    message = twilio.inbound_from("tw", dict(parse_qsl(RECORDED_INBOUND, keep_blank_values=True)))
    assert (message.gateway, message.gateway_message_id, message.sender, message.recipient, message.body) == (
        "tw", SID, "+34600000001", "+15005550006", "Stop!")
    assert twilio.inbound_from("tw", {"MessageSid": SID, "From": "+34600000001", "To": "+15005550006", "Body": ""}).body == ""


@pytest.mark.parametrize("value", ["2512051201", "251205120130"])
def test_twilio_raw_dlr_done_date(value: str) -> None:
    assert twilio.raw_dlr_done(value) == datetime(2025, 12, 5, 12, 1, int(value[10:] or 0), tzinfo=UTC)


@pytest.mark.parametrize("value", [None, "", "25120512", "2513051201", "25120512011x", "abcdefghij"])
def test_twilio_raw_dlr_done_date_unreadable(value: str | None) -> None:
    assert twilio.raw_dlr_done(value) is None


@pytest.mark.parametrize(
    "url",
    ["https://herald.example.com/v1/callbacks/twilio/tw/status", "https://h.example/cb?x=1&y=a%20b",
     "https://h.example/cb?x=1#frag", "http://h.example:8080/cb?ref=old"],
)
def test_twilio_callback_ref_round_trips(url: str) -> None:
    ref = str(uuid.uuid4())
    with_ref = twilio.with_ref(url, ref)
    query = with_ref.split("?", 1)[1].split("#", 1)[0]
    assert twilio.callback_ref(query) == (ref if "ref=old" not in url else "old")  # the first ref wins
    original = url.split("?", 1)[1].split("#", 1)[0] if "?" in url else ""
    assert parse_qsl(query) == [*parse_qsl(original), ("ref", ref)]  # the URL's own query is kept
    assert with_ref.startswith(url.split("?")[0].split("#")[0])
    assert with_ref.endswith("#frag") == url.endswith("#frag")


def test_twilio_signature_documented_vector_and_a_signed_callback() -> None:
    # Twilio's documented example (webhook security docs; twilio-python's RequestValidator tests).
    params = [("CallSid", "CA1234567890ABCDE"), ("Caller", "+14158675309"), ("Digits", "1234"),
              ("From", "+14158675309"), ("To", "+18005551212")]
    url = "https://mycompany.com/myapp.php?foo=1&bar=2"
    assert twilio.compute_signature("12345", url, params) == "RSOYDt4T1cUTdK1PDd93/VVr8B8="
    # The recorded callback, signed for its URL: matches, and no longer once a value changes.
    callback = parse_qsl(RECORDED_STATUS_CALLBACK, keep_blank_values=True)
    url = twilio.with_ref("https://herald.example.com/v1/callbacks/twilio/tw/status", "m-1")
    signature = twilio.compute_signature("tok", url, callback)
    assert twilio.signature_matches("tok", url, callback, signature)
    assert twilio.signature_matches("tok", url.replace(".com/", ".com:443/"), callback, signature)
    changed = [(k, "delivered" if k == "MessageStatus" else v) for k, v in callback]
    assert not twilio.signature_matches("tok", url, changed, signature)
    assert not twilio.signature_matches("other", url, callback, signature)


def test_twilio_message_form() -> None:
    m = outbound()
    form = twilio.message_form(m, from_number="+15005550006", messaging_service_sid=None,
                               status_callback_url="https://h.example/cb", validity_s=None)
    assert form == {"To": "+34600000001", "Body": "Your code is 123456", "From": "+15005550006",
                    "StatusCallback": f"https://h.example/cb?ref={m.message_id}"}
    form = twilio.message_form(outbound(sender="Herald"), from_number="+15005550006",
                               messaging_service_sid="MG" + "1b" * 16, status_callback_url=None, validity_s=200)
    assert form == {"To": "+34600000001", "Body": "Your code is 123456", "From": "Herald",
                    "MessagingServiceSid": "MG" + "1b" * 16, "ValidityPeriod": "200"}
    assert "From" not in twilio.message_form(m, from_number=None, messaging_service_sid="MG" + "1b" * 16,
                                             status_callback_url=None, validity_s=None)
    assert twilio.messages_path(ACCOUNT) == f"/2010-04-01/Accounts/{ACCOUNT}/Messages.json"


def test_twilio_errors_and_list_matching() -> None:
    body = {"code": 21211, "message": "The 'To' number is not a valid phone number.", "more_info": "", "status": 400}
    assert twilio.error_of(400, body, "Bad Request") == ("21211", "The 'To' number is not a valid phone number.")
    assert twilio.error_of(400, {"code": 20429, "message": ""}, "Too Many Requests") == ("20429", "Too Many Requests")
    assert twilio.error_of(502, None, "Bad Gateway") == ("http_502", "Bad Gateway")
    assert 20429 in twilio.RETRIABLE_CODES
    since = NOW - timedelta(minutes=2)
    item = {"sid": SID, "to": "+34600000001", "body": "hi", "direction": "outbound-api",
            "date_created": "Sat, 05 Dec 2026 12:00:00 +0000"}
    assert twilio.listed_match(item, "+34600000001", "hi", since)
    assert twilio.listed_match({**item, "date_created": None}, "+34600000001", "hi", since)
    assert not twilio.listed_match({**item, "date_created": "Sat, 05 Dec 2026 11:00:00 +0000"}, "+34600000001", "hi", since)
    assert not twilio.listed_match({**item, "direction": "inbound"}, "+34600000001", "hi", since)
    assert not twilio.listed_match({**item, "body": "hi!"}, "+34600000001", "hi", since)
    assert not twilio.listed_match({**item, "sid": ""}, "+34600000001", "hi", since)


# --- herald-http -----------------------------------------------------------------------------

# What Herald's gateway API (the simulator) posts to /v1/receipts/{gateway}.
RECORDED_RECEIPTS = {"receipts": [
    {"id": "sim-9c1f", "client_ref": "6f1c2d3e-0000-4000-8000-000000000001", "status": "delivered",
     "error_code": "000", "done_at": "2026-12-05T12:00:01.250Z"},
    {"id": "sim-9c20", "client_ref": "6f1c2d3e-0000-4000-8000-000000000002", "status": "undelivered",
     "error_code": "001", "done_at": "2026-12-05T12:00:02.000Z"},
]}


def test_herald_http_receipts_parse_from_the_recorded_body_and_json() -> None:
    for body in (RECORDED_RECEIPTS, json.loads(json.dumps(RECORDED_RECEIPTS)), RECORDED_RECEIPTS["receipts"]):
        good, bad = herald_http.parse_receipts("sim", body)
        assert bad == []
        assert [(r.gateway, r.gateway_message_id, r.status, r.error_code, r.client_ref) for r in good] == [
            ("sim", "sim-9c1f", ReceiptStatus.DELIVERED, "000", "6f1c2d3e-0000-4000-8000-000000000001"),
            ("sim", "sim-9c20", ReceiptStatus.UNDELIVERED, "001", "6f1c2d3e-0000-4000-8000-000000000002"),
        ]
        assert good[0].done_at == datetime(2026, 12, 5, 12, 0, 1, 250_000, tzinfo=UTC)
    (one,), _ = herald_http.parse_receipts("sim", RECORDED_RECEIPTS["receipts"][0])  # one receipt object
    assert one.gateway_message_id == "sim-9c1f"


def test_herald_http_reads_what_the_simulator_posts() -> None:
    subs = [Submission(id=f"sim-{o.value}", client_ref=str(uuid.uuid4()), to="+34600000001", sender=None, segments=1,
                       submitted_at=1_764_936_000.0, outcome=o, due_at=1_764_936_001.5) for o in Outcome]
    good, bad = herald_http.parse_receipts("sim", {"receipts": [s.receipt_json() for s in subs]})
    assert bad == []
    assert [(r.gateway_message_id, r.status.value, r.client_ref) for r in good] == [
        (s.id, s.outcome.value, s.client_ref) for s in subs]


def test_herald_http_bad_receipts() -> None:
    with pytest.raises(PayloadError) as info:
        herald_http.parse_receipts("sim", "nonsense")
    assert info.value.code == "malformed_receipts"
    _, bad = herald_http.parse_receipts("sim", [{"id": "g", "status": "exploded"}, {"status": "failed"}, 7])
    assert [(i, e.code) for i, e, _ in bad] == [(0, "unknown_status"), (1, "invalid_receipt"), (2, "malformed_receipt")]
    assert bad[1][1].details and bad[1][1].as_dict()["message"] == "receipt is not valid"


def test_herald_http_receipt_signature_is_bound_to_the_gateway() -> None:
    from shared.signatures import sign

    body = json.dumps(RECORDED_RECEIPTS).encode()
    header = sign(b"s" * 32, body, 1_764_936_000, context="sim")
    herald_http.verify_receipts(b"s" * 32, body, header, gateway="sim", now=1_764_936_010, tolerance_s=300)
    for gateway, now, secret, code in [("sim2", 1_764_936_010, b"s" * 32, "signature_invalid"),
                                       ("sim", 1_764_936_400, b"s" * 32, "signature_expired"),
                                       ("sim", 1_764_936_010, b"t" * 32, "signature_invalid")]:
        with pytest.raises(SignatureError) as info:
            herald_http.verify_receipts(secret, body, header, gateway=gateway, now=now, tolerance_s=300)
        assert info.value.code == code
    v1 = sign(b"s" * 32, body, 1_764_936_000)  # a status-webhook signature is not a receipt signature
    with pytest.raises(SignatureError):
        herald_http.verify_receipts(b"s" * 32, body, v1, gateway="sim", now=1_764_936_010, tolerance_s=300)


def test_herald_http_batch_item_and_errors() -> None:
    m = outbound()
    assert herald_http.batch_item(m, None) == {"to": "+34600000001", "body": "Your code is 123456",
                                               "client_ref": str(m.message_id), "segments": 1}
    assert herald_http.batch_item(outbound(sender="Herald"), 200) == {
        "to": "+34600000001", "body": "Your code is 123456", "client_ref": str(m.message_id), "segments": 1,
        "from": "Herald", "validity_s": 200}
    assert herald_http.error_of(422, {"error": {"code": "invalid_to", "message": "bad"}}, "Unprocessable") == ("invalid_to", "bad")
    assert herald_http.error_of(500, {"error": {}}, "Server Error") == ("http_500", "Server Error")
    assert herald_http.error_of(502, None, "Bad Gateway") == ("http_502", "Bad Gateway")
    assert herald_http.error_of(400, {"error": "text"}, "Bad Request") == ("http_400", "Bad Request")
    assert herald_http.error_of(400, [1], "Bad Request") == ("http_400", "Bad Request")


# --- generic webhook -------------------------------------------------------------------------


def test_webhook_payload_body_and_signature() -> None:
    template = webhook.WebhookTemplate(to="message.to", sender="message.from", body="message.text",
                                       reference="meta.ref", segments="meta.parts", validity="ttl.seconds")
    m = outbound()
    payload = webhook.build_payload(template, {"meta": {"channel": "sms"}}, m, default_sender="Herald", validity_s=200)
    assert payload == {"meta": {"channel": "sms", "ref": str(m.message_id), "parts": 1},
                       "message": {"to": "+34600000001", "from": "Herald", "text": "Your code is 123456"},
                       "ttl": {"seconds": 200}}
    plain = webhook.build_payload(webhook.WebhookTemplate(), {}, outbound(body="¿Qué?"), default_sender=None, validity_s=None)
    assert plain == {"to": "+34600000001", "body": "¿Qué?", "reference": str(m.message_id)}
    body = webhook.encode_body(plain)
    assert body == json.dumps(plain, separators=(",", ":"), ensure_ascii=False).encode() and "¿".encode() in body
    assert webhook.signature_headers(body, None, "X-Sig", 1) == {"Content-Type": "application/json"}
    headers = webhook.signature_headers(body, "k" * 20, "X-Sig", 1_764_936_000)
    verify(("k" * 20).encode(), body, headers["X-Sig"], now=1_764_936_000)
    with pytest.raises(SignatureError):
        verify(("k" * 20).encode(), body + b" ", headers["X-Sig"], now=1_764_936_000)


def test_webhook_free_and_id_at() -> None:
    assert webhook.free({"a": {"b": 1}}, "a.c") and webhook.free({}, "a.b") and not webhook.free({"a": 1}, "a.b")
    assert not webhook.free({"a": {"b": 1}}, "a.b")
    answer = {"data": {"id": 42}, "messages": [{"id": "m-1"}], "empty": "", "flag": True, "obj": {}}
    assert webhook.id_at(answer, "data.id") == "42"
    assert webhook.id_at(answer, "messages.0.id") == "m-1"
    for path in ("messages.1.id", "missing", "empty", "flag", "obj", "data"):
        assert webhook.id_at(answer, path) is None, path


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"error": {"code": "bad_to", "message": "no"}}, ("bad_to", "no")),
        ({"error": "quota"}, ("http_400", "quota")),
        ({"code": 17, "message": "x"}, ("17", "x")),
        ({"other": 1}, ("http_400", "Bad Request")),
        (None, ("http_400", "Bad Request")),
        (webhook.NOT_JSON, ("http_400", "<html>")),
    ],
)
def test_webhook_errors(body: object, expected: tuple[str, str]) -> None:
    assert webhook.error_of(400, body, "<html>", "Bad Request") == expected
    assert webhook.error_of(400, webhook.NOT_JSON, "", "Bad Request") == ("http_400", "Bad Request")


# --- the library knows no service ------------------------------------------------------------


def test_provider_modules_import_no_service() -> None:
    import ast
    from pathlib import Path

    root = Path(twilio.__file__).parent
    for path in root.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n.split(".")[0] == "services" for n in names), path.name

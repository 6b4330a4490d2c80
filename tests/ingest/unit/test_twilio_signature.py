"""X-Twilio-Signature: the algorithm against Twilio's documented examples, tampering, and the
ingest endpoints that rely on it (in process, with a publisher that records what it gets)."""

from __future__ import annotations

import random
import string
from collections.abc import AsyncIterator
from urllib.parse import urlencode

import httpx
import pytest
from fastapi import FastAPI
from pydantic import SecretStr

from services.ingest import deps
from services.ingest.settings import IngestSettings
from services.ingest.twilio_callbacks import router
from services.simulator.twilio import sign as simulator_sign
from shared.api import install_error_handlers
from shared.contracts import DeliveryReceiptEvent, InboundMessageEvent, derived_event_id
from shared.kafka import Outgoing
from shared.providers.twilio import EMPTY_TWIML, compute_signature, signature_matches
from shared.statuses import ReceiptStatus
from shared.topics import INBOUND, RECEIPTS

# Twilio's documented example (webhook security docs; twilio-python's RequestValidator tests).
DOC_TOKEN = "12345"
DOC_URL = "https://mycompany.com/myapp.php?foo=1&bar=2"
DOC_PARAMS = {
    "CallSid": "CA1234567890ABCDE",
    "Caller": "+14158675309",
    "Digits": "1234",
    "From": "+14158675309",
    "To": "+18005551212",
}
DOC_SIGNATURE = "RSOYDt4T1cUTdK1PDd93/VVr8B8="


def test_documented_example() -> None:
    params = list(DOC_PARAMS.items())
    assert compute_signature(DOC_TOKEN, DOC_URL, params) == DOC_SIGNATURE
    assert compute_signature(DOC_TOKEN, DOC_URL, list(reversed(params))) == DOC_SIGNATURE  # order-free
    assert simulator_sign(DOC_TOKEN, DOC_URL, params) == DOC_SIGNATURE
    assert signature_matches(DOC_TOKEN, DOC_URL, params, DOC_SIGNATURE)


def test_documented_example_with_a_repeated_parameter() -> None:
    # twilio-python: a repeated name is sorted by value too.
    params = [("Sid", "CA123"), ("SidAccount", "AC123"), ("Digits", "5678"), ("Digits", "1234")]
    assert compute_signature(DOC_TOKEN, DOC_URL, params) == "IK+Dwps556ElfBT0I3Rgjkr1wJU="
    assert simulator_sign(DOC_TOKEN, DOC_URL, params) == "IK+Dwps556ElfBT0I3Rgjkr1wJU="


@pytest.mark.parametrize(
    ("url", "signature"),
    [
        # twilio-python's port cases: Twilio may sign with or without the port.
        ("https://mycompany.com:1234/myapp.php?foo=1&bar=2", DOC_SIGNATURE),  # signed without the port
        ("http://mycompany.com:1234/myapp.php?foo=1&bar=2", "Zmvh+3yNM1Phv2jhDCwEM3q5ebU="),  # with it
        ("https://mycompany.com/myapp.php?foo=1&bar=2", "kvajT1Ptam85bY51eRf/AJRuM3w="),  # signed with :443
        ("http://mycompany.com/myapp.php?foo=1&bar=2", "0ZXoZLH/DfblKGATFgpif+LLRf4="),  # signed with :80
        ("https://mycompany.com:443/myapp.php?foo=1&bar=2", DOC_SIGNATURE),  # signed without the port
    ],
)
def test_port_variants(url: str, signature: str) -> None:
    params = list(DOC_PARAMS.items())
    assert signature_matches(DOC_TOKEN, url, params, signature)
    assert not signature_matches(DOC_TOKEN, url.replace("mycompany", "theircompany"), params, signature)


@pytest.mark.parametrize(
    ("change", "url", "params", "token"),
    [
        ("value changed", DOC_URL, {**DOC_PARAMS, "Digits": "1235"}, DOC_TOKEN),
        ("parameter added", DOC_URL, {**DOC_PARAMS, "Extra": ""}, DOC_TOKEN),
        ("parameter removed", DOC_URL, {k: v for k, v in DOC_PARAMS.items() if k != "Caller"}, DOC_TOKEN),
        ("name changed", DOC_URL, {**{k: v for k, v in DOC_PARAMS.items() if k != "To"}, "TO": "+18005551212"}, DOC_TOKEN),
        ("query changed", DOC_URL.replace("bar=2", "bar=3"), DOC_PARAMS, DOC_TOKEN),
        ("query dropped", DOC_URL.split("?")[0], DOC_PARAMS, DOC_TOKEN),
        ("scheme changed", DOC_URL.replace("https", "http"), DOC_PARAMS, DOC_TOKEN),
        ("host changed", DOC_URL.replace("mycompany", "attacker"), DOC_PARAMS, DOC_TOKEN),
        ("path changed", DOC_URL.replace("myapp", "myApp"), DOC_PARAMS, DOC_TOKEN),
        ("another token", DOC_URL, DOC_PARAMS, "12346"),
    ],
)
def test_tampering_is_detected(change: str, url: str, params: dict[str, str], token: str) -> None:
    assert not signature_matches(token, url, list(params.items()), DOC_SIGNATURE), change


def test_the_scheme_has_no_separators() -> None:
    # A property of Twilio's algorithm, not of this code: moving the boundary between a name and
    # its value (keeping the sort order) signs the same. Harmless here: the endpoints read fixed
    # names, and a shifted name is a missing parameter (422), not another value.
    shifted = {**{k: v for k, v in DOC_PARAMS.items() if k != "To"}, "T": "o+18005551212"}
    assert signature_matches(DOC_TOKEN, DOC_URL, list(shifted.items()), DOC_SIGNATURE)


@pytest.mark.parametrize("header", [None, "", "RSOYDt4T1cUTdK1PDd93/VVr8B8", DOC_SIGNATURE.lower(), "x" * 28])
def test_missing_or_mangled_header_is_refused(header: str | None) -> None:
    assert not signature_matches(DOC_TOKEN, DOC_URL, list(DOC_PARAMS.items()), header)


def test_simulator_and_ingest_agree_on_arbitrary_parameters() -> None:
    rng = random.Random(7)
    alphabet = string.ascii_letters + string.digits + " +&=%?/:é€😀\n"
    for _ in range(200):
        params = [("".join(rng.choices(string.ascii_letters, k=rng.randint(1, 8))),
                   "".join(rng.choices(alphabet, k=rng.randint(0, 20)))) for _ in range(rng.randint(0, 8))]
        url = f"https://h.example/{rng.randint(0, 99)}?ref={rng.random()}"
        signature = simulator_sign("tok", url, params)
        assert signature_matches("tok", url, params, signature)
        if params:
            name, value = params[0]
            assert not signature_matches("tok", url, [(name, value + "x"), *params[1:]], signature)


# --- the ingest endpoints --------------------------------------------------------------------

TOKEN = "tw-auth-token"
PUBLIC = "https://herald.example.com/sms"  # behind a proxy that strips /sms


class RecordingPublisher:
    def __init__(self) -> None:
        self.items: list[Outgoing] = []
        self.down = False

    async def publish(self, items: list[Outgoing]) -> None:
        if self.down:
            raise ConnectionError("broker down")
        self.items.extend(items)


@pytest.fixture
async def ingest() -> AsyncIterator[tuple[httpx.AsyncClient, RecordingPublisher]]:
    publisher = RecordingPublisher()
    settings = IngestSettings(public_url=PUBLIC + "/", twilio_auth_tokens={"tw": SecretStr(TOKEN)})
    app = FastAPI()
    deps.install(app, settings, None, publisher)  # type: ignore[arg-type]
    install_error_handlers(app)
    app.include_router(router)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://10.0.0.7:28080") as client:
        yield client, publisher


async def post(client: httpx.AsyncClient, path: str, params: list[tuple[str, str]], *, signed_url: str | None = None,
               token: str = TOKEN, signature: str | None = None) -> httpx.Response:
    url = signed_url if signed_url is not None else PUBLIC + path
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    sig = signature if signature is not None else compute_signature(token, url, params)
    if sig:
        headers["X-Twilio-Signature"] = sig
    return await client.post(path, content=urlencode(params), headers=headers)


def status_params(status: str, sid: str = "SM" + "a" * 32, **extra: str) -> list[tuple[str, str]]:
    return [("AccountSid", "AC" + "0" * 32), ("ApiVersion", "2010-04-01"), ("MessageSid", sid),
            ("MessageStatus", status), ("SmsSid", sid), ("SmsStatus", status), ("To", "+34600000001"),
            ("From", "+15005550006"), *extra.items()]


@pytest.mark.parametrize(
    ("twilio", "herald"),
    [
        ("accepted", ReceiptStatus.ACCEPTED),
        ("scheduled", ReceiptStatus.ACCEPTED),
        ("queued", ReceiptStatus.ACCEPTED),
        ("sending", ReceiptStatus.ENROUTE),
        ("sent", ReceiptStatus.ENROUTE),
        ("delivered", ReceiptStatus.DELIVERED),
        ("read", ReceiptStatus.DELIVERED),
        ("undelivered", ReceiptStatus.UNDELIVERED),
        ("failed", ReceiptStatus.FAILED),
        ("canceled", ReceiptStatus.FAILED),
        ("partially_delivered", ReceiptStatus.UNKNOWN),  # unknown to Herald: kept, informational
    ],
)
async def test_status_mapping(ingest, twilio: str, herald: ReceiptStatus) -> None:
    client, publisher = ingest
    r = await post(client, "/v1/callbacks/twilio/tw/status?ref=m-1", status_params(twilio))
    assert r.status_code == 204, r.text
    (out,) = publisher.items
    assert (out.topic, out.key) == (RECEIPTS, "SM" + "a" * 32)
    assert isinstance(out.event, DeliveryReceiptEvent)
    receipt = out.event.payload
    assert (receipt.gateway, receipt.status, receipt.raw_status, receipt.client_ref) == ("tw", herald, twilio, "m-1")


async def test_error_code_done_at_and_event_id(ingest) -> None:
    client, publisher = ingest
    params = status_params("undelivered", ErrorCode="30003", RawDlrDoneDate="2511251530")
    for _ in range(2):  # Twilio retried: the same fact, the same event id
        assert (await post(client, "/v1/callbacks/twilio/tw/status", params)).status_code == 204
    first, again = (o.event for o in publisher.items)
    assert first.payload.error_code == "30003"
    assert first.payload.client_ref is None
    assert first.payload.done_at is not None and first.payload.done_at.isoformat() == "2025-11-25T15:30:00+00:00"
    assert first.event_id == again.event_id == derived_event_id("tw", "SM" + "a" * 32, ReceiptStatus.UNDELIVERED, "30003")


async def test_bad_signature_is_401_in_the_api_error_format(ingest) -> None:
    client, publisher = ingest
    path = "/v1/callbacks/twilio/tw/status"
    cases = {
        "signed for the internal URL": await post(client, path, status_params("delivered"), signed_url="http://10.0.0.7:28080" + path),
        "signed with another token": await post(client, path, status_params("delivered"), token="nope"),
        "signed for another query": await post(client, path + "?ref=a", status_params("delivered"), signed_url=PUBLIC + path + "?ref=b"),
    }
    for case, r in cases.items():
        assert r.status_code == 401, case
        assert r.json()["error"]["code"] == "signature_invalid", case
        assert set(r.json()["error"]) == {"code", "message", "details"}
    r = await client.post(path, content=urlencode(status_params("delivered")))
    assert (r.status_code, r.json()["error"]["code"]) == (401, "signature_missing")
    # A body changed after signing.
    params = status_params("delivered")
    signature = compute_signature(TOKEN, PUBLIC + path, params)
    r = await post(client, path, status_params("failed"), signature=signature)
    assert r.status_code == 401
    assert publisher.items == []


async def test_unknown_gateway_is_answered_as_a_bad_signature_and_missing_parameters_422(ingest) -> None:
    client, publisher = ingest
    r = await post(client, "/v1/callbacks/twilio/other/status", status_params("delivered"), signature="")
    assert (r.status_code, r.json()["error"]["code"]) == (401, "signature_missing")
    r = await post(client, "/v1/callbacks/twilio/other/status", status_params("delivered"))  # signed with tw's token
    assert (r.status_code, r.json()["error"]["code"]) == (401, "signature_invalid")
    r = await post(client, "/v1/callbacks/twilio/tw/status", [("MessageSid", "SM1")])
    assert (r.status_code, r.json()["error"]["code"]) == (422, "validation_failed")
    assert r.json()["error"]["details"] == [{"loc": "form.MessageStatus", "code": "missing", "msg": "field required"}]
    r = await post(client, "/v1/callbacks/twilio/tw/inbound", [("From", "+34600000001"), ("Body", "hi")])
    assert r.status_code == 422
    assert {d["loc"] for d in r.json()["error"]["details"]} == {"form.MessageSid", "form.To"}
    assert publisher.items == []


async def test_inbound_sms_becomes_an_inbound_event_and_empty_twiml(ingest) -> None:
    client, publisher = ingest
    params = [("AccountSid", "AC" + "0" * 32), ("MessageSid", "SM" + "b" * 32), ("From", "+34600000009"),
              ("To", "+15005550006"), ("Body", "STOP"), ("NumMedia", "0"), ("NumSegments", "1")]
    r = await post(client, "/v1/callbacks/twilio/tw/inbound", params)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/xml")
    assert r.text == EMPTY_TWIML
    (out,) = publisher.items
    assert (out.topic, out.key) == (INBOUND, "+34600000009")
    assert isinstance(out.event, InboundMessageEvent)
    m = out.event.payload
    assert (m.gateway, m.gateway_message_id, m.sender, m.recipient, m.body) == ("tw", "SM" + "b" * 32, "+34600000009", "+15005550006", "STOP")


async def test_broker_down_is_503(ingest) -> None:
    client, publisher = ingest
    publisher.down = True
    r = await post(client, "/v1/callbacks/twilio/tw/status", status_params("delivered"))
    assert (r.status_code, r.json()["error"]["code"]) == (503, "broker_unavailable")

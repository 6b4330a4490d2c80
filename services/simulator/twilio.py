"""Twilio face of the gateway simulator: enough of Twilio's Messages API to test Herald's adapter.

Routes, on the simulator's API app (same port, same ``refuse`` listener):

* ``POST /2010-04-01/Accounts/{sid}/Messages.json`` - form-encoded, HTTP basic auth with
  ``twilio_account_sid`` / ``twilio_auth_token``; answers ``201`` with a Message resource
  (``sid`` ``SM`` + 32 hex, ``status`` ``queued``, or ``accepted`` for a Messaging Service with
  no From) or a Twilio error ``{"code", "message", "more_info", "status"}``;
* ``GET /2010-04-01/Accounts/{sid}/Messages.json`` - the list, filtered by ``To``, ``From``,
  ``DateSent`` / ``DateSent>`` / ``DateSent<`` (day precision, UTC), paged by ``PageSize``
  and ``Page`` with ``next_page_uri``; unsent messages first, then newest ``date_sent`` first;

Messages are recorded in the simulator's core store like ``/v1/sms`` submissions (same outcome
draw, receipt delay, exact counters with duplicates kept, ``/stats``, ``/stats/client_refs``,
failure modes and resets), with ``schedule_receipt=False``: their receipts are not Herald JSON
posts to ``receipt_url`` but status callbacks, scheduled here. The face's own counters are in
``/stats`` under ``"twilio"``.

Twilio has no client reference, so a message is identified for the duplicate counters by
Herald's message id when the StatusCallback URL carries it (``?ref=<id>``, what Herald's
adapter sends), else by ``to+body:`` + sha256(To, Body): the same text to the same number
twice counts as a duplicate, which is what a double send looks like to the recipient.
``ValidityPeriod`` (1..36,000 s) is recorded with the message: ``GET /stats/submissions?client_ref=``
on the control port shows it as ``validity_s``.

When its receipt falls due, the message goes ``sent`` then ``delivered`` / ``undelivered``
(error 30003), or straight to ``failed`` (error 30008), and each change is posted, form-encoded
and signed (``X-Twilio-Signature``), to its StatusCallback. No callback for the initial status,
as Twilio. A callback post is retried (0.5 s, 1 s, 2 s...) after a connection error, timeout or
5xx, up to ``twilio_callback_attempts``; a 4xx is not retried. Once the final callback is
acknowledged its outcome counts in ``sent_by_outcome``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import heapq
import hmac
import itertools
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from email.utils import format_datetime
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from shared.logging import mask_phone
from shared.sms.encoding import analyse

from .core import INVALID_DESTINATION_PREFIX, Outcome, RequestError, Simulator, Submission, SubmitRequest

log = logging.getLogger("herald.simulator.twilio")

API_VERSION = "2010-04-01"
MESSAGES_PATH = "/" + API_VERSION + "/Accounts/{sid}/Messages.json"
SIGNATURE_HEADER = "X-Twilio-Signature"
MAX_BODY = 1600
ERROR_CODES = {Outcome.UNDELIVERED: "30003", Outcome.FAILED: "30008"}
_E164 = re.compile(r"\+[1-9][0-9]{6,14}")
_MG = re.compile(r"MG[0-9a-fA-F]{32}")


def sign(auth_token: str, url: str, params: list[tuple[str, str]]) -> str:
    """X-Twilio-Signature: base64(HMAC-SHA1(token, url + name+value of each param sorted by name))."""
    data = url + "".join(name + value for name, value in sorted(params))
    return base64.b64encode(hmac.new(auth_token.encode(), data.encode(), hashlib.sha1).digest()).decode()


def new_sid() -> str:
    return "SM" + uuid.uuid4().hex


def rfc2822(ts: float | None) -> str | None:
    return format_datetime(datetime.fromtimestamp(ts, tz=UTC)) if ts is not None else None


class TwilioError(Exception):
    """A Twilio error answer; ``reason`` is the simulator's rejection counter it goes to."""

    def __init__(self, status: int, code: int, message: str, reason: str = "invalid_request") -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.reason = reason

    def response(self) -> web.Response:
        body = {
            "code": self.code,
            "message": self.message,
            "more_info": f"https://www.twilio.com/docs/errors/{self.code}",
            "status": self.status,
        }
        resp = web.json_response(body, status=self.status)
        if self.status == 401:
            resp.headers["WWW-Authenticate"] = 'Basic realm="Twilio API"'
        if self.status == 503:
            resp.headers["Retry-After"] = "1"
        return resp


def failure_error(err: RequestError) -> TwilioError:
    """A failure mode's refusal in Twilio's words (429 -> 20429, 503 -> 20503, 5xx -> 20500)."""
    status = err.status
    if status == 429:
        return TwilioError(429, 20429, "Too Many Requests", err.code)
    if status == 503:
        return TwilioError(503, 20503, "Service Unavailable", err.code)
    if status >= 500:
        return TwilioError(status, 20500, "Internal Server Error", err.code)
    return TwilioError(status, 20000 + status, f"the gateway refuses submissions (simulated HTTP {status})", err.code)


@dataclass(slots=True)
class TwilioMessage:
    sid: str
    to: str
    from_: str | None
    body: str
    messaging_service_sid: str | None
    status_callback: str | None
    segments: int
    client_ref: str
    date_created: float
    status: str
    date_sent: float | None = None
    date_updated: float | None = None
    error_code: str | None = None

    def resource(self, account_sid: str) -> dict[str, Any]:
        return {
            "account_sid": account_sid,
            "api_version": API_VERSION,
            "body": self.body,
            "date_created": rfc2822(self.date_created),
            "date_sent": rfc2822(self.date_sent),
            "date_updated": rfc2822(self.date_updated or self.date_created),
            "direction": "outbound-api",
            "error_code": int(self.error_code) if self.error_code else None,
            "error_message": None,
            "from": self.from_,
            "messaging_service_sid": self.messaging_service_sid,
            "num_media": "0",
            "num_segments": str(self.segments),
            "price": None,
            "price_unit": "USD",
            "sid": self.sid,
            "status": self.status,
            "subresource_uris": {"media": f"/{API_VERSION}/Accounts/{account_sid}/Messages/{self.sid}/Media.json"},
            "to": self.to,
            "uri": f"/{API_VERSION}/Accounts/{account_sid}/Messages/{self.sid}.json",
        }


@dataclass
class CallbackCounters:
    posts: int = 0
    retries: int = 0
    sent: dict[str, int] = field(default_factory=dict)  # acknowledged (2xx), by MessageStatus
    refused: int = 0  # answered 4xx, not retried
    abandoned: int = 0  # no answer after every attempt
    without_url: int = 0  # messages that had no StatusCallback

    def to_json(self) -> dict[str, Any]:
        return {
            "posts": self.posts,
            "retries": self.retries,
            "sent": dict(self.sent),
            "refused": self.refused,
            "abandoned": self.abandoned,
            "without_url": self.without_url,
        }


@dataclass(order=True, slots=True)
class _Due:
    """A message whose status changes (and callbacks) are due."""

    due: float
    seq: int
    generation: int = field(compare=False)
    sub: Submission = field(compare=False)


class TwilioFace:
    def __init__(
        self,
        sim: Simulator,
        *,
        account_sid: str,
        auth_token: str,
        clock: Callable[[], float] = time.time,
        callback_concurrency: int = 16,
        callback_attempts: int = 5,
        post_timeout_s: float = 10.0,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 10.0,
    ) -> None:
        self.sim = sim
        self.account_sid = account_sid
        self._token = auth_token
        self._expected_auth = "Basic " + base64.b64encode(f"{account_sid}:{auth_token}".encode()).decode()
        self._clock = clock
        self._generation = sim.generation
        self.messages: dict[str, TwilioMessage] = {}
        self._by_to: dict[str, list[str]] = {}
        self._due: list[_Due] = []
        self._seq = itertools.count()
        self.callbacks = CallbackCounters()
        self._callback_concurrency = callback_concurrency
        self._attempts = callback_attempts
        self._post_timeout_s = post_timeout_s
        self._backoff_initial_s = backoff_initial_s
        self._backoff_max_s = backoff_max_s
        self._wakeup = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._session: aiohttp.ClientSession | None = None
        sim.extra_stats["twilio"] = self.stats

    def __repr__(self) -> str:
        return f"TwilioFace(account_sid={self.account_sid!r})"

    def _check_generation(self) -> None:
        """After a stats reset (POST /stats/reset), forget messages, due callbacks and counters."""
        if self._generation != self.sim.generation:
            self._generation = self.sim.generation
            self.messages.clear()
            self._by_to.clear()
            self._due.clear()
            self.callbacks = CallbackCounters()

    def stats(self) -> dict[str, Any]:
        """The face's counters, shown in the simulator's /stats under "twilio"."""
        self._check_generation()
        by_status: dict[str, int] = {}
        for m in self.messages.values():
            by_status[m.status] = by_status.get(m.status, 0) + 1
        return {"messages": len(self.messages), "by_status": by_status, "callbacks_pending": len(self._due) + len(self._tasks),
                "callbacks": self.callbacks.to_json()}

    # -- HTTP --------------------------------------------------------------------------------

    def _check_auth(self, request: web.Request) -> TwilioError | None:
        given = request.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), self._expected_auth.encode()):
            return TwilioError(401, 20003, "Authenticate", "unauthorized")
        if request.match_info.get("sid") != self.account_sid:
            return TwilioError(404, 20404, f"The requested resource {request.path} was not found", "unauthorized")
        return None

    def _reject(self, err: TwilioError) -> web.Response:
        self.sim.count_rejection(err.reason)
        resp = err.response()
        if self.sim.failure.mode == "refuse":
            resp.force_close()
        return resp

    async def create(self, request: web.Request) -> web.Response:
        denied = self._check_auth(request)
        if denied is not None:
            return self._reject(denied)
        # The body is read first: in slow mode the message is taken, only the answer is late
        # (a client that timed out has hung up by then, and its body could not be read).
        try:
            form = await request.post()
        except ValueError:
            return self._reject(TwilioError(400, 20001, "the body is not form data"))
        gate = self.sim.gate()
        if gate.delay_s:
            await asyncio.sleep(gate.delay_s)
        if gate.reject is not None:
            return self._reject(failure_error(gate.reject))
        try:
            to, body, sender, service, callback = self._validate(form)
            validity = self._validity(form)
        except TwilioError as err:
            return self._reject(err)
        failure = self.sim.roll_partial_failure()
        if failure is not None:
            return self._reject(failure_error(failure))
        self._check_generation()
        ref = parse_qs(urlsplit(callback).query).get("ref", [None])[0] if callback else None
        client_ref = ref or "to+body:" + hashlib.sha256(f"{to}\n{body}".encode()).hexdigest()[:32]
        segments = analyse(body).segments
        now = self._clock()
        sub = self.sim.submit(SubmitRequest(to, body, client_ref, sender, segments, validity), now, schedule_receipt=False)
        sid = sub.id = new_sid()  # Twilio's sid, also in the store (GET /v1/sms?client_ref= shows it)
        msg = TwilioMessage(
            sid=sid,
            to=to,
            from_=sender,
            body=body,
            messaging_service_sid=service,
            status_callback=callback,
            segments=segments,
            client_ref=client_ref,
            date_created=now,
            status="accepted" if service and not sender else "queued",
        )
        self.messages[sid] = msg
        self._by_to.setdefault(to, []).append(sid)
        self._push(_Due(sub.due_at, next(self._seq), self.sim.generation, sub))
        log.debug("accepted sid=%s ref=%s to=%s", sid, client_ref, mask_phone(to))
        if gate.after_accept is not None:  # fail_after_accept: created, but the answer is an error
            return self._reject(failure_error(gate.after_accept))
        return web.json_response(msg.resource(self.account_sid), status=201)

    @staticmethod
    def _validity(form: Any) -> int | None:
        """ValidityPeriod: whole seconds, 1 to 36,000 (Twilio's range); absent: Twilio's default."""
        value = form.get("ValidityPeriod")
        if value is None:
            return None
        if not value.isdigit() or not 1 <= int(value) <= 36_000:
            raise TwilioError(400, 20001, "The ValidityPeriod must be an integer from 1 to 36000 seconds.")
        return int(value)

    @staticmethod
    def _validate(form: Any) -> tuple[str, str, str | None, str | None, str | None]:
        to = form.get("To")
        body = form.get("Body")
        sender = form.get("From") or None
        service = form.get("MessagingServiceSid") or None
        callback = form.get("StatusCallback") or None
        if not to:
            raise TwilioError(400, 21604, "A 'To' phone number is required.")
        if not body:
            raise TwilioError(400, 21602, "Message body is required.")
        if not sender and not service:
            raise TwilioError(400, 21603, "A 'From' phone number is required.")
        if service and not _MG.fullmatch(service):
            raise TwilioError(400, 21701, f"The Messaging Service Sid {service} is invalid.")
        if not _E164.fullmatch(to):
            raise TwilioError(400, 21211, f"The 'To' number {mask_phone(to)} is not a valid phone number.")
        if len(body) > MAX_BODY:
            raise TwilioError(400, 21617, "The concatenated message body exceeds the 1600 character limit.")
        if callback is not None and not callback.startswith(("http://", "https://")):
            raise TwilioError(400, 21609, "The StatusCallback URL is not a valid URL.")
        if to.startswith(INVALID_DESTINATION_PREFIX):  # checked last: a well-formed but unreachable number
            raise TwilioError(400, 21614, f"'To' number {mask_phone(to)} is not a valid mobile number", "invalid_destination")
        return to, body, sender, service, callback

    async def list_messages(self, request: web.Request) -> web.Response:
        denied = self._check_auth(request)
        if denied is not None:
            return self._reject(denied)
        self._check_generation()
        q = request.query
        try:
            size = int(q.get("PageSize", "50"))
            page = int(q.get("Page", "0"))
            on, after, before = (_day(q.get(k)) for k in ("DateSent", "DateSent>", "DateSent<"))
        except ValueError:
            return TwilioError(400, 20001, "Invalid PageSize, Page or DateSent").response()
        if not 1 <= size <= 1000 or page < 0:
            return TwilioError(400, 20001, "PageSize must be 1 to 1000 and Page at least 0").response()
        to, sender = q.get("To"), q.get("From")
        sids = self._by_to.get(to, []) if to else list(self.messages)
        found = []
        for sid in sids:
            m = self.messages[sid]
            if sender and m.from_ != sender:
                continue
            if on or after or before:
                if m.date_sent is None:
                    continue
                sent = datetime.fromtimestamp(m.date_sent, tz=UTC).date()
                if (on and sent != on) or (after and sent < after) or (before and sent > before):
                    continue
            found.append(m)
        found.sort(key=lambda m: (m.date_sent if m.date_sent is not None else float("inf"), m.date_created), reverse=True)
        chunk = found[page * size : (page + 1) * size]
        filters = [(k, v) for k, v in q.items() if k in ("To", "From", "DateSent", "DateSent>", "DateSent<")]
        path = MESSAGES_PATH.format(sid=self.account_sid)

        def uri(n: int) -> str:
            return path + "?" + urlencode([*filters, ("PageSize", str(size)), ("Page", str(n))])

        more = (page + 1) * size < len(found)
        return web.json_response(
            {
                "messages": [m.resource(self.account_sid) for m in chunk],
                "page": page,
                "page_size": size,
                "start": page * size,
                "end": page * size + max(0, len(chunk) - 1),
                "uri": uri(page),
                "first_page_uri": uri(0),
                "next_page_uri": uri(page + 1) if more else None,
                "previous_page_uri": uri(page - 1) if page > 0 else None,
            }
        )

    # -- status callbacks ----------------------------------------------------------------------

    def _push(self, item: _Due) -> None:
        new_head = not self._due or item < self._due[0]
        heapq.heappush(self._due, item)
        if new_head:
            self._wakeup.set()

    async def lifecycle(self, app: web.Application) -> AsyncIterator[None]:
        """aiohttp cleanup context: the callback sender runs while the API app is set up."""
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self._post_timeout_s))
        runner = asyncio.create_task(self._run(), name="herald-sim-twilio-callbacks")
        try:
            yield
        finally:
            runner.cancel()
            tasks = [runner, *self._tasks]
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if self._due:
                log.info("shutdown: dropped %d pending Twilio status callbacks", len(self._due))
                self._due.clear()
            self.sim.extra_stats.pop("twilio", None)
            await self._session.close()

    async def _run(self) -> None:
        slots = asyncio.Semaphore(self._callback_concurrency)
        while True:
            self._wakeup.clear()
            self._check_generation()
            if not self._due:
                await self._wakeup.wait()
                continue
            wait = self._due[0].due - self._clock()
            if wait > 0:
                try:
                    async with asyncio.timeout(wait):
                        await self._wakeup.wait()
                except TimeoutError:
                    pass
                continue
            await slots.acquire()
            if not self._due or self._due[0].due > self._clock():
                slots.release()
                continue
            item = heapq.heappop(self._due)
            task = asyncio.create_task(self._deliver(item))
            self._tasks.add(task)

            def done(t: asyncio.Task[None]) -> None:
                self._tasks.discard(t)
                slots.release()
                if not t.cancelled() and t.exception() is not None:
                    log.error("status callback task failed", exc_info=t.exception())

            task.add_done_callback(done)

    async def _deliver(self, item: _Due) -> None:
        sub = item.sub
        msg = self.messages.get(sub.id)
        if msg is None or item.generation != self.sim.generation:  # forgotten by a reset
            return
        steps = ["failed"] if sub.outcome is Outcome.FAILED else ["sent", sub.outcome.value]
        ok = True
        for status in steps:
            now = self._clock()
            msg.status, msg.date_updated = status, now
            if msg.date_sent is None:
                msg.date_sent = now
            if status in ("undelivered", "failed"):
                msg.error_code = ERROR_CODES[sub.outcome]
            if status == sub.outcome.value:
                sub.done = True  # GET /v1/sms?client_ref= shows the final status
            if msg.status_callback is None:
                continue
            ok = await self._post(item, msg, status)
            if item.generation != self.sim.generation:
                return
        if msg.status_callback is None:
            self.callbacks.without_url += 1
        elif ok:
            self.sim.c.sent_by_outcome[sub.outcome.value] += 1

    def callback_params(self, msg: TwilioMessage, status: str) -> list[tuple[str, str]]:
        params = [
            ("AccountSid", self.account_sid),
            ("ApiVersion", API_VERSION),
            ("MessageSid", msg.sid),
            ("MessageStatus", status),
            ("SmsSid", msg.sid),
            ("SmsStatus", status),
            ("To", msg.to),
        ]
        if msg.from_:
            params.append(("From", msg.from_))
        if msg.messaging_service_sid:
            params.append(("MessagingServiceSid", msg.messaging_service_sid))
        if status in ("undelivered", "failed") and msg.error_code:
            params.append(("ErrorCode", msg.error_code))
        if status in ("delivered", "undelivered"):
            done = datetime.fromtimestamp(msg.date_updated or self._clock(), tz=UTC)
            params.append(("RawDlrDoneDate", done.strftime("%y%m%d%H%M")))
        return params

    async def _post(self, item: _Due, msg: TwilioMessage, status: str) -> bool:
        """Post one status callback; True once it is acknowledged (2xx)."""
        assert self._session is not None and msg.status_callback is not None
        params = self.callback_params(msg, status)
        body = urlencode(params)
        headers = {
            "Content-Type": "application/x-www-form-urlencoded",
            "I-Twilio-Idempotency-Token": uuid.uuid4().hex,
            "User-Agent": "TwilioProxy/1.1 (herald simulator)",
        }
        delay = self._backoff_initial_s
        for attempt in range(1, self._attempts + 1):
            self.callbacks.posts += 1
            headers[SIGNATURE_HEADER] = sign(self._token, msg.status_callback, params)
            try:
                async with self._session.post(msg.status_callback, data=body.encode(), headers=headers) as resp:
                    answer = (await resp.read())[:500].decode("utf-8", "replace")
                    code = resp.status
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                problem = f"{type(exc).__name__}: {exc}"
            else:
                if 200 <= code < 300:
                    self.callbacks.sent[status] = self.callbacks.sent.get(status, 0) + 1
                    return True
                if 400 <= code < 500:
                    self.callbacks.refused += 1
                    log.error("status callback %s of %s refused: HTTP %d %s", status, msg.sid, code, answer)
                    return False
                problem = f"HTTP {code}: {answer}"
            if attempt == self._attempts or item.generation != self.sim.generation:
                break
            self.callbacks.retries += 1
            log.warning("status callback %s of %s failed (%s); retrying in %.1fs", status, msg.sid, problem, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._backoff_max_s)
        self.callbacks.abandoned += 1
        log.error("status callback %s of %s abandoned after %d attempts", status, msg.sid, self._attempts)
        return False


def _day(value: str | None) -> date | None:
    """``YYYY-MM-DD`` (or an ISO date-time, of which the UTC day counts)."""
    if not value:
        return None
    if len(value) == 10:
        return date.fromisoformat(value)
    return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC).date()


class TwilioCollector(Collector):
    def __init__(self, face: TwilioFace) -> None:
        self._face = face

    def collect(self) -> Iterator[Metric]:
        face = self._face
        sent = CounterMetricFamily("herald_sim_twilio_callbacks_sent", "Status callbacks acknowledged", labels=["status"])
        for status, n in sorted(face.callbacks.sent.items()):
            sent.add_metric([status], n)
        yield sent
        yield CounterMetricFamily(
            "herald_sim_twilio_callbacks_failed", "Status callbacks refused (4xx) or abandoned",
            value=face.callbacks.refused + face.callbacks.abandoned,
        )
        yield GaugeMetricFamily(
            "herald_sim_twilio_callbacks_pending", "Messages whose status callbacks are not done",
            value=len(face._due) + len(face._tasks),
        )


TWILIO_KEY: web.AppKey[TwilioFace] = web.AppKey("twilio", TwilioFace)


def register_twilio(
    app: web.Application,
    sim: Simulator,
    *,
    registry: CollectorRegistry | None = None,
    clock: Callable[[], float] = time.time,
    settings: Any = None,
) -> TwilioFace:
    """Add the Twilio face to the simulator's API app. ``settings`` default: read from the environment."""
    if settings is None:
        from .settings import SimulatorSettings

        settings = SimulatorSettings()
    face = TwilioFace(
        sim,
        account_sid=settings.twilio_account_sid,
        auth_token=settings.twilio_auth_token.get_secret_value(),
        clock=clock,
        callback_concurrency=settings.twilio_callback_concurrency,
        callback_attempts=settings.twilio_callback_attempts,
        post_timeout_s=settings.receipt_post_timeout_s,
    )
    app[TWILIO_KEY] = face
    path = MESSAGES_PATH.format(sid="{sid}")
    app.router.add_post(path, face.create)
    app.router.add_get(path, face.list_messages)
    app.cleanup_ctx.append(face.lifecycle)
    if registry is not None:
        try:
            registry.register(TwilioCollector(face))
        except ValueError:  # an app built twice on one registry: the first collector stays
            pass
    return face
